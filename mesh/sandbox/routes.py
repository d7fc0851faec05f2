"""The registry's sandbox routes: the HTTP API under ``/v1`` and each sandbox's MCP server.

``SandboxRoutes(registry)`` gives the app what to mount (``api_routes`` inside ``/v1``, ``mcp_routes`` at
the top) and what to run while it serves (``running``: the MCP session manager and the expiry sweep).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from mesh.names import is_valid_name
from mesh.registry import proxy, tenancy
from mesh.registry.gate import allowed, parse_json
from mesh.registry.node import Registry
from mesh.registry.problems import Problem, page_limit, problem_json
from mesh.sandbox.front import SandboxFront, through_front
from mesh.sandbox.lifecycle import (
    SANDBOX_AGENT,
    Sandboxes,
    approval_json,
    sandbox_json,
    sandbox_run_json,
)

log = logging.getLogger(__name__)
SWEEP_INTERVAL = 5.0  # seconds between expiry sweeps
MAX_RUNS_PAGE = 1000
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class SandboxRoutes:
    def __init__(self, registry: Registry, sandboxes: Sandboxes | None = None):
        self.registry = registry
        self.sandboxes = sandboxes or Sandboxes(registry)
        unchecked = TransportSecuritySettings(enable_dns_rebinding_protection=False)  # the gate checks Host
        self.front = SandboxFront(registry, self.sandboxes)  # also the learning runs' in-process call path
        self.server = self.front.server()
        self.server.streamable_http_app(json_response=False, host=registry.config.host, transport_security=unchecked)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group, self.server.session_manager.run():
            group.start_soon(self.sweep_forever)
            try:
                yield
            finally:
                group.cancel_scope.cancel()

    async def sweep_forever(self, interval: float = SWEEP_INTERVAL) -> None:
        """Expired sandboxes are removed (marked expired; their runs stay) without anyone asking."""
        while True:
            await anyio.sleep(interval)
            with tenancy.as_registry():  # every project's sandboxes: bookkeeping, acting for no one
                expired = await anyio.to_thread.run_sync(self.sandboxes.expire_due)
            if expired:
                log.info("sandboxes expired: %s", ", ".join(expired))

    def mcp_routes(self) -> list[BaseRoute]:
        return [Route("/agents/{name}/sandboxes/{sandbox_id}/mcp", StreamableHTTPASGIApp(self.server.session_manager))]

    def api_routes(self) -> list[BaseRoute]:
        handled = problem_json
        return [
            Route("/agents/{name}/sandboxes", handled(self.create_or_list), methods=["GET", "POST"]),
            Route("/agents/{name}/sandboxes/{sandbox_id}", handled(self.one), methods=["GET", "PATCH", "DELETE"]),
            Route("/agents/{name}/sandboxes/{sandbox_id}/reset", handled(self.reset), methods=["POST"]),
            Route("/agents/{name}/sandboxes/{sandbox_id}/runs", handled(self.runs), methods=["GET"]),
            Route("/agents/{name}/sandboxes/{sandbox_id}/state", handled(self.state), methods=["GET"]),
            Route("/sandboxes", handled(self.all), methods=["GET"]),
            Route("/approvals", handled(self.approvals), methods=["GET", "POST"]),
            Route("/approvals/{approval_id}", handled(self.revoke_approval), methods=["DELETE"]),
        ]

    # -- handlers --------------------------------------------------------------------------------------

    async def create_or_list(self, request: Request) -> JSONResponse:
        """POST: create a sandbox for the agent; GET: its sandboxes (``?removed=true``: expired and deleted too)."""
        agent = _agent(request)
        if request.method == "POST":
            caller = allowed(self.registry, request, "sandbox", agent)
            body = await _body(self.registry, request)
            record = await anyio.to_thread.run_sync(self.sandboxes.create, caller, agent, body)
            return JSONResponse(sandbox_json(record, _base(request)), status_code=201)
        allowed(self.registry, request, "read")
        records = await anyio.to_thread.run_sync(lambda: self.sandboxes.list(agent, removed=_removed(request)))
        return JSONResponse({"sandboxes": [sandbox_json(r, _base(request)) for r in records]})

    async def all(self, request: Request) -> JSONResponse:
        """Every agent's sandboxes."""
        allowed(self.registry, request, "read")
        records = await anyio.to_thread.run_sync(lambda: self.sandboxes.list(removed=_removed(request)))
        return JSONResponse({"sandboxes": [sandbox_json(r, _base(request)) for r in records]})

    async def one(self, request: Request) -> JSONResponse:
        """GET one sandbox; PATCH it (a new revision when its services change); DELETE it (runs stay)."""
        agent, sandbox_id = _agent(request), request.path_params["sandbox_id"]
        if request.method == "GET":
            allowed(self.registry, request, "read")
            record = await anyio.to_thread.run_sync(self.sandboxes.get, agent, sandbox_id)
        elif request.method == "PATCH":
            allowed(self.registry, request, "sandbox", agent)
            body = await _body(self.registry, request)
            record = await anyio.to_thread.run_sync(self.sandboxes.update, agent, sandbox_id, body)
        else:
            allowed(self.registry, request, "sandbox", agent)
            record = await anyio.to_thread.run_sync(self.sandboxes.delete, agent, sandbox_id)
        return JSONResponse(sandbox_json(record, _base(request)))

    async def reset(self, request: Request) -> JSONResponse:
        """Start the sandbox's services again from their seed data; its runs and provenance stay."""
        agent = _agent(request)
        allowed(self.registry, request, "sandbox", agent)
        record = await anyio.to_thread.run_sync(self.sandboxes.reset, agent, request.path_params["sandbox_id"])
        return JSONResponse(sandbox_json(record, _base(request)))

    async def runs(self, request: Request) -> JSONResponse:
        """The attempts made in the sandbox, oldest first, every revision; ``after`` pages on by id."""
        allowed(self.registry, request, "read")
        params = request.query_params
        limit = page_limit(params, 100, MAX_RUNS_PAGE)
        try:
            after = int(params["after"]) if params.get("after") else None
        except ValueError as exc:
            raise Problem("bad-request", "after must be an integer") from exc
        found = await anyio.to_thread.run_sync(
            lambda: self.sandboxes.runs(_agent(request), request.path_params["sandbox_id"], limit=limit, after=after))
        return JSONResponse({"runs": [sandbox_run_json(r) for r in found],
                             "next_after": found[-1].id if len(found) == limit else None})

    async def state(self, request: Request) -> JSONResponse:
        """What the sandbox's emulated services hold now, asked of the sandbox agent through the registry
        (a recorded, policy-checked call like any other)."""
        caller = allowed(self.registry, request, "read")
        record = await anyio.to_thread.run_sync(self.sandboxes.active, _agent(request),
                                                request.path_params["sandbox_id"])
        outcome = await proxy.invoke(self.registry, through_front(caller), SANDBOX_AGENT, "sandbox_state",
                                     {"sandbox": self.sandboxes.ref(record)}, trace_context=dict(request.headers))
        result = outcome.result
        if result.is_error or result.structured_content is None:
            text = " ".join(getattr(block, "text", "") for block in result.content)
            raise Problem("target-error", f"the sandbox agent could not tell the state: {text[:500]}",
                          run_id=outcome.run_id)
        return JSONResponse({"sandbox_id": record.id, "revision": record.revision, "run_id": outcome.run_id,
                             "services": result.structured_content})

    async def approvals(self, request: Request) -> JSONResponse:
        """POST: approve an agent's connected sandboxes for a service (operators only); GET: the approvals."""
        if request.method == "POST":
            caller = allowed(self.registry, request, "approve")
            body = await _body(self.registry, request)
            record = await anyio.to_thread.run_sync(self.sandboxes.approve, caller, body)
            return JSONResponse(approval_json(record), status_code=201)
        allowed(self.registry, request, "read")
        agent = request.query_params.get("agent")
        records = await anyio.to_thread.run_sync(
            lambda: self.sandboxes.approvals(agent, revoked=_removed(request, "revoked")))
        return JSONResponse({"approvals": [approval_json(r) for r in records]})

    async def revoke_approval(self, request: Request) -> JSONResponse:
        caller = allowed(self.registry, request, "approve")
        record = await anyio.to_thread.run_sync(self.sandboxes.revoke_approval, caller,
                                                request.path_params["approval_id"])
        return JSONResponse(approval_json(record))


def _agent(request: Request) -> str:
    name = request.path_params["name"]
    if not is_valid_name(name):
        raise Problem("unknown-agent", f"no agent {name[:80]!r} is registered")
    return name


def _removed(request: Request, key: str = "removed") -> bool:
    value = request.query_params.get(key, "false").lower()
    if value not in BOOLEANS:
        raise Problem("bad-request", f"{key} must be true or false, not {value[:20]!r}")
    return BOOLEANS[value]


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _body(registry: Registry, request: Request) -> dict[str, Any]:
    body = parse_json(await request.body(), registry.config.max_json_depth)
    if not isinstance(body, dict):
        raise Problem("bad-request", "the request body must be a JSON object")
    return body
