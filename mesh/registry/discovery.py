"""Discovery: find the mesh's verified tools by what they do, ranked by words, names, meaning and reputation.

Three rankers look at every query, and their rankings are fused:

- **lexical** — BM25 (``mesh.registry.lexical``) over the tool's name (split at snake/camel/kebab case
  *and* kept whole, weight 3), title (2), description (1), its agent's name (2) and description (0.5),
  and its parameter names (1). It finds what meaning averages away: rare words, exact terms, and CJK
  text through character bigrams.
- **names** — BM25 over the names alone (the tool's name, title and agent's name). Product and proper
  names (``context7``, ``tavily``, ``antd``) decide many queries, and a name match is near-certain
  intent, so it gets a ranking of its own rather than a bigger weight inside the lexical one (where a
  long description still dilutes it).
- **semantic** — cosine similarity of embeddings (``mesh.embedding.MULTILINGUAL`` by default, a
  multilingual sentence encoder shipped inside its wheel) of "agent tool-name title description"; it
  finds tools described in other words, or in another language.

Fusion is reciprocal rank fusion: each ranker contributes its best ``DEPTH`` tools (a BM25 ranker only
those scoring at least ``LEXICAL_FLOOR`` of its best: a tool sharing one common word with the query is
not evidence, and in a rank fusion it would count as much as a close match of meaning; on the
benchmark this floor lifted NDCG@10 from 0.77 to 0.80, flat between 0.5 and 0.7), and a tool's fused
relevance is ``sum over rankers of 1 / (RRF_K + rank)``, divided by its largest possible value, so
1.0 means "first for every ranker" and a tool found by one ranker alone can still rank high. Ranks,
not raw scores, are fused because BM25 and cosine live on unrelated scales; the rankers weigh the
same (on ``bench/bench_discovery.py``'s labelled queries, weighting them differently moved NDCG by
less than its noise). Then reputation (``[0, 1]``, the prior's score when nobody has called the tool)
weighs in as before::

    score = relevance * (0.5 + 0.5 * reputation)

so reputation reorders tools of similar relevance and at most halves a score.

**Proficiency.** An agent assessed on a target system (``mesh learn``: its latest held-out score ``p``
in [0, 1] per system, ``Registry.proficiencies``) is ranked by it for that system's tools. A tool is
for a system when the system's name is one of the words of the tool (its name in words, title,
description) or of the need being ranked: "create a pet in the petstore" asks for the ``petstore``, and
a tool described as "orders pets from the petstore" serves it. Then::

    score *= 0.75 + 0.5 * p      # (the best p among the agent's matching systems)

so a proficient agent (1.25) ranks above an unassessed one (no factor) above a novice (0.75) among
tools of similar relevance. Matching words is deliberately simple: an agent's assessed systems are
few, and the name of a system is rarely a common word.

Every hit says why it ranked (``Hit.to_json()["why"]``): its lexical, name and semantic ranks (None
when that ranker did not return it), its cosine similarity, the fused relevance, its reputation (and
whether anything is known), its proficiency (``{"system", "score"}``, None when no assessed system
matched), and which need it answers.

**Several needs in one query.** A long, task-like query ("find the train, then check the weather there
and book a hotel") is split into needs (``needs``): at sentence and clause punctuation and at
sequencing words ("then", "and then", "after that", 然后, 并且, ...), and at "and" when both sides are
at least three words long; a fragment of fewer than two search terms joins the next piece. Each need
is ranked on its own (all rankers, fused), and a tool's relevance is its best over the needs, which
interleaves the needs' rankings: every need's first tool ties with the others' firsts, then the
seconds, and so on (ranking the whole query as well added nothing on the benchmark, and cost a fifth
more). At most ``MAX_NEEDS`` needs (the rest join the last). The needs travel together: one encoder
call embeds them all, each BM25 ranker scores them in one pass (its filters worked out once, the
``LEXICAL_FLOOR`` applied inside the index), and Faiss answers them in one search. The
ranking is the same as searching each need alone; what a need still adds is the encoder reading its
words (the largest part, see ``bench/bench_discovery.py``'s floor) and its own graph walk and BM25 sums.

**Weighing only what can win.** Reputation and proficiency only scale a relevance, by at most
``proficiency_factor(1)`` up, so candidates are weighed best relevance first and weighing stops at the
first one whose relevance times that bound is below the k-th score found: the top k is exact, and the
callbacks run for a few dozen tools instead of every candidate of every need.

How filters stay exact without scanning 100k vectors:

- ``read_only`` — the vectors live in one Faiss index (``VectorIndex``), each flagged with its tool's
  ``readOnlyHint``, and a filtered search keeps the flagged (or unflagged) ones with a bitmap selector
  (an unfiltered one walks the graph once: two graphs, one per flag, cost it three times as much); the
  lexical indexes keep the same split as a group.
- ``agent`` — each agent's vectors are also kept as one small matrix, so a search within an agent is
  an exact dot product over its own tools, and the lexical searches are restricted to its tool ids.
- ``scope`` — each agent is registered in a scope (the registry's: its project), every index labels its
  tools with it, and a scoped search keeps that label inside each ranker (the same bitmap selector as
  ``read_only``), so a project's own tools fill its ranking however many other projects' tools would
  outrank them. (Filtering afterwards would leave a small project with what the others left over.) A
  graph walk that may return only a small share of what it passes finds little, so a scope of at most
  ``SCAN_SCOPE_BELOW`` tools is searched exactly: its vectors stacked once (until the next change) and
  multiplied with the needs' vectors, a millisecond for 5k tools.
- blocked tools (unverified, or rug-pulled) are taken out of every index, so they cannot appear.

Ids are ints, stable for an (agent, tool) pair while that tool stays registered; re-registering an
unchanged tool re-embeds nothing and touches no index. Every index updates one tool at a time (dead
positions, compacted once a quarter is dead), so admissions never rebuild anything at 100k tools. The
indexes live in the registry process and are rebuilt from the database at start, as the vectors were;
nothing is written back.
"""

from __future__ import annotations

import functools
import heapq
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from mesh import embedding
from mesh.registry import lexical
from mesh.registry.reputation import UNKNOWN_SCORE
from mesh.vectors import VectorIndex

Reputation = Callable[[str, str], float | None]
"""``reputation(agent, tool)`` in [0, 1], or None when nothing is known yet."""

Proficiency = Callable[[str], Mapping[str, float]]
"""``proficiency(agent)``: its latest assessed score in [0, 1] per target system ({} when never assessed)."""

RANKERS = ("lexical", "names", "semantic")
UNKNOWN_REPUTATION = UNKNOWN_SCORE
RRF_K = 60
DEPTH = 50
"""How many tools each ranker contributes to the fusion, per need."""
LEXICAL_FLOOR = 0.5
"""A BM25 ranker votes only for tools scoring at least this share of its best score for the need."""
MAX_NEEDS = 4
SCAN_SCOPE_BELOW = 10_000
"""A scope with at most this many tools is searched exactly rather than by a filtered graph walk (reading
its vectors, 20 MB at 10k tools, costs about as much as the walk; a bigger scope is a big enough share of
any registry for the walk to find its neighbours)."""
MAX_EMBEDDED_CHARS = 1000
"""Descriptions beyond this are cut before embedding: the head says what a tool does, and an average
over pages of usage notes says less."""

NAME_WEIGHT, TITLE_WEIGHT, DESCRIPTION_WEIGHT = 3.0, 2.0, 1.0
AGENT_NAME_WEIGHT, AGENT_DESCRIPTION_WEIGHT, PARAMETER_WEIGHT = 2.0, 0.5, 1.0

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s_\-./:]+")
_CLAUSES = re.compile(
    r"[.;:!?]+(?:\s|$)|[。；：！？\n]+|[,，、]\s*|\s*\b(?:and then|then|after that|afterwards|finally|also)\b\s*"
    r"|然后|并且|接着|之后|最后|同时|以及",
    re.IGNORECASE,
)
_AND = re.compile(r"\s+(?:and|&)\s+", re.IGNORECASE)


def name_words(name: str) -> str:
    """``getUserByID`` / ``get_user_by_id`` → ``get user by id``: names read like the queries."""
    return " ".join(word.lower() for word in _SEPARATORS.split(_CAMEL.sub(" ", name)) if word)


def score(relevance: float, reputation: float) -> float:
    """The ranking formula of the module docstring: reputation scales relevance by 0.5 to 1."""
    return max(relevance, 0.0) * (0.5 + 0.5 * reputation)


def proficiency_factor(proficiency: float) -> float:
    """The module docstring's proficiency weight: 0.75 for a novice (0) to 1.25 for a proficient agent (1)."""
    return 0.75 + 0.5 * min(max(proficiency, 0.0), 1.0)


_WORD = re.compile(r"[^\W_]+")


def matched_system(systems: Mapping[str, float], *texts: str) -> tuple[str, float] | None:
    """The assessed system (and its score) whose name is a word of ``texts``; the best one if several."""
    if not systems:
        return None
    words = {word.lower() for text in texts for word in _WORD.findall(name_words(text) + " " + text)}
    found = [(score, system) for system, score in systems.items() if system.lower() in words]
    if not found:
        return None
    best, system = max(found)
    return system, best


def tool_text(agent: str, tool: Mapping[str, Any]) -> str:
    """The text a tool is embedded from: its agent, its name in words, its title and description."""
    description = (tool.get("description") or "")[:MAX_EMBEDDED_CHARS]
    parts = [name_words(agent), name_words(tool["name"]), tool.get("title") or "", description]
    return " ".join(part.strip() for part in parts if part and part.strip())


def parameter_names(tool: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of a tool's top-level input parameters."""
    properties = (tool.get("inputSchema") or {}).get("properties")
    return tuple(name for name in properties if isinstance(name, str)) if isinstance(properties, dict) else ()


def needs(query: str) -> list[str]:
    """The separate needs of a task-like query; a plain query is one need (itself).

    Split at clause punctuation and sequencing words, then at "and" where both sides have at least three
    words; a piece with fewer than two search terms joins the next one, and needs beyond ``MAX_NEEDS``
    join the last. See the module docstring.
    """
    pieces: list[str] = []
    for clause in _CLAUSES.split(query):
        parts = _AND.split(clause)
        if len(parts) > 1 and all(len(part.split()) >= 3 for part in parts):
            pieces.extend(parts)
        else:
            pieces.append(clause)
    merged: list[str] = []
    fragment = ""  # a piece too short to be a need ("describe it,") joins the next one
    for piece in (piece.strip() for piece in pieces):
        piece = f"{fragment} {piece}".strip()
        if len(lexical.terms(piece)) < 2:
            fragment = piece
        else:
            merged.append(piece)
            fragment = ""
    if fragment and merged:
        merged[-1] = f"{merged[-1]} {fragment}"
    if len(merged) <= 1:
        return [query.strip()] if query.strip() else []
    if len(merged) > MAX_NEEDS:
        merged[MAX_NEEDS - 1 :] = [" ".join(merged[MAX_NEEDS - 1 :])]
    return merged


@dataclass(frozen=True)
class Hit:
    """One search result; ``to_json()`` is what ``GET /v1/discover`` and the ``discover`` tool return.

    ``relevance`` is the fused relevance in [0, 1]; ``lexical_rank`` / ``name_rank`` / ``semantic_rank``
    are the tool's 1-based ranks in each ranker for the need it answers (None: not among its candidates),
    ``similarity`` its cosine to that need, and ``need`` the need (None when the query was one need).
    """

    agent: str
    tool: str
    description: str
    title: str | None
    relevance: float
    reputation: float
    score: float
    annotations: dict[str, Any] = field(default_factory=dict)
    lexical_rank: int | None = None
    name_rank: int | None = None
    semantic_rank: int | None = None
    similarity: float | None = None
    need: str | None = None
    reputation_known: bool = False
    proficiency: tuple[str, float] | None = None  # (system, assessed score) that weighed in

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
            why={
                "lexical_rank": self.lexical_rank,
                "name_rank": self.name_rank,
                "semantic_rank": self.semantic_rank,
                "similarity": None if self.similarity is None else round(self.similarity, 6),
                "fused": round(self.relevance, 6),
                "reputation": round(self.reputation, 6),
                "reputation_known": self.reputation_known,
                "proficiency": None if self.proficiency is None else {"system": self.proficiency[0],
                                                                      "score": round(self.proficiency[1], 6)},
                "need": self.need,
            },
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
    text: str  # what is embedded
    parameters: tuple[str, ...]
    agent_description: str
    label: int = 0  # the agent's scope, as the indexes label it

    @property
    def read_only(self) -> bool:
        return self.annotations.get("readOnlyHint") is True

    @property
    def lexical_key(self) -> tuple[Any, ...]:
        return (self.name, self.title, self.description, self.parameters, self.agent_description)

    def name_bag(self) -> dict[str, float]:
        """The tool's names alone: its own, its title and its agent's (see the module docstring)."""
        return lexical.document(
            [(lexical.name_terms(self.name), 1.0), (lexical.terms(self.title or ""), 1.0),
             (lexical.name_terms(self.agent), 1.0)]
        )

    def bag(self) -> dict[str, float]:
        """The tool's lexical document, weighted by field (see the module docstring)."""
        return lexical.document(
            [
                (lexical.name_terms(self.name), NAME_WEIGHT),
                (lexical.terms(self.title or ""), TITLE_WEIGHT),
                (lexical.terms(self.description), DESCRIPTION_WEIGHT),
                (lexical.name_terms(self.agent), AGENT_NAME_WEIGHT),
                (lexical.terms(self.agent_description), AGENT_DESCRIPTION_WEIGHT),
                ([term for name in self.parameters for term in lexical.name_terms(name)], PARAMETER_WEIGHT),
            ]
        )


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


@dataclass
class _Ranking:
    """One need's ranks by each ranker (tool id -> 1-based rank), cosines, and fused relevance."""

    lexical: dict[int, int] = field(default_factory=dict)
    names: dict[int, int] = field(default_factory=dict)
    semantic: dict[int, int] = field(default_factory=dict)
    similarity: dict[int, float] = field(default_factory=dict)
    relevance: dict[int, float] = field(default_factory=dict)


class DiscoveryIndex:
    """Hybrid (lexical, names, semantic) search over the mesh's verified tools; see the module docstring.

    ``rankers`` picks which rankings are fused (both by default; one alone is what the benchmark
    compares against) and ``embedder`` the sentence embedding. Meant for the registry's event loop; a
    lock still makes a bulk load in a worker thread safe.
    """

    def __init__(
        self,
        *,
        index_factory: Callable[[int], VectorIndex] = VectorIndex,
        embedder: embedding.Embedder = embedding.MULTILINGUAL,
        rankers: Iterable[str] = RANKERS,
        split_needs: bool = True,
    ) -> None:
        self.rankers = tuple(rankers)
        if not self.rankers or set(self.rankers) - set(RANKERS):
            raise ValueError(f"rankers must be a non-empty subset of {RANKERS}, got {self.rankers}")
        self.embedder = embedder
        self.split_needs = split_needs
        self._dimension = embedder.dimension
        self._vectors = index_factory(self._dimension)  # each flagged with its tool's readOnlyHint
        self._lexical = lexical.LexicalIndex()
        self._names = lexical.LexicalIndex()
        self._agents: dict[str, _Agent] = {}
        self._ids: dict[tuple[str, str], int] = {}  # (agent, tool) -> id, stable while registered
        self._tools: dict[int, _Tool] = {}
        self._indexed: dict[int, tuple[bool, int]] = {}  # searchable tool id -> (read_only, scope label) indexed
        self._labels: dict[str, int] = {"": 0}  # scope -> its label in the indexes
        self._scope_agents: dict[int, set[str]] = {}  # scope label -> its agents
        # (scope label, read_only filter) -> (tool ids, their vectors stacked): a small scope's exact search
        self._scans: dict[tuple[int, bool | None], tuple[list[int], np.ndarray]] = {}
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

    def upsert(self, agent: str, tools: list[dict[str, Any]], *, description: str = "", scope: str = "") -> None:
        """Make ``tools`` (wire tool dicts) the agent's whole tool set, replacing what it had.

        ``description`` is the agent's own description, searched (lightly weighted) with each tool;
        ``scope`` is where it belongs (a search may keep one scope).
        """
        self.upsert_many({agent: tools}, descriptions={agent: description}, scopes={agent: scope})

    def upsert_many(
        self, agents: Mapping[str, list[dict[str, Any]]], *, descriptions: Mapping[str, str] | None = None,
        scopes: Mapping[str, str] | None = None,
    ) -> None:
        """``upsert`` several agents with one embedding pass and one index add: the fast bulk load."""
        staged = {agent: _parse(agent, tools) for agent, tools in agents.items()}
        descriptions, scopes = descriptions or {}, scopes or {}
        with self._lock:
            labels = {agent: self._labels.setdefault(scopes.get(agent) or "", len(self._labels)) for agent in staged}
            tools = {
                agent: [self._new_tool(agent, spec, descriptions.get(agent) or "", labels[agent]) for spec in specs]
                for agent, specs in staged.items()
            }
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
        scope: str | None = None,
        reputation: Reputation | None = None,
        proficiency: Proficiency | None = None,
    ) -> list[Hit]:
        """The ``k`` best tools for ``query``, best first.

        ``agent`` keeps one agent's tools; ``read_only=True`` keeps tools annotated ``readOnlyHint``,
        ``False`` the others, ``None`` both; ``scope`` keeps the tools of agents upserted in it.
        ``reputation(agent, tool)`` and ``proficiency(agent)`` weight the ranking.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        split = needs(query) if self.split_needs else ([query.strip()] if query.strip() else [])
        label = None if scope is None else self._labels.get(scope)
        if not split or (scope is not None and label is None):
            return []
        vectors = self.embedder.embed(split) if "semantic" in self.rankers else None
        best: dict[int, tuple[float, int]] = {}  # tool id -> (fused relevance, the need that gave it)
        with self._lock:
            rankings = self._rank(split, vectors, agent, read_only, label)
            for position, ranking in enumerate(rankings):
                for id_, relevance in ranking.relevance.items():
                    if id_ not in best or relevance > best[id_][0]:
                        best[id_] = (relevance, position)
            candidates = sorted(((relevance, id_, position) for id_, (relevance, position) in best.items()),
                                reverse=True)
            tools = self._tools
            candidates = [(tools[id_], relevance, position) for relevance, id_, position in candidates]
        # Weighing can only shrink a relevance (reputation) or raise it by at most ``proficiency_factor(1)``,
        # so once a candidate's best possible score falls below the k-th score found, none after it can
        # reach the top k: the rest are never weighed.
        most = proficiency_factor(1.0) if proficiency is not None else 1.0
        rows, kth = [], []  # kth: a min-heap of the k best scores so far
        for tool, relevance, position in candidates:
            if len(kth) == k and relevance * most < kth[0]:
                break
            known = reputation(tool.agent, tool.name) if reputation is not None else None
            trust = UNKNOWN_REPUTATION if known is None else min(max(float(known), 0.0), 1.0)
            skill = matched_system(proficiency(tool.agent), split[position], tool.name, tool.title or "",
                                   tool.description) if proficiency is not None else None
            value = score(relevance, trust) * (proficiency_factor(skill[1]) if skill else 1.0)
            # (agent, name) is unique, so sorting never compares the rest of a row
            rows.append((-value, -relevance, tool.agent, tool.name, tool, position, trust, known, skill))
            if len(kth) < k:
                heapq.heappush(kth, value)
            elif value > kth[0]:
                heapq.heapreplace(kth, value)
        rows.sort()
        return [
            _hit(tool, rankings[position], split[position] if len(split) > 1 else None, -value, trust, known, skill)
            for value, _, _, _, tool, position, trust, known, skill in rows[:k]
        ]

    # -- internals -------------------------------------------------------------------------------------

    def _rank(
        self, texts: list[str], vectors: np.ndarray | None, agent: str | None, read_only: bool | None,
        label: int | None,
    ) -> list[_Ranking]:
        """Each need's ranks by each ranker, and their reciprocal rank fusion (see the module docstring).

        Every ranker answers all the needs in one call (one BM25 pass with the filters worked out once,
        one Faiss search), which is what keeps a several-need query near a plain one.
        """
        rankings = [_Ranking() for _ in texts]
        query_terms = [lexical.name_terms(text) for text in texts]  # words, and identifiers kept whole
        for ranker, index in (("lexical", self._lexical), ("names", self._names)):
            if ranker in self.rankers:
                found_by_need = self._lexical_candidates(index, query_terms, agent, read_only, label)
                for ranking, found in zip(rankings, found_by_need, strict=True):
                    setattr(ranking, ranker, {id_: rank for rank, (id_, _) in enumerate(found, 1)})
        if "semantic" in self.rankers and vectors is not None:
            for ranking, found in zip(rankings, self._semantic_candidates(vectors, agent, read_only, label),
                                      strict=True):
                ranking.semantic = {id_: rank for rank, (id_, _) in enumerate(found, 1)}
                ranking.similarity = dict(found)
        best_possible = len(self.rankers) / (RRF_K + 1)
        for ranking in rankings:
            relevance = ranking.relevance
            for ranks in (ranking.lexical, ranking.names, ranking.semantic):
                for id_, rank in ranks.items():
                    relevance[id_] = relevance.get(id_, 0.0) + 1.0 / (RRF_K + rank) / best_possible
        return rankings

    def _lexical_candidates(
        self, index: lexical.LexicalIndex, queries: list[list[str]], agent: str | None, read_only: bool | None,
        label: int | None,
    ) -> list[list[tuple[int, float]]]:
        """A BM25 ranker's candidates per need: at most ``DEPTH``; in a fusion, none under ``LEXICAL_FLOOR``
        of the need's best."""
        group = None if read_only is None else int(read_only)
        floor = LEXICAL_FLOOR if len(self.rankers) > 1 else 0.0  # alone, a ranker's whole ranking is its answer
        if agent is None:
            return index.search_many(queries, DEPTH, group=group, label=label, floor=floor)
        entry = self._agents.get(agent)
        if entry is None:
            return [[] for _ in queries]
        return index.search_many(queries, DEPTH, group=group, label=label, ids=[tool.id for tool in entry.tools],
                                 floor=floor)

    def _semantic_candidates(
        self, vectors: np.ndarray, agent: str | None, read_only: bool | None, label: int | None
    ) -> list[list[tuple[int, float]]]:
        """Per need, the ``DEPTH`` most similar searchable tools with a positive cosine, most similar first
        (a need whose vector is all zeros, with no known token, matches nothing)."""
        asked = [row for row, vector in enumerate(vectors) if vector.any()]
        found: list[list[tuple[int, float]]] = [[] for _ in vectors]
        if agent is not None:
            for row in asked:
                found[row] = [(tool.id, similarity) for tool, similarity in self._scan_agent(agent, vectors[row],
                                                                                               read_only, label)]
        elif asked and label is not None and self._scope_size(label) <= SCAN_SCOPE_BELOW:
            ids, matrix = self._scan_matrix(label, read_only)
            if ids:
                with one_blas_thread():  # a second thread spins for its share: 16 ms at p99 where one takes 1.4
                    similarities = matrix @ vectors[asked].T  # (tools, needs)
                for column, row in enumerate(asked):
                    scores = similarities[:, column]
                    best = np.argpartition(-scores, DEPTH)[:DEPTH] if len(ids) > DEPTH else range(len(ids))
                    found[row] = [(ids[i], float(scores[i])) for i in best]
        elif asked and len(self._vectors):
            searched = self._vectors.search_many(vectors[asked], DEPTH, flagged=read_only, label=label)
            for row, hits in zip(asked, searched, strict=True):
                found[row] = hits
        return [heapq.nlargest(DEPTH, ((id_, similarity) for id_, similarity in hits if similarity > 0),
                               key=itemgetter(1)) for hits in found]

    def _scope_size(self, label: int) -> int:
        return sum(len(self._agents[agent].tools) for agent in self._scope_agents.get(label, ()))

    def _scan_matrix(self, label: int, read_only: bool | None) -> tuple[list[int], np.ndarray]:
        """The searchable tools of one scope (with the read_only filter) and their vectors as one matrix,
        kept until the indexes next change."""
        key = (label, read_only)
        if key not in self._scans:
            ids: list[int] = []
            parts: list[np.ndarray] = []
            for agent in sorted(self._scope_agents.get(label, ())):
                entry = self._agents[agent]
                kept = [tool for tool in entry.tools
                        if tool.id in self._indexed and (read_only is None or tool.read_only is read_only)]
                ids.extend(tool.id for tool in kept)
                parts.append(entry.vectors[[entry.rows[tool.id] for tool in kept]])
            matrix = np.vstack(parts) if parts else np.zeros((0, self._dimension), np.float32)
            self._scans[key] = (ids, np.ascontiguousarray(matrix, dtype=np.float32))
        return self._scans[key]

    def _new_tool(self, agent: str, spec: dict[str, Any], agent_description: str, label: int) -> _Tool:
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
            parameters=parameter_names(spec),
            agent_description=agent_description,
            label=label,
        )

    def _vectors_for(self, tools: dict[str, list[_Tool]]) -> tuple[dict[int, np.ndarray], set[int]]:
        """Every tool's vector, embedding only the tools whose text is new; and the ids of tools whose
        text or lexical fields changed (their index entries must be refreshed)."""
        vectors: dict[int, np.ndarray] = {}
        fresh: list[_Tool] = []
        changed: set[int] = set()
        for agent, agent_tools in tools.items():
            for tool in agent_tools:
                previous = self._tools.get(tool.id)
                if previous is not None and previous.text == tool.text:
                    vectors[tool.id] = self._agents[agent].vector(tool.id)
                    if previous.lexical_key != tool.lexical_key:
                        changed.add(tool.id)
                else:
                    fresh.append(tool)
        embedded = self.embedder.embed([tool.text for tool in fresh])
        vectors.update((tool.id, vector) for tool, vector in zip(fresh, embedded, strict=True))
        return vectors, changed | {tool.id for tool in fresh}

    def _replace(self, agent: str, tools: list[_Tool], vectors: dict[int, np.ndarray]) -> None:
        """Swap in an agent's new tool list; tools it no longer has leave the indexes and the id map."""
        old = self._agents.pop(agent, None)  # kept only while it has tools, as its place in _scope_agents is
        self._scans.clear()
        if old is not None:
            self._scope_agents[old.tools[0].label].discard(agent)
        if tools:
            self._scope_agents.setdefault(tools[0].label, set()).add(agent)
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
        """Bring these tools' index entries in line: blocked ones out, the rest in with their read_only flag."""
        adds: dict[tuple[bool, int], list[_Tool]] = {}  # (read_only, scope label) -> tools to (re-)index
        out: list[int] = []  # blocked, or changing their read_only flag or scope
        for tool in tools:
            current, wanted = self._indexed.get(tool.id), (tool.read_only, tool.label)
            if (tool.agent, tool.name) in self._blocked:
                out.append(tool.id)
            elif current != wanted or tool.id in changed:
                if current is not None and current != wanted:
                    out.append(tool.id)
                adds.setdefault(wanted, []).append(tool)
        self._unindex(out)
        self._scans.clear()
        for (read_only, label), batch in adds.items():
            ids = [tool.id for tool in batch]
            self._vectors.add(ids, np.vstack([vectors[id_] for id_ in ids]), flag=read_only, label=label)
            self._indexed.update(dict.fromkeys(ids, (read_only, label)))
            for tool in batch:
                self._lexical.add(tool.id, tool.bag(), group=int(read_only), label=label)
                self._names.add(tool.id, tool.name_bag(), group=int(read_only), label=label)

    def _unindex(self, ids: Iterable[int]) -> None:
        """Take these ids out of every index (one Faiss ``remove``, which rebuilds its skip-list once)."""
        batch = [id_ for id_ in ids if self._indexed.pop(id_, None) is not None]
        if batch:
            self._scans.clear()
            self._vectors.remove(batch)
            self._lexical.remove(batch)
            self._names.remove(batch)

    def _scan_agent(self, agent: str, vector: np.ndarray, read_only: bool | None,
                    label: int | None = None) -> list[tuple[_Tool, float]]:
        """Exact relevance of every searchable tool of one agent (none when it is not in scope ``label``)."""
        entry = self._agents.get(agent)
        if entry is None or (label is not None and entry.tools and entry.tools[0].label != label):
            return []
        relevances = entry.vectors @ vector
        return [
            (tool, float(relevance))
            for tool, relevance in zip(entry.tools, relevances, strict=True)
            if tool.id in self._indexed and (read_only is None or tool.read_only is read_only)
        ]


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()  # finds the loaded BLAS libraries once


def one_blas_thread() -> AbstractContextManager[Any]:
    """numpy's BLAS limited to one thread while in the block: queries come one at a time on shared cores."""
    return _blas().limit(limits=1, user_api="blas")


def _hit(tool: _Tool, ranking: _Ranking, need: str | None, value: float, trust: float, known: float | None,
         skill: tuple[str, float] | None = None) -> Hit:
    return Hit(
        agent=tool.agent,
        tool=tool.name,
        description=tool.description,
        title=tool.title,
        relevance=ranking.relevance[tool.id],
        reputation=trust,
        score=value,
        annotations=dict(tool.annotations),
        lexical_rank=ranking.lexical.get(tool.id),
        name_rank=ranking.names.get(tool.id),
        semantic_rank=ranking.semantic.get(tool.id),
        similarity=ranking.similarity.get(tool.id),
        need=need,
        reputation_known=known is not None,
        proficiency=skill,
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
