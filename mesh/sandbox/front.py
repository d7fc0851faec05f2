"""A sandbox as an MCP server at the registry: ``/agents/{name}/sandboxes/{id}/mcp``.

``tools/list`` gives one tool per operation of each of the sandbox's services (``tools.py``). A
``tools/call`` is carried like any call through the registry — ``proxy.carry`` via the agent front's
``carry`` (caller, the sandbox agent's pinned tool, schema, policy, forward, provenance, reputation) — to
the ``sandbox`` agent's ``sandbox_call`` (or ``sandbox_connected_call``), with the sandbox's description
as an argument. The caller is marked as coming through here (``FRONT_SCOPE``): the shipped policy refuses
those tools to a direct call, whose sandbox description nobody checked. Each attempt, refused or
answered, is then kept as a ``sandbox_runs`` row linked to the registry's run. A caller may label its
attempts: ``_meta["io.mcpmesh/attempt"]`` on the request.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from mesh.client import PROBLEM_META, RUN_META
from mesh.registry import proxy, store
from mesh.registry.auth import Caller
from mesh.registry.gate import caller_of
from mesh.registry.mcp_front import Front, _stamped
from mesh.registry.node import Registry
from mesh.registry.problems import Problem
from mesh.sandbox.lifecycle import SANDBOX_AGENT, Sandboxes
from mesh.sandbox.openapi_mock import MockAPI
from mesh.sandbox.tools import find_operation, operation_tools, split_arguments

ATTEMPT_META = "io.mcpmesh/attempt"
MAX_KEPT_ANSWER = 64_000  # characters of an answer kept in sandbox_runs; a longer one is kept as a digest note


FRONT_SCOPE = "registry:sandbox-front"


def through_front(caller: Caller) -> Caller:
    """The caller as the sandbox front carries its calls: marked, so the policy can refuse the sandbox
    agent's ``sandbox_*`` tools to anyone calling them directly (with a sandbox description of their own,
    which nobody checked: ``registry/policies/sandbox.rego``)."""
    return replace(caller, scopes=[*caller.scopes, FRONT_SCOPE])


class _Carrier(Front):
    """The agent face's ``carry`` (refusals, progress, a 2025-11-25 session's questions), for the marked caller."""

    def _caller(self, ctx: ServerRequestContext[Any, Any], action: str = "invoke") -> Caller:
        return through_front(super()._caller(ctx, action))


class SandboxFront:
    """The MCP handlers of every sandbox's virtual server."""

    def __init__(self, registry: Registry, sandboxes: Sandboxes):
        self.registry = registry
        self.sandboxes = sandboxes
        self.front = _Carrier(registry, whole_mesh=False)

    async def _sandbox(self, ctx: ServerRequestContext[Any, Any]) -> tuple[store.SandboxRecord, dict[str, MockAPI]]:
        """The active sandbox this request is for, and its services' specs; a JSON-RPC error otherwise."""
        request = ctx.request if isinstance(ctx.request, Request) else None
        params = request.path_params if request is not None else {}
        try:
            record = await anyio.to_thread.run_sync(self.sandboxes.active, params.get("name", ""),
                                                    params.get("sandbox_id", ""))
            return record, {name: self.sandboxes.catalog.api(name) for name in record.required_services}
        except Problem as problem:
            raise MCPError(types.INVALID_PARAMS, str(problem), problem.to_json()) from problem

    async def list_tools(self, ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        record, apis = await self._sandbox(ctx)
        return types.ListToolsResult(tools=[tool for name, api in apis.items()
                                            for tool in operation_tools(api, name, record.mode)])

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> Any:
        record, apis = await self._sandbox(ctx)
        meta = (ctx.params or {}).get("_meta") or {}
        attempt = meta.get(ATTEMPT_META) if isinstance(meta, dict) else None
        caller = caller_of(self.registry, ctx.request if isinstance(ctx.request, Request) else None)
        result, _ = await self._call(record, apis, params.name, params.arguments or {},
                                     partial(self.front.carry, ctx), caller.id, attempt)
        return result

    async def call_as(self, caller: Caller, agent: str, sandbox_id: str, name: str, arguments: dict[str, Any],
                      *, attempt: str | None = None) -> tuple[dict[str, Any], int | None]:
        """One tool call in process, for the registry's own callers (a learning run): the same call path as
        ``tools/call`` (``proxy.carry`` as ``caller``, marked as coming through this front: policy,
        provenance, reputation) and the same ``sandbox_runs`` row. Returns the result as MCP's wire JSON
        (a refusal is a tool error with its problem in ``_meta``) and the ``sandbox_runs`` id."""
        try:
            record = await anyio.to_thread.run_sync(self.sandboxes.active, agent, sandbox_id)
            apis = {service: self.sandboxes.catalog.api(service) for service in record.required_services}
        except Problem as problem:
            return _wire(_error(str(problem), problem.to_json())), None
        marked = through_front(caller)

        async def carry(call: proxy.Call) -> Any:
            try:
                outcome = await proxy.carry(self.registry, marked, call)
            except Problem as problem:
                return Front._refusal(call, problem)
            return _stamped(outcome.result, outcome)

        result, run = await self._call(record, apis, name, arguments, carry, caller.id, attempt)
        return _wire(result), run

    async def _call(self, record: store.SandboxRecord, apis: dict[str, MockAPI], name: str,
                    arguments: dict[str, Any], carry: Callable[[proxy.Call], Awaitable[Any]], caller_id: str,
                    attempt: Any) -> tuple[Any, int | None]:
        """Carry one tool call to the sandbox agent and keep it in ``sandbox_runs`` (the row's id returned)."""
        found = find_operation(apis, name)
        if found is None:
            return _error(f"sandbox {record.id} has no tool {name!r} (tools/list names them)"), None
        service, op = found
        try:
            split = split_arguments(op, arguments)
            endpoints = await anyio.to_thread.run_sync(self.sandboxes.check_callable, record)
        except ValueError as exc:
            return _error(str(exc)), None
        except Problem as problem:
            return _error(str(problem), problem.to_json()), None
        tool = "sandbox_connected_call" if record.mode == "connected" else "sandbox_call"
        call = proxy.Call(SANDBOX_AGENT, tool, "tool",
                          {"sandbox": self.sandboxes.ref(record, endpoints), "service": service,
                           "operation_id": op.operation_id, **split})
        result = await carry(call)
        run = await self._record(caller_id, record, service, op.operation_id, split, result,
                                 str(attempt)[:200] if attempt is not None else None)
        return result, run

    async def _record(self, caller_id: str, record: store.SandboxRecord, service: str,
                      operation_id: str, arguments: dict[str, Any], result: Any, attempt: str | None) -> int:
        wire = _wire(result)
        meta = wire.get("_meta") or {}
        problem = meta.get(PROBLEM_META)
        answer = wire.get("structuredContent") if not wire.get("isError") else None
        error = None
        if wire.get("isError"):
            error = " ".join(block.get("text", "") for block in wire.get("content") or [])[:2000] or "error"
        status = problem.get("type", "").rsplit("/", 1)[-1] if isinstance(problem, dict) else (
            "error" if wire.get("isError") else "ok")
        if answer is not None and len(json.dumps(answer)) > MAX_KEPT_ANSWER:
            answer = {"status": answer.get("status"), "note": f"answer longer than {MAX_KEPT_ANSWER} characters"}
        run = store.SandboxRunRecord(
            sandbox_id=record.id, revision=record.revision, run_id=meta.get(RUN_META), caller=caller_id,
            service=service, operation_id=operation_id, attempt=attempt, arguments=_without_secrets(arguments),
            status=status, http_status=answer.get("status") if isinstance(answer, dict) else None, answer=answer,
            error=error, started_at=store.utcnow())
        if self.registry.embedded_database:
            return self.sandboxes.record_run(run)
        return await anyio.to_thread.run_sync(self.sandboxes.record_run, run)

    def server(self) -> Server[Any]:
        return Server("mcpmesh-sandbox", version="0.1.0",
                      instructions="A sandbox's services: one tool per API operation (SERVICE__OPERATION). "
                                   "Each answers {status, headers, body} as the API would, errors included.",
                      on_list_tools=self.list_tools, on_call_tool=self.call_tool)


def _without_secrets(arguments: dict[str, Any]) -> dict[str, Any]:
    """The attempt as kept: an Authorization header's value is not."""
    headers = arguments.get("headers")
    if not isinstance(headers, dict):
        return arguments
    kept = {k: ("(redacted)" if k.lower() in ("authorization", "x-api-key", "api-key") else v)
            for k, v in headers.items()}
    return {**arguments, "headers": kept}


def _wire(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else result.model_dump(by_alias=True, mode="json", exclude_none=True)


def _error(text: str, problem: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True,
                                meta={PROBLEM_META: problem} if problem else None)
