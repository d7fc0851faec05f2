"""The registry's MCP faces: the whole mesh at ``/mcp`` and one agent at ``/agents/{name}/mcp``.

``/agents/{name}/mcp`` is the agent as a virtual server: its tools (and resources, prompts, completions)
under their own names, every request carried by ``proxy.carry`` (caller, policy, provenance,
reputation). ``/mcp`` is the whole mesh: the registry's ``discover`` and ``invoke`` tools, every
verified tool as ``AGENT__TOOL`` and every prompt as ``AGENT__PROMPT``; resource URIs keep their form
and are routed to the agent of the caller's project whose pinned resource or template covers them. Both
faces list only what was admitted and is still verified (from memory, as pinned), never the agent's live
lists, and only the caller's project's (``tenancy.py``): another project's agent is unknown there.

Both are one low-level ``mcp.server.Server`` each, answering both protocol versions:

- **2026-07-28** (no session): each request is carried as it came, statelessly. The client's
  capabilities and log level travel on in ``_meta``; the agent's progress and log notifications come
  back on the request's stream; an ``input_required`` result goes back whole and the client's retry
  (``inputResponses`` + ``requestState``, untouched) is carried like any request.
- **2025-11-25** (a session): the registry holds a 2025-11-25 session of its own with the agent for
  each client session (``forward.py``), so what the agent asks in the middle of a call
  (``ctx.elicit``, ``ctx.session.create_message``, ``roots/list``) is put to the client over its
  session, on the call's stream or the session's own, and the answer goes back in the agent's session.
  The level set by ``logging/setLevel`` is set in that session too, and kept here so that log messages
  below it never reach the client. A tool that answers ``input_required`` anyway (one that relays
  another agent's question, see ``MeshClient.invoke``) is bridged: its questions become requests to
  the client and the request is sent again, statelessly, with the answers and the ``requestState``.

The forward to the agent stays one POST (``forward.py``); a request the client cancels closes it (and,
in a session, is cancelled with ``notifications/cancelled``). JSON-RPC errors of the agent reach the
client with their code and data. A 2025-11-25 session may ``resources/subscribe`` to a pinned resource;
the subscription is made in the registry's session with the agent, whose updates come back on that
session's own stream and go on to the client's. Each face keeps an event store (``MemoryEventStore``,
as agents do), so a 2025-11-25 client can resume a stream the network closed (``Last-Event-ID``), and
the registry resumes an agent's stream the same way.

How a client checks signatures through the registry: every listed tool (resource, prompt) keeps the
agent's ``_meta["io.mcpmesh/signature"]`` and says in ``_meta["io.mcpmesh/jwks"]`` where the keys the
registry trusts for that agent are (``/agents/NAME/jwks.json``). On ``/mcp`` the name was rewritten
to ``AGENT__NAME``: put back ``_meta["io.mcpmesh/name"]`` as ``name``, then verify as the README says.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request

from mesh.builder.mcp_tool import TOOL as BUILD_AGENT
from mesh.builder.mcp_tool import build_agent
from mesh.client import PROBLEM_META, RUN_META
from mesh.registry import idempotency, proxy
from mesh.registry.auth import Caller
from mesh.registry.forward import (
    AgentError,
    ClientLink,
    NotificationCallback,
    Relay,
    session_asker,
    session_notifier,
)
from mesh.registry.gate import allowed, caller_of
from mesh.registry.node import PinnedTool, Registry
from mesh.registry.notifications import Audience, Notices
from mesh.registry.problems import Problem
from mesh.serving import RETRY_MS, MemoryEventStore
from mesh.sessions import at_or_above, session_id

log = logging.getLogger(__name__)
SEPARATOR = "__"
AGENT_META = "io.mcpmesh/agent"
NAME_META = "io.mcpmesh/name"
JWKS_META = "io.mcpmesh/jwks"
MAX_INPUT_ROUNDS = 10  # as the SDK's client: a server that keeps asking is given up on
_SESSION_LEVELS = 10_000  # log levels remembered per 2025-11-25 session, at most
# Problems a client must fix in its request, as JSON-RPC errors when the request was not a tool call.
_PROBLEM_CODES = {"invalid-arguments": types.INVALID_PARAMS, "unknown-tool": types.INVALID_PARAMS,
                  "unknown-agent": types.INVALID_PARAMS, "bad-request": types.INVALID_PARAMS}


def jwks_url(request: Request | None, agent: str) -> str:
    """Where a client finds the keys the registry trusts for ``agent``."""
    base = str(request.base_url).rstrip("/") if request is not None else ""
    return f"{base}/agents/{agent}/jwks.json"


class Front:
    """Handlers shared by both faces; ``whole_mesh`` picks the face (names ``AGENT__NAME`` or as they are)."""

    def __init__(self, registry: Registry, *, whole_mesh: bool):
        self.registry = registry
        self.whole_mesh = whole_mesh
        self.session_levels: dict[str, str] = {}
        self.notices = Notices(registry)

    # -- who and where ------------------------------------------------------------------------------

    def agent_of(self, ctx: ServerRequestContext[Any, Any]) -> str:
        """The one agent of ``/agents/{name}/mcp``."""
        request = ctx.request
        name = request.path_params.get("name", "") if isinstance(request, Request) else ""
        if not self.registry.tenancy.visible(self._caller(ctx, "read"), name):  # another project's: unknown
            raise MCPError(types.INVALID_PARAMS, f"no agent {name[:80]!r} is registered")
        return name

    def split(self, ctx: ServerRequestContext[Any, Any], name: str) -> tuple[str, str]:
        """(agent, name at the agent) for a name as the client sees it."""
        if not self.whole_mesh:
            return self.agent_of(ctx), name
        agent, separator, own = name.partition(SEPARATOR)
        if not separator:
            raise MCPError(types.INVALID_PARAMS, f"{name[:80]!r} is not AGENT{SEPARATOR}NAME")
        return agent, own

    def agents(self, ctx: ServerRequestContext[Any, Any]) -> list[str]:
        """The agents this face shows the caller: on ``/mcp`` those of the project it acts in."""
        if not self.whole_mesh:
            return [self.agent_of(ctx)]
        return self.registry.tenancy.visible_agents(self._caller(ctx, "read"), sorted(self.registry.endpoints))

    def audience(self, ctx: ServerRequestContext[Any, Any]) -> Audience:
        """Whom this request's client stands for, to hear of changes: the project its caller acts in; on
        ``/agents/{name}/mcp``, that agent (``notifications.py``)."""
        caller = caller_of(self.registry, ctx.request if isinstance(ctx.request, Request) else None)
        return Audience(self.registry.tenancy.of_caller(caller), None if self.whole_mesh else self.agent_of(ctx))

    def relay(self, ctx: ServerRequestContext[Any, Any]) -> Relay:
        """The client, as the agent should know it: capabilities, log level, a way to send it notifications;
        on a 2025-11-25 session, the session, and ways to ask it what the agent asks."""
        capabilities = ctx.session.client_capabilities
        wire_capabilities = (capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
                             if capabilities else {})
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return Relay(capabilities=wire_capabilities, log_level=_wire_meta(ctx).get(types.LOG_LEVEL_META_KEY),
                         notify=session_notifier(ctx.session, ctx.request_id))
        session = session_id(ctx) or ""
        client_info = ctx.session.client_params.client_info if ctx.session.client_params else None
        link = self._link(ctx)
        return Relay(capabilities=wire_capabilities, log_level=self.session_levels.get(session),
                     notify=self._at_level(session, session_notifier(ctx.session, ctx.request_id)),
                     client_info=client_info.model_dump(by_alias=True, mode="json", exclude_none=True)
                     if client_info else None, session=link, ask=session_asker(ctx.session, ctx.request_id))

    def _link(self, ctx: ServerRequestContext[Any, Any]) -> ClientLink:
        """The client's 2025-11-25 session, outside this request; the face remembers it to tell it of changes."""
        session = session_id(ctx) or ""
        link = ClientLink(session, ask=session_asker(ctx.session, None),
                          notify=self._at_level(session, session_notifier(ctx.session)))
        self.notices.seen(link, self.audience(ctx))
        return link

    def _at_level(self, session: str, notify: NotificationCallback) -> NotificationCallback:
        """``notify``, keeping back log messages below the level the client set for its session (whether
        or not the agent filters by it too)."""

        async def at_level(method: str, params: dict[str, Any]) -> None:
            if method != "notifications/message" or at_or_above(params.get("level"), self.session_levels.get(session)):
                await notify(method, params)

        return at_level

    async def carry(self, ctx: ServerRequestContext[Any, Any], call: proxy.Call) -> Any:
        """One request through ``proxy.carry``; on a 2025-11-25 session, ``input_required`` is bridged."""
        caller = self._caller(ctx)
        relay = self.relay(ctx)
        progress = None
        if _wire_meta(ctx).get("progressToken") is not None:

            async def progress(done: float, total: float | None, message: str | None) -> None:
                await ctx.session.report_progress(done, total, message)

        wire = dict(ctx.params or {})
        extra = {key: wire[key] for key in ("inputResponses", "requestState") if key in wire}
        for rounds in range(MAX_INPUT_ROUNDS + 1):
            try:
                outcome = await proxy.carry(self.registry, caller, _with_extra(call, extra), progress=progress,
                                            trace_context=_wire_meta(ctx), relay=relay)
            except Problem as problem:
                return self._refusal(call, problem)
            result = outcome.result
            if not isinstance(result, types.InputRequiredResult) or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
                return _stamped(result, outcome)
            if rounds == MAX_INPUT_ROUNDS:
                break
            extra = {"inputResponses": await self._ask_client(ctx, result.input_requests or {}),
                     **({"requestState": result.request_state} if result.request_state is not None else {})}
            relay = replace(relay, session=None)  # a retry that carries requestState is a 2026-07-28 request
        raise MCPError(types.INTERNAL_ERROR, f"{call.agent} kept asking for input past {MAX_INPUT_ROUNDS} rounds")

    async def _ask_client(self, ctx: ServerRequestContext[Any, Any],
                          requests: Mapping[str, Any]) -> dict[str, Any]:
        """Ask the client (over its session) what the agent asked for; its answers, by the agent's keys."""
        ask = session_asker(ctx.session, ctx.request_id)
        answers: dict[str, Any] = {}

        async def one(key: str, request: Any) -> None:
            wire = request.model_dump(by_alias=True, mode="json", exclude_none=True)
            answers[key] = await ask(wire["method"], wire.get("params") or {})

        async with anyio.create_task_group() as group:
            for key, request in requests.items():
                group.start_soon(one, key, request)
        return answers

    def _caller(self, ctx: ServerRequestContext[Any, Any], action: str = "invoke") -> Caller:
        """The request's caller, if the permissions matrix lets it do ``action`` (``auth.PERMISSIONS``)."""
        try:
            return allowed(self.registry, ctx.request if isinstance(ctx.request, Request) else None, action)
        except Problem as problem:
            raise MCPError(types.INVALID_REQUEST, str(problem), problem.to_json()) from problem

    @staticmethod
    def _refusal(call: proxy.Call, problem: Problem) -> Any:
        """A refusal as the client should hear it: the agent's own JSON-RPC error as it was; a tool call's
        other refusals as a tool error (the model reads it); other requests' as a JSON-RPC error."""
        error = problem.extra.get("jsonrpc_error")
        if error is not None:
            raise MCPError(error["code"], error["message"], error.get("data")) from problem
        if call.kind == "tool":  # the problem in _meta lets a MeshClient raise the MeshError /v1/invoke would
            meta = {PROBLEM_META: problem.to_json(), **({RUN_META: problem.extra["run_id"]}
                                                         if "run_id" in problem.extra else {})}
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(problem))], is_error=True,
                                        meta=meta)
        raise MCPError(_PROBLEM_CODES.get(problem.kind, types.INTERNAL_ERROR), str(problem),
                       problem.to_json()) from problem

    # -- tools ----------------------------------------------------------------------------------------

    def listed_tool(self, request: Request | None, pinned: PinnedTool) -> types.Tool:
        """A pinned tool as this face lists it: the agent's signature kept, the JWKS named."""
        wire = dict(pinned.wire)
        meta = dict(wire.pop("_meta", None) or {})
        meta[JWKS_META] = jwks_url(request, pinned.agent)
        if self.whole_mesh:
            meta |= {AGENT_META: pinned.agent, NAME_META: pinned.name}
            wire["name"] = f"{pinned.agent}{SEPARATOR}{pinned.name}"
        return types.Tool.model_validate({**wire, "_meta": meta})

    async def list_tools(self, ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        request = ctx.request if isinstance(ctx.request, Request) else None
        self._caller(ctx, "read")
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._link(ctx)
        agents = set(self.agents(ctx))
        tools = [self.listed_tool(request, pinned) for (agent, _), pinned in sorted(self.registry.tools.items())
                 if agent in agents and pinned.status == "verified"]
        return types.ListToolsResult(tools=(_OWN_TOOLS if self.whole_mesh else []) + tools)

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        if self.whole_mesh and params.name in _OWN_TOOL_NAMES:
            return await self.own_tool(ctx, params.name, params.arguments or {})
        agent, tool = self.split(ctx, params.name)
        call = proxy.Call(agent, tool, "tool", params.arguments or {})
        key = _wire_meta(ctx).get(idempotency.META)
        if key is None:
            return await self.carry(ctx, call)
        return await self.carry_once(ctx, call, key)

    async def carry_once(self, ctx: ServerRequestContext[Any, Any], call: proxy.Call, key: Any) -> Any:
        """A tool call with an idempotency key in ``_meta``: a retry gets the first call's result
        (``idempotency.py``)."""
        try:
            caller = self._caller(ctx)
            request = idempotency.fingerprint("mcp", call.agent, call.name, call.arguments)

            async def once() -> idempotency.Answer:
                result = await self.carry(ctx, call)
                document = result if isinstance(result, dict) else result.model_dump(by_alias=True, mode="json",
                                                                                      exclude_none=True)
                return idempotency.Answer(200, document, (document.get("_meta") or {}).get(RUN_META))

            answer = await idempotency.once(self.registry, caller.id, idempotency.check_key(key), request, once)
        except Problem as problem:
            return self._refusal(call, problem)
        if not answer.replayed:
            return answer.document
        return {**answer.document, "_meta": {**(answer.document.get("_meta") or {}), idempotency.REPLAYED_META: True}}

    async def own_tool(self, ctx: ServerRequestContext[Any, Any], name: str, arguments: dict[str, Any]) -> Any:
        """The registry's own tools on ``/mcp``: ``discover``, ``invoke`` and ``build_agent`` (``mesh.builder``)."""
        try:
            if name == "build_agent":
                elicits = (ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
                           and getattr(ctx.session.client_capabilities, "elicitation", None) is not None)
                return _structured(await build_agent(self.registry.builder, self._caller(ctx, "admin"), arguments,
                                                     session_asker(ctx.session, ctx.request_id) if elicits else None))
            if name == "discover":
                caller = self._caller(ctx, "read")
                hits = self.registry.discover(str(arguments.get("query", "")), k=int(arguments.get("k", 10)),
                                              agent=arguments.get("agent"), read_only=arguments.get("read_only"),
                                              caller=caller)
                return _structured({"result": hits})
            if not (isinstance(arguments.get("agent"), str) and isinstance(arguments.get("tool"), str)):
                raise Problem("bad-request", "invoke needs agent and tool (strings) and arguments (an object)")
            outcome = await proxy.invoke(self.registry, self._caller(ctx), arguments["agent"], arguments["tool"],
                                         arguments.get("arguments"), trace_context=_wire_meta(ctx))
            return _structured(outcome.to_json())
        except (Problem, ValueError, TypeError) as exc:
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)

    # -- resources, prompts, completion -----------------------------------------------------------------

    def _listed(self, ctx: ServerRequestContext[Any, Any], kind: str) -> list[dict[str, Any]]:
        """The verified pinned descriptors of ``kind`` of each agent of this face, as admitted: the agent's
        signature kept, the JWKS named; on ``/mcp`` prompts renamed ``AGENT__NAME``. Read from memory:
        what was never admitted, or is blocked, is not listed."""
        request = ctx.request if isinstance(ctx.request, Request) else None
        self._caller(ctx, "read")
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._link(ctx)
        items = []
        for agent in self.agents(ctx):
            for described in self.registry.agent_descriptors(agent, kind):
                if not described.verified:
                    continue
                item = dict(described.wire)
                meta = {**(item.get("_meta") or {}), JWKS_META: jwks_url(request, agent)}
                if self.whole_mesh:
                    meta |= {AGENT_META: agent, NAME_META: described.name}
                    if kind == "prompt":
                        item["name"] = f"{agent}{SEPARATOR}{described.name}"
                items.append({**item, "_meta": meta})
        return items

    async def list_resources(self, ctx: ServerRequestContext[Any, Any],
                             params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=self._listed(ctx, "resource"))

    async def list_resource_templates(self, ctx: ServerRequestContext[Any, Any],
                                      params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=self._listed(ctx, "resource_template"))

    async def list_prompts(self, ctx: ServerRequestContext[Any, Any],
                           params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=self._listed(ctx, "prompt"))

    async def read_resource(self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams) -> Any:
        uri = str(params.uri)
        return await self.carry(ctx, proxy.Call(self.resource_agent(ctx, uri), uri, "resource"))

    def resource_agent(self, ctx: ServerRequestContext[Any, Any], uri: str) -> str:
        """Which agent serves ``uri``: on ``/mcp``, the one of the caller's project whose pinned resource or
        template covers it (a URI only another project serves is served by nobody)."""
        if not self.whole_mesh:
            return self.agent_of(ctx)
        agent = proxy.resource_owner(self.registry, uri, self.agents(ctx))
        if agent is None:
            raise MCPError(proxy.RESOURCE_NOT_FOUND, f"no agent of this mesh serves {uri[:200]!r}", {"uri": uri})
        return agent

    async def get_prompt(self, ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> Any:
        agent, prompt = self.split(ctx, params.name)
        return await self.carry(ctx, proxy.Call(agent, prompt, "prompt", dict(params.arguments or {})))

    async def complete(self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> Any:
        wire = dict(ctx.params or {})
        ref = dict(wire.get("ref") or {})
        if ref.get("type") == "ref/prompt":
            agent, ref["name"] = self.split(ctx, ref.get("name", ""))
            target = ref["name"]
        else:
            target = ref.get("uri", "")
            agent = self._template_agent(ctx, target) if self.whole_mesh else self.agent_of(ctx)
        extra = {key: wire[key] for key in ("argument", "context") if key in wire}
        return await self.carry(ctx, proxy.Call(agent, target, "completion", extra={**extra, "ref": ref}))

    def _template_agent(self, ctx: ServerRequestContext[Any, Any], uri_template: str) -> str:
        """Which agent of the caller's project pinned the resource template (or resource) a completion on
        ``/mcp`` names."""
        shown = set(self.agents(ctx))
        for (agent, _, _), described in sorted(self.registry.descriptors.items()):
            if agent in shown and uri_template in (described.wire.get("uriTemplate"), described.wire.get("uri")):
                return agent
        raise MCPError(types.INVALID_PARAMS, f"no agent of this mesh lists {uri_template[:200]!r}")

    async def set_level(self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> Any:
        """2025-11-25 sessions: remember the level, asked of the agent on every later request."""
        session = session_id(ctx)
        if session is not None:
            if len(self.session_levels) >= _SESSION_LEVELS:
                self.session_levels.clear()
            self.session_levels[session] = params.level
        return types.EmptyResult()

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> Any:
        """2025-11-25 sessions: subscribe to a resource this face serves (a pinned, verified one), in the
        registry's session with the agent, so the agent's updates reach the client."""
        await self._subscription(ctx, str(params.uri), "resources/subscribe")
        return types.EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams) -> Any:
        await self._subscription(ctx, str(params.uri), "resources/unsubscribe")
        return types.EmptyResult()

    async def _subscription(self, ctx: ServerRequestContext[Any, Any], uri: str, method: str) -> None:
        self._caller(ctx, "read")
        agent = self.resource_agent(ctx, uri)
        call = proxy.Call(agent, uri, "resource")
        try:
            proxy.resolve_descriptor(self.registry, call)
        except Problem as problem:
            self._refusal(call, problem)
        try:
            await self.registry.forwarder.request(self.registry.endpoints[agent], method, {"uri": uri},
                                                  relay=self.relay(ctx))
        except AgentError as exc:
            raise MCPError(exc.code or types.INTERNAL_ERROR, exc.message, exc.data) from exc
        except httpx2.HTTPError as exc:
            raise MCPError(types.INTERNAL_ERROR, f"{agent} is unreachable: {exc!r}") from exc

    async def listen(self, ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams) -> Any:
        """2026-07-28: a ``subscriptions/listen`` stream. List changes come from the registry; updates of
        the resources asked for (pinned, verified ones of this face; others never fire) from the agents,
        watched for as long as the stream is open. Only news of the caller's project's agents reaches it."""
        self._caller(ctx, "read")
        shown = self.agents(ctx)
        watched: dict[str, list[str]] = {}
        for uri in params.notifications.resource_subscriptions or []:
            agent = proxy.resource_owner(self.registry, uri, shown)
            try:
                if agent is not None:
                    proxy.resolve_descriptor(self.registry, proxy.Call(agent, uri, "resource"))
                    watched.setdefault(agent, []).append(uri)
            except Problem:
                continue
        for agent, uris in watched.items():
            self.notices.watches.add(agent, uris)
        try:
            return await self.notices.listen_handler(self.audience(ctx))(ctx, params)
        finally:
            for agent, uris in watched.items():
                self.notices.watches.remove(agent, uris)

    def server(self) -> Server[Any]:
        name = "mcpmesh-registry" if self.whole_mesh else "mcpmesh-agent-via-registry"
        instructions = ("Every verified tool of the mesh, as AGENT__TOOL; use discover to find tools by meaning "
                        "and invoke to call one by agent and tool name.") if self.whole_mesh else None
        server: Server[Any] = _FrontServer(
            name, version="0.1.0", instructions=instructions,
            on_list_tools=self.list_tools, on_call_tool=self.call_tool,
            on_list_resources=self.list_resources, on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource, on_list_prompts=self.list_prompts, on_get_prompt=self.get_prompt,
            on_completion=self.complete, on_subscriptions_listen=self.listen)
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self.set_level)
        server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, self.subscribe)
        server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, self.unsubscribe)
        return server


class _FrontServer(Server[Any]):
    """The SDK's low-level server whose HTTP app keeps an event store unless told otherwise, so streams
    through the registry are resumable on 2025-11-25 as they are at the agent; and which tells 2025-11-25
    clients that its lists change (``notifications.Notices`` says so when they do)."""

    def create_initialization_options(self, notification_options: NotificationOptions | None = None,
                                      *args: Any, **kwargs: Any) -> Any:
        changes = notification_options or NotificationOptions(prompts_changed=True, resources_changed=True,
                                                               tools_changed=True)
        return super().create_initialization_options(changes, *args, **kwargs)

    def streamable_http_app(self, **options: Any) -> Any:
        options.setdefault("event_store", MemoryEventStore())
        options.setdefault("retry_interval", RETRY_MS)
        return super().streamable_http_app(**options)


def _with_extra(call: proxy.Call, extra: Mapping[str, Any]) -> proxy.Call:
    if not extra:
        return call
    return proxy.Call(call.agent, call.name, call.kind, call.arguments, {**(call.extra or {}), **extra})


def _stamped(result: Any, outcome: proxy.Invocation) -> Any:
    """The agent's answer with the registry's run ids and trace; the agent's own ``serverInfo`` stamp is
    dropped (the server this client talks to is the registry, which stamps its own)."""
    if not isinstance(result, dict):
        result = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    meta = {k: v for k, v in (result.get("_meta") or {}).items() if k != types.SERVER_INFO_META_KEY}
    return {**result, "_meta": meta | outcome.stamp()}


def _structured(value: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(value))],
                                structured_content=value)


def _wire_meta(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """The request's ``_meta`` as the client sent it (wire keys: ``progressToken``, trace context...)."""
    meta = (ctx.params or {}).get("_meta")
    return meta if isinstance(meta, dict) else {}


_OWN_TOOLS = [
    types.Tool(name="discover", description="Find verified tools of the mesh by words, names and meaning; "
               "ranked by relevance weighted by reputation.", input_schema={
                   "type": "object", "required": ["query"], "properties": {
                       "query": {"type": "string", "description": "what you want done, in words"},
                       "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                       "agent": {"type": ["string", "null"], "default": None},
                       "read_only": {"type": ["boolean", "null"], "default": None}}}),
    types.Tool(name="invoke", description="Call a tool of another agent through the registry (checked against "
               "schema and policy).", input_schema={
                   "type": "object", "required": ["agent", "tool", "arguments"], "properties": {
                       "agent": {"type": "string"}, "tool": {"type": "string"},
                       "arguments": {"type": "object", "additionalProperties": True}}}),
    types.Tool(**BUILD_AGENT),
]
_OWN_TOOL_NAMES = frozenset(tool.name for tool in _OWN_TOOLS)
