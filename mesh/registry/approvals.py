"""Calls that wait for a person: the policy answers "approval required", someone with the right role says yes
or no, and the call goes on or is refused.

A rule in ``approval_required`` (``registry/policies/mesh.rego``: destructive tools listed in ``[policy]
approve_destructive``, open-world tools in ``approve_open_world``, any rule another policy file adds) holds a
call instead of denying it. The call path (``proxy.py``) then hands it to ``Approvals.hold``, which

1. records an approval request (table ``approval_requests``) naming the call, the rule and the roles that may
   approve (``Decision.approvers``);
2. waits, up to ``[approvals] timeout`` seconds, without holding up any other call, telling the caller it
   still waits as MCP progress (when it asked for progress) every ``[approvals] poll_interval`` seconds;
3. meanwhile a person decides: by the API (``POST /v1/approvals/requests/{id}/approve`` or ``/deny``), the
   CLI (``mesh approvals``, ``mesh approve ID``, ``mesh deny ID``), or, when the caller is itself a person
   who may approve and its MCP client (a 2025-11-25 session) supports elicitation, by answering the
   question the registry puts to that client ("approve this call?");
4. on approval, the call is carried and the request marked executed; on denial or when no one answered in
   time, the call is refused: ``approval-denied`` (403) or ``approval-expired`` (408), naming the request.

The life of a request is one small state machine (``TRANSITIONS``), moved only by ``transition``::

    requested -> approved -> executed
    requested -> denied
    requested -> expired

Each step is a compare-and-set on the row (several registry processes may share one database: an
approval given to one of them reaches the call waiting in another at its next look) and an audit entry
(action ``approval``, outcome the new state, with who, how and when). A step the machine does not allow
(approving a denied or expired request, deciding one twice) is refused with ``approval-conflict`` (409).

Standing approvals of connected sandboxes (``mesh approve AGENT SERVICE``, ``/v1/approvals``,
``mesh/sandbox/lifecycle.py``) are another thing: an operator's lasting yes for an agent's sandboxes to reach
a real service. A request here is a yes or no to one call. Both can apply to one connected sandbox call.

Other kinds of approval (a budget override, say) are requests of another ``kind`` that wait the same way:
``Approvals.request`` and ``Approvals.wait``; or a policy rule that adds to ``approval_required``, which
needs no code at all.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mesh.registry import audit, store, tenancy
from mesh.registry.auth import AuthProblem, Caller, Forbidden, authorize
from mesh.registry.policy import Decision
from mesh.registry.problems import Problem, page_limit, problem_json

if TYPE_CHECKING:
    from mesh.registry.forward import ProgressCallback, Relay
    from mesh.registry.node import Registry

log = logging.getLogger(__name__)

STATES = ("requested", "approved", "denied", "expired", "executed")
# The state machine: every step a request may take. Anything else is refused (approval-conflict).
TRANSITIONS: dict[str, frozenset[str]] = {
    "requested": frozenset({"approved", "denied", "expired"}),
    "approved": frozenset({"executed"}),
}
DECIDED = frozenset({"approved", "denied", "expired"})  # the steps that say who decided, how and when
REGISTRY_ACTOR = "registry"  # who expires a request no one answered
MAX_PAGE = 500
MAX_NOTE = 2000
_Record = store.ApprovalRequestRecord


# -- the state machine, on a session -------------------------------------------------------------------------


def create(session: Session, *, caller: Caller, agent: str, tool: str, rule: str, reasons: list[str],
           approvers: list[str], timeout: float, kind: str = "call", run_id: str | None = None,
           arguments_digest: str | None = None, now: datetime | None = None) -> store.ApprovalRequestRecord:
    """Record a new request (state ``requested``) and its first audit entry, in the caller's transaction."""
    at = now or store.utcnow()
    record = _Record(kind=kind, status="requested", caller=caller.id, agent=agent, tool=tool, rule=rule,
                     reasons=list(reasons), approvers=list(approvers), run_id=run_id,
                     arguments_digest=arguments_digest, requested_at=at, expires_at=at + timedelta(seconds=timeout))
    session.add(record)
    session.flush()
    _audit(session, record, "requested", actor=caller.id, at=at)
    return record


def transition(session: Session, request_id: str, to: str, *, actor: str, via: str | None = None,
               note: str | None = None, now: datetime | None = None) -> store.ApprovalRequestRecord:
    """The one place a request changes state: checked against ``TRANSITIONS``, written only if the row is
    still in the state it was read in (another process may have moved it), and audited."""
    if to not in STATES:
        raise ValueError(f"unknown approval state {to!r}")
    record = session.get(_Record, request_id)
    if record is None:
        raise Problem("unknown-approval", f"no approval request {request_id[:80]!r}")
    before = record.status
    if to not in TRANSITIONS.get(before, frozenset()):
        raise Problem("approval-conflict", f"approval request {record.id} is {before}: it cannot become {to}",
                      request_id=record.id, request_status=before)
    at = now or store.utcnow()
    values: dict[str, Any] = {"status": to}
    if to in DECIDED:
        values |= {"decided_by": actor, "decided_via": via, "decided_at": at, "note": note}
    else:  # executed
        values["executed_at"] = at
    changed = session.execute(update(_Record).where(_Record.id == record.id, _Record.status == before)
                              .values(**values).execution_options(synchronize_session=False))
    if changed.rowcount != 1:
        session.expire(record)
        raise Problem("approval-conflict", f"approval request {record.id} changed meanwhile (now {record.status})",
                      request_id=record.id, request_status=record.status)
    session.refresh(record)
    _audit(session, record, to, actor=actor, at=at)
    return record


def _audit(session: Session, record: store.ApprovalRequestRecord, step: str, *, actor: str, at: datetime) -> None:
    data = {"request_id": record.id, "kind": record.kind, "caller": record.caller, "run_id": record.run_id,
            "rule": record.rule, "reasons": record.reasons, "approvers": record.approvers,
            "via": record.decided_via if step in DECIDED else None}
    audit.append(session, org=record.org_id, actor=actor, action="approval",
                 subject=f"{record.agent}.{record.tool}"[:200],
                 outcome=step, detail=record.note if step in ("approved", "denied") else None, data=data, at=at)


def expire_due(session: Session, now: datetime | None = None) -> list[str]:
    """Expire every request still waiting past its time (its caller gave up, or its registry process
    stopped); returns their ids."""
    at = now or store.utcnow()
    due = list(session.scalars(select(_Record.id).where(_Record.status == "requested", _Record.expires_at <= at)))
    expired = []
    for request_id in due:
        try:
            transition(session, request_id, "expired", actor=REGISTRY_ACTOR, via="timeout", now=at)
            expired.append(request_id)
        except Problem:  # decided meanwhile
            continue
    return expired


def listing(session: Session, status: str | None = "requested", *,
            limit: int = 100) -> list[store.ApprovalRequestRecord]:
    """Requests, oldest first; only those in ``status`` unless it is None."""
    query = select(_Record).order_by(_Record.requested_at, _Record.id).limit(limit)
    if status is not None:
        query = query.where(_Record.status == status)
    return list(session.scalars(query))


def request_json(record: store.ApprovalRequestRecord) -> dict[str, Any]:
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {"id": record.id, "kind": record.kind, "status": record.status, "caller": record.caller,
            "agent": record.agent, "tool": record.tool, "arguments_digest": record.arguments_digest,
            "run_id": record.run_id, "rule": record.rule, "reasons": record.reasons, "approvers": record.approvers,
            "org": record.org_id, "project": record.project_id, "requested_at": when(record.requested_at),
            "expires_at": when(record.expires_at), "decided_by": record.decided_by, "decided_via": record.decided_via,
            "decided_at": when(record.decided_at), "note": record.note, "executed_at": when(record.executed_at)}


def may_approve(caller: Caller, approvers: list[str] | tuple[str, ...]) -> str | None:
    """Why ``caller`` may not decide a request that ``approvers`` may; None when it may."""
    try:
        authorize(caller, "approve-calls")
    except (AuthProblem, Forbidden) as exc:
        return str(exc)
    if caller.acting_role not in approvers:
        return (f"{caller.id} (role {caller.acting_role}) may not decide this request: it needs role "
                f"{' or '.join(approvers)}")
    return None


# -- waiting, on a running registry ---------------------------------------------------------------------------


class Approvals:
    """The registry's approval requests: hold a call until it is decided, and decide."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.settings = registry.config.approvals
        self._decided: dict[str, anyio.Event] = {}  # requests waited on in this process -> set once decided

    async def hold(self, run: Any, decision: Decision, progress: ProgressCallback | None,
                   relay: Relay | None) -> Decision:
        """The call path's hook: wait for a decision on the call ``run`` stands for (``proxy._Run``). Approved:
        the request is marked executed and the decision returned as allowing, naming the approver. Otherwise
        the run is recorded and a ``Problem`` raised (``approval-denied``, ``approval-expired``)."""
        caller = run.caller
        record = await self.request(caller, run.agent, run.tool, decision, run_id=run.id,
                                    arguments_digest=run.arguments_digest)
        try:
            decided = await self.wait(record, progress, relay, caller)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # the caller stopped waiting: the request ends with it
                with contextlib.suppress(Problem):  # decided just now: nothing will carry it out
                    await self._step(record.id, "expired", actor=REGISTRY_ACTOR, via="cancelled",
                                     note="the caller stopped waiting")
                await run.finish("cancelled", None, error=f"cancelled while waiting for approval {record.id}")
            raise
        where = f"{run.agent}.{run.tool}"
        if decided.status == "approved":
            await self._step(record.id, "executed", actor=REGISTRY_ACTOR)
            return replace(decision, allow=True, approvers=(), approved_by=decided.decided_by,
                           approval_request=record.id, reasons=[
                *decision.reasons, f"approved: request {record.id} by {decided.decided_by} ({decided.decided_via})"])
        if decided.status == "denied":
            why = f"; {decided.note}" if decided.note else ""
            error = f"approval request {record.id} was denied by {decided.decided_by}{why}"
            await run.finish("denied", None, error=error)
            raise Problem("approval-denied", f"{where}: {error}", request_id=record.id, rule=decision.rule,
                          run_id=run.id)
        error = f"no one approved request {record.id} within {self.settings.timeout:g} s"
        await run.finish("expired", None, error=error)
        raise Problem("approval-expired", f"{where}: {error}", request_id=record.id, rule=decision.rule, run_id=run.id)

    async def request(self, caller: Caller, agent: str, tool: str, decision: Decision, *, kind: str = "call",
                      run_id: str | None = None, arguments_digest: str | None = None) -> store.ApprovalRequestRecord:
        """Record a request for what ``decision`` held (any ``kind``); wait on it with ``wait``."""

        def write() -> store.ApprovalRequestRecord:
            # The request belongs to the called agent's project (``tenancy.py``): its approvers act there.
            with tenancy.acting_as(self.registry.tenancy.of(agent)), self.registry.sessions.begin() as session:
                record = create(session, caller=caller, agent=agent, tool=tool, rule=decision.rule,
                                reasons=decision.reasons, approvers=list(decision.approvers),
                                timeout=self.settings.timeout, kind=kind, run_id=run_id,
                                arguments_digest=arguments_digest)
                session.expunge(record)
                return record

        record = await anyio.to_thread.run_sync(write)
        self._decided[record.id] = anyio.Event()
        return record

    async def wait(self, record: store.ApprovalRequestRecord, progress: ProgressCallback | None = None,
                   relay: Relay | None = None, caller: Caller | None = None) -> store.ApprovalRequestRecord:
        """Wait until the request is decided or its time is up (then it is expired); returns it decided. The
        caller is asked directly when it may approve and its client can be asked (``_can_ask``)."""
        try:
            async with anyio.create_task_group() as group:
                if caller is not None and _can_ask(caller, record, relay):
                    group.start_soon(self._ask, record, caller, relay)
                decided = await self._until_decided(record, progress)
                group.cancel_scope.cancel()  # an unanswered question to the client is withdrawn
            return decided
        finally:
            self._decided.pop(record.id, None)

    async def _until_decided(self, record: store.ApprovalRequestRecord,
                             progress: ProgressCallback | None) -> store.ApprovalRequestRecord:
        timeout, started = self.settings.timeout, time.monotonic()
        woken = self._decided.setdefault(record.id, anyio.Event())
        who = " or ".join(record.approvers)
        while True:
            current = await anyio.to_thread.run_sync(self.get, record.id)
            if current.status != "requested":
                return current
            waited = time.monotonic() - started
            if waited >= timeout:
                try:
                    return await self._step(record.id, "expired", actor=REGISTRY_ACTOR, via="timeout")
                except Problem:  # decided at the last moment: read it again
                    continue
            if progress is not None:
                await progress(round(waited, 3), timeout, f"waiting for approval {record.id} by {who} "
                                                          f"(mesh approve {record.id})")
            with anyio.move_on_after(min(self.settings.poll_interval, timeout - waited)):
                await woken.wait()

    async def _ask(self, record: store.ApprovalRequestRecord, caller: Caller, relay: Any) -> None:
        """Put the question to the caller's client (MCP elicitation); its answer decides. A client that
        cannot ask, or a person who dismisses the question, leaves the request to the API and the CLI."""
        reasons = "; ".join(record.reasons)
        params = {"mode": "form",
                  "message": f"Approve the call of {record.agent}.{record.tool}? It needs an approval ({reasons}); "
                             f"request {record.id}.",
                  "requestedSchema": {"type": "object", "required": ["approve"], "properties": {"approve": {
                      "type": "boolean", "title": "Approve", "description": "yes: make the call; no: refuse it"}}}}
        try:
            answer = await relay.ask("elicitation/create", params)
        except Exception as exc:  # any failure to ask leaves the decision to the API and the CLI
            log.info("could not ask %s about approval %s: %s", caller.id, record.id, exc)
            return
        action, content = answer.get("action"), answer.get("content") or {}
        if action == "accept" and content.get("approve") is True:
            verdict = "approved"
        elif action == "decline" or (action == "accept" and content.get("approve") is False):
            verdict = "denied"
        else:  # cancelled: no choice made
            return
        try:
            await self.decide(caller, record.id, verdict, via="elicitation")
        except Problem as problem:  # decided by someone else first, or expired
            log.info("answer to approval %s not taken: %s", record.id, problem)

    # -- deciding ---------------------------------------------------------------------------------------

    def get(self, request_id: str) -> store.ApprovalRequestRecord:
        with self.registry.sessions() as session:
            record = session.get(_Record, request_id)
            if record is None:
                raise Problem("unknown-approval", f"no approval request {request_id[:80]!r}")
            session.expunge(record)
            return record

    async def decide(self, caller: Caller, request_id: str, verdict: str, *, via: str = "api",
                     note: str | None = None) -> store.ApprovalRequestRecord:
        """``caller`` approves or denies (``verdict``) a waiting request; a request past its time is expired
        instead, and the answer says so (``approval-expired``)."""
        if verdict not in ("approved", "denied"):
            raise ValueError(f"a verdict is approved or denied, not {verdict!r}")

        def write() -> tuple[store.ApprovalRequestRecord, bool]:
            with self.registry.sessions.begin() as session:
                record = session.get(_Record, request_id)
                if record is None:
                    raise Problem("unknown-approval", f"no approval request {request_id[:80]!r}")
                refusal = may_approve(caller, record.approvers)
                if refusal is not None:
                    raise Problem("forbidden", refusal)
                late = record.status == "requested" and record.expires_at <= store.utcnow()
                if late:
                    record = transition(session, request_id, "expired", actor=REGISTRY_ACTOR, via="timeout")
                else:
                    record = transition(session, request_id, verdict, actor=caller.id, via=via, note=note)
                session.expunge(record)
                return record, late

        record, late = await anyio.to_thread.run_sync(write)
        self._wake(request_id)
        if late:
            raise Problem("approval-expired", f"approval request {request_id} expired at "
                          f"{record.expires_at.isoformat()}: it can no longer be {verdict}", request_id=request_id)
        return record

    async def _step(self, request_id: str, to: str, *, actor: str, via: str | None = None,
                    note: str | None = None) -> store.ApprovalRequestRecord:
        def write() -> store.ApprovalRequestRecord:
            with self.registry.sessions.begin() as session:
                record = transition(session, request_id, to, actor=actor, via=via, note=note)
                session.expunge(record)
                return record

        record = await anyio.to_thread.run_sync(write)
        self._wake(request_id)
        return record

    def _wake(self, request_id: str) -> None:
        event = self._decided.get(request_id)
        if event is not None:
            event.set()

    def pending(self, status: str | None = "requested", limit: int = 100) -> list[store.ApprovalRequestRecord]:
        """Requests in ``status`` (None: all), oldest first; overdue ones are expired first, so what is listed
        as waiting still is."""
        with self.registry.sessions.begin() as session:
            expire_due(session)
            found = listing(session, status, limit=limit)
            session.expunge_all()
            return found


def _can_ask(caller: Caller, record: store.ApprovalRequestRecord, relay: Any) -> bool:
    """Ask the caller directly? Only a person who may approve this request, over a client session that says
    it can be asked (elicitation) and that the registry can reach in the middle of a call (2025-11-25)."""
    return (relay is not None and relay.ask is not None and "elicitation" in (relay.capabilities or {})
            and caller.kind == "user" and may_approve(caller, record.approvers) is None)


# -- routes ----------------------------------------------------------------------------------------------------


def routes(registry: Registry) -> list[Route]:
    """``/approvals/requests...`` under ``/v1``: list and read (action ``read``), approve and deny (action
    ``approve-calls``, and a role the request names)."""
    from mesh.registry.gate import allowed, parse_json  # the gate builds on the node

    async def requests(request: Request) -> JSONResponse:
        """Approval requests, oldest first: those waiting unless ``status`` says otherwise (``all``: every one)."""
        allowed(registry, request, "read")
        params = request.query_params
        status = params.get("status", "requested")
        if status != "all" and status not in STATES:
            raise Problem("bad-request", f"status must be one of {', '.join(STATES)} or all, not {status[:40]!r}")
        limit = page_limit(params, 100, MAX_PAGE)
        found = await anyio.to_thread.run_sync(registry.approvals.pending, None if status == "all" else status, limit)
        return JSONResponse({"requests": [request_json(r) for r in found]})

    async def one(request: Request) -> JSONResponse:
        """One approval request, in whatever state it is."""
        allowed(registry, request, "read")
        record = await anyio.to_thread.run_sync(registry.approvals.get, request.path_params["request_id"])
        return JSONResponse(request_json(record))

    def deciding(verdict: str):
        async def decide(request: Request) -> JSONResponse:
            caller = allowed(registry, request, "approve-calls")
            body = parse_json(await request.body(), registry.config.max_json_depth) if await request.body() else {}
            if not isinstance(body, dict):
                raise Problem("bad-request", "the request body must be a JSON object (or empty)")
            note = body.get("note")
            if note is not None and not (isinstance(note, str) and len(note) <= MAX_NOTE):
                raise Problem("bad-request", f"note must be a string of at most {MAX_NOTE} characters")
            record = await registry.approvals.decide(caller, request.path_params["request_id"], verdict, note=note)
            return JSONResponse(request_json(record))

        decide.__doc__ = f"The caller (an approver) says the waiting call is {verdict}; its note is kept."
        return decide

    return [Route("/approvals/requests", problem_json(requests), methods=["GET"]),
            Route("/approvals/requests/{request_id}", problem_json(one), methods=["GET"]),
            Route("/approvals/requests/{request_id}/approve", problem_json(deciding("approved")), methods=["POST"]),
            Route("/approvals/requests/{request_id}/deny", problem_json(deciding("denied")), methods=["POST"])]


def openapi_paths(read: tuple[int, ...], write: tuple[int, ...]) -> dict[str, Any]:
    """The routes above in the registry's OpenAPI document (``openapi.py`` merges them in)."""
    from mesh.registry.openapi import _json_body, _list, _nullable, _object, _operation, _param, _responses

    when = _nullable("string", format="date-time")
    request = _object(
        {"id": {"type": "string", "format": "uuid"}, "kind": {"type": "string", "description": "call"},
         "status": {"enum": list(STATES)}, "caller": {"type": "string"}, "agent": {"type": "string"},
         "tool": {"type": "string"}, "arguments_digest": _nullable("string"), "run_id": _nullable("string"),
         "rule": {"type": "string", "description": "the policy rule that asked for the approval"},
         "reasons": _list({"type": "string"}), "approvers": _list({"type": "string"}),
         "org": {"type": "string"}, "project": {"type": "string"}, "requested_at": when, "expires_at": when,
         "decided_by": _nullable("string"), "decided_via": _nullable("string", description="api, elicitation, "
                                                                      "timeout or cancelled"),
         "decided_at": when, "note": _nullable("string"), "executed_at": when},
        ["id", "kind", "status", "caller", "agent", "tool", "rule", "approvers", "requested_at", "expires_at"])
    one = [_param("request_id", "path", {"type": "string"}, "the approval request's id")]

    def decide(verdict: str, operation_id: str) -> dict[str, Any]:
        return {"post": _operation(
            f"An approver {verdict} a call waiting for approval",
            _responses(request, f"the request, {verdict}", *write, 404, 408, 409,
                       s403="the caller lacks action approve-calls or a role the request names",
                       s404="no such approval request", s408="the request expired before this answer",
                       s409="the request was already decided (or executed)"),
            parameters=one, body=_json_body(_object({"note": {"type": "string", "maxLength": MAX_NOTE}}),
                                            "{} or a note, kept with the request and in the audit log"),
            operation_id=operation_id)}

    return {
        "/v1/approvals/requests": {"get": _operation(
            "Calls the policy holds for a person's approval, oldest first",
            _responses(_object({"requests": _list(request)}, ["requests"]), "the requests", *read, 400),
            parameters=[_param("status", "query", {"enum": [*STATES, "all"], "default": "requested"},
                               "requests in this state (default: those waiting)"),
                        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                                  "default": 100}, "how many")],
            operation_id="listApprovalRequests")},
        "/v1/approvals/requests/{request_id}": {"get": _operation(
            "One approval request", _responses(request, "the request", *read, 404, s404="no such approval request"),
            parameters=one, operation_id="getApprovalRequest")},
        "/v1/approvals/requests/{request_id}/approve": decide("approves", "approveRequest"),
        "/v1/approvals/requests/{request_id}/deny": decide("denies", "denyRequest"),
    }
