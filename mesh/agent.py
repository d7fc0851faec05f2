"""Agent and ToolKit: typed Python functions become signed MCP tools.

An agent module in a workspace's ``agents/`` folder builds one ``Agent``; tool kits in ``tools/`` build a
``ToolKit`` that several agents can mount. Schemas come from the function signatures exactly as mcp's
``MCPServer`` derives them; the agent adds what the mesh needs on top: MCP annotations given as plain
keywords, the scopes a caller must hold, and a startup hook.

The signing itself happens in two passes over fresh ``MCPServer`` instances: the first lists the tools as
they will appear on the wire (``describe``), the second serves them with each tool's signature in
``_meta`` (``build_server``). ``_meta`` is not part of what is signed, so both passes list the same bytes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from mesh.manifest import SCOPES_META, SIGNATURE_META
from mesh.names import check_name

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ToolSpec:
    """One tool as declared: the function and what the mesh adds to it."""

    fn: Callable[..., Any]
    name: str
    title: str | None
    description: str | None
    annotations: ToolAnnotations | None
    scopes: tuple[str, ...]


@dataclass
class AgentContext:
    """What an agent's startup hook gets: where it runs and its settings from ``registry/registry.toml``."""

    name: str
    workspace: Path
    state_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)


class ToolKit:
    """A named set of tools that agents can mount (``agent.mount(kit)`` or ``agent.mount("name")``).

    Its name, and every tool's, follows the mesh's one name rule (``mesh.names``): names become file
    names and registry routes, so a bad one is refused here, where the author can see it.
    """

    kind = "tool kit name"

    def __init__(self, name: str):
        self.name = check_name(name, self.kind)
        self.specs: list[ToolSpec] = []

    def tool(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        read_only: bool | None = None,
        destructive: bool | None = None,
        idempotent: bool | None = None,
        open_world: bool | None = None,
        scopes: list[str] | tuple[str, ...] = (),
    ) -> Any:
        """Register a typed function as a tool. Usable bare (``@kit.tool``) or with keywords."""

        def register(func: F) -> F:
            hints = {
                "read_only_hint": read_only,
                "destructive_hint": destructive,
                "idempotent_hint": idempotent,
                "open_world_hint": open_world,
            }
            given = {key: value for key, value in hints.items() if value is not None}
            spec = ToolSpec(
                fn=func,
                name=check_name(func.__name__ if name is None else name, "tool name"),
                title=title,
                description=description or inspect.getdoc(func),
                annotations=ToolAnnotations(**given) if given else None,
                scopes=tuple(sorted(scopes)),
            )
            if any(existing.name == spec.name for existing in self.specs):
                raise ValueError(f"{self.name}: tool {spec.name!r} is declared twice")
            self.specs.append(spec)
            return func

        return register(fn) if fn is not None else register


class Agent(ToolKit):
    """An agent of the mesh: a named, versioned MCP server whose tools are signed.

    >>> agent = Agent("echo", description="Says things back.")
    >>> @agent.tool(read_only=True)
    ... def echo(text: str) -> str:
    ...     '''Return the text unchanged.'''
    ...     return text
    """

    kind = "agent name"

    def __init__(self, name: str, *, version: str = "0.1.0", description: str = "", instructions: str | None = None):
        super().__init__(name)
        self.version = version
        self.description = description
        self.instructions = instructions
        self.mounts: list[ToolKit | str] = []
        self.startup_hooks: list[Callable[[AgentContext], Any]] = []
        self._mesh: Any = None

    @property
    def mesh(self) -> Any:
        """This agent's ``MeshClient``: call other agents through the registry (``await agent.mesh.invoke``)."""
        if self._mesh is None:
            raise RuntimeError(f"{self.name} runs without a registry; start it with --registry URL or `mesh up`")
        return self._mesh

    @mesh.setter
    def mesh(self, client: Any) -> None:
        self._mesh = client

    def mount(self, kit: ToolKit | str) -> None:
        """Add a tool kit's tools; a name is resolved against the workspace's ``tools/`` when loaded."""
        self.mounts.append(check_name(kit, "tool kit name") if isinstance(kit, str) else kit)

    def on_startup(self, fn: F) -> F:
        """Run ``fn(ctx)`` (sync or async) once before the agent serves; not while signing."""
        self.startup_hooks.append(fn)
        return fn

    async def start(self, ctx: AgentContext) -> None:
        for hook in self.startup_hooks:
            result = hook(ctx)
            if inspect.isawaitable(result):
                await result

    def all_specs(self) -> list[ToolSpec]:
        """Own tools plus mounted kits' (mounts must already be resolved to ToolKit objects)."""
        specs = list(self.specs)
        for kit in self.mounts:
            if isinstance(kit, str):
                raise RuntimeError(f"{self.name}: tool kit {kit!r} was not resolved; load the agent via Workspace")
            specs.extend(kit.specs)
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{self.name}: tool names declared more than once: {', '.join(duplicates)}")
        return specs

    def scopes(self) -> dict[str, list[str]]:
        return {spec.name: list(spec.scopes) for spec in self.all_specs()}

    def build_server(self, meta: dict[str, dict[str, Any]] | None = None, **server_options: Any) -> MCPServer:
        """A fresh MCPServer with every tool; ``meta`` maps tool name to its ``_meta``."""
        server = MCPServer(
            name=self.name,
            version=self.version,
            description=self.description or None,
            instructions=self.instructions,
            log_level="WARNING",  # MCPServer configures the root logger; INFO would log every request
            **server_options,
        )
        for spec in self.all_specs():
            tool_meta = dict((meta or {}).get(spec.name, {}))
            if spec.scopes:
                tool_meta.setdefault(SCOPES_META, list(spec.scopes))
            server.add_tool(
                _errors_as_tool_errors(spec.fn),
                name=spec.name,
                title=spec.title,
                description=spec.description,
                annotations=spec.annotations,
                meta=tool_meta or None,
            )
        return server

    async def describe(self) -> list[dict[str, Any]]:
        """The tools exactly as ``tools/list`` will put them on the wire, without ``_meta``."""
        server = self.build_server()
        tools = await server.list_tools()
        return [_strip_meta(tool.model_dump(by_alias=True, mode="json", exclude_none=True)) for tool in tools]


def _errors_as_tool_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a tool reject bad input with a plain ``ValueError``: its message reaches the client as the
    tool error (the SDK passes on only ``ToolError`` text and hides other exceptions)."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except ValueError as exc:
                raise ToolError(str(exc)) from exc

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise ToolError(str(exc)) from exc

    return run


def signature_meta(signatures: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Per-tool ``_meta`` holding each tool's signature block."""
    return {name: {SIGNATURE_META: block} for name, block in signatures.items()}


def _strip_meta(tool: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in tool.items() if key != "_meta"}
