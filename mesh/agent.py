"""Agent and ToolKit: typed Python functions become signed MCP tools, resources and prompts.

An agent module in a workspace's ``agents/`` folder builds one ``Agent``; tool kits in ``tools/`` build a
``ToolKit`` that several agents can mount. Everything is declared with decorators that mirror mcp's
``MCPServer`` (``tool``, ``resource``, ``prompt``, ``completion``) and is passed through to it, so schemas
come from function signatures exactly as the SDK derives them and a function may take the SDK's
``Context`` (logging, progress, elicitation, sampling, the client's capabilities) or ``Resolve(...)``
parameters. The agent adds what the mesh needs on top: MCP annotations given as plain keywords, the
scopes a caller must hold, an optional explicit input schema, names checked by ``mesh.names``, and a
startup hook.

The signing itself happens in two passes over fresh servers: the first lists every descriptor as it will
appear on the wire (``descriptors``), the second serves them with each one's signature in ``_meta``
(``build_server``). ``_meta`` is not part of what is signed, so both passes list the same bytes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from weakref import WeakSet

import jsonschema
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts import Prompt
from mcp.server.mcpserver.tools import Tool
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp.shared.uri_template import UriTemplate
from mcp.types import (
    Annotations,
    EmptyResult,
    SetLevelRequestParams,
    SubscribeRequestParams,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mesh.client import MeshError
from mesh.manifest import SCOPES_META, SIGNATURE_META
from mesh.names import check_name
from mesh.sessions import at_or_above, session_id

F = TypeVar("F", bound=Callable[..., Any])
Descriptors = dict[str, list[dict[str, Any]]]  # kind (a mesh.manifest.KINDS key) -> wire descriptors


@dataclass(frozen=True)
class ToolSpec:
    """One tool as declared: the function and what the mesh adds to it."""

    fn: Callable[..., Any]
    name: str
    title: str | None
    description: str | None
    annotations: ToolAnnotations | None
    scopes: tuple[str, ...]
    input_schema: dict[str, Any] | None = None
    cost: float | None = None  # cost units a call spends from budgets, signed in the manifest (None: 1)


@dataclass(frozen=True)
class ResourceSpec:
    """One resource, or a resource template when its URI has ``{params}``."""

    fn: Callable[..., Any]
    uri: str
    name: str
    title: str | None
    description: str | None
    mime_type: str | None
    annotations: Annotations | None
    scopes: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "resource_template" if UriTemplate.parse(self.uri).variable_names else "resource"


@dataclass(frozen=True)
class PromptSpec:
    """One prompt: a function that returns the messages."""

    fn: Callable[..., Any]
    name: str
    title: str | None
    description: str | None
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
        self.resource_specs: list[ResourceSpec] = []
        self.prompt_specs: list[PromptSpec] = []
        self.completion_handler: Callable[..., Any] | None = None

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
        input_schema: dict[str, Any] | None = None,
        cost: float | None = None,
    ) -> Any:
        """Register a typed function as a tool. Usable bare (``@kit.tool``) or with keywords.

        ``cost``: the cost units a call spends from budgets (default 1), signed in the manifest so the
        registry can trust it; the operator's ``[budgets.costs]`` in registry.toml still has the last word.

        ``input_schema`` replaces the schema derived from the signature: it is listed exactly as given
        (``$schema``, ``$defs``, ``additionalProperties``, ...) and every call's arguments are validated
        against it before the function runs; the function's parameters then receive them by name.
        """
        if input_schema is not None:
            _check_input_schema(input_schema)
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < 1e12):
            raise ValueError(f"{self.name}: a tool's cost is a number of cost units >= 0, not {cost!r}")

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
                input_schema=input_schema,
                cost=cost,
            )
            if any(existing.name == spec.name for existing in self.specs):
                raise ValueError(f"{self.name}: tool {spec.name!r} is declared twice")
            self.specs.append(spec)
            return func

        return register(fn) if fn is not None else register

    def resource(
        self,
        uri: str,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        annotations: Annotations | None = None,
        scopes: list[str] | tuple[str, ...] = (),
    ) -> Callable[[F], F]:
        """Register a function as the resource at ``uri`` (a template when the URI has ``{params}``,
        whose values the function takes by name). Returns str, bytes, or anything JSON-serialisable."""
        if callable(uri):
            raise TypeError("use @kit.resource('scheme://uri'), not a bare @kit.resource")
        UriTemplate.parse(uri)  # a malformed template is refused here, where the author sees it

        def register(func: F) -> F:
            spec = ResourceSpec(
                fn=func,
                uri=uri,
                name=check_name(func.__name__ if name is None else name, "resource name"),
                title=title,
                description=description or inspect.getdoc(func),
                mime_type=mime_type,
                annotations=annotations,
                scopes=tuple(sorted(scopes)),
            )
            for existing in self.resource_specs:
                if spec.name == existing.name or spec.uri == existing.uri:
                    raise ValueError(f"{self.name}: resource {spec.name!r} ({spec.uri}) is declared twice")
            self.resource_specs.append(spec)
            return func

        return register

    def prompt(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        scopes: list[str] | tuple[str, ...] = (),
    ) -> Any:
        """Register a function returning prompt messages (a string, messages, content blocks, or an
        ``InputRequiredResult``). Its parameters are the prompt's arguments. Bare or with keywords."""

        def register(func: F) -> F:
            spec = PromptSpec(
                fn=func,
                name=check_name(func.__name__ if name is None else name, "prompt name"),
                title=title,
                description=description or inspect.getdoc(func),
                scopes=tuple(sorted(scopes)),
            )
            if any(existing.name == spec.name for existing in self.prompt_specs):
                raise ValueError(f"{self.name}: prompt {spec.name!r} is declared twice")
            self.prompt_specs.append(spec)
            return func

        return register(fn) if fn is not None else register

    def completion(self, fn: F | None = None) -> Any:
        """Register the handler of ``completion/complete``: ``async fn(ref, argument, context)`` returning
        an ``mcp.types.Completion`` (or None). One per agent, mounted kits included."""

        def register(func: F) -> F:
            if self.completion_handler is not None:
                raise ValueError(f"{self.name}: a completion handler is already declared")
            self.completion_handler = func
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
        self._servers: WeakSet[AgentServer] = WeakSet()  # the servers built for this agent, to notify

    @property
    def mesh(self) -> Any:
        """This agent's ``MeshClient``: call other agents through the registry (``await agent.mesh.invoke``)."""
        if self._mesh is None:
            raise MeshError({"title": "No registry", "detail": f"{self.name} runs without a registry; start it "
                                                                "with --registry URL or `mesh up`"})
        return self._mesh

    @mesh.setter
    def mesh(self, client: Any) -> None:
        self._mesh = client

    async def resource_updated(self, uri: str) -> None:
        """Tell the clients that follow resource ``uri`` that it changed: 2026-07-28 clients listening for
        it (``subscriptions/listen``) and 2025-11-25 sessions subscribed to it (``resources/subscribe``).
        They read it again if they care; the registry passes it on to its own clients the same way."""
        for server in list(self._servers):
            await server.resource_updated(uri)

    async def active_prompt(self, system: str) -> dict[str, Any]:
        """The prompt version this agent serves for ``system``: what ``mesh learn`` made it and a rollback set,
        kept by the registry (``id``, ``lessons``, ``program`` as ``program.save`` JSON for ``mesh.learning``)."""
        return await self.mesh._request("GET", f"/v1/agents/{self.name}/prompts/active", params={"system": system})

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

    def _kits(self) -> list[ToolKit]:
        kits: list[ToolKit] = [self]
        for kit in self.mounts:
            if isinstance(kit, str):
                raise RuntimeError(f"{self.name}: tool kit {kit!r} was not resolved; load the agent via Workspace")
            kits.append(kit)
        return kits

    def all_specs(self) -> list[ToolSpec]:
        """Own tools plus mounted kits' (mounts must already be resolved to ToolKit objects)."""
        specs = [spec for kit in self._kits() for spec in kit.specs]
        _refuse_repeats(self.name, "tool", [spec.name for spec in specs])
        return specs

    def all_resources(self) -> list[ResourceSpec]:
        """Own resources and templates plus mounted kits'; names and URIs unique across all of them."""
        specs = [spec for kit in self._kits() for spec in kit.resource_specs]
        _refuse_repeats(self.name, "resource", [spec.name for spec in specs])
        _refuse_repeats(self.name, "resource URI", [spec.uri for spec in specs])
        return specs

    def all_prompts(self) -> list[PromptSpec]:
        specs = [spec for kit in self._kits() for spec in kit.prompt_specs]
        _refuse_repeats(self.name, "prompt", [spec.name for spec in specs])
        return specs

    def all_completions(self) -> Callable[..., Any] | None:
        handlers = [kit.completion_handler for kit in self._kits() if kit.completion_handler is not None]
        if len(handlers) > 1:
            raise ValueError(f"{self.name}: more than one completion handler (the agent's and its kits')")
        return handlers[0] if handlers else None

    def scopes(self) -> dict[str, list[str]]:
        """Tool name -> the scopes a caller needs."""
        return {spec.name: list(spec.scopes) for spec in self.all_specs()}

    def costs(self) -> dict[str, float]:
        """Tool name -> its declared cost, for the tools that declare one."""
        return {spec.name: spec.cost for spec in self.all_specs() if spec.cost is not None}

    def all_scopes(self) -> dict[str, dict[str, list[str]]]:
        """Kind (a ``mesh.manifest.KINDS`` key) -> name -> the scopes a caller needs."""
        scopes: dict[str, dict[str, list[str]]] = {"tool": self.scopes(), "resource": {}, "resource_template": {},
                                                   "prompt": {}}
        for resource in self.all_resources():
            scopes[resource.kind][resource.name] = list(resource.scopes)
        scopes["prompt"] = {prompt.name: list(prompt.scopes) for prompt in self.all_prompts()}
        return scopes

    def build_server(self, meta: dict[str, dict[str, dict[str, Any]]] | None = None,
                     **server_options: Any) -> AgentServer:
        """A fresh server with everything declared; ``meta`` maps kind -> name -> ``_meta`` to list it with."""
        tools = [_sdk_tool(spec) for spec in self.all_specs()]
        server = AgentServer(
            name=self.name,
            version=self.version,
            description=self.description or None,
            instructions=self.instructions,
            log_level="WARNING",  # MCPServer configures the root logger; INFO would log every request
            tools=tools,
            listed_meta=meta,
            **server_options,
        )
        for spec in self.all_resources():
            server.resource(spec.uri, name=spec.name, title=spec.title, description=spec.description,
                            mime_type=spec.mime_type, annotations=spec.annotations)(spec.fn)
        for prompt in self.all_prompts():
            server.add_prompt(Prompt.from_function(prompt.fn, name=prompt.name, title=prompt.title,
                                                   description=prompt.description))
        handler = self.all_completions()
        if handler is not None:
            server.completion()(handler)
        self._servers.add(server)
        return server

    async def describe(self) -> list[dict[str, Any]]:
        """The tools exactly as ``tools/list`` will put them on the wire, without ``_meta``."""
        return (await self.descriptors())["tool"]

    async def descriptors(self) -> Descriptors:
        """Every tool, resource, resource template and prompt exactly as its list puts it on the wire,
        without ``_meta``: what the manifest signs."""
        return await self.build_server().descriptors()


class AgentServer(MCPServer):
    """mcp's ``MCPServer`` with what a mesh agent adds: each listed descriptor's ``_meta`` (its signature)
    merged in at list time, whatever registered it, and the 2025-11-25 methods MCPServer has no public
    API for (``logging/setLevel``, ``resources/(un)subscribe``; the 2026-07-28 wire never routes them)."""

    def __init__(self, *args: Any, listed_meta: dict[str, dict[str, dict[str, Any]]] | None = None, **kwargs: Any):
        self.bus = InMemorySubscriptionBus()  # what subscriptions/listen streams read (2026-07-28)
        super().__init__(*args, subscriptions=self.bus, **kwargs)
        self.listed_meta = listed_meta or {}
        self.log_levels: dict[str, str] = {}  # 2025-11-25 session id -> the level it asked for
        # 2025-11-25 session id -> (a handle on the session that outlives the request, URIs it follows)
        self.subscribers: dict[str, tuple[Any, set[str]]] = {}
        lowlevel = self._lowlevel_server
        lowlevel.middleware.append(self._at_session_level)
        lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, self._set_level)
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)

    async def _at_session_level(self, ctx: Any, call_next: Any) -> Any:
        """On a 2025-11-25 session that set a log level, the request's tools log at that level or above
        (the SDK sends every level there and leaves filtering to the server)."""
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        level = None if modern else self.log_levels.get(session_id(ctx) or "")
        if level is None:
            return await call_next(ctx)
        return await call_next(replace(ctx, session=_LevelledSession(ctx.session, level)))

    async def _set_level(self, ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        _bounded_put(self.log_levels, (session_id(ctx) or ""), params.level)
        return EmptyResult()

    async def _subscribe(self, ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
        session = (session_id(ctx) or "")
        _, uris = self.subscribers.get(session, (None, set()))
        _bounded_put(self.subscribers, session, (ctx.session, uris | {str(params.uri)}))
        return EmptyResult()

    async def _unsubscribe(self, ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
        self.subscribers.get((session_id(ctx) or ""), (None, set()))[1].discard(str(params.uri))
        return EmptyResult()

    async def resource_updated(self, uri: str) -> None:
        """``Agent.resource_updated`` for this server: its listen streams and its subscribed sessions (on each
        session's own stream; a session that cannot be reached any more is forgotten)."""
        await self.bus.publish(ResourceUpdated(uri=uri))
        for session, (handle, uris) in list(self.subscribers.items()):
            if uri in uris:
                try:
                    await handle.send_resource_updated(uri)
                except Exception:
                    self.subscribers.pop(session, None)

    def _with_meta(self, kind: str, listed: list[Any]) -> list[Any]:
        extra = self.listed_meta.get(kind, {})
        return [
            item.model_copy(update={"meta": {**(item.meta or {}), **extra[item.name]}}) if item.name in extra else item
            for item in listed
        ]

    async def list_tools(self) -> list[Any]:
        return self._with_meta("tool", await super().list_tools())

    async def list_resources(self) -> list[Any]:
        return self._with_meta("resource", await super().list_resources())

    async def list_resource_templates(self) -> list[Any]:
        return self._with_meta("resource_template", await super().list_resource_templates())

    async def list_prompts(self) -> list[Any]:
        return self._with_meta("prompt", await super().list_prompts())

    async def descriptors(self) -> Descriptors:
        """Each kind's list as on the wire, without ``_meta``."""
        listed = {
            "tool": await self.list_tools(),
            "resource": await self.list_resources(),
            "resource_template": await self.list_resource_templates(),
            "prompt": await self.list_prompts(),
        }
        return {kind: [_strip_meta(item.model_dump(by_alias=True, mode="json", exclude_none=True)) for item in items]
                for kind, items in listed.items()}


def _refuse_repeats(agent: str, what: str, names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{agent}: {what} names declared more than once: {', '.join(duplicates)}")


def _check_input_schema(schema: Any) -> None:
    """An explicit input schema must be a valid JSON Schema for an object (MCP lists only those)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise ValueError("input_schema must be a JSON Schema object with \"type\": \"object\"")
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"input_schema is not a valid JSON Schema: {exc.message}") from exc


class _LevelledSession:
    """A request's session that drops log messages below ``level``; everything else is the session's."""

    def __init__(self, session: Any, level: str):
        self._session = session
        self._level = level

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def send_log_message(self, level: str, *args: Any, **kwargs: Any) -> None:
        if at_or_above(level, self._level):
            await self._session.send_log_message(level, *args, **kwargs)


_SESSIONS = 10_000  # 2025-11-25 sessions whose level and subscriptions an agent keeps, at most


def _bounded_put(table: dict[str, Any], key: str, value: Any) -> None:
    table.pop(key, None)
    table[key] = value
    while len(table) > _SESSIONS:
        table.pop(next(iter(table)))


class _SchemaTool(Tool):
    """An SDK tool listed with an explicit input schema, whose arguments are checked against it first."""

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        validator = jsonschema.validators.validator_for(self.parameters, default=jsonschema.Draft202012Validator)
        error = jsonschema.exceptions.best_match(validator(self.parameters).iter_errors(arguments))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "arguments"
            raise ToolError(f"Error executing tool {self.name}: invalid arguments at {where}: {error.message}")
        return await super().run(arguments, context, convert_result)


def _sdk_tool(spec: ToolSpec) -> Tool:
    """The SDK's tool for a spec, as ``MCPServer.add_tool`` would build it (plus an explicit schema)."""
    tool = Tool.from_function(
        _errors_as_tool_errors(spec.fn),
        name=spec.name,
        title=spec.title,
        description=spec.description,
        annotations=spec.annotations,
        meta={SCOPES_META: list(spec.scopes)} if spec.scopes else None,
    )
    if spec.input_schema is None:
        return tool
    fields = {name: getattr(tool, name) for name in Tool.model_fields}
    return _SchemaTool(**{**fields, "parameters": dict(spec.input_schema)})


def _errors_as_tool_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a tool's refusal reach its caller in words: a plain ``ValueError`` (bad input) and a
    ``MeshError`` from its own ``agent.mesh.invoke`` (refused, unreachable, denied by policy) become the tool
    error's text, since the SDK passes on only ``ToolError`` text and hides other exceptions."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except (ValueError, MeshError) as exc:
                raise ToolError(str(exc)) from exc

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValueError, MeshError) as exc:
            raise ToolError(str(exc)) from exc

    return run


def signature_meta(signatures: dict[str, dict[str, dict[str, str]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Kind -> name -> the ``_meta`` holding that descriptor's signature block."""
    return {kind: {name: {SIGNATURE_META: block} for name, block in blocks.items()}
            for kind, blocks in signatures.items()}


def _strip_meta(descriptor: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in descriptor.items() if key != "_meta"}
