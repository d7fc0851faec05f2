"""The registry's audit log: hash-chained entries, signed checkpoints, and their verification.

Every entry's ``hash`` is ``sha256:`` of the RFC 8785 canonical JSON of its content (``CONTENT``), which
includes ``prev``, the hash of the entry before it (``GENESIS`` for the first). Editing, deleting,
inserting or reordering an entry therefore breaks the chain from that point on; rewriting the whole chain
after it is caught by the checkpoints: every so often (``checkpoint_forever``) the registry signs the head
(``seq``, ``hash``) with its provenance key, published at ``/.well-known/jwks.json``. Anyone holding an
export (``export_lines``) and that JWKS can check it (``verify``, ``mesh audit verify``) without trusting
the registry or its database.

One chain, many organisations. Every entry names the organisation it happened in (``org``, covered by
its hash; None for a registry-wide event, and for entries written before migration 0017, which hash as
they always did). ``GET /v1/audit`` shows a caller its organisation's entries only, and the entries of no
organisation only to the default organisation's owners and admins (the registry operator's). Its export
(``GET /v1/audit/export``) carries the caller's entries in full and every other entry as a *witness*
``{"type": "witness", "seq", "prev", "hash"}``, with the signed checkpoints: verifying it checks each own
entry's content against its hash, and every entry's, witness or not, place in the chain (its seq, its
``prev`` the hash before it), so an organisation proves against the JWKS alone that its entries are in the
registry's one chain, unedited and in order, without seeing anyone else's. A witness still tells that an
entry existed at that seq, and its hash: a guess of a whole entry (time to the microsecond included) could
be confirmed against it. What the registry shows as a witness is its word: an export alone cannot prove
that a witness is not one of the caller's own entries. The operator verifies the whole chain, every entry
in full, from the database (``verify_database``, ``mesh audit verify``).

Appends are serialized (``append``): the single-row ``audit_head`` table is updated first in the writer's
transaction, which takes a row lock on PostgreSQL and SQLite's write lock, so two writers never link to
the same predecessor. The database refuses UPDATE and DELETE on the log (triggers, migration 0007).

What goes in: policy decisions with their input (``record_decision``: arguments whose names say secret
are redacted, ``redact``), registrations, key changes, credential administration and use (never a
value), and whatever other modules pass to ``Registry.audit`` (sign-ins, roles, approvals). Each names
its organisation (``org``, a required keyword of every way in, so no call site can forget it): a call's
or decision's, the caller's; a registration's or key change's, the agent's project's; a sign-in's, token's
or role's, the organisation concerned; a budget's, credential's or approval's, its own.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mesh.keys import KeyProblem, SigningKey, TrustStore, unverified_jws
from mesh.manifest import canonical, json_digest
from mesh.registry import store
from mesh.registry.problems import Problem

log = logging.getLogger(__name__)

GENESIS = "sha256:" + "0" * 64  # the ``prev`` of the first entry
CHECKPOINT_TYP = "mcpmesh-audit-checkpoint+jws"
CHECKPOINT_INTERVAL = 60.0  # seconds between signed checkpoints of a registry that is running
# The fields an entry's hash covers, in the JSON an export carries ("hash" is the hash of these).
CONTENT = ("seq", "at", "org", "actor", "action", "subject", "outcome", "detail", "remote", "data", "prev")
WITNESS = ("seq", "prev", "hash")  # all an export shows of another organisation's entry
REDACTED = "[redacted]"
# Argument names that say they hold a secret: their values never reach the log.
SECRET_NAME = re.compile(r"pass(word|phrase|wd)?|secret|token|api[-_]?key|authori[sz]ation|credential|"
                         r"private[-_]?key|cookie|session[-_]?id|signature", re.IGNORECASE)

_events = store.AuditRecord.__table__
_head = store.AuditHeadRecord.__table__
_checkpoints = store.AuditCheckpointRecord.__table__


# -- the chain ---------------------------------------------------------------------------------------


def _safe(value: str | None) -> str | None:
    """What the store will hold for a string (``store.SafeText`` writes NUL as U+FFFD): hash that."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def entry_hash(entry: dict[str, Any]) -> str:
    """The hash of an entry: ``sha256:`` of the canonical JSON of its ``CONTENT`` fields.

    ``org`` is left out when it is None, so an entry written before organisations were recorded
    (migration 0017), or a registry-wide one, hashes exactly as entries always did: old chains verify."""
    content = {name: entry.get(name) for name in CONTENT}
    if content["org"] is None:
        del content["org"]
    return json_digest(content)


def entry_json(record: store.AuditRecord) -> dict[str, Any]:
    """An entry as the API and exports show it: its content plus its hash."""
    return {"seq": record.seq, "at": record.at.isoformat(), "org": record.org_id, "actor": record.actor,
            "action": record.action, "subject": record.subject, "outcome": record.outcome, "detail": record.detail,
            "remote": record.remote, "data": record.data, "prev": record.prev_hash, "hash": record.hash}


def witness(entry: dict[str, Any]) -> dict[str, Any]:
    """Another organisation's entry as an export shows it: where it sits in the chain, not what it says."""
    return {name: entry[name] for name in WITNESS}


# Built once: appends are on the call path, and a statement built per call costs more than it runs.
_ADVANCE = update(_head).where(_head.c.id == 1).values(seq=_head.c.seq + 1).returning(_head.c.seq, _head.c.hash)
_INSERT = insert(_events)
_MOVE_HEAD = update(_head).where(_head.c.id == 1).values(hash=bindparam("new_hash"))


def append(executor: Session | Connection, *, org: str | None, actor: str, action: str, subject: str,
           outcome: str, detail: str | None = None, remote: str | None = None, data: dict[str, Any] | None = None,
           at: datetime | None = None) -> dict[str, Any]:
    """Append one entry in the caller's transaction; returns it as ``entry_json`` does.

    ``org`` (required, so no call site forgets it) is the organisation the event happened in, whose
    owners and admins read it; None for a registry-wide event (the operator's: the default organisation's).

    The head is updated first: on PostgreSQL that locks its row until the transaction ends, on SQLite
    the statement takes the database's write lock; either way the next writer waits and links to this
    entry. Keep the transaction short after this call: every other writer of the log waits for it."""
    seq, prev = executor.execute(_ADVANCE).one()
    at = (at or datetime.now(UTC)).astimezone(UTC)
    # ``data`` as the JSON column gives it back (tuples become lists, keys strings), so the hash holds on read.
    stored = json.loads(json.dumps(data, allow_nan=False)) if data is not None else None
    entry = {"seq": seq, "at": at.isoformat(), "org": _safe(org), "actor": _safe(actor), "action": _safe(action),
             "subject": _safe(subject), "outcome": _safe(outcome), "detail": _safe(detail), "remote": _safe(remote),
             "data": stored, "prev": prev}
    entry["hash"] = entry_hash(entry)
    executor.execute(_INSERT, {"seq": seq, "at": at, "org_id": org, "actor": actor, "action": action,
                               "subject": subject, "outcome": outcome, "detail": detail, "remote": remote,
                               "data": stored, "prev_hash": prev, "hash": entry["hash"]})
    executor.execute(_MOVE_HEAD, {"new_hash": entry["hash"]})
    return entry


def redact(value: Any) -> Any:
    """``value`` with every member whose name says it holds a secret replaced by ``REDACTED``."""
    if isinstance(value, dict):
        return {key: REDACTED if isinstance(key, str) and SECRET_NAME.search(key) else redact(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def record_decision(executor: Session | Connection, *, org: str | None, caller: str, subject: str, allow: bool,
                    rule: str, reasons: list[str], policy_input: dict[str, Any] | None, input_digest: str,
                    run_id: str | None = None) -> dict[str, Any]:
    """Append a policy decision with its input (arguments redacted by name, ``redact``) and the digest of
    the whole input, so the decision can be replayed against the policy and tied to its run. ``org``: the
    caller's organisation (the tenant that acted)."""
    shown = dict(policy_input or {})
    if "arguments" in shown:
        shown["arguments"] = redact(shown["arguments"])
    data = {"input": shown, "input_digest": input_digest, "rule": rule, "reasons": reasons, "run_id": run_id}
    return append(executor, org=org, actor=caller, action="policy-decision", subject=subject,
                  outcome="allow" if allow else "deny", data=data)


# -- checkpoints -------------------------------------------------------------------------------------


def checkpoint(sessions: sessionmaker[Session], key: SigningKey) -> dict[str, Any] | None:
    """Sign the chain's head if it moved since the last checkpoint; returns the checkpoint, or None.

    Registry processes sharing a database may race here: the second one's insert is refused (the
    primary key is the head's ``seq``) and it signs nothing."""
    try:
        with sessions.begin() as session:
            seq, head_hash = session.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).one()
            last = session.scalar(select(func.max(_checkpoints.c.seq)))
            if seq == 0 or (last is not None and last >= seq):
                return None
            at = datetime.now(UTC)
            claims = {"seq": seq, "hash": head_hash, "at": at.isoformat()}
            jws = key.sign(canonical(claims), CHECKPOINT_TYP)
            session.execute(insert(_checkpoints).values(seq=seq, hash=head_hash, at=at, kid=key.kid, jws=jws))
    except IntegrityError:
        return None
    return {**claims, "kid": key.kid, "jws": jws}


def checkpoint_json(record: store.AuditCheckpointRecord) -> dict[str, Any]:
    return {"seq": record.seq, "hash": record.hash, "at": record.at.isoformat(), "kid": record.kid, "jws": record.jws}


async def checkpoint_forever(registry: Any, interval: float = CHECKPOINT_INTERVAL) -> None:
    """While the registry runs: a signed checkpoint every ``interval`` seconds, when the log moved."""
    while True:
        await anyio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(checkpoint, registry.sessions, registry.provenance_key)
        except Exception:  # a database hiccup must not stop the next checkpoint
            log.exception("audit checkpoint failed; trying again in %g s", interval)


# -- reading and exporting ---------------------------------------------------------------------------


def read_chain(session: Session) -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[int, str]]:
    """Every entry in chain order (by ``seq``), every checkpoint, and the head as the database holds it."""
    entries = [entry_json(r) for r in store.list_audit(session, limit=None, oldest_first=True)]
    checkpoints = [checkpoint_json(r) for r in session.scalars(
        select(store.AuditCheckpointRecord).order_by(store.AuditCheckpointRecord.seq))]
    head = session.execute(select(_head.c.seq, _head.c.hash).where(_head.c.id == 1)).one()
    return entries, checkpoints, (head[0], head[1])


def export_lines(entries: Iterable[dict[str, Any]], checkpoints: Iterable[dict[str, Any]],
                 orgs: set[str | None] | None = None) -> Iterator[str]:
    """The log as JSON lines: ``{"type": "entry", ...}`` in chain order, each checkpoint right after the
    entry it covers (``{"type": "checkpoint", ...}``). What ``verify_lines`` reads back.

    ``orgs``: one organisation's view (``visible_orgs``): entries of other organisations are witnesses,
    ``{"type": "witness", "seq", "prev", "hash"}``. Unset: every entry in full (the operator's export)."""
    pending = sorted(checkpoints, key=lambda c: c["seq"])
    for entry in entries:
        if orgs is None or entry["org"] in orgs:
            yield json.dumps({"type": "entry", **entry}, ensure_ascii=False) + "\n"
        else:
            yield json.dumps({"type": "witness", **witness(entry)}) + "\n"
        while pending and pending[0]["seq"] <= entry["seq"]:
            yield json.dumps({"type": "checkpoint", **pending.pop(0)}) + "\n"
    for rest in pending:  # checkpoints past the last entry (the entries after were lost): verify says so
        yield json.dumps({"type": "checkpoint", **rest}) + "\n"


class Witness(dict):  # type: ignore[type-arg]
    """An entry of the chain read back from a ``witness`` line: its ``seq``, ``prev`` and ``hash`` only.
    Its own class, not a field, so no entry line can claim to be one and skip the check of its content."""


def parse_lines(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An export read back: entries (``Witness`` for a witness line) in file order, and checkpoints.
    ``ValueError`` names a bad line."""
    entries: list[dict[str, Any]] = []
    checkpoints = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {number} is not JSON: {exc}") from exc
        kind = item.pop("type", None) if isinstance(item, dict) else None
        if kind == "entry":
            entries.append(item)
        elif kind == "witness":
            if set(item) != set(WITNESS):
                raise ValueError(f"line {number}: a witness holds seq, prev and hash only, not "
                                 f"{', '.join(sorted(item)) or 'nothing'}")
            entries.append(Witness(item))
        elif kind == "checkpoint":
            checkpoints.append(item)
        else:
            raise ValueError(f"line {number} is neither an entry, a witness nor a checkpoint (its type is {kind!r})")
    return entries, checkpoints


# -- verification ------------------------------------------------------------------------------------


@dataclass
class Verification:
    """What checking a log found: ``ok`` when no problem; ``anchored`` is the last seq a valid signed
    checkpoint covers (entries after it could still be cut off unnoticed)."""

    entries: int = 0
    witnesses: int = 0  # of ``entries``, those seen only as witnesses (another organisation's)
    checkpoints: int = 0
    anchored: int = 0
    head: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if not self.ok:
            return f"audit log does NOT verify ({len(self.problems)} problems):\n  " + "\n  ".join(self.problems[:50])
        tail = self.entries - self.anchored
        unanchored = f"; the last {tail} entries are not yet covered by a signed checkpoint" if tail else ""
        witnessed = f" ({self.witnesses} of them another organisation's, seen as witnesses)" if self.witnesses else ""
        return (f"audit log verifies: {self.entries} entries{witnessed} chained from genesis to {self.head}, "
                f"{self.checkpoints} signed checkpoints, the last at entry {self.anchored}{unanchored}")


def verify(entries: list[dict[str, Any]], checkpoints: list[dict[str, Any]], jwks: dict[str, Any],
           head: tuple[int, str] | None = None) -> Verification:
    """Check a log: entries numbered 1, 2, 3... in order, each hash its content's, each ``prev`` the
    previous hash; every checkpoint signed by a key of ``jwks`` (as valid when it was signed) over the
    hash the chain has at its ``seq``; ``head`` (from a database) equal to the last entry.

    A ``Witness`` (another organisation's entry) is checked for its place (seq, and prev linking it to
    the entry before) but not for its content, which the export does not carry."""
    report = Verification(entries=len(entries), witnesses=sum(isinstance(e, Witness) for e in entries))
    hashes: dict[int, str] = {}
    previous = GENESIS
    for position, entry in enumerate(entries, 1):
        seq = entry.get("seq")
        if seq != position:
            report.problems.append(f"entry at position {position} has seq {seq!r} (an entry is missing, inserted "
                                   "or out of order)")
        if entry.get("prev") != previous:
            report.problems.append(f"entry {seq}: prev does not match the hash of the entry before it "
                                   "(the chain is broken here)")
        if isinstance(entry, Witness):
            actual = entry.get("hash")
            if not isinstance(actual, str):
                report.problems.append(f"witness {seq}: its hash is not a string")
                actual = ""
        else:
            actual = entry_hash(entry)
            if actual != entry.get("hash"):
                report.problems.append(f"entry {seq}: its content does not match its hash (edited)")
        previous = entry.get("hash") if isinstance(entry.get("hash"), str) else actual
        if isinstance(seq, int):
            hashes.setdefault(seq, previous)
    report.head = previous
    trust = TrustStore.from_jwks(jwks)
    for checkpoint_ in checkpoints:
        problem = _checkpoint_problem(checkpoint_, trust, hashes)
        if problem:
            report.problems.append(problem)
        else:
            report.checkpoints += 1
            report.anchored = max(report.anchored, checkpoint_["seq"])
    if head is not None and entries and head != (entries[-1].get("seq"), previous):
        report.problems.append(f"the database's head says entry {head[0]} ({head[1]}), but the last entry is "
                               f"{entries[-1].get('seq')} (entries were removed from the end, or added around "
                               "the chain)")
    elif head is not None and not entries and head[0] != 0:
        report.problems.append(f"the database's head says entry {head[0]}, but the log holds no entry")
    return report


def _checkpoint_problem(item: dict[str, Any], trust: TrustStore, hashes: dict[int, str]) -> str | None:
    jws = item.get("jws")
    try:
        _, payload = unverified_jws(jws)  # the time it claims, to judge its key as it was then
        claims = json.loads(payload)
        signed_at = datetime.fromisoformat(claims["at"]).timestamp()
        trust.verify_compact(jws, expected_typ=CHECKPOINT_TYP, now=signed_at)
    except (KeyProblem, ValueError, KeyError, TypeError) as exc:
        return f"checkpoint at entry {item.get('seq')!r}: its signature does not verify ({exc}) (forged)"
    seq, signed_hash = claims.get("seq"), claims.get("hash")
    if (item.get("seq"), item.get("hash")) != (seq, signed_hash):
        return f"checkpoint at entry {item.get('seq')!r}: its record differs from what was signed (entry {seq})"
    if seq not in hashes:
        return f"checkpoint at entry {seq}: the log has no entry {seq} (entries were removed from the end)"
    if hashes[seq] != signed_hash:
        return f"checkpoint at entry {seq}: the signed hash differs from the chain's (entries up to {seq} changed)"
    return None


def verify_lines(lines: Iterable[str], jwks: dict[str, Any]) -> Verification:
    """Check an export (``export_lines``) against the registry's JWKS alone."""
    try:
        entries, checkpoints = parse_lines(lines)
    except ValueError as exc:
        return Verification(problems=[str(exc)])
    return verify(entries, checkpoints, jwks)


def verify_database(sessions: sessionmaker[Session], jwks: dict[str, Any]) -> Verification:
    """Check the log as a database holds it, head included."""
    with sessions() as session:
        entries, checkpoints, head = read_chain(session)
    return verify(entries, checkpoints, jwks, head=head)


# -- HTTP: GET /v1/audit, /v1/audit/export, /v1/audit/checkpoints -------------------------------------

MAX_PAGE = 1000
JSON_LINES = "application/jsonl"
ENTRY_LINE = '{"type": "entry"'  # how every entry line of an export begins
_WHOLE = re.compile(r"[0-9]{1,15}")


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
        if instant.tzinfo is not None:
            instant.astimezone(UTC)  # a time near year 1 or 9999 may have no UTC instant
    except (ValueError, OverflowError) as exc:
        raise Problem("bad-request", f"{name} must be an ISO 8601 time such as 2026-11-30T12:00:00Z, "
                                     f"not {value[:40]!r}") from exc
    if instant.tzinfo is None:
        raise Problem("bad-request", f"{name} must carry its offset (Z or +HH:MM): {value[:40]!r}")
    return instant.astimezone(UTC)


def _positive(value: str | None, name: str, default: int | None, upper: int | None = None) -> int | None:
    if value is None:
        return default
    if not _WHOLE.fullmatch(value) or int(value) < 1 or (upper is not None and int(value) > upper):
        bound = f" and at most {upper}" if upper else ""
        raise Problem("bad-request", f"{name} must be a whole number of at least 1{bound}, not {value[:20]!r}")
    return int(value)


def visible_orgs(registry: Any, caller: Any) -> set[str | None]:
    """The organisations whose entries ``caller`` reads: the one it acts in; and the registry-wide entries
    (no organisation, or written before 0017), the operator's, when that is the default organisation."""
    org = registry.tenancy.of_caller(caller).org
    return {org, None} if org == registry.tenancy.default_org else {org}


def routes(registry: Any) -> list[Any]:
    """The audit log's routes, to mount under ``/v1``; reading it takes action ``audit:read``, and shows
    the caller's organisation's entries only (``visible_orgs``)."""
    from mesh.registry.gate import allowed  # the gate builds on the node, which builds on this module

    def answered(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                caller = allowed(registry, request, "audit:read")
                return await handler(request, visible_orgs(registry, caller))
            except Problem as problem:
                return problem.response()

        wrapped.__doc__ = handler.__doc__
        return wrapped

    async def listing(request: Request, orgs: set[str | None]) -> Response:
        """The caller's organisation's audit entries, newest first, filtered by actor, action, subject and
        time; a page at a time (``next_cursor``), or every match as JSON lines with ``format=jsonl``."""
        params = request.query_params
        unknown = set(params) - {"actor", "action", "subject", "since", "until", "cursor", "limit", "format"}
        if unknown:
            raise Problem("bad-request", f"unknown query parameter {sorted(unknown)[0]!r} (filters: actor, action, "
                                         "subject, since, until; paging: cursor, limit; format=jsonl)")
        if params.get("format") not in (None, "json", "jsonl"):
            raise Problem("bad-request", "format must be json or jsonl")
        lines = params.get("format") == "jsonl"
        limit = _positive(params.get("limit"), "limit", None if lines else 100, None if lines else MAX_PAGE)
        before = _positive(params.get("cursor"), "cursor", None)
        filters = {name: params.get(name) for name in ("actor", "action", "subject")}
        since, until = _time(params.get("since"), "since"), _time(params.get("until"), "until")
        with registry.sessions() as session:
            found = [entry_json(r) for r in store.list_audit(session, **filters, since=since, until=until,
                                                              before_seq=before, limit=limit, orgs=orgs)]
        if lines:
            body = "".join(json.dumps({"type": "entry", **e}, ensure_ascii=False) + "\n" for e in reversed(found))
            return Response(body, media_type=JSON_LINES)
        next_cursor = str(found[-1]["seq"]) if limit is not None and len(found) == limit and found[-1]["seq"] > 1 \
            else None
        return JSONResponse({"entries": found, "next_cursor": next_cursor})

    async def export(request: Request, orgs: set[str | None]) -> Response:
        """The whole chain as JSON lines: the caller's organisation's entries in full, every other one as a
        witness, and the signed checkpoints: what ``mesh audit verify --file`` checks against
        /.well-known/jwks.json."""
        with registry.sessions() as session:
            entries, checkpoints, _ = read_chain(session)
        return StreamingResponse(export_lines(entries, checkpoints, orgs), media_type=JSON_LINES,
                                 headers={"content-disposition": 'attachment; filename="audit.jsonl"'})

    async def checkpoints(request: Request, _orgs: set[str | None]) -> Response:
        """The signed checkpoints, oldest first."""
        with registry.sessions() as session:
            found = [checkpoint_json(r) for r in session.scalars(
                select(store.AuditCheckpointRecord).order_by(store.AuditCheckpointRecord.seq))]
        return JSONResponse({"checkpoints": found})

    return [Route("/audit", answered(listing), methods=["GET"]),
            Route("/audit/export", answered(export), methods=["GET"]),
            Route("/audit/checkpoints", answered(checkpoints), methods=["GET"])]


# -- the command line: mesh audit verify | export ------------------------------------------------------


class AuditCommandProblem(Exception):
    """``mesh audit`` cannot go on; the message says why (the CLI prints it as one line)."""


def read_jwks_from(where: str) -> dict[str, Any]:
    """A JWKS from a file or an http(s) URL (the registry's ``/.well-known/jwks.json``)."""
    import httpx

    try:
        if where.startswith(("http://", "https://")):
            response = httpx.get(where, timeout=10)
            response.raise_for_status()
            document = response.json()
        else:
            with open(where, encoding="utf-8") as handle:
                document = json.load(handle)
    except (OSError, ValueError, httpx.HTTPError) as exc:
        raise AuditCommandProblem(f"cannot read the JWKS at {where}: {exc}") from exc
    if not isinstance(document, dict):
        raise AuditCommandProblem(f"{where} is not a JWKS (a JSON object with keys)")
    return document


def workspace_sessions(workspace: Any) -> sessionmaker[Session]:
    """The workspace registry's database (``MESH_DATABASE_URL``, registry.toml, else ``.mesh/registry.db``)."""
    from mesh.registry.config import RegistryConfig

    configured = RegistryConfig.from_workspace(workspace).database_url
    return store.session_factory(store.connect(store.database_url(workspace.root, configured)))


def workspace_jwks(workspace: Any) -> dict[str, Any]:
    """The registry key's public JWKS, as the workspace's own registry publishes it."""
    from mesh.keys import KeyRing
    from mesh.registry.node import REGISTRY_KEYS

    folder = workspace.state_dir / "keys" / REGISTRY_KEYS
    if not KeyRing.exists(folder):
        raise AuditCommandProblem(f"no registry key under {folder}: pass --jwks FILE|URL")
    return KeyRing.open(folder).public_jwks()


def fetch_export(workspace: Any, registry_url: str) -> list[str]:
    """A running registry's export, as the caller sees it (``$MESH_TOKEN`` or the saved sign-in: that
    organisation's view; neither: the local user's, the default organisation's)."""
    import httpx

    from mesh.login import LoginProblem, headers

    try:
        sent = headers(workspace, registry_url.rstrip("/"))
    except LoginProblem as exc:
        raise AuditCommandProblem(str(exc)) from exc
    try:
        response = httpx.get(f"{registry_url.rstrip('/')}/v1/audit/export", timeout=60, headers=sent)
    except httpx.HTTPError as exc:
        raise AuditCommandProblem(f"no answer from the registry at {registry_url}: {exc}") from exc
    if response.is_error:
        raise AuditCommandProblem(f"the registry at {registry_url} refused the export: HTTP {response.status_code} "
                                  f"{response.text[:300]}")
    return response.text.splitlines()


def command_verify(workspace: Any, *, file: str | None, jwks: str | None, registry_url: str | None) -> int:
    """``mesh audit verify``: an export file, a running registry's export, or the workspace's database."""
    from sqlalchemy.exc import SQLAlchemyError

    if file is not None or registry_url is not None:
        if jwks is None and registry_url is None:
            raise AuditCommandProblem("verifying a file needs the registry's JWKS: --jwks FILE|URL")
        keys = read_jwks_from(jwks or f"{registry_url.rstrip('/')}/.well-known/jwks.json")
        if file is not None:
            try:
                with open(file, encoding="utf-8") as handle:
                    report = verify_lines(handle, keys)
            except OSError as exc:
                raise AuditCommandProblem(f"cannot read {file}: {exc}") from exc
        else:
            report = verify_lines(fetch_export(workspace, registry_url), keys)
    else:
        keys = read_jwks_from(jwks) if jwks else workspace_jwks(workspace)
        try:
            report = verify_database(workspace_sessions(workspace), keys)
        except SQLAlchemyError as exc:
            raise AuditCommandProblem(f"cannot read the audit log from the database: {exc.__class__.__name__}: "
                                      f"{str(exc).splitlines()[0]}") from exc
    (print if report.ok else _say)(report.summary())
    return 0 if report.ok else 1


def command_export(workspace: Any, *, output: str | None, registry_url: str | None) -> int:
    """``mesh audit export``: the log as JSON lines, from a running registry or the workspace's database."""
    import sys

    if registry_url is not None:
        lines = [line + "\n" for line in fetch_export(workspace, registry_url)]
    else:
        with workspace_sessions(workspace)() as session:
            entries, checkpoints, _ = read_chain(session)
        lines = list(export_lines(entries, checkpoints))
    if output in (None, "-"):
        sys.stdout.writelines(lines)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        entries_written = sum(1 for line in lines if line.startswith(ENTRY_LINE))
        _say(f"wrote {entries_written} entries to {output}")
    return 0


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)
