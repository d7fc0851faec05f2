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

A call made on behalf of an MCP client (``Relay``) carries that client's capabilities and log level in
``_meta``, so the agent may ask it for input (an ``input_required`` result, passed back untouched with
its opaque ``requestState``) and logs to it; every notification on the agent's stream is handed to the
relay. A call without a relay (``POST /v1/invoke``, admission) declares no capabilities and asks for
no logs: the agent answers it with one JSON body, the fast path.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
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
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    CallToolResult,
    InputRequiredResult,
    Prompt,
    Resource,
    ResourceTemplate,
    Tool,
)

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
NotificationCallback = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Relay:
    """The MCP client a call is carried for: what the agent may know of it and how to reach it.

    ``capabilities`` (wire form) and ``log_level`` go to the agent in ``_meta``; ``notify`` receives
    every notification the agent sends on the call's stream except progress (``notifications/message``,
    list changes, ...)."""

    capabilities: Mapping[str, Any] | None = None
    log_level: str | None = None
    notify: NotificationCallback | None = None
    client_info: Mapping[str, Any] | None = None

PROTOCOL_VERSION = "2026-07-28"
CLIENT_INFO = {"name": "mcpmesh-registry", "version": "0.1.0"}
_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: PROTOCOL_VERSION}
_NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}  # what Mcp-Name carries
_PROGRESS_TOKEN = "mesh"  # one request per stream, so one token is enough to recognise its progress


# How each kind of descriptor (``mesh.manifest.KINDS``) is listed: method, result key, the SDK's model.
LISTS = {"tool": ("tools/list", "tools", Tool), "resource": ("resources/list", "resources", Resource),
         "resource_template": ("resources/templates/list", "resourceTemplates", ResourceTemplate),
         "prompt": ("prompts/list", "prompts", Prompt)}
METHOD_NOT_FOUND = -32601


class AgentError(Exception):
    """The agent answered with an error instead of a result.

    ``code`` is the JSON-RPC error code (0 when the answer held no JSON-RPC error) and ``http_status``
    the HTTP status it came with: together they tell the proxy whose fault the failure was (a 413 is
    the request's, a 500 the agent's)."""

    def __init__(self, code: int, message: str, data: Any = None, *, http_status: int | None = None):
        super().__init__(f"{message} (JSON-RPC error {code})" if code else message)
        self.code = code
        self.message = message
        self.data = data
        self.http_status = http_status

    def extra(self) -> dict[str, Any]:
        """The agent's JSON-RPC error as it was (``jsonrpc_error``), for a problem to carry on: a client
        of the registry sees the same code and data (e.g. -32021 with ``requiredCapabilities``)."""
        if not self.code:
            return {}
        error = {"code": self.code, "message": self.message}
        return {"jsonrpc_error": error if self.data is None else {**error, "data": self.data}}


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
                        progress: ProgressCallback | None = None, relay: Relay | None = None,
                        extra: Mapping[str, Any] | None = None,
                        headers: Mapping[str, str] | None = None) -> CallToolResult | InputRequiredResult:
        """Call tool ``name``; ``input_schema`` says which arguments travel as ``Mcp-Param-*`` headers too.

        ``extra`` adds request params as they are (``inputResponses``, ``requestState`` of a retry)."""
        headers = {**(headers or {}), MCP_NAME_HEADER: encode_header_value(name)}
        if input_schema:
            headers |= mcp_param_headers(x_mcp_header_map(input_schema), arguments)
        params = {**(extra or {}), "name": name, "arguments": arguments}
        result = await self.request(endpoint, "tools/call", params, meta=meta, headers=headers, progress=progress,
                                    relay=relay)
        return as_result(result, CallToolResult)

    async def list_tools(self, endpoint: str) -> list[dict[str, Any]]:
        """Every tool the agent lists, as wire dicts, following ``nextCursor`` to the last page."""
        return await self.list_descriptors(endpoint, "tool")

    async def list_descriptors(self, endpoint: str, kind: str) -> list[dict[str, Any]]:
        """Every descriptor of ``kind`` (a ``LISTS`` key) the agent lists, as wire dicts, following
        ``nextCursor`` to the last page. A server without that list (method not found) lists none."""
        method, key, model = LISTS[kind]
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        while True:
            try:
                page = await self.request(endpoint, method, params)
            except AgentError as exc:
                if exc.code == METHOD_NOT_FOUND and kind != "tool":
                    return items
                raise
            # Normalised as the signer saw them: the SDK's own model, dumped as it goes on the wire.
            items.extend(model.model_validate(item).model_dump(by_alias=True, mode="json", exclude_none=True)
                         for item in page.get(key, []))
            if not page.get("nextCursor"):
                return items
            params = {"cursor": page["nextCursor"]}

    async def request(self, endpoint: str, method: str, params: dict[str, Any], *,
                      meta: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                      progress: ProgressCallback | None = None, relay: Relay | None = None) -> dict[str, Any]:
        """Send one request and return its ``result``; raise ``AgentError`` for a JSON-RPC error.

        Transport failures surface as ``httpx2.HTTPError``."""
        self._next_id += 1
        request_id = self._next_id
        envelope = {PROTOCOL_VERSION_META_KEY: PROTOCOL_VERSION, CLIENT_CAPABILITIES_META_KEY: {},
                    CLIENT_INFO_META_KEY: CLIENT_INFO, **(meta or {})}
        if relay is not None:
            envelope[CLIENT_CAPABILITIES_META_KEY] = dict(relay.capabilities or {})
            if relay.client_info:
                envelope[CLIENT_INFO_META_KEY] = dict(relay.client_info)
            if relay.log_level:
                envelope[LOG_LEVEL_META_KEY] = relay.log_level
        if progress is not None:
            envelope["progressToken"] = _PROGRESS_TOKEN
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": envelope}}
        routing = {MCP_METHOD_HEADER: method}
        if isinstance(named := params.get(_NAMED_BY.get(method, "")), str):  # the header must match the body
            routing[MCP_NAME_HEADER] = encode_header_value(named)
        request = self._http.build_request("POST", endpoint, content=json.dumps(body),
                                           headers={**_HEADERS, **routing, **(headers or {})})
        response = await self._http.send(request, stream=True)
        try:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                message = await _read_stream(response, request_id, progress, relay.notify if relay else None)
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


def as_result(result: dict[str, Any], model: type[Any]) -> Any:
    """``result`` as ``model``, or as the ``InputRequiredResult`` it is (kept whole: its ``requestState``
    is the agent's and must go back byte for byte)."""
    if result.get("resultType") == "input_required":
        return InputRequiredResult.model_validate(result)
    return model.model_validate(result)


async def _read_stream(response: httpx2.Response, request_id: int, progress: ProgressCallback | None,
                       notify: NotificationCallback | None) -> dict[str, Any]:
    """Pass notifications on until the response to ``request_id`` arrives."""
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
        elif isinstance(message.get("method"), str) and "id" not in message and notify is not None:
            await notify(message["method"], message.get("params") or {})
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

