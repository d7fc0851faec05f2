"""The registry's A2A face: every admitted agent's A2A binding, carried through the registry's call path.

For an agent NAME the registry serves, beside ``/v1`` and ``/mcp``:

- ``POST /agents/NAME/a2a`` (and ``/a2a/``): the A2A JSON-RPC binding. A message is read as at the agent
  (``mesh.a2a``: a ``{"tool", "arguments"}`` data part, or a plain text for the agent's text tool) and
  the call goes through ``proxy.invoke`` as the request's caller (the gate identified it): schema,
  policy, forward, run records with signed provenance, reputation. A refusal or failure fails the task:
  its message says why (the problem's title and detail) and holds the problem as a data part
  (``type``, ``rule``, ``run_id``...). A result's artifact carries the run ids in its metadata.
- ``GET /agents/NAME/.well-known/agent-card.json``: the card of that binding.

Both answer only a caller of the agent's project (the gate identified it); to anyone else the agent is
unknown (404), as one that does not exist.

The card is the registry's, not the agent's: the agent's own card names the agent's endpoint, and
changing its interface URL would break the agent's signatures (or keep them over content the agent never
signed). So the registry builds the card from what it admitted — the verified tools of the manifest the
agent signed, as skills, exactly as the agent's card has them — points its interface at the registry,
and signs it with its own key (the provenance key, ``jku`` the registry's ``/.well-known/jwks.json``;
the ``typ`` ``JOSE`` keeps a card signature from passing as provenance). It says so in an extension
(``PROXY_EXTENSION``): which agent it carries, where that agent's own card is (signed by the agent's
keys) and the digest of the manifest it admitted. A blocked tool is not on the card.

Tasks are kept in memory (the last thousand) per caller and agent: a caller sees only its own tasks.
"""

from __future__ import annotations

from typing import Any

from a2a.auth.user import User
from a2a.server.context import ServerCallContext
from a2a.server.routes import ServerCallContextBuilder
from mcp.types import CallToolResult
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mesh.a2a import RecentTaskStore, ToolCallFailed, ToolExecutor, jsonrpc_routes
from mesh.card import (
    CARD_PATH,
    JSONRPC_BINDING,
    PROTOCOL_VERSION,
    STRUCTURED_OUTPUT_MODES,
    TEXT_INPUT_MODES,
    build_card,
    card_url,
    normal_form,
    sign_card,
)
from mesh.client import RUN_META
from mesh.names import is_valid_name
from mesh.registry import proxy, store, tenancy
from mesh.registry.auth import Caller
from mesh.registry.gate import allowed, is_run_id
from mesh.registry.node import Registry
from mesh.registry.problems import Problem

PROXY_EXTENSION = "https://mcpmesh.dev/a2a/extensions/registry-proxy/v1"
A2A_PATH = "/agents/{name}/a2a"
CARD_ROUTE = "/agents/{name}" + CARD_PATH
# What a2a-sdk's handler is told of the bindings here: no streaming, no push notifications (the cards
# clients read are ``A2AFront.card``'s).
_BINDING_CARD = {
    "name": "mcpmesh-registry", "description": "Each agent's A2A binding, through the registry", "version": "1",
    "supportedInterfaces": [{"url": A2A_PATH, "protocolBinding": JSONRPC_BINDING, "protocolVersion": PROTOCOL_VERSION}],
    "capabilities": {"streaming": False, "pushNotifications": False},
    "defaultInputModes": TEXT_INPUT_MODES, "defaultOutputModes": STRUCTURED_OUTPUT_MODES,
    "skills": [{"id": "tools", "name": "The agent's tools", "description": "Call one of the agent's tools.",
                "tags": ["mcp-tool"]}],
}


def routes(registry: Registry) -> list[BaseRoute]:
    """The registry's A2A routes; mount them in the registry app (inside the gate)."""
    return A2AFront(registry).routes()


class A2AFront:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.binding = jsonrpc_routes(card=_BINDING_CARD, executor=RegistryExecutor(registry), path=A2A_PATH,
                                      context_builder=CallContextBuilder(),
                                      task_store=RecentTaskStore(owner_resolver=task_owner))

    def routes(self) -> list[BaseRoute]:
        return [
            *(Route(route.path, self.guarded(route.endpoint), methods=["POST"]) for route in self.binding),
            Route(CARD_ROUTE, self.card_route, methods=["GET"]),
        ]

    def guarded(self, endpoint: Any) -> Any:
        """The binding, for a caller who may invoke, an agent that is registered and a valid parent run;
        a refusal is a JSON-RPC error with the problem's HTTP status."""

        async def binding(request: Request) -> Response:
            try:
                self.shown(allowed(self.registry, request, "invoke"), request.path_params["name"])
                parent = request.headers.get("x-mesh-parent-run")
                if parent is not None and not is_run_id(parent):
                    raise Problem("bad-request", "x-mesh-parent-run must be a run id")
            except Problem as problem:
                error = {"code": -32600, "message": str(problem), "data": problem.to_json()}
                return JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, status_code=problem.status)
            return await endpoint(request)

        return binding

    async def card_route(self, request: Request) -> JSONResponse:
        try:
            name = self.shown(allowed(self.registry, request, "read"), request.path_params["name"])
            card = self.card(name, str(request.base_url).rstrip("/"))
        except Problem as problem:
            return problem.response()
        return JSONResponse(card)

    def shown(self, caller: Caller, name: str) -> str:
        """``name``, if ``caller`` may know that agent (one of the project it acts in); else the problem of
        an agent that does not exist."""
        if not is_valid_name(name) or not self.registry.tenancy.visible(caller, name):
            raise tenancy.unknown_agent(name[:80])
        return name

    def card(self, name: str, registry_url: str) -> dict[str, Any]:
        """The registry's signed card for ``name``'s binding at ``registry_url``/agents/``name``/a2a."""
        registry = self.registry
        tools = [{**pinned.wire, "scopes": pinned.scopes} for pinned in registry.agent_tools(name)
                 if pinned.status == "verified"]
        if not tools:
            raise Problem("tool-blocked", f"agent {name!r} has no tool that may be called now")
        with registry.sessions.begin() as session:  # as the caller, of the agent's project (``shown``, the gate)
            record = store.get_agent(session, name)
            if record is None:
                raise Problem("unknown-agent", f"no agent {name!r} is registered")
            description, version, endpoint = record.description, record.version, record.endpoint
        card = build_card(name=name, description=description or f"Agent {name}", version=version or "0",
                          base_url=f"{registry_url}/agents/{name}", tools=tools)
        card["capabilities"]["extensions"] = [{
            "uri": PROXY_EXTENSION,
            "description": f"Signed by the registry at {registry_url}, which carries each call to agent {name!r} "
                           "through its policy and records it with signed provenance. The skills are the tools "
                           "of the manifest the agent signed; the agent's own card is signed by the agent's keys.",
            "params": {"agent": name, "agentCard": card_url(endpoint),
                       "manifestDigest": registry.manifest_digests.get(name, "")},
        }]
        return sign_card(normal_form(card), [registry.provenance_key], jku=f"{registry_url}/.well-known/jwks.json")


class CallerUser(User):
    """The gate's caller, as a2a-sdk's task store sees its owner."""

    def __init__(self, caller: Caller):
        self.caller = caller

    @property
    def is_authenticated(self) -> bool:
        return self.caller.kind != "anonymous"

    @property
    def user_name(self) -> str:
        return self.caller.id


class CallContextBuilder(ServerCallContextBuilder):
    """What a call needs from its HTTP request: the caller, the target agent, the parent run, the headers."""

    def build(self, request: Request) -> ServerCallContext:
        caller = request.state.caller  # the gate set it; the route refused a request without one
        state = {"caller": caller, "agent": request.path_params["name"], "headers": dict(request.headers),
                 "parent_run": request.headers.get("x-mesh-parent-run")}
        return ServerCallContext(user=CallerUser(caller), state=state)


def task_owner(context: ServerCallContext) -> str:
    """Tasks belong to one caller and one agent: nobody else can read or continue them."""
    return f"{context.user.user_name} {context.state.get('agent', '')}"


class RegistryExecutor(ToolExecutor):
    """A2A messages to an agent, called through the registry's call path (``proxy.invoke``)."""

    def __init__(self, registry: Registry):
        super().__init__(None, [])
        self.registry = registry

    def offered(self, context: ServerCallContext) -> list[dict[str, Any]]:
        return [pinned.wire for pinned in self.registry.agent_tools(context.state["agent"])
                if pinned.status == "verified"]

    async def call(self, tool: str, arguments: dict[str, Any], context: ServerCallContext) -> CallToolResult:
        state = context.state
        try:
            outcome = await proxy.invoke(self.registry, state["caller"], state["agent"], tool, arguments,
                                         parent_run_id=state["parent_run"], trace_context=state["headers"])
        except Problem as problem:
            raise ToolCallFailed(str(problem), problem.to_json()) from problem
        if not isinstance(outcome.result, CallToolResult):  # e.g. the tool asked the caller for input over MCP
            raise ToolCallFailed(f"{state['agent']}.{tool} answered with a request this A2A binding cannot relay "
                                 f"(run {outcome.run_id}); call it over MCP", {"run_id": outcome.run_id})
        return outcome.result.model_copy(update={"meta": {**(outcome.result.meta or {}), **outcome.stamp()}})

    def result_metadata(self, result: CallToolResult) -> dict[str, Any] | None:
        meta = result.meta or {}
        return {key: meta[key] for key in (RUN_META, proxy.TARGET_RUN_META, proxy.TRACE_META) if key in meta}
