"""The registry node as one Starlette app: HTTP API under ``/v1``, MCP at ``/mcp`` and
``/agents/{name}/mcp`` (``mcp_front.py``), JWKS, health.

Calls made over HTTP or MCP take the same path (``proxy.py``) and fail with the same kinds of problems.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from uuid import UUID

import anyio
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from mesh import telemetry
from mesh.builder import module as builder_module
from mesh.builder.routes import routes as builder_routes
from mesh.keys import KeyProblem, b64url, b64url_decode
from mesh.learning import records as learning_records
from mesh.learning.routes import routes as learning_routes
from mesh.names import NAME_RULE, is_valid_name
from mesh.registry import (
    a2a_front,
    admission,
    approvals,
    audit,
    budgets,
    credentials,
    idempotency,
    oidc,
    people,
    proxy,
    replicas,
    store,
    tenancy,
)
from mesh.registry.auth import Caller
from mesh.registry.forward import Forwarder
from mesh.registry.gate import Gate, allowed, is_run_id, parse_json
from mesh.registry.mcp_front import Front
from mesh.registry.node import Registry, run_json
from mesh.registry.openapi import openapi_document
from mesh.registry.problems import Problem, page_limit, problem_json
from mesh.sandbox.routes import SandboxRoutes

log = logging.getLogger(__name__)
MAX_RUNS_PAGE = 1000
MIN_RUN_PREFIX = 8
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


async def read_json(registry: Registry, request: Request) -> dict[str, Any]:
    body = parse_json(await request.body(), registry.config.max_json_depth)
    if not isinstance(body, dict):
        raise Problem("bad-request", "the request body must be a JSON object")
    return body


def path_name(request: Request, what: str = "agent name") -> str:
    """A name from the URL path, checked by the one rule for names (404 for one that cannot exist)."""
    name = request.path_params["name"]
    if not is_valid_name(name):
        raise Problem("unknown-agent", f"no agent {name[:80]!r} is registered ({what}s are {NAME_RULE})")
    return name


def query_name(value: str | None, what: str) -> str | None:
    if value is not None and not is_valid_name(value):
        raise Problem("bad-request", f"{what} {value[:80]!r} is not a valid name ({NAME_RULE})")
    return value


def run_cursor(run: store.RunRecord) -> str:
    return b64url(json.dumps([run.started_at.isoformat(), run.id]).encode())


def read_run_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor ``run_cursor`` made: a run's start (an instant, with its offset) and id."""
    try:
        started_at, run_id = json.loads(b64url_decode(cursor))
        UUID(run_id)
        instant = datetime.fromisoformat(started_at)
        if instant.tzinfo is None:
            raise ValueError("a cursor's time must carry its offset")
        return instant.astimezone(UTC), run_id
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise Problem("bad-request", "cursor is not one this registry gave out (use next_cursor as is)") from exc


def build_app(registry: Registry) -> Starlette:
    # Host and Origin are checked for every route by the gate, with the registry's own allow-lists.
    unchecked = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    mesh_mcp = Front(registry, whole_mesh=True).server()
    mcp_app = mesh_mcp.streamable_http_app(json_response=False, host=registry.config.host,
                                           transport_security=unchecked)
    agent_mcp = Front(registry, whole_mesh=False).server()
    agent_mcp.streamable_http_app(json_response=False, host=registry.config.host, transport_security=unchecked)
    agent_mcp_app = StreamableHTTPASGIApp(agent_mcp.session_manager)
    sandboxes = SandboxRoutes(registry)  # /v1/agents/{name}/sandboxes..., /v1/approvals, each sandbox's MCP

    async def health(request: Request) -> JSONResponse:
        """Liveness, for anyone (``mesh up`` waits on it): no count of agents or tools, which are some
        project's business (``GET /v1/agents`` lists the caller's)."""
        return JSONResponse({"status": "ok", "replica": registry.replica_id})

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(registry.provenance_jwks)

    api_document = openapi_document()

    async def openapi(request: Request) -> JSONResponse:
        """This API as OpenAPI 3.1 (``openapi.py``)."""
        return JSONResponse(api_document)

    async def register(request: Request) -> JSONResponse:
        """Register (or re-register) an agent; the bearer token must be the agent's own."""
        body = await read_json(registry, request)
        name, endpoint, manifest = body.get("name"), body.get("endpoint"), body.get("manifest")
        if not (isinstance(name, str) and isinstance(endpoint, str) and isinstance(manifest, dict)):
            raise Problem("bad-request", "registration needs name, endpoint and manifest")
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        trust = registry.authenticate_registration(name, token, body.get("jwks"))
        return JSONResponse(await admission.admit(registry, name, endpoint, manifest, body.get("jwks"), trust))

    async def agents(request: Request) -> JSONResponse:
        """Every registered agent with its status, reputation and tools."""
        allowed(registry, request, "read")
        with registry.sessions.begin() as session:
            assessed = learning_records.proficiency_by_agent(session)  # per agent, per target system
            listed = [{**registry.agent_json(a), "proficiency": assessed.get(a.name, {})}
                      for a in store.list_agents(session)]
        for document in listed:  # what the builder made an agent for (mesh ls shows its role)
            build = builder_module.read_build(registry.config.workspace, document["name"])
            if build is not None:
                document["blueprint"] = build.get("blueprint")
        return JSONResponse({"agents": listed})

    async def agents_or_register(request: Request) -> JSONResponse:
        """One route for both, so that a wrong method's 405 names both in Allow."""
        return await (register(request) if request.method == "POST" else agents(request))

    async def agent(request: Request) -> JSONResponse:
        """One agent with its manifest, keys, pinned digests, revoked keys and recent runs."""
        allowed(registry, request, "read")
        name = path_name(request)
        with registry.sessions.begin() as session:
            record = store.get_agent(session, name)
            if record is None:
                raise Problem("unknown-agent", f"no agent {name!r} is registered")
            document = registry.agent_json(record, detail=True)
            document["revoked_keys"] = [{"kid": r.kid, "revoked_at": r.revoked_at.isoformat(), "by": r.revoked_by}
                                        for r in store.list_revocations(session, name)]
            document["recent_runs"] = [run_json(r) for r in store.list_runs(session, name, limit=20)]
            document["proficiency"] = learning_records.proficiency(session, name)  # per target system
        # The builder's record (brief, blueprint, kit, prompt version, validation), for agents it made.
        document["build"] = builder_module.summary(builder_module.read_build(registry.config.workspace, name))
        return JSONResponse(document)

    async def agent_jwks(request: Request) -> JSONResponse:
        """The keys this registry trusts for an agent now (with ``exp`` where a key's overlap ends) and the
        kids it holds revoked: what a client needs to check the signatures listed through the registry."""
        name = path_name(request)  # for whoever sees the agent listed: another project's is unknown
        if not registry.tenancy.visible(allowed(registry, request, "read"), name):
            raise tenancy.unknown_agent(name)
        trust = registry.cached_trust(name)
        keys = [{**key.jwk, **({"exp": key.exp} if key.exp else {})} for key in trust.keys.values()
                if key.kid not in trust.revoked]
        return JSONResponse({"keys": keys, "revoked": sorted(trust.revoked)})

    async def recheck(request: Request) -> JSONResponse:
        """Re-list an agent's tools now and block any that changed after approval."""
        name = path_name(request)
        caller = allowed(registry, request, "recheck", name)
        if not registry.tenancy.visible(caller, name):
            raise tenancy.unknown_agent(name)
        blocked = await admission.recheck(registry, name)
        if blocked is None:
            raise Problem("target-unavailable", f"cannot list the tools of {name!r}; it is marked down")
        return JSONResponse({"blocked": blocked})

    async def revocations(request: Request) -> JSONResponse:
        """Revoke an agent's key by a statement signed by one of its keys; the statement is its own proof."""
        name = path_name(request)
        body = await read_json(registry, request)
        statement = body.get("statement")
        if not isinstance(statement, str):
            raise Problem("bad-request", "a revocation needs statement: a compact JWS by one of the agent's keys")
        try:
            kid, created = registry.accept_revocation(name, statement)
        except KeyProblem as exc:
            registry.audit("unauthenticated", "revoke-key", name, "refused", str(exc), _remote(request),
                           org=None)  # an unproven statement: registry-wide, as a refused registration
            raise Problem("unauthenticated", f"revocation statement refused: {exc}") from exc
        await registry.index_agent(name)
        return JSONResponse({"agent": name, "kid": kid, "status": "revoked" if created else "already revoked"})

    async def revoke_key(request: Request) -> JSONResponse:
        """An operator revokes one of an agent's keys (scope registry:admin; the local user has it)."""
        name = path_name(request)
        caller = allowed(registry, request, "admin", name)
        if not registry.tenancy.visible(caller, name):
            raise tenancy.unknown_agent(name)
        body = await read_json(registry, request)
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise Problem("bad-request", "reason must be a string")
        created = registry.revoke(name, request.path_params["kid"], by=caller.id, reason=reason)
        await registry.index_agent(name)
        return JSONResponse({"agent": name, "kid": request.path_params["kid"],
                             "status": "revoked" if created else "already revoked"})

    async def discover(request: Request) -> JSONResponse:
        """Verified tools ranked by words, names and meaning (fused), weighted by reputation; see discovery.py."""
        caller = allowed(registry, request, "read")
        params = request.query_params
        if not params.get("q"):
            raise Problem("bad-request", "discover needs a query: ?q=TEXT")
        if len(params["q"]) > 2000:
            raise Problem("bad-request", "q is longer than 2000 characters")
        try:
            k = int(params.get("k", 10))
        except ValueError as exc:
            raise Problem("bad-request", "k must be an integer") from exc
        read_only = params.get("read_only")
        if read_only is not None and read_only.lower() not in BOOLEANS:
            raise Problem("bad-request", f"read_only must be true or false, not {read_only[:20]!r}")
        flag = None if read_only is None else BOOLEANS[read_only.lower()]
        agent_filter = query_name(params.get("agent"), "agent")
        return JSONResponse({"results": registry.discover(params["q"], k=k, agent=agent_filter, read_only=flag,
                                                          caller=caller)})

    async def invoke(request: Request) -> JSONResponse:
        """Call AGENT.TOOL through the registry (caller, schema, policy, forward, provenance, reputation)."""
        caller = allowed(registry, request, "invoke")
        body = await read_json(registry, request)
        agent_name, tool = body.get("agent"), body.get("tool")
        if not (isinstance(agent_name, str) and isinstance(tool, str)):
            raise Problem("bad-request", "invoke needs agent and tool (strings) and arguments (an object)")
        parent = request.headers.get("x-mesh-parent-run")
        if parent is not None and not is_run_id(parent):
            raise Problem("bad-request", "x-mesh-parent-run must be a run id")
        key = request.headers.get(idempotency.HEADER)
        if key is None:
            outcome = await proxy.invoke(registry, caller, agent_name, tool, body.get("arguments"),
                                         parent_run_id=parent, trace_context=dict(request.headers))
            return JSONResponse(outcome.to_json())

        async def call() -> idempotency.Answer:
            try:
                outcome = await proxy.invoke(registry, caller, agent_name, tool, body.get("arguments"),
                                             parent_run_id=parent, trace_context=dict(request.headers))
            except Problem as problem:
                return idempotency.Answer(problem.status, problem.to_json(), problem.extra.get("run_id"))
            return idempotency.Answer(200, outcome.to_json(), outcome.run_id)

        request_digest = idempotency.fingerprint("http", agent_name, tool, body.get("arguments"))
        try:
            answer = await idempotency.once(registry, caller.id, idempotency.check_key(key), request_digest, call)
        except Problem as problem:
            return problem.response()
        return JSONResponse(answer.document, status_code=answer.status,
                            media_type="application/json" if answer.status < 400 else "application/problem+json",
                            headers={idempotency.REPLAYED_HEADER: "true"} if answer.replayed else None)

    async def runs(request: Request) -> JSONResponse:
        """Recent runs, newest first, a page at a time (``next_cursor``)."""
        allowed(registry, request, "read")
        params = request.query_params
        limit = page_limit(params, 50, MAX_RUNS_PAGE)
        if params.get("log") not in (None, "caller", "target"):
            raise Problem("bad-request", "log must be 'caller' or 'target'")
        caller = params.get("caller")
        if caller is not None and not (caller == "anonymous" or
                                       (caller.startswith("agent:") and is_valid_name(caller[6:])) or
                                       (caller.startswith("user:") and people.USER_ID.fullmatch(caller[5:]))):
            raise Problem("bad-request", "caller must be agent:NAME, user:ID (user:local) or anonymous")
        before = read_run_cursor(params["cursor"]) if params.get("cursor") else None
        with registry.sessions.begin() as session:
            found = store.list_runs(session, query_name(params.get("agent"), "agent"), caller=caller,
                                    log=params.get("log"), limit=limit, before=before)
            next_cursor = run_cursor(found[-1]) if len(found) == limit else None
            return JSONResponse({"runs": [run_json(r) for r in found], "next_cursor": next_cursor})

    async def run(request: Request) -> JSONResponse:
        """One run (by its id, or a unique prefix of 8 or more characters, as `mesh runs` shows it) with its
        provenance JWS (verify it against /.well-known/jwks.json) and linked runs."""
        allowed(registry, request, "read")
        given = request.path_params["run_id"].lower()
        with registry.sessions.begin() as session:
            if is_run_id(given):
                record = store.get_run(session, given)
            elif len(given) >= MIN_RUN_PREFIX:
                found = store.runs_by_prefix(session, given)
                if len(found) > 1:
                    raise Problem("bad-request", f"{given!r} is the start of more than one run; give more of it")
                record = found[0] if found else None
            else:
                raise Problem("unknown-run", f"no run {given[:80]!r} (give its id, or its first {MIN_RUN_PREFIX}"
                                             " characters or more)")
            if record is None:
                raise Problem("unknown-run", f"no run {given[:80]!r}")
            run_id = record.id
            document = run_json(record)
            document["linked"] = [run_json(r) for r in store.linked_runs(session, run_id) if r.id != run_id]
        return JSONResponse(document)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        async with (anyio.create_task_group() as group, mesh_mcp.session_manager.run(),
                    agent_mcp.session_manager.run(), sandboxes.running()):
            registry.forwarder = Forwarder()
            group.start_soon(registry.runlog.run)  # group commit of run records (runlog.py)
            group.start_soon(admission.recheck_forever, registry)
            group.start_soon(save_reputations_forever, registry)
            if registry.channel is not None:  # PostgreSQL: hear what other replicas change
                group.start_soon(replicas.listen_forever, registry)
            if registry.embedded_database:
                group.start_soon(checkpoint_forever, registry)
            group.start_soon(audit.checkpoint_forever, registry)  # signed checkpoints of the audit log
            group.start_soon(registry.budgets.deliver_alerts_forever)  # soft alerts to [budgets] webhook
            group.start_soon(registry.budgets.refresh_forever)  # spend written by other registry processes
            if registry.people.issuer is not None:
                group.start_soon(oidc.prefetch, registry.people.issuer)
            try:
                yield
            finally:
                registry.save_reputations()
                audit.checkpoint(registry.sessions, registry.provenance_key)  # the log's last entries, signed
                await registry.forwarder.aclose()
                group.cancel_scope.cancel()

    async def metrics(request: Request) -> Response:
        """Calls, errors, latency histograms, policy decisions and reputation scores, for Prometheus: the
        series of the agents of the caller's project (and those of no agent); the operator's scraper, every
        series."""
        caller = allowed(registry, request, "read")
        shown = None if is_operator(registry, caller) else registry.tenancy.visible_agents(caller, registry.endpoints)
        body, content_type = telemetry.prometheus_text(shown)
        return Response(body, media_type=content_type)

    async def index(request: Request) -> JSONResponse:
        """What /v1 holds: links to the OpenAPI document and every route, for a person or a script exploring."""
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"name": "mcpmesh registry", "openapi": f"{base}/v1/openapi.json",
                             "mcp": f"{base}/mcp", "metrics": f"{base}/metrics",
                             "routes": {f"{method.upper()} {base}{path}": operation.get("summary", "")
                                        for path, item in api_document["paths"].items()
                                        for method, operation in item.items()}})

    routes = [
        Route("/healthz", health),
        Route("/metrics", problem_json(metrics), methods=["GET"]),
        Route("/.well-known/jwks.json", jwks),
        *oidc.routes(registry),  # /.well-known/oauth-protected-resource, /v1/auth/login and /v1/auth/callback
        *people.routes(registry),  # /v1/users/me, /v1/tokens, /v1/orgs
        # Its own router, so that an unknown path or method under /v1 is a problem (404, 405), not the MCP app's.
        Route("/v1", index, methods=["GET"]),
        Mount("/v1", routes=[
            Route("/", index, methods=["GET"]),
            Route("/openapi.json", openapi),
            Route("/agents", problem_json(agents_or_register), methods=["GET", "POST"]),
            Route("/agents/{name}", problem_json(agent), methods=["GET"]),
            Route("/agents/{name}/recheck", problem_json(recheck), methods=["POST"]),
            Route("/agents/{name}/revocations", problem_json(revocations), methods=["POST"]),
            Route("/agents/{name}/keys/{kid}/revoke", problem_json(revoke_key), methods=["POST"]),
            Route("/discover", problem_json(discover), methods=["GET"]),
            Route("/invoke", problem_json(invoke), methods=["POST"]),
            Route("/runs", problem_json(runs), methods=["GET"]),
            Route("/runs/{run_id}", problem_json(run), methods=["GET"]),
            *approvals.routes(registry),  # /approvals/requests...: calls waiting for a person (before /approvals/{id})
            *sandboxes.api_routes(),  # /approvals: standing approvals of connected sandboxes
            *audit.routes(registry),  # /audit, /audit/export, /audit/checkpoints
            *credentials.routes(registry),  # /secrets, /secrets/{ref}, .../rotate, .../cutover
            *budgets.routes(registry),  # /budgets, /budgets/{budget_id}, .../override
            *learning_routes(registry, sandboxes.front),  # plans, runs (in sandboxes), assessments, prompts
            *builder_routes(registry),  # /builder, /builder/{name}/validation
        ]),
        # One agent through the registry, as a virtual server, with the keys to check what it lists.
        Route("/agents/{name}/mcp", agent_mcp_app),
        Route("/agents/{name}/jwks.json", problem_json(agent_jwks), methods=["GET"]),
        *sandboxes.mcp_routes(),  # /agents/{name}/sandboxes/{id}/mcp
        *a2a_front.routes(registry),  # /agents/{name}/a2a and its card
        Mount("/", app=mcp_app),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(Gate, registry=registry)],
                     exception_handlers={HTTPException: http_problem})


def http_problem(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such path, method not allowed) as RFC 9457 problems."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"type": "about:blank", "title": HTTPStatus(exc.status_code).phrase,
                         "status": exc.status_code, "detail": f"{request.method} {request.url.path}: {exc.detail}"},
                        status_code=exc.status_code, headers=exc.headers, media_type="application/problem+json")



def is_operator(registry: Registry, caller: Caller) -> bool:
    """Is ``caller`` the registry's operator: a person who is owner or admin of the default organisation
    (``[auth] default_org``; the local user owns it), whatever project they act in?"""
    return (caller.kind == "user" and caller.org == registry.config.auth.default_org
            and caller.role in ("owner", "admin"))


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


async def save_reputations_forever(registry: Registry, interval: float = 1.0) -> None:
    """Reputation is learned on every call but written at most once a second, off the call path."""
    while True:
        await anyio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(registry.save_reputations)
        except SQLAlchemyError as exc:  # e.g. two replicas creating one row at once: kept, saved next time
            log.warning("saving reputations failed, will retry: %s", exc)


async def checkpoint_forever(registry: Registry, interval: float = 1.0) -> None:
    """SQLite's write-ahead log is folded back into the database once a second, off the call path."""
    while True:
        await anyio.sleep(interval)
        await anyio.to_thread.run_sync(store.checkpoint, registry.engine)
