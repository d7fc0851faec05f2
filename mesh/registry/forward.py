"""Talking to agents: one self-contained MCP request per HTTP POST, over kept-alive connections.

Protocol 2026-07-28 has no handshake and no session. Each JSON-RPC request carries its protocol
version and client capabilities in ``params._meta`` (and the routing facts again in ``MCP-*``
headers); the answer is one JSON-RPC response, or, when the tool reports progress, an SSE stream of
notifications that ends with that response. Cancelling the task that waits closes the stream, which
is how this protocol cancels a request.

So the registry forwards a call as one POST on a pooled connection, without the SDK client's
session machinery: its memory streams, tasks and per-message models cost about 0.35 ms a call on
loopback here, a fifth of a whole direct call. The SDK still supplies the wire details: header
names and encodings, the ``Mcp-Param-*`` headers a schema asks for, the result models.

Every mesh agent serves 2026-07-28 (it runs this SDK). A server that does not is refused at admission:
its ``tools/list`` goes the same way, fails, and the refusal quotes the server's answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx2
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp.types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    CallToolResult,
    Tool,
)

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]

PROTOCOL_VERSION = "2026-07-28"
CLIENT_INFO = {"name": "mcpmesh-registry", "version": "0.1.0"}
_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: PROTOCOL_VERSION}
_PROGRESS_TOKEN = "mesh"  # one request per stream, so one token is enough to recognise its progress


class AgentError(Exception):
    """The agent answered with an error instead of a result.

    ``code`` is the JSON-RPC error code (0 when the answer held no JSON-RPC error) and ``http_status``
    the HTTP status it came with: together they tell the proxy whose fault the failure was (a 413 is
    the request's, a 500 the agent's)."""

    def __init__(self, code: int, message: str, data: Any = None, *, http_status: int | None = None):
        super().__init__(f"{message} (JSON-RPC error {code})" if code else message)
        self.code = code
        self.data = data
        self.http_status = http_status


class Forwarder:
    """``await forwarder.call_tool(endpoint, name, arguments)``; one connection pool for every agent."""

    def __init__(self, *, max_connections: int = 100):
        # Idle connections are dropped after 2 s, before uvicorn's own 5 s keep-alive timeout closes them
        # from the agent's side: otherwise a call could be sent just as the agent hangs up, and fail.
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                               keepalive_expiry=2.0)
        # No client timeout: the caller bounds each call (registry.toml's call_timeout).
        self._http = httpx2.AsyncClient(limits=limits, timeout=None)
        self._next_id = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call_tool(self, endpoint: str, name: str, arguments: dict[str, Any], *,
                        input_schema: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
                        progress: ProgressCallback | None = None) -> CallToolResult:
        """Call tool ``name``; ``input_schema`` says which arguments travel as ``Mcp-Param-*`` headers too."""
        headers = {MCP_NAME_HEADER: encode_header_value(name)}
        if input_schema:
            headers |= mcp_param_headers(x_mcp_header_map(input_schema), arguments)
        params = {"name": name, "arguments": arguments}
        result = await self.request(endpoint, "tools/call", params, meta=meta, headers=headers, progress=progress)
        return CallToolResult.model_validate(result)

    async def list_tools(self, endpoint: str) -> list[dict[str, Any]]:
        """Every tool the agent lists, as wire dicts, following ``nextCursor`` to the last page."""
        tools: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        while True:
            page = await self.request(endpoint, "tools/list", params)
            # Normalised as the signer saw them: the SDK's own model, dumped as it goes on the wire.
            tools.extend(Tool.model_validate(tool).model_dump(by_alias=True, mode="json", exclude_none=True)
                         for tool in page.get("tools", []))
            if not page.get("nextCursor"):
                return tools
            params = {"cursor": page["nextCursor"]}

    async def request(self, endpoint: str, method: str, params: dict[str, Any], *,
                      meta: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                      progress: ProgressCallback | None = None) -> dict[str, Any]:
        """Send one request and return its ``result``; raise ``AgentError`` for a JSON-RPC error.

        Transport failures surface as ``httpx2.HTTPError``."""
        self._next_id += 1
        request_id = self._next_id
        envelope = {PROTOCOL_VERSION_META_KEY: PROTOCOL_VERSION, CLIENT_CAPABILITIES_META_KEY: {},
                    CLIENT_INFO_META_KEY: CLIENT_INFO, **(meta or {})}
        if progress is not None:
            envelope["progressToken"] = _PROGRESS_TOKEN
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": envelope}}
        request = self._http.build_request("POST", endpoint, content=json.dumps(body),
                                           headers={**_HEADERS, MCP_METHOD_HEADER: method, **(headers or {})})
        response = await self._http.send(request, stream=True)
        try:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                message = await _read_stream(response, request_id, progress)
            else:
                message = _decode(await response.aread(), response)
        finally:
            await response.aclose()
        status = response.status_code
        if "error" in message:
            error = message["error"]
            raise AgentError(error.get("code", 0), error.get("message", "no message"), error.get("data"),
                             http_status=status)
        if "result" not in message:
            raise AgentError(0, f"the answer to {method} holds neither a result nor an error (HTTP {status})",
                             http_status=status)
        return message["result"]


async def _read_stream(response: httpx2.Response, request_id: int,
                       progress: ProgressCallback | None) -> dict[str, Any]:
    """Pass progress notifications on until the response to ``request_id`` arrives."""
    async for event in httpx2.EventSource(response):
        if event.event != "message" or not event.data:
            continue  # keep-alive pings and priming events
        message = _decode(event.data, response)
        if message.get("id") == request_id:
            return message
        if message.get("method") == "notifications/progress" and progress is not None:
            update = message.get("params") or {}
            if update.get("progressToken") == _PROGRESS_TOKEN:
                await progress(update.get("progress", 0), update.get("total"), update.get("message"))
    raise AgentError(0, "the agent closed the stream before answering", http_status=response.status_code)


def _decode(content: str | bytes, response: httpx2.Response) -> dict[str, Any]:
    try:
        message = json.loads(content)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise AgentError(0, f"HTTP {response.status_code} without a JSON-RPC message: {content[:200]!r}",
                         http_status=response.status_code)
    return message

