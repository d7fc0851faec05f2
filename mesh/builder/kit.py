"""Blueprint -> capability kit: the tools the role gets, each taken or left with the reason why.

Two sources. The mesh's verified tools of other agents, found by the registry's discovery for each
capability the blueprint needs and ranked there by relevance, reputation and assessed proficiency (a built
agent calls them through the registry). And the workspace's tool kits (``tools/*.py``), matched by meaning
against the same needs and mounted whole. Constraints come first: a read-only role gets no tool that may
change state (MCP's default for an unannotated tool) and none that reaches an open world.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from mesh.knowledge.records import Blueprint

MIN_RELEVANCE = 0.2  # discovery's fused relevance (0..1) below which a hit does not answer the need
MIN_REPUTATION = 0.3  # an agent the mesh learned to distrust lends no tool
MIN_KIT_SIMILARITY = 0.45  # cosine (WordLlama) between a need and a workspace kit tool's description
PER_NEED = 5  # discovery hits weighed for each need

READ_ONLY = re.compile(r"read[- ]only|must not (change|modify|write|delete|edit)|never (changes?|modif|writes?|"
                       r"deletes?)|no (writes|changes|side effects)", re.I)
NO_OPEN_WORLD = re.compile(r"open[- ]world|no (external|outside|internet)|offline|inside the mesh only", re.I)

Discover = Callable[[str, int], list[dict[str, Any]]]
"""``discover(query, k)``: the registry's ``GET /v1/discover`` results (verified tools only)."""


class KitTool(BaseModel):
    """One tool weighed for the kit: where it comes from, how it ranked, and why it was taken or left."""

    source: Literal["mesh", "workspace"]
    owner: str = Field(description="The agent that serves it (mesh), or the tool kit it is in (workspace).")
    tool: str
    description: str = ""
    annotations: dict[str, Any] = Field(default_factory=dict)
    input_schema: dict[str, Any] = Field(default_factory=dict)
    scopes: list[str] = Field(default_factory=list, description="What a caller of it must be granted.")
    need: str = ""
    relevance: float | None = None
    reputation: float | None = None
    proficiency: dict[str, Any] | None = None
    why: str = ""

    @property
    def ref(self) -> str:
        return f"{self.owner}.{self.tool}"


class Kit(BaseModel):
    """The capability kit: tools taken, tools left, and the constraints that were applied."""

    taken: list[KitTool] = Field(default_factory=list)
    left: list[KitTool] = Field(default_factory=list)
    read_only: bool = False
    no_open_world: bool = False

    def mesh_tools(self) -> list[KitTool]:
        return [t for t in self.taken if t.source == "mesh"]

    def kits(self) -> list[str]:
        return sorted({t.owner for t in self.taken if t.source == "workspace"})

    def scopes(self) -> list[str]:
        """The scopes the built agent must be granted (``[grants]``) to call its mesh tools."""
        return sorted({scope for t in self.taken if t.source == "mesh" for scope in t.scopes})


def constraints_of(blueprint: Blueprint) -> tuple[bool, bool]:
    """(read-only, no open world) as the blueprint's constraints say; a read-only role implies both."""
    text = " ".join(blueprint.constraints)
    read_only = bool(READ_ONLY.search(text))
    return read_only, read_only or bool(NO_OPEN_WORLD.search(text))


def forbidden(annotations: dict[str, Any], read_only: bool, no_open_world: bool) -> str | None:
    """Why the constraints forbid a tool with these (wire) annotations, or None. Unannotated hints take
    MCP's defaults: not read-only, destructive, open world."""
    if read_only and annotations.get("destructiveHint", True) and not annotations.get("readOnlyHint", False):
        return "the role is read-only and this tool may change state (destructive, or not marked read-only)"
    if read_only and not annotations.get("readOnlyHint", False):
        return "the role is read-only and this tool is not marked read-only"
    if no_open_world and annotations.get("openWorldHint", True):
        return "the role must stay inside the mesh and this tool reaches an open world"
    return None


def need_text(need: Any) -> str:
    return f"{need.name}: {need.why}" if need.why else need.name


def select_kit(blueprint: Blueprint, *, discover: Discover | None,
               pinned: Callable[[str, str], tuple[dict[str, Any], list[str]]],
               workspace_kits: Sequence[tuple[str, list[KitTool]]] = (), exclude_agents: Sequence[str] = (),
               embed: Callable[[list[str]], np.ndarray] | None = None) -> Kit:
    """The kit for ``blueprint``: per need, the best allowed verified tool of the mesh, plus the workspace
    kits whose tools answer a need. ``pinned(agent, tool)`` gives a taken tool's (input schema, scopes)."""
    read_only, no_open_world = constraints_of(blueprint)
    kit = Kit(read_only=read_only, no_open_world=no_open_world)
    seen: set[str] = set()
    for need in blueprint.capabilities:
        if discover is None:
            break
        taken_for_need = False
        for hit in discover(need_text(need), PER_NEED):
            tool = KitTool(source="mesh", owner=hit["agent"], tool=hit["tool"], description=hit.get("description", ""),
                           annotations=dict(hit.get("annotations") or {}), need=need.name,
                           relevance=hit.get("relevance"), reputation=hit.get("reputation"),
                           proficiency=(hit.get("why") or {}).get("proficiency"))
            if tool.ref in seen or tool.owner in exclude_agents:
                continue
            seen.add(tool.ref)
            reason = forbidden(tool.annotations, read_only, no_open_world)
            if reason is None and (tool.relevance or 0) < MIN_RELEVANCE:
                reason = f"relevance {tool.relevance:.2f} to this need is below {MIN_RELEVANCE}"
            if reason is None and (tool.reputation or 0) < MIN_REPUTATION:
                reason = f"{tool.owner}'s reputation {tool.reputation:.2f} is below {MIN_REPUTATION}"
            if reason is None and taken_for_need:
                reason = "a better-ranked tool already answers this need"
            if reason is not None:
                kit.left.append(tool.model_copy(update={"why": reason}))
                continue
            taken_for_need = True
            proficient = f", assessed {tool.proficiency['score']:.2f} on {tool.proficiency['system']}" \
                if tool.proficiency else ""
            why = (f"best verified match for {need.name!r}: relevance {tool.relevance:.2f}, reputation "
                   f"{tool.reputation:.2f}{proficient}")
            schema, scopes = pinned(tool.owner, tool.tool)
            kit.taken.append(tool.model_copy(update={"why": why, "input_schema": schema, "scopes": scopes}))
    _weigh_workspace_kits(kit, blueprint, workspace_kits, embed, read_only, no_open_world)
    return kit


def _weigh_workspace_kits(kit: Kit, blueprint: Blueprint, workspace_kits: Sequence[tuple[str, list[KitTool]]],
                          embed: Callable[[list[str]], np.ndarray] | None, read_only: bool,
                          no_open_world: bool) -> None:
    """Mount a workspace kit whole when one of its tools answers a need and the constraints allow all of them."""
    needs = [need_text(n) for n in blueprint.capabilities]
    if not needs or not workspace_kits:
        return
    if embed is None:
        from mesh.embedding import embed
    need_vectors = _unit(embed(needs))
    for name, tools in workspace_kits:
        if not tools:
            continue
        vectors = _unit(embed([f"{t.tool.replace('_', ' ')}: {t.description}" for t in tools]))
        similarity = vectors @ need_vectors.T  # tools x needs
        best = int(similarity.max(axis=1).argmax())
        score, need = float(similarity[best].max()), blueprint.capabilities[int(similarity[best].argmax())].name
        blocked = [(t, r) for t in tools if (r := forbidden(t.annotations, read_only, no_open_world))]
        for index, tool in enumerate(tools):
            tool = tool.model_copy(update={"need": need, "relevance": round(float(similarity[index].max()), 4)})
            if score < MIN_KIT_SIMILARITY:
                tool.why = f"kit {name!r} answers no need (best similarity {score:.2f} < {MIN_KIT_SIMILARITY})"
                kit.left.append(tool)
            elif blocked:
                tool.why = f"kit {name!r} is mounted whole and {blocked[0][0].tool}: {blocked[0][1]}"
                kit.left.append(tool)
            else:
                tool.why = f"kit {name!r} answers {need!r} (similarity {score:.2f}); mounted whole"
                kit.taken.append(tool)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def workspace_kit_tools(workspace: Any) -> list[tuple[str, list[KitTool]]]:
    """Every tool kit of the workspace (``tools/*.py``) with its tools as ``KitTool`` (wire annotations)."""
    kits = []
    folder = workspace.tools_dir
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        if path.name.startswith("_"):
            continue
        toolkit = workspace.toolkit(path.stem)
        tools = []
        for spec in toolkit.specs:
            annotations = spec.annotations.model_dump(by_alias=True, exclude_none=True) if spec.annotations else {}
            tools.append(KitTool(source="workspace", owner=toolkit.name, tool=spec.name,
                                 description=spec.description or "", annotations=annotations))
        kits.append((toolkit.name, tools))
    return kits
