"""Running one agent: check its signed manifest, sign each listed descriptor, serve MCP, JWKS and its card.

``SignedAgent`` is an agent ready to serve: the manifest it serves was checked against its live tools,
resources, templates and prompts, and each one's signature block is in its ``_meta``. It can be served
over streamable HTTP (``/mcp`` plus ``/.well-known/jwks.json``, ``/.well-known/agent-card.json``, the A2A
JSON-RPC binding and ``/healthz``) or over stdio for IDE clients.

Over HTTP the agent speaks both protocol versions the SDK has: 2025-11-25 (sessions, server-to-client
requests, SSE streams that resume from an in-memory event store) and 2026-07-28 (stateless requests,
``server/discover``, ``input_required`` results); the SDK routes each request by its version.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import uvicorn
from mcp.server import MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import JSONRPCMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from mesh import a2a, card
from mesh.agent import Agent, signature_meta
from mesh.client import RUN_META, MeshClient, MeshError, incoming_run
from mesh.manifest import MANIFEST_META, descriptor_signature
from mesh.signing import Identity, identity_for_serving
from mesh.workspace import Workspace

log = logging.getLogger("mesh.agent")
RETRY_MS = 1000  # the SSE retry hint a 2025-11-25 client waits before resuming a stream the agent closed


@dataclass
class SignedAgent:
    """An agent whose tools carry their signatures, with the identity that signed them."""

    agent: Agent
    identity: Identity
    server: MCPServer
    wire_tools: list[dict[str, Any]]
    descriptors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # kind -> as listed

    @classmethod
    async def prepare(
        cls, ws: Workspace, name: str, *, strict: bool = False, dev: bool = False, start: bool = True,
        **server_options: Any,
    ) -> SignedAgent:
        identity = await identity_for_serving(ws, name, strict=strict, dev=dev)
        agent = ws.agent(name)
        if start:
            await agent.start(ws.agent_context(name))
        listed = await agent.descriptors()
        signatures = {
            kind: {item["name"]: descriptor_signature(kind, item, identity.active, identity.manifest.digest)
                   for item in items}
            for kind, items in listed.items()
        }
        middleware = [call_middleware(identity.manifest.digest)]
        server = agent.build_server(signature_meta(signatures), middleware=middleware, **server_options)
        return cls(agent, identity, server, listed["tool"], listed)

    def card(self, base_url: str) -> dict[str, Any]:
        scopes = self.agent.scopes()
        unsigned = card.build_card(
            name=self.agent.name,
            description=self.agent.description,
            version=self.agent.version,
            base_url=base_url,
            tools=[{**tool, "scopes": scopes[tool["name"]]} for tool in self.wire_tools],
        )
        return card.sign_card(unsigned, self.identity.keys, jku=f"{base_url}/.well-known/jwks.json")

    def http_app(self, base_url: str, host: str = "127.0.0.1") -> Starlette:
        """One Starlette app: MCP at ``/mcp``, the well-known documents, A2A and a health route."""
        signed_card = self.card(base_url)
        jwks = self.identity.jwks
        mcp_app = self.server.streamable_http_app(
            json_response=False, host=host, transport_security=_transport_security(host, base_url),
            event_store=MemoryEventStore(), retry_interval=RETRY_MS,
        )

        async def jwks_route(request: Request) -> JSONResponse:
            return JSONResponse(jwks, headers={"Cache-Control": "max-age=300"})

        async def card_route(request: Request) -> JSONResponse:
            return JSONResponse(signed_card)

        async def health(request: Request) -> JSONResponse:
            return JSONResponse({"status": "ok", "agent": self.agent.name, "mode": self.identity.mode})

        @asynccontextmanager
        async def lifespan(app: Starlette):
            async with self.server.session_manager.run():
                yield

        routes = [
            Route("/.well-known/jwks.json", jwks_route),
            Route("/.well-known/agent-card.json", card_route),
            Route("/healthz", health),
            *a2a.a2a_routes(card=signed_card, call_tool=self.call_tool, tools=self.wire_tools),
            Mount("/", app=mcp_app),
        ]
        return Starlette(routes=routes, lifespan=lifespan)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        return await self.server.call_tool(name, arguments)


class MemoryEventStore(EventStore):
    """The SDK's event store interface, in memory and bounded: lets a 2025-11-25 client resume an SSE
    stream (``Last-Event-ID``) after the agent or the network closed it, within one agent process."""

    def __init__(self, max_events: int = 10_000):
        self.max_events = max_events
        self._events: OrderedDict[int, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._next = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._next += 1
        self._events[self._next] = (stream_id, message)
        while len(self._events) > self.max_events:
            self._events.popitem(last=False)
        return str(self._next)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        """Send the stream's events after ``last_event_id``; None if that event is unknown (or forgotten)."""
        try:
            stream_id = self._events[int(last_event_id)][0]
        except (ValueError, KeyError):
            return None
        after = [(event_id, message) for event_id, (stream, message) in self._events.items()
                 if stream == stream_id and event_id > int(last_event_id)]
        for event_id, message in after:
            if message is not None:  # None marks a priming event: nothing to replay
                await send_callback(EventMessage(message, str(event_id)))
        return stream_id


def _transport_security(host: str, base_url: str) -> TransportSecuritySettings | None:
    """Keep the SDK's DNS-rebinding protection on loopback; elsewhere allow the advertised host."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return None
    authority = base_url.split("://", 1)[-1]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[authority, f"{host}:*", "127.0.0.1:*", "localhost:*"],
        allowed_origins=[f"http://{authority}", "http://127.0.0.1:*", "http://localhost:*"],
    )


def call_middleware(manifest_digest: str) -> Callable[[Any, Any], Awaitable[Any]]:
    """MCP middleware for ``tools/call``, both ways.

    In: keep the registry's run id of the call being served (``_meta["io.mcpmesh/run"]``), so the calls
    this tool makes through the mesh are linked to it (and a failure of theirs is blamed on them, not
    on this tool). Out: stamp the answer with the digest of the manifest this agent serves under, so
    the registry sees on the very next call that an agent restarted with changed tools, instead of at
    its next periodic recheck. The trace needs no help: mcp's own OpenTelemetry middleware already
    serves each request inside the caller's trace."""

    async def middleware(ctx: Any, call_next: Any) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        token = incoming_run.set(ctx.meta.get(RUN_META) if ctx.meta else None)
        try:
            result = await call_next(ctx)
        finally:
            incoming_run.reset(token)
        if isinstance(result, dict):
            result = {**result, "_meta": {**(result.get("_meta") or {}), MANIFEST_META: manifest_digest}}
        return result

    return middleware


async def keep_registered(signed: SignedAgent, registry_url: str, endpoint: str, interval: float = 5.0) -> None:
    """Register with the registry, then again every ``interval`` s: a restarted registry re-admits us."""
    client = MeshClient(registry_url, agent=signed.agent.name, key=signed.identity.active)
    signed.agent.mesh = client
    manifest = signed.identity.manifest.to_json()
    last = None
    try:
        while True:
            try:
                answer = await client.register(endpoint, manifest, signed.identity.jwks)
                message = f"registered with {registry_url} ({answer.get('status')})"
                if answer.get("status") == "unchanged" and last and last.startswith("registered"):
                    message = last
            except (MeshError, httpx.HTTPError) as exc:
                message = f"registration with {registry_url} failed: {exc}"
            if message != last:
                log.warning("%s: %s", signed.agent.name, message)
                last = message
            await anyio.sleep(interval)
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def serve_http(
    signed: SignedAgent,
    host: str,
    port: int,
    *,
    advertised_host: str | None = None,
    registry_url: str | None = None,
    on_ready: Callable[[str], Awaitable[None]] | None = None,
) -> None:
    """Serve until cancelled or signalled; ``on_ready(base_url)`` runs once the socket listens."""
    port = port or free_port(host)
    base_url = f"http://{advertised_host or host}:{port}"
    app = signed.http_app(base_url, host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await anyio.sleep(0.02)
        print(f"{signed.agent.name}: MCP at {base_url}/mcp  (card {base_url}/.well-known/agent-card.json)",
              file=sys.stderr, flush=True)
        if registry_url:
            group.start_soon(keep_registered, signed, registry_url, f"{base_url}/mcp")
        if on_ready is not None:
            await on_ready(base_url)

    async with anyio.create_task_group() as group:
        group.start_soon(announce)
        await server.serve()
        group.cancel_scope.cancel()


async def serve_stdio(signed: SignedAgent) -> None:
    await signed.server.run_stdio_async()
