"""MeshClient: how agents and scripts reach the mesh through its registry.

>>> mesh = MeshClient("http://127.0.0.1:7300")
>>> hits = await mesh.discover("find passages about signing")
>>> result = await mesh.invoke("librarian", "search", {"query": "signing", "k": 3})

An agent's client carries the agent's identity: each request has a short-lived JWT signed by the
agent's own key. Inside a tool that the registry called, ``invoke`` also passes the trace on, so the
whole chain of calls is one trace.

Inside a tool, ``invoke(..., context=ctx)`` (the tool's MCP ``Context``) makes the called agent's
conversation with its client reach this tool's own client: the call goes as MCP to the registry's
``/agents/NAME/mcp`` carrying that client's capabilities and log level; the called agent's progress and
logs are passed on as they arrive; when it asks for input (elicitation, sampling), ``InputRequired`` is
raised and the tool returns ``needed.result``: the question goes up the chain to the human at the top,
and the retry brings the answers back down (the tool calls ``invoke`` again with the same arguments and
its context, which now holds them). Without a context, ``invoke`` is one ``POST /v1/invoke``. Either
way it returns ``{"run_id", "result": CallToolResult JSON, ...}`` and raises ``MeshError`` for a refusal.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from mesh import telemetry
from mesh.keys import SigningKey
from mesh.registry.auth import issue_token
from mesh.registry.problems import PROBLEM_BASE
from mesh.sessions import session_id

TOKEN_LIFETIME = 120
RUN_META = "io.mcpmesh/run"
PROBLEM_META = "io.mcpmesh/problem"  # on a tool error result that is the registry's refusal: the problem

incoming_run: ContextVar[str | None] = ContextVar("incoming_run", default=None)
"""The registry's run id of the call being served, so calls made from inside it are linked to it."""


class MeshError(Exception):
    """The registry refused or could not complete a request; ``problem`` is its problem+json body."""

    def __init__(self, problem: dict[str, Any]):
        self.problem = problem
        self.kind = str(problem.get("type", "")).rsplit("/", 1)[-1]
        self.status = problem.get("status")
        super().__init__(f"{problem.get('title', 'Error')}: {problem.get('detail', '')}")


class InputRequired(Exception):
    """The called agent asks for input first; return ``result`` from the tool to pass the question up."""

    def __init__(self, result: types.InputRequiredResult):
        super().__init__("the called agent asks its client for input first")
        self.result = result


class MeshClient:
    """A connection to a registry; ``agent`` + ``key`` make requests on that agent's behalf."""

    def __init__(self, registry_url: str, *, agent: str | None = None, key: SigningKey | None = None,
                 timeout: float = 60.0):
        self.registry_url = registry_url.rstrip("/")
        self.agent = agent
        self.key = key
        self._http = httpx.AsyncClient(base_url=self.registry_url, timeout=timeout)
        self._token: tuple[str, float] | None = None
        self._timeout = timeout
        self._mcp: Any = None  # a Forwarder, made for the first call that relays

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._mcp is not None:
            await self._mcp.aclose()

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.agent and self.key:
            if self._token is None or self._token[1] - time.time() < 30:
                self._token = (issue_token(self.agent, self.key, TOKEN_LIFETIME), time.time() + TOKEN_LIFETIME)
            headers["authorization"] = f"Bearer {self._token[0]}"
        telemetry.inject_meta(headers)
        if (run := incoming_run.get()) is not None:
            headers["x-mesh-parent-run"] = run
        return headers

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, headers=self._headers(), **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": f"HTTP {response.status_code}", "detail": response.text[:300]}
            raise MeshError(problem)
        return response.json()

    async def discover(self, query: str, *, k: int = 10, agent: str | None = None,
                       read_only: bool | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"q": query, "k": k}
        if agent:
            params["agent"] = agent
        if read_only is not None:
            params["read_only"] = str(read_only).lower()
        return (await self._request("GET", "/v1/discover", params=params))["results"]

    async def invoke(self, agent: str, tool: str, arguments: dict[str, Any] | None = None, *,
                     context: Any = None) -> dict[str, Any]:
        """Call ``agent.tool``; returns ``{"run_id", "result": CallToolResult JSON, ...}``.

        ``context``: the calling tool's MCP ``Context``, to relay the called agent's progress, logs and
        questions to that tool's own client (may raise ``InputRequired``)."""
        if context is not None:
            return await self._invoke_relayed(agent, tool, arguments or {}, context)
        return await self._request("POST", "/v1/invoke", json={"agent": agent, "tool": tool,
                                                               "arguments": arguments or {}})

    async def _invoke_relayed(self, agent: str, tool: str, arguments: dict[str, Any], context: Any) -> dict[str, Any]:
        from mesh.registry.forward import (
            AgentError,
            ClientLink,
            Forwarder,
            Relay,
            session_asker,
            session_notifier,
        )

        if self._mcp is None:
            self._mcp = Forwarder()
        request = context.request_context
        incoming = (request.params or {}).get("_meta") or {}
        capabilities = context.client_capabilities
        session = request.session

        async def notify(method: str, params: dict[str, Any]) -> None:
            if method == "notifications/message":
                notification = types.LoggingMessageNotification(
                    params=types.LoggingMessageNotificationParams.model_validate(params))
                await session.send_notification(notification, related_request_id=request.request_id)

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await context.report_progress(done, total, message)

        # A client on a 2025-11-25 session cannot take an input_required answer: the registry is then
        # reached in a session too, and the called agent's questions are put to that client as they come.
        legacy = request.protocol_version not in MODERN_PROTOCOL_VERSIONS
        relay = Relay(capabilities=capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
                      if capabilities else {}, log_level=incoming.get(types.LOG_LEVEL_META_KEY), notify=notify,
                      session=ClientLink(session_id(request) or "",
                                         ask=session_asker(session, None), notify=session_notifier(session))
                      if legacy else None,
                      ask=session_asker(session, request.request_id) if legacy else None)
        extra: dict[str, Any] = {}
        if context.input_responses:
            extra["inputResponses"] = {key: _wire(answer) for key, answer in context.input_responses.items()}
        if context.request_state is not None:
            extra["requestState"] = context.request_state
        headers = {key: value for key, value in self._headers().items() if key not in ("traceparent", "tracestate")}
        try:
            with anyio.fail_after(self._timeout):
                result = await self._mcp.call_tool(
                    f"{self.registry_url}/agents/{agent}/mcp", tool, arguments, meta=telemetry.inject_meta({}),
                    headers=headers, relay=relay, extra=extra,
                    progress=progress if incoming.get("progressToken") is not None else None)
        except AgentError as exc:
            raise MeshError(_problem_of(exc)) from exc
        except (httpx2.HTTPError, TimeoutError) as exc:
            raise MeshError({"title": "Registry unreachable", "detail": str(exc) or type(exc).__name__}) from exc
        if isinstance(result, types.InputRequiredResult):
            raise InputRequired(result)
        meta = result.meta or {}
        if result.is_error and PROBLEM_META in meta:
            raise MeshError(meta[PROBLEM_META])
        return {"run_id": meta.get(RUN_META), "target_run_id": meta.get("io.mcpmesh/target-run"),
                "trace_id": meta.get("io.mcpmesh/trace"),
                "result": result.model_dump(by_alias=True, mode="json", exclude_none=True)}

    async def agents(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/agents"))["agents"]

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/v1/runs/{run_id}")

    async def register(self, endpoint: str, manifest: dict[str, Any], jwks: dict[str, Any]) -> dict[str, Any]:
        if not (self.agent and self.key):
            raise ValueError("only an agent's client (agent= and key=) can register")
        return await self._request("POST", "/v1/agents", json={"name": self.agent, "endpoint": endpoint,
                                                               "manifest": manifest, "jwks": jwks})


def _wire(value: Any) -> Any:
    return value.model_dump(by_alias=True, mode="json", exclude_none=True) if isinstance(value, BaseModel) else value


def _problem_of(error: Any) -> dict[str, Any]:
    """A JSON-RPC error from the registry's MCP face as the problem ``POST /v1/invoke`` would have given."""
    if isinstance(error.data, dict) and "type" in error.data and "status" in error.data:
        return error.data  # the registry's own refusal carries its problem as data
    kind, status = ("invalid-arguments", 400) if error.code == types.INVALID_PARAMS else ("target-error", 502)
    jsonrpc_error = {"code": error.code, "message": error.message,
                     **({"data": error.data} if error.data is not None else {})}
    return {"type": f"{PROBLEM_BASE}{kind}", "title": kind.replace("-", " ").capitalize(),
            "status": status, "detail": str(error), "jsonrpc_error": jsonrpc_error}
