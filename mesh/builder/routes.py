"""The builder's routes under ``/v1``, mounted by ``mesh.registry.app``.

``POST /v1/builder``: ``{"brief": ..., "answers": {...}}`` or ``{"blueprint": DRAFT}`` gives the draft and
its kit for review (``stage``: ``questions`` or ``review``); with ``"write": true`` (and ``"force"`` to
overwrite) it builds and signs the agent (``written``). ``POST /v1/builder/{name}/validation`` compares the
admitted agent with a generic one. Building writes code into the workspace: administrators only (the
local user is one).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mesh.builder.service import BuilderService
from mesh.names import NAME_RULE, is_valid_name
from mesh.registry.gate import allowed, parse_json
from mesh.registry.problems import Problem


def routes(registry: Any) -> list[Route]:
    service = BuilderService(registry)
    registry.builder = service  # the MCP face's build_agent tool uses the same service

    async def body_of(request: Request) -> dict[str, Any]:
        body = parse_json(await request.body() or b"{}", registry.config.max_json_depth)
        if not isinstance(body, dict):
            raise Problem("bad-request", "the request body must be a JSON object")
        return body

    async def build(request: Request) -> JSONResponse:
        """Brief -> blueprint and kit for review; with write: the agent written, signed and versioned."""
        try:
            caller = allowed(registry, request, "admin")
            body = await body_of(request)
            answer = await (service.build(caller, body) if body.get("write") else service.draft(caller, body))
            return JSONResponse(answer)
        except Problem as problem:
            return problem.response()

    async def validation(request: Request) -> JSONResponse:
        """The built agent against a generic one on its held-out role tasks; the report is kept with the agent."""
        try:
            caller = allowed(registry, request, "admin")
            name = request.path_params["name"]
            if not is_valid_name(name):
                raise Problem("unknown-agent", f"no agent {name[:80]!r} ({NAME_RULE})")
            return JSONResponse(await service.validate(caller, name))
        except Problem as problem:
            return problem.response()

    return [
        Route("/builder", build, methods=["POST"]),
        Route("/builder/{name}/validation", validation, methods=["POST"]),
    ]
