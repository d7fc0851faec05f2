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

A client on a 2025-11-25 session (``Relay.session``) may be asked things the modern wire cannot carry: a
tool that calls ``ctx.elicit`` or ``ctx.session.create_message`` sends a request to its client in the
middle of the call. So for such a client the registry opens a 2025-11-25 session of its own with the
agent (``initialize`` with the client's capabilities and info, one per client session and agent, kept
in a bounded table) and sends the call in it. The agent's requests arrive on the call's stream; the
relay's ``ask`` puts them to the client and the answer is posted back in the session. The log level the
client set is set in that session too, and a cancelled call is cancelled there with
``notifications/cancelled`` (closing a 2025-11-25 stream does not cancel). An agent that forgot the
session (it restarted: HTTP 404) gets a new one and the request again, which it never saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp.shared.message import ServerMessageMetadata
from mcp.types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    CallToolResult,
    CreateMessageRequest,
    CreateMessageResult,
    ElicitRequest,
    ElicitResult,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    Prompt,
    Resource,
    ResourceTemplate,
    ServerNotification,
    Tool,
)
from pydantic import TypeAdapter, ValidationError

ProgressCallback = Callable[[float, float | None, str | None], Awaitable[None]]
NotificationCallback = Callable[[str, dict[str, Any]], Awaitable[None]]
AskCallback = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Relay:
    """The MCP client a call is carried for: what the agent may know of it and how to reach it.

    ``capabilities`` (wire form) and ``log_level`` go to the agent in ``_meta``; ``notify`` receives
    every notification the agent sends on the call's stream except progress (``notifications/message``,
    list changes, ...). ``session`` is the client's 2025-11-25 session, if it has one: the call then goes
    in a session of the registry's own with the agent, where ``ask`` answers the agent's requests to the
    client made in the call (method and params in, the client's result out; an ``MCPError`` is the
    client's refusal)."""

    capabilities: Mapping[str, Any] | None = None
    log_level: str | None = None
    notify: NotificationCallback | None = None
    client_info: Mapping[str, Any] | None = None
    session: ClientLink | None = None
    ask: AskCallback | None = None


@dataclass(frozen=True)
class ClientLink:
    """A client's 2025-11-25 session as the registry reaches it outside any one call. ``key`` tells one
    client session from another; what the agent sends on its session's own stream (requests not made in
    a call, resource updates, list changes, logs) is put to ``ask`` and ``notify``."""

    key: str
    ask: AskCallback
    notify: NotificationCallback


# What an agent may ask a client over a 2025-11-25 session: the request's model and its result's.
CLIENT_REQUESTS = {"elicitation/create": (ElicitRequest, ElicitResult),
                   "sampling/createMessage": (CreateMessageRequest, CreateMessageResult),
                   "roots/list": (ListRootsRequest, ListRootsResult)}


def session_asker(session: Any, related_request_id: Any) -> AskCallback:
    """``Relay.ask`` for a client reached over its own 2025-11-25 ``session`` (the SDK's server session),
    the questions tied to the request ``related_request_id`` it is waiting on."""
    related = ServerMessageMetadata(related_request_id=related_request_id)

    async def ask(method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method not in CLIENT_REQUESTS:
            raise MCPError(METHOD_NOT_FOUND, f"{method} is not relayed to clients")
        request_model, result_model = CLIENT_REQUESTS[method]
        result = await session.send_request(request_model.model_validate({"method": method, "params": params}),
                                            result_model, metadata=related)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    return ask


def session_notifier(session: Any, related_request_id: Any = None) -> NotificationCallback:
    """``notify`` for a client reached over its own session: on the stream of request
    ``related_request_id``, or on the session's own stream. Notifications the SDK does not know are
    dropped (they could not be typed for it)."""

    async def notify(method: str, params: dict[str, Any]) -> None:
        try:
            notification = _NOTIFICATION.validate_python({"method": method, "params": params})
        except ValidationError:
            return
        with anyio.CancelScope(shield=True):
            await session.send_notification(notification, related_request_id=related_request_id)

    return notify


@dataclass
class _Session:
    """A 2025-11-25 session the registry holds with an agent on behalf of one client session; ``listener``
    reads the session's own stream for as long as the session is held."""

    id: str
    log_level: str | None = None
    listener: asyncio.Task[None] | None = None


@dataclass
class _Cursor:
    """Where an SSE stream was, to resume it (``Last-Event-ID``) after the agent closed it, and when."""

    last_event_id: str = ""
    retry_ms: int = 1000

PROTOCOL_VERSION = "2026-07-28"
SESSION_PROTOCOL_VERSION = "2025-11-25"
MAX_SESSIONS = 1_000  # sessions with agents held for 2025-11-25 clients; the least recently used is closed
CLIENT_INFO = {"name": "mcpmesh-registry", "version": "0.1.0"}
_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
            MCP_PROTOCOL_VERSION_HEADER: PROTOCOL_VERSION}
_HEADERS_NO_VERSION = {key: value for key, value in _HEADERS.items() if key != MCP_PROTOCOL_VERSION_HEADER}
MCP_SESSION_ID_HEADER = "mcp-session-id"
_NOTIFICATION: TypeAdapter[Any] = TypeAdapter(ServerNotification)
LISTEN_WAIT = 2.0  # seconds a new session waits for its own stream to open before its first call goes
MAX_RESUMES = 20  # a call's stream may be closed and resumed this often before the call is given up
_NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}  # what Mcp-Name carries
_PROGRESS_TOKEN = "mesh"  # one request per stream, so one token is enough to recognise its progress


# How each kind of descriptor (``mesh.manifest.KINDS``) is listed: method, result key, the SDK's model.
LISTS = {"tool": ("tools/list", "tools", Tool), "resource": ("resources/list", "resources", Resource),
         "resource_template": ("resources/templates/list", "resourceTemplates", ResourceTemplate),
         "prompt": ("prompts/list", "prompts", Prompt)}
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603


class _SessionGone(Exception):
    """The agent no longer knows the session (HTTP 404): it restarted, or closed it."""


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
        self._sessions: OrderedDict[tuple[str, str], _Session] = OrderedDict()
        self._opening: dict[tuple[str, str], anyio.Lock] = {}

    async def aclose(self) -> None:
        for session in self._sessions.values():
            if session.listener is not None:
                session.listener.cancel()
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
        if relay is None or relay.session is None:
            return await self._send(endpoint, method, params, meta, headers, progress, relay, None)
        key = (endpoint, relay.session.key)
        for attempt in (1, 2):
            session = await self._session(key, relay)
            try:
                return await self._send(endpoint, method, params, meta, headers, progress, relay, session)
            except _SessionGone:
                if self._sessions.get(key) is session:
                    del self._sessions[key]
                if attempt == 2:
                    raise AgentError(0, "the agent lost its session twice in a row", http_status=404) from None
        raise AssertionError("unreachable")

    async def _send(self, endpoint: str, method: str, params: dict[str, Any], meta: Mapping[str, Any] | None,
                    headers: Mapping[str, str] | None, progress: ProgressCallback | None, relay: Relay | None,
                    session: _Session | None) -> dict[str, Any]:
        """One request as one POST: statelessly (2026-07-28), or in ``session`` (2025-11-25)."""
        self._next_id += 1
        request_id = self._next_id
        if session is None:
            envelope = {PROTOCOL_VERSION_META_KEY: PROTOCOL_VERSION, CLIENT_CAPABILITIES_META_KEY: {},
                        CLIENT_INFO_META_KEY: CLIENT_INFO, **(meta or {})}
            if relay is not None:
                envelope[CLIENT_CAPABILITIES_META_KEY] = dict(relay.capabilities or {})
                if relay.client_info:
                    envelope[CLIENT_INFO_META_KEY] = dict(relay.client_info)
                if relay.log_level:
                    envelope[LOG_LEVEL_META_KEY] = relay.log_level
            routing = {MCP_METHOD_HEADER: method}
            if isinstance(named := params.get(_NAMED_BY.get(method, "")), str):  # the header must match the body
                routing[MCP_NAME_HEADER] = encode_header_value(named)
        else:  # the session already told the agent who the client is; the level was set in it
            envelope = dict(meta or {})
            routing = _session_headers(session)
        if progress is not None:
            envelope["progressToken"] = _PROGRESS_TOKEN
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": envelope}}
        request = self._http.build_request("POST", endpoint, content=json.dumps(body),
                                           headers={**_HEADERS, **(headers or {}), **routing})
        answer = None
        if session is not None and relay is not None:

            async def answer(message: dict[str, Any]) -> None:
                await self._answer(endpoint, session, relay.ask, message)

        try:
            message, response = await self._exchange(request, request_id, progress, relay, answer, session=session)
        except anyio.get_cancelled_exc_class():
            if session is not None:  # closing a 2025-11-25 stream does not cancel the request: say so
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._notify(endpoint, session, "notifications/cancelled",
                                       {"requestId": request_id, "reason": "the client cancelled"})
            raise
        status = response.status_code
        if "error" in message:
            error = message["error"]
            raise AgentError(error.get("code", 0), error.get("message", "no message"), error.get("data"),
                             http_status=status)
        if "result" not in message:
            raise AgentError(0, f"the answer to {method} holds neither a result nor an error (HTTP {status})",
                             http_status=status)
        return message["result"]

    async def _exchange(self, request: httpx2.Request, request_id: int, progress: ProgressCallback | None,
                        relay: Relay | None, answer: Callable[[dict[str, Any]], Awaitable[None]] | None, *,
                        session: _Session | None = None) -> tuple[dict[str, Any], httpx2.Response]:
        """Send ``request``; the JSON-RPC message that answers it, and the HTTP response it came in.

        In a session, an agent may close the call's stream before answering (SSE polling, SEP-1699): the
        stream is then resumed with ``GET`` and ``Last-Event-ID``, after the ``retry`` the agent asked for."""
        cursor = _Cursor()
        notify = relay.notify if relay else None
        for _ in range(MAX_RESUMES + 1):
            response = await self._http.send(request, stream=True)
            try:
                if session is not None and response.status_code == 404:
                    raise _SessionGone(session.id)
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    return _decode(await response.aread(), response), response
                message = await _read_stream(response, request_id, progress, notify, answer, cursor)
            finally:
                await response.aclose()
            if message is not None:
                return message, response
            if session is None or not cursor.last_event_id:
                break
            await anyio.sleep(cursor.retry_ms / 1000)
            request = self._http.build_request("GET", request.url, headers={
                **_HEADERS, **_session_headers(session), "last-event-id": cursor.last_event_id})
        raise AgentError(0, "the agent closed the stream before answering", http_status=response.status_code)

    # -- 2025-11-25 sessions, for clients that have one --------------------------------------------------------

    async def _session(self, key: tuple[str, str], relay: Relay) -> _Session:
        """The session held with the agent for this client session: opened on first use, its log level
        kept as the client last set it."""
        lock = self._opening.setdefault(key, anyio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = await self._open(key[0], relay)
                if relay.session is not None:  # listening before the first call, which may ask on that stream
                    listening = asyncio.Event()
                    session.listener = asyncio.create_task(self._listen(key[0], session, relay.session, listening))
                    with anyio.move_on_after(LISTEN_WAIT):
                        await listening.wait()
                while len(self._sessions) > MAX_SESSIONS:
                    (endpoint, client), evicted = self._sessions.popitem(last=False)
                    self._opening.pop((endpoint, client), None)
                    await self._close(endpoint, evicted)
            self._sessions.move_to_end(key)
            if relay.log_level and relay.log_level != session.log_level:
                await self._send(key[0], "logging/setLevel", {"level": relay.log_level}, None, None, None, None,
                                 session)
                session.log_level = relay.log_level
        return session

    async def _open(self, endpoint: str, relay: Relay) -> _Session:
        """``initialize`` as the client would (its capabilities and info), then ``notifications/initialized``."""
        self._next_id += 1
        request_id = self._next_id
        body = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": {
            "protocolVersion": SESSION_PROTOCOL_VERSION, "capabilities": dict(relay.capabilities or {}),
            "clientInfo": dict(relay.client_info or CLIENT_INFO)}}
        request = self._http.build_request("POST", endpoint, content=json.dumps(body), headers=_HEADERS_NO_VERSION)
        message, response = await self._exchange(request, request_id, None, None, None)
        session_id = response.headers.get(MCP_SESSION_ID_HEADER)
        if "error" in message or not session_id:
            error = message.get("error") or {}
            raise AgentError(error.get("code", 0), error.get("message", "the agent opened no session"),
                             error.get("data"), http_status=response.status_code)
        session = _Session(session_id)
        await self._notify(endpoint, session, "notifications/initialized", {})
        return session

    async def _listen(self, endpoint: str, session: _Session, link: ClientLink, listening: asyncio.Event) -> None:
        """Read the session's own stream (``GET``), resuming it when the agent closes it, and pass what
        comes to the client: requests not made in a call (a tool's ``ctx.session.create_message``),
        resource updates, list changes. Ends when the agent has no such stream or forgot the session."""
        cursor = _Cursor()

        async def answer(message: dict[str, Any]) -> None:
            await self._answer(endpoint, session, link.ask, message)

        while True:
            headers = {**_HEADERS, **_session_headers(session),
                       **({"last-event-id": cursor.last_event_id} if cursor.last_event_id else {})}
            try:
                async with self._http.stream("GET", endpoint, headers=headers) as response:
                    listening.set()
                    if response.status_code != 200:
                        return
                    await _read_stream(response, None, None, link.notify, answer, cursor)
            except _SessionGone:
                return
            except (httpx2.HTTPError, AgentError):
                listening.set()
            await anyio.sleep(cursor.retry_ms / 1000)

    async def _answer(self, endpoint: str, session: _Session, ask: AskCallback | None,
                      message: dict[str, Any]) -> None:
        """Put the agent's request to the client (``ask``) and post the client's answer in the session."""
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if message["method"] == "ping":
            reply["result"] = {}
        elif ask is None:
            reply["error"] = {"code": METHOD_NOT_FOUND, "message": f"{message['method']} is not relayed"}
        else:
            try:
                reply["result"] = await ask(message["method"], message.get("params") or {})
            except MCPError as exc:
                reply["error"] = exc.error.model_dump(by_alias=True, mode="json", exclude_none=True)
            except Exception as exc:  # the client could not be asked (no back-channel, gone): the agent hears why
                reply["error"] = {"code": INTERNAL_ERROR, "message": f"the client could not be asked: {exc}"}
        await self._post_in(endpoint, session, reply)

    async def _notify(self, endpoint: str, session: _Session, method: str, params: dict[str, Any]) -> None:
        await self._post_in(endpoint, session, {"jsonrpc": "2.0", "method": method, "params": params})

    async def _post_in(self, endpoint: str, session: _Session, message: dict[str, Any]) -> None:
        response = await self._http.post(endpoint, content=json.dumps(message),
                                         headers={**_HEADERS, **_session_headers(session)})
        if response.status_code == 404:
            raise _SessionGone(session.id)

    async def _close(self, endpoint: str, session: _Session) -> None:
        """End a session the registry no longer needs (best effort: the agent also drops idle ones)."""
        if session.listener is not None:
            session.listener.cancel()
        with anyio.move_on_after(2):
            with contextlib.suppress(httpx2.HTTPError):
                await self._http.delete(endpoint, headers={**_HEADERS, **_session_headers(session)})


def _session_headers(session: _Session) -> dict[str, str]:
    return {MCP_PROTOCOL_VERSION_HEADER: SESSION_PROTOCOL_VERSION, MCP_SESSION_ID_HEADER: session.id}


def as_result(result: dict[str, Any], model: type[Any]) -> Any:
    """``result`` as ``model``, or as the ``InputRequiredResult`` it is (kept whole: its ``requestState``
    is the agent's and must go back byte for byte)."""
    if result.get("resultType") == "input_required":
        return InputRequiredResult.model_validate(result)
    return model.model_validate(result)


async def _read_stream(response: httpx2.Response, request_id: int | None, progress: ProgressCallback | None,
                       notify: NotificationCallback | None,
                       answer: Callable[[dict[str, Any]], Awaitable[None]] | None,
                       cursor: _Cursor | None = None) -> dict[str, Any] | None:
    """Pass notifications on (and the agent's requests to ``answer``) until the response to ``request_id``
    arrives; None if the stream ends first (``cursor`` then says where it was)."""
    async for event in httpx2.EventSource(response):
        if cursor is not None:
            cursor.last_event_id = event.id or cursor.last_event_id
            cursor.retry_ms = event.retry if event.retry is not None else cursor.retry_ms
        if event.event != "message" or not event.data:
            continue  # keep-alive pings and priming events
        message = _decode(event.data, response)
        if request_id is not None and message.get("id") == request_id and "method" not in message:
            return message
        if message.get("method") == "notifications/progress" and progress is not None:
            update = message.get("params") or {}
            if update.get("progressToken") == _PROGRESS_TOKEN:
                await progress(update.get("progress", 0), update.get("total"), update.get("message"))
        elif isinstance(message.get("method"), str) and "id" in message:
            if answer is not None:
                await answer(message)
        elif isinstance(message.get("method"), str) and notify is not None:
            await notify(message["method"], message.get("params") or {})
    return None


def _decode(content: str | bytes, response: httpx2.Response) -> dict[str, Any]:
    try:
        message = json.loads(content)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise AgentError(0, f"HTTP {response.status_code} without a JSON-RPC message: {content[:200]!r}",
                         http_status=response.status_code)
    return message

