"""The registry's front door: every HTTP request passes here before any route sees it.

In order: the ``Host`` must be one of the registry's own (DNS rebinding), a browser's ``Origin`` must be
on the allow-list (a web page must not act as the local user), a body must be JSON and no bigger than
``max_body_bytes``, and the caller must be known — an agent by its token, or the local user on
loopback — except on the few routes that authenticate by themselves or are public. The caller found
here, placed in the project it acts in (``tenancy.py``: ``X-Project-Id``, an agent's own), is kept in
``request.state.caller`` for the routes, which run acting as that project.

Refusals are problem+json on ``/v1`` and JSON-RPC errors on the MCP endpoints, with the HTTP status
that names the problem: 421 foreign host, 403 foreign origin, 415 not JSON, 413 too large, 401 no caller.
"""

from __future__ import annotations

import json
import re
from http.cookies import SimpleCookie
from typing import Any
from uuid import UUID

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh.registry import tenancy
from mesh.registry.auth import ANONYMOUS, AuthProblem, Caller, Forbidden, authorize
from mesh.registry.node import Registry
from mesh.registry.oidc import www_authenticate
from mesh.registry.people import SESSION_COOKIE
from mesh.registry.problems import Problem

# Routes anyone may reach (after the host and origin checks): public documents, and the two that carry
# their own proof — a registration's token is checked against the agent's keys, a revocation statement
# is signed. An agent's JWKS and A2A card are not among them: they name an agent of some project, so
# only a caller of that project gets them (``tenancy.py``).
_OPEN = [
    ("GET", re.compile(r"/healthz")),
    ("GET", re.compile(r"/\.well-known/[^/]+")),
    ("GET", re.compile(r"/\.well-known/oauth-protected-resource/.*")),  # RFC 9728's path-suffixed form
    ("GET", re.compile(r"/v1/auth/(login|callback)")),  # a browser's sign-in: the provider proves who it is
    ("GET", re.compile(r"/v1/?")),  # the index of the API
    ("GET", re.compile(r"/v1/openapi\.json")),
    ("POST", re.compile(r"/v1/agents")),
    ("POST", re.compile(r"/v1/agents/[^/]+/revocations")),
]
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def is_run_id(value: str) -> bool:
    """Is ``value`` a run id (a UUID)? Checked wherever one comes in: paths, x-mesh-parent-run."""
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def is_open(method: str, path: str) -> bool:
    return any(method == m and pattern.fullmatch(path) for m, pattern in _OPEN)


_HOST = re.compile(r"(?P<host>\[[0-9a-f:.]+\]|[^\[\]:/@\s]+)(?::(?P<port>\d{1,5}|\*))?")


def _split_host(value: str) -> tuple[str, str | None] | None:
    """``host[:port]`` (IPv6 in brackets) into its host and port; None when it is not that shape."""
    match = _HOST.fullmatch(value.lower())
    return (match["host"], match["port"]) if match else None


def host_allowed(value: str | None, patterns: list[str]) -> bool:
    parts = _split_host(value) if value else None
    if parts is None or parts[1] == "*":
        return False
    host, port = parts
    for pattern in patterns:
        allowed = _split_host(pattern)
        if allowed is not None and host == allowed[0] and allowed[1] in ("*", port):
            return True
    return False


def origin_allowed(origin: str, patterns: list[str]) -> bool:
    origin = origin.lower().rstrip("/")
    for pattern in patterns:
        pattern = pattern.lower().rstrip("/")
        if origin == pattern or (pattern.endswith(":*") and origin.rpartition(":")[0] == pattern[:-2]):
            return True
    return False


class Refused(Exception):
    def __init__(self, problem: Problem, headers: dict[str, str] | None = None):
        self.problem = problem
        self.headers = headers or {}


class Gate:
    """ASGI middleware in front of the whole registry app (``/v1``, ``/mcp``, well-known documents)."""

    def __init__(self, app: ASGIApp, registry: Registry):
        self.app = app
        self.registry = registry
        config = registry.config
        self.hosts = config.host_patterns()
        self.origins = config.origin_patterns()
        self.max_body = config.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self.admit(scope, receive)
        except Refused as refused:
            await self.refusal(scope, refused)(scope, receive, send)
            return
        caller = scope["state"]["caller"]
        if caller.kind == "anonymous":  # an open route: it names whom it acts for itself (registration)
            await self.app(scope, receive, send)
            return
        with tenancy.acting_as(self.registry.tenancy.of_caller(caller)):  # the store shows only its project
            await self.app(scope, receive, send)

    async def admit(self, scope: Scope, receive: Receive) -> Receive:
        """Check one request; return the ``receive`` to pass on (a replay when the body had to be read)."""
        headers = Headers(scope=scope)
        method, path = scope["method"], scope["path"]
        host = headers.get("host")
        if not host_allowed(host, self.hosts):
            raise Refused(Problem("misdirected-request", f"this registry does not answer for host {host!r}"))
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, self.origins):
            raise Refused(Problem("forbidden-origin", f"requests from origin {origin!r} are not allowed "
                                                      "(add it to [registry] allowed_origins)"))
        if method in _WITH_BODY:
            media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type != "application/json":
                raise Refused(Problem("unsupported-media-type",
                                      f"{method} {path} takes application/json, not {media_type or 'no content type'}"))
            receive = await self.limit_body(headers, receive)
        caller = ANONYMOUS
        if not is_open(method, path):
            client = scope.get("client")
            try:
                caller = self.registry.identify(bearer_of(headers), client[0] if client else None)
                if caller.kind == "anonymous":
                    raise AuthProblem("this route needs a caller: an agent's bearer token, or the local user "
                                      "on loopback")
            except AuthProblem as exc:
                oidc = self.registry.config.oidc  # a configured audience is the registry's public URL
                base = oidc.audience if oidc and oidc.audience else f"{scope.get('scheme', 'http')}://{host}"
                error = "invalid_token" if bearer_of(headers) else None
                raise Refused(Problem("unauthenticated", str(exc)), {"www-authenticate": www_authenticate(base, error)}
                              ) from exc
            try:
                caller = self.registry.tenancy.place(caller, headers.get(tenancy.HEADER))
            except Problem as problem:
                raise Refused(problem) from problem
        scope.setdefault("state", {})["caller"] = caller
        return receive

    async def limit_body(self, headers: Headers, receive: Receive) -> Receive:
        """Refuse a body over the limit: by its Content-Length, or, when it has none, by reading it."""
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Refused(Problem("bad-request", "Content-Length is not a number"))
            if int(declared) > self.max_body:
                raise Refused(self.too_large(int(declared)))
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                raise Refused(self.too_large(size))
            if not message.get("more_body"):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        return replayed

    def too_large(self, size: int) -> Problem:
        return Problem("payload-too-large", f"the request body has {size} bytes; this registry takes at most "
                                            f"{self.max_body} (registry.toml: max_body_bytes)")

    def refusal(self, scope: Scope, refused: Refused) -> Any:
        problem = refused.problem
        if _is_mcp(scope["path"]):
            error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": str(problem),
                                                             "data": problem.to_json()}}
            return JSONResponse(error, status_code=problem.status, headers=refused.headers)
        response = problem.response()
        response.headers.update(refused.headers)
        return response


def _is_mcp(path: str) -> bool:
    """Paths whose clients speak JSON-RPC (MCP, A2A): refused with a JSON-RPC error, not problem+json."""
    if path == "/mcp" or path.startswith("/mcp/"):
        return True
    return path.startswith("/agents/") and path.rstrip("/").endswith(("/mcp", "/a2a"))


def json_depth_ok(value: Any, limit: int) -> bool:
    """Is ``value`` nested at most ``limit`` deep? Iterative, so a hostile document cannot blow the stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def parse_json(body: bytes, limit: int) -> Any:
    """A request body as JSON, refusing what is not JSON or is nested deeper than ``limit``."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem("bad-request", f"the request body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise Problem("bad-request", f"the request body is nested deeper than {limit} levels") from exc
    if not json_depth_ok(value, limit):
        raise Problem("bad-request", f"the request body is nested deeper than {limit} levels")
    return value


def bearer_of(headers: Headers) -> str | None:
    """The Authorization header, or else a browser's sign-in cookie presented as the bearer token it holds."""
    authorization = headers.get("authorization")
    if authorization is None:
        cookie = SimpleCookie(headers.get("cookie", "")).get(SESSION_COOKIE)
        if cookie is not None and cookie.value:
            return f"Bearer {cookie.value}"
    return authorization


def caller_of(registry: Registry, request: Request | None) -> Caller:
    """The caller the gate identified; without a request (stdio, in-process) the local user."""
    if request is None:
        return registry.identify(None, "127.0.0.1")
    caller = getattr(request.state, "caller", None)
    if caller is not None:
        return caller
    try:
        return registry.identify(bearer_of(request.headers), request.client.host if request.client else None)
    except AuthProblem as exc:
        raise Problem("unauthenticated", str(exc)) from exc


def allowed(registry: Registry, request: Request | None, action: str, agent: str | None = None, *,
            caller: Caller | None = None) -> Caller:
    """The request's caller (or ``caller``), if it may do ``action`` (``auth.authorize``); else an
    ``unauthenticated`` or ``forbidden`` Problem."""
    caller = caller or caller_of(registry, request)
    try:
        authorize(caller, action, agent)
    except AuthProblem as exc:
        raise Problem("unauthenticated", str(exc)) from exc
    except Forbidden as exc:
        raise Problem("forbidden", str(exc)) from exc
    return caller
