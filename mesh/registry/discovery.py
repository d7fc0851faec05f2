"""Discovery: find the mesh's verified tools by what they do, ranked by relevance and reputation.

Each tool is embedded once (``mesh.embedding``) from the text "agent tool name title description",
with snake_case / camelCase names split into words so that ``search_passages`` reads like the query
"search passages". Queries are embedded the same way and matched by cosine similarity (*relevance*).

The ranking formula, with ``reputation`` in [0, 1] (0.5 when unknown)::

    score = max(relevance, 0) * (0.5 + 0.5 * reputation)

so reputation can at most halve a tool's score: it reorders tools of similar relevance, and a tool
overtakes another only if it is more than half as relevant. Tools with no positive relevance (cosine
<= 0, unrelated) are not results, and a query with no known word returns nothing.

How filters stay exact without scanning 100k vectors:

- ``read_only`` — the vectors live in two Faiss indexes (``VectorIndex``), one for tools annotated
  ``readOnlyHint: true`` and one for the rest; a filtered search asks one, an unfiltered one asks both.
- ``agent`` — each agent's vectors are also kept as one small matrix, so a search within an agent is
  an exact dot product over its own tools (microseconds for hundreds of tools) rather than a hope that
  they show up in a global over-fetch.
- blocked tools (unverified, or rug-pulled) are taken out of the Faiss indexes, so they cannot appear.

A global search over-fetches ``max(4k, 40)`` candidates by relevance and re-ranks them by score.

Ids are ints, stable for an (agent, tool) pair while that tool stays registered; re-registering an
unchanged tool re-embeds nothing and touches no index. ``VectorIndex`` removes by marking positions
dead and compacts by itself, so incremental changes never rebuild the whole index.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh import embedding
from mesh.vectors import VectorIndex

Reputation = Callable[[str, str], float | None]
"""``reputation(agent, tool)`` in [0, 1], or None when nothing is known yet."""

UNKNOWN_REPUTATION = 0.5
OVERFETCH = 4
MIN_FETCH = 40

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_\-./:]+")


def name_words(name: str) -> str:
    """``getUserByID`` / ``get_user_by_id`` → ``get user by id``: names read like the queries."""
    return " ".join(word.lower() for word in _SEPARATORS.split(_CAMEL.sub(" ", name)) if word)


def score(relevance: float, reputation: float) -> float:
    """The ranking formula of the module docstring: reputation scales relevance by 0.5 to 1."""
    return max(relevance, 0.0) * (0.5 + 0.5 * reputation)


def tool_text(agent: str, tool: Mapping[str, Any]) -> str:
    """The text a tool is embedded from: its agent, its name in words, its title and description."""
    parts = [name_words(agent), name_words(tool["name"]), tool.get("title") or "", tool.get("description") or ""]
    return " ".join(part.strip() for part in parts if part and part.strip())


@dataclass(frozen=True)
class Hit:
    """One search result; ``to_json()`` is what ``GET /v1/discover`` and the ``discover`` tool return."""

    agent: str
    tool: str
    description: str
    title: str | None
    relevance: float
    reputation: float
    score: float
    annotations: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {"agent": self.agent, "tool": self.tool}
        if self.title:
            result["title"] = self.title
        result.update(
            description=self.description,
            score=round(self.score, 6),
            relevance=round(self.relevance, 6),
            reputation=round(self.reputation, 6),
            annotations=dict(self.annotations),
        )
        return result


@dataclass
class _Tool:
    id: int
    agent: str
    name: str
    title: str | None
    description: str
    annotations: dict[str, Any]
    text: str

    @property
    def read_only(self) -> bool:
        return self.annotations.get("readOnlyHint") is True


@dataclass
class _Agent:
    """An agent's tools in registration order; row ``i`` of ``vectors`` embeds ``tools[i]``."""

    tools: list[_Tool]
    vectors: np.ndarray
    rows: dict[int, int] = field(init=False)  # tool id -> row

    def __post_init__(self) -> None:
        self.rows = {tool.id: row for row, tool in enumerate(self.tools)}

    def vector(self, id_: int) -> np.ndarray:
        return self.vectors[self.rows[id_]]


class DiscoveryIndex:
    """Semantic search over the mesh's verified tools; see the module docstring for the ranking.

    Meant for the registry's event loop; a lock still makes a bulk load in a worker thread safe.
    """

    def __init__(self, *, index_factory: Callable[[int], VectorIndex] = VectorIndex) -> None:
        self._dimension = embedding.dimension()
        # Partitioned by read-only-ness so the read_only filter is exact: True -> readOnlyHint tools.
        self._indexes = {True: index_factory(self._dimension), False: index_factory(self._dimension)}
        self._agents: dict[str, _Agent] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (agent, tool) -> id, stable while registered
        self._tools: dict[int, _Tool] = {}
        self._indexed: dict[int, bool] = {}  # tool id -> the partition that holds its vector
        self._blocked: set[tuple[str, str]] = set()
        self._next_id = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Registered tools, blocked ones included."""
        return len(self._tools)

    def searchable(self) -> int:
        """Tools a search can return (registered and not blocked)."""
        return len(self._indexed)

    # -- registration ----------------------------------------------------------------------------------

    def upsert(self, agent: str, tools: list[dict[str, Any]]) -> None:
        """Make ``tools`` (wire tool dicts) the agent's whole tool set, replacing what it had."""
        self.upsert_many({agent: tools})

    def upsert_many(self, agents: Mapping[str, list[dict[str, Any]]]) -> None:
        """``upsert`` several agents with one embedding pass and one index add: the fast bulk load."""
        staged = {agent: _parse(agent, tools) for agent, tools in agents.items()}
        with self._lock:
            tools = {agent: [self._new_tool(agent, spec) for spec in specs] for agent, specs in staged.items()}
            vectors, changed = self._vectors_for(tools)
            for agent, agent_tools in tools.items():
                self._replace(agent, agent_tools, vectors)
            self._sync([tool for agent_tools in tools.values() for tool in agent_tools], changed, vectors)

    def remove(self, agent: str) -> None:
        """Forget an agent and all its tools (blocks stay: they are decisions about names, not vectors)."""
        with self._lock:
            self._replace(agent, [], {})

    def block(self, agent: str, tool: str) -> None:
        """Keep a tool out of every result (unverified, or its live schema no longer matches its digest).

        A block holds until ``unblock``, across re-registrations, and may be set before the tool exists.
        """
        with self._lock:
            self._blocked.add((agent, tool))
            id_ = self._ids.get((agent, tool))
            if id_ is not None:
                self._unindex([id_])

    def unblock(self, agent: str, tool: str) -> None:
        """Let a blocked tool be found again (its vector is kept, so nothing is re-embedded)."""
        with self._lock:
            self._blocked.discard((agent, tool))
            id_ = self._ids.get((agent, tool))
            if id_ is not None:
                self._sync([self._tools[id_]], set(), {id_: self._agents[agent].vector(id_)})

    def is_blocked(self, agent: str, tool: str) -> bool:
        return (agent, tool) in self._blocked

    # -- search ----------------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        agent: str | None = None,
        read_only: bool | None = None,
        reputation: Reputation | None = None,
    ) -> list[Hit]:
        """The ``k`` best tools for ``query``, best first.

        ``agent`` keeps one agent's tools; ``read_only=True`` keeps tools annotated ``readOnlyHint``,
        ``False`` the others, ``None`` both. ``reputation(agent, tool)`` weights the ranking.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vector = embedding.embed([query])[0]
        if not vector.any():
            return []  # no known word: nothing can be relevant
        with self._lock:
            if agent is not None:
                candidates = self._scan_agent(agent, vector, read_only)
            else:
                partitions = (True, False) if read_only is None else (read_only,)
                fetch = max(k * OVERFETCH, MIN_FETCH)
                candidates = [
                    (self._tools[id_], relevance)
                    for partition in partitions
                    if len(self._indexes[partition])
                    for id_, relevance in self._indexes[partition].search(vector, fetch)
                ]
        ranked = []
        for tool, relevance in candidates:
            if relevance > 0:
                known = reputation(tool.agent, tool.name) if reputation is not None else None
                trust = UNKNOWN_REPUTATION if known is None else min(max(float(known), 0.0), 1.0)
                ranked.append((score(relevance, trust), relevance, tool, trust))
        ranked.sort(key=lambda row: (-row[0], -row[1], row[2].agent, row[2].name))
        return [_hit(tool, relevance, trust, value) for value, relevance, tool, trust in ranked[:k]]

    # -- internals -------------------------------------------------------------------------------------

    def _new_tool(self, agent: str, spec: dict[str, Any]) -> _Tool:
        id_ = self._ids.get((agent, spec["name"]))
        if id_ is None:
            id_, self._next_id = self._next_id, self._next_id + 1
        return _Tool(
            id=id_,
            agent=agent,
            name=spec["name"],
            title=spec.get("title") or None,
            description=spec.get("description") or "",
            annotations=dict(spec.get("annotations") or {}),
            text=tool_text(agent, spec),
        )

    def _vectors_for(self, tools: dict[str, list[_Tool]]) -> tuple[dict[int, np.ndarray], set[int]]:
        """Every tool's vector, embedding only the tools that are new or whose text changed."""
        vectors: dict[int, np.ndarray] = {}
        fresh: list[_Tool] = []
        for agent, agent_tools in tools.items():
            for tool in agent_tools:
                previous = self._tools.get(tool.id)
                if previous is not None and previous.text == tool.text:
                    vectors[tool.id] = self._agents[agent].vector(tool.id)
                else:
                    fresh.append(tool)
        embedded = embedding.embed([tool.text for tool in fresh])
        vectors.update((tool.id, vector) for tool, vector in zip(fresh, embedded, strict=True))
        return vectors, {tool.id for tool in fresh}

    def _replace(self, agent: str, tools: list[_Tool], vectors: dict[int, np.ndarray]) -> None:
        """Swap in an agent's new tool list; tools it no longer has leave the index and the id map."""
        old = self._agents.pop(agent, None)
        kept = {tool.id for tool in tools}
        gone = [tool for tool in (old.tools if old else []) if tool.id not in kept]
        self._unindex([tool.id for tool in gone])
        for tool in gone:
            del self._tools[tool.id]
            del self._ids[(agent, tool.name)]
        for tool in tools:
            self._tools[tool.id] = tool
            self._ids[(agent, tool.name)] = tool.id
        if tools:
            matrix = np.vstack([vectors[tool.id] for tool in tools]).astype(np.float32, copy=False)
            self._agents[agent] = _Agent(tools, np.ascontiguousarray(matrix))

    def _sync(self, tools: list[_Tool], changed: set[int], vectors: dict[int, np.ndarray]) -> None:
        """Bring these tools' Faiss entries in line: blocked ones out, the rest in the right partition."""
        adds: dict[bool, list[_Tool]] = {True: [], False: []}
        out: list[int] = []  # blocked, or moving to the other partition
        for tool in tools:
            current = self._indexed.get(tool.id)
            if (tool.agent, tool.name) in self._blocked:
                out.append(tool.id)
            elif current is not tool.read_only or tool.id in changed:
                if current is not None and current is not tool.read_only:
                    out.append(tool.id)
                adds[tool.read_only].append(tool)
        self._unindex(out)
        for partition, batch in adds.items():
            if batch:
                ids = [tool.id for tool in batch]
                self._indexes[partition].add(ids, np.vstack([vectors[id_] for id_ in ids]))
                self._indexed.update(dict.fromkeys(ids, partition))

    def _unindex(self, ids: Iterable[int]) -> None:
        """Take these ids out of Faiss: one ``remove`` per partition, as each one rebuilds a skip-list."""
        by_partition: dict[bool, list[int]] = {True: [], False: []}
        for id_ in ids:
            partition = self._indexed.pop(id_, None)
            if partition is not None:
                by_partition[partition].append(id_)
        for partition, batch in by_partition.items():
            if batch:
                self._indexes[partition].remove(batch)

    def _scan_agent(self, agent: str, vector: np.ndarray, read_only: bool | None) -> list[tuple[_Tool, float]]:
        """Exact relevance of every searchable tool of one agent."""
        entry = self._agents.get(agent)
        if entry is None:
            return []
        relevances = entry.vectors @ vector
        return [
            (tool, float(relevance))
            for tool, relevance in zip(entry.tools, relevances, strict=True)
            if tool.id in self._indexed and (read_only is None or tool.read_only is read_only)
        ]


def _hit(tool: _Tool, relevance: float, reputation: float, value: float) -> Hit:
    return Hit(
        agent=tool.agent,
        tool=tool.name,
        description=tool.description,
        title=tool.title,
        relevance=relevance,
        reputation=reputation,
        score=value,
        annotations=dict(tool.annotations),
    )


def _parse(agent: str, tools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check the wire dicts before touching any state, so a bad registration changes nothing."""
    if not isinstance(agent, str) or not agent:
        raise ValueError("agent must be a non-empty string")
    specs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{agent}: every tool needs a non-empty string 'name', got {name!r}")
        if name in seen:
            raise ValueError(f"{agent}: duplicate tool name {name!r}")
        seen.add(name)
        specs.append(dict(tool))
    return specs
