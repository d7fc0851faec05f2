"""Idempotency keys: a call retried with the same key is answered once, with the first call's answer.

A client that did not hear back (a dropped connection, a timeout on its side, a registry replica that
died) cannot tell whether its call ran. Sent with an ``Idempotency-Key`` header on ``POST /v1/invoke``,
or ``_meta["io.mcpmesh/idempotency-key"]`` in an MCP ``tools/call``, the retry gets the first call's
answer and run id instead of running the tool again — on whichever replica it lands, since the keys
live in the shared database (table ``idempotency_keys``).

How a key is used (``once``):

- The first call with a key claims it (a row, state ``running``), runs, and stores its answer (state
  ``done``) when that answer names a recorded run — a result or a refusal after the run was recorded.
  A refusal before anything was recorded (bad request, unknown tool, unauthenticated) releases the key:
  nothing ran, so a corrected retry may use it again.
- A retry with the same key and the same request gets the stored answer, marked ``Idempotent-Replayed:
  true`` over HTTP (``"io.mcpmesh/idempotent-replayed": true`` in an MCP result's ``_meta``).
- A retry while the first call still runs gets 409 ``call-in-progress``, with ``Retry-After``: it does
  not wait, so a client never holds two connections for one call. A claim older than the longest a call
  can take (``[approvals] timeout`` waiting for an approver, then ``call_timeout``) plus ``STALE_GRACE``
  belongs to a registry that died mid-call; the next retry takes it over and runs.
- The same key with a different request (agent, tool, arguments, or the other face) is 422
  ``idempotency-key-reused``.
- Keys are per caller: one caller's key never answers another's call. They are kept ``KEEP`` (a day).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import rfc8785
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError

from mesh.manifest import json_digest
from mesh.registry import store, tenancy
from mesh.registry.node import Registry
from mesh.registry.problems import Problem

HEADER = "idempotency-key"
META = "io.mcpmesh/idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
REPLAYED_META = "io.mcpmesh/idempotent-replayed"
MAX_KEY_LENGTH = 255
KEEP = timedelta(days=1)
STALE_GRACE = 30.0  # seconds past the longest a call can take, after which a running claim is abandoned
PURGE_EVERY = 60.0  # seconds between deletions of expired keys, per process


@dataclass
class Answer:
    """What a call answered: HTTP status, the document, and the run it recorded (None: nothing ran)."""

    status: int
    document: dict[str, Any]
    run_id: str | None
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def check_key(key: Any) -> str:
    """A key is 1 to 255 visible ASCII characters (a UUID is the usual choice)."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or not all(33 <= ord(c) <= 126 for c in key):
        raise Problem("bad-request", f"an idempotency key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters "
                                     "(no spaces), e.g. a UUID")
    return key


def fingerprint(face: str, agent: Any, tool: Any, arguments: Any) -> str:
    """What a call asks for, so a key reused for another request is told apart from a retry."""
    try:
        return json_digest({"face": face, "agent": agent, "tool": tool, "arguments": arguments})
    except rfc8785.CanonicalizationError as exc:  # e.g. a lone surrogate; the call would be refused anyway
        raise Problem("invalid-arguments", f"the arguments have no canonical JSON form: {exc}") from exc


async def once(registry: Registry, caller: str, key: str, request: str,
               call: Callable[[], Awaitable[Answer]]) -> Answer:
    """Run ``call`` once for (``caller``, ``key``); a retry gets the stored answer (see the module's doc)."""
    stored = await _off_loop(registry, _claim, registry, caller, key, request)
    if stored is not None:
        return stored
    try:
        answer = await call()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _off_loop(registry, _release, registry, caller, key)
        raise
    if answer.run_id is None:
        await _off_loop(registry, _release, registry, caller, key)
    else:
        await _off_loop(registry, _store, registry, caller, key, answer)
    return answer


async def _off_loop(registry: Registry, function: Callable[..., Any], *args: Any) -> Any:
    if registry.embedded_database:
        return function(*args)  # an SQLite transaction is quicker than a hop to a thread
    return await anyio.to_thread.run_sync(function, *args)


def _tenant() -> tuple[str, str]:
    """The project the call acts in (``tenancy.py``): its keys are kept there, as its runs are."""
    acting = tenancy.current()
    if isinstance(acting, tenancy.Tenant):
        return acting.org, acting.project
    return tenancy.DEFAULT_ORG, tenancy.DEFAULT_PROJECT


def _claim(registry: Registry, caller: str, key: str, request: str) -> Answer | None:
    """Claim the key (None: go ahead and run), or the stored answer; a ``Problem`` when it cannot be either."""
    _purge(registry)
    try:
        with registry.sessions.begin() as session:
            org, project = _tenant()
            session.add(store.IdempotencyKeyRecord(org_id=org, project_id=project, caller=caller, key=key,
                                                   fingerprint=request, state="running"))
        return None
    except IntegrityError:
        pass
    with registry.sessions.begin() as session:
        record = session.get(store.IdempotencyKeyRecord, (*_tenant(), caller, key))
        if record is None:  # released between our insert and this read: the caller may simply retry
            raise Problem("call-in-progress", "a call with this idempotency key just ended without an answer; "
                                              "send it again", retry_after=1)
        if record.fingerprint != request:
            raise Problem("idempotency-key-reused", f"idempotency key {key!r} was used for a different request; "
                                                    "use a new key for a new call")
        if record.state == "done":
            assert record.status is not None and record.answer is not None
            return Answer(record.status, record.answer, record.run_id, replayed=True)
        age = (store.utcnow() - record.created_at).total_seconds()
        longest = registry.config.call_timeout + registry.config.approvals.timeout  # held for approval, then run
        if age < longest + STALE_GRACE:
            wait = max(1, round(longest - age))
            raise Problem("call-in-progress", f"a call with idempotency key {key!r} is still running; retry after "
                                              f"it ends (in at most {wait} s)", retry_after=wait)
        taken = session.execute(  # abandoned by a registry that died mid-call: take it over, if nobody did
            update(store.IdempotencyKeyRecord)
            .where(store.IdempotencyKeyRecord.caller == caller, store.IdempotencyKeyRecord.key == key,
                   store.IdempotencyKeyRecord.state == "running",
                   store.IdempotencyKeyRecord.created_at == record.created_at)
            .values(created_at=store.utcnow()))
        if taken.rowcount != 1:
            raise Problem("call-in-progress", f"a call with idempotency key {key!r} is running", retry_after=1)
    return None


def _store(registry: Registry, caller: str, key: str, answer: Answer) -> None:
    with registry.sessions.begin() as session:
        session.execute(
            update(store.IdempotencyKeyRecord)
            .where(store.IdempotencyKeyRecord.caller == caller, store.IdempotencyKeyRecord.key == key)
            .values(state="done", status=answer.status, answer=answer.document, run_id=answer.run_id,
                    finished_at=store.utcnow()))


def _release(registry: Registry, caller: str, key: str) -> None:
    with registry.sessions.begin() as session:
        session.execute(delete(store.IdempotencyKeyRecord).where(
            store.IdempotencyKeyRecord.caller == caller, store.IdempotencyKeyRecord.key == key,
            store.IdempotencyKeyRecord.state == "running"))


_last_purge = 0.0


def _purge(registry: Registry) -> None:
    """Forget keys older than ``KEEP``, at most once a minute per process, every project's: bookkeeping, done
    as the registry (in the caller's context it would reach only the caller's project)."""
    global _last_purge
    if time.monotonic() - _last_purge < PURGE_EVERY:
        return
    _last_purge = time.monotonic()
    with tenancy.as_registry(), registry.sessions.begin() as session:
        session.execute(delete(store.IdempotencyKeyRecord).where(
            store.IdempotencyKeyRecord.created_at < store.utcnow() - KEEP))
