"""The registry's state: admitted agents, their pinned tools (resources, templates, prompts), runs, policy
decisions, reputation, keys.

SQLite under the workspace's ``.mesh/`` by default (WAL, so readers never wait on the writer);
PostgreSQL when a URL says so, with several registry processes sharing it. The schema is owned by
the Alembic migrations shipped beside this module: ``migrate(engine)`` brings any database to head.

Every store function takes a ``Session`` first and leaves the transaction to the caller
(``with factory.begin() as session: ...``); functions flush when the caller needs generated values
or ordering, and never commit. Times are timezone-aware UTC datetimes on both backends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

MIGRATIONS = Path(__file__).with_name("migrations")
DATABASE_URL_VARIABLE = "MESH_DATABASE_URL"
DEFAULT_DATABASE = Path(".mesh") / "registry.db"
# Any constant will do: it only has to be the same in every registry process sharing one database.
_MIGRATION_LOCK = 0x6D657368

# Stable constraint names, so later migrations can refer to them on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both backends: SQLite keeps no offset, so UTC is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the store takes timezone-aware datetimes (a naive one has no defined instant)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SafeText(TypeDecorator[str]):
    """Text that both backends can hold: PostgreSQL refuses a NUL character in text (SQLite does not), so
    a NUL that reached a stored string (a tool's error message, an audit detail) is written as U+FFFD."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


class SafeString(SafeText):
    impl = String
    cache_ok = True


# Nullable JSON columns store SQL NULL for None (not the JSON literal null), so "IS NULL" means absent.
NullableJSON = JSON(none_as_null=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


DEFAULT_TENANT = "default"  # the organisation and project rows belong to until tenancy says otherwise


class Tenanted:
    """A row owned by one organisation's project (``tenancy.py``): the store shows and writes it only in
    that tenant's context, and on PostgreSQL row-level security holds the same line.

    Both columns stay unset on a new row until its flush, where the acting tenant fills them in (or the
    registry's own work gives them, or they default to ``default/default``)."""

    org_id: Mapped[str] = mapped_column(SafeString(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    project_id: Mapped[str] = mapped_column(SafeString(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)


class AgentRecord(Tenanted, Base):
    """An agent the registry knows, with the signed manifest it was admitted (or refused) on."""

    __tablename__ = "agents"
    __table_args__ = (
        ForeignKeyConstraint(["org_id", "project_id"], ["projects.org_id", "projects.id"], ondelete="CASCADE"),
        Index("ix_agents_org_id_project_id", "org_id", "project_id"),
    )

    name: Mapped[str] = mapped_column(SafeString, primary_key=True)
    endpoint: Mapped[str] = mapped_column(SafeText)
    status: Mapped[str] = mapped_column(SafeString, default="active")  # "active", "down", "refused", ...
    version: Mapped[str] = mapped_column(SafeString, default="")
    description: Mapped[str] = mapped_column(SafeText, default="")
    # Refused agents are kept too (so the refusal can be shown), and may have no valid manifest.
    manifest: Mapped[str | None] = mapped_column(SafeText)  # the signed manifest's JSON, byte for byte
    manifest_digest: Mapped[str | None] = mapped_column(SafeString)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)


class ToolRecord(Tenanted, Base):
    """One tool of an agent as admitted: its schemas, scopes and the digest it is pinned to."""

    __tablename__ = "tools"

    agent: Mapped[str] = mapped_column(ForeignKey("agents.name", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(SafeString, primary_key=True)
    title: Mapped[str | None] = mapped_column(SafeString)
    description: Mapped[str] = mapped_column(SafeText, default="")
    input_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    annotations: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    pinned_digest: Mapped[str] = mapped_column(SafeString)
    status: Mapped[str] = mapped_column(SafeString, default="verified")  # "verified" or "blocked"
    blocked_reason: Mapped[str | None] = mapped_column(SafeText)
    wire: Mapped[dict[str, Any]] = mapped_column(JSON)  # the signed tool exactly as in tools/list
    signed_by: Mapped[str | None] = mapped_column(SafeString)  # kid of the key whose signature it was admitted on
    cost: Mapped[float | None] = mapped_column(Double)  # cost units a call spends, as the manifest declares


class DescriptorRecord(Tenanted, Base):
    """A resource, resource template or prompt of an agent as admitted: its signed wire form, scopes and pin.

    Tools keep their own table (their schemas are columns the call path compiles); the other kinds are
    only listed and checked against their pin, so one table holds them, told apart by ``kind``
    (a ``mesh.manifest.KINDS`` key other than "tool")."""

    __tablename__ = "descriptors"
    __table_args__ = (CheckConstraint("kind IN ('resource', 'resource_template', 'prompt')", name="kind"),)

    agent: Mapped[str] = mapped_column(ForeignKey("agents.name", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(SafeString, primary_key=True)
    name: Mapped[str] = mapped_column(SafeString, primary_key=True)
    wire: Mapped[dict[str, Any]] = mapped_column(JSON)  # exactly as listed, with the agent's signature in _meta
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    pinned_digest: Mapped[str] = mapped_column(SafeString)
    status: Mapped[str] = mapped_column(SafeString, default="verified")  # "verified" or "blocked"
    blocked_reason: Mapped[str | None] = mapped_column(SafeText)
    signed_by: Mapped[str | None] = mapped_column(SafeString)  # kid of the key whose signature it was admitted on


class RunRecord(Tenanted, Base):
    """One call, as logged for one side of it.

    A proxied call is recorded twice: in the caller's log and in the target's; the target-side record
    points at the caller-side one through ``parent_run_id``; both carry the call's provenance: a JWS over
    its claims, or over the Merkle root of the batch it committed in, with the run's inclusion proof
    (``mesh.provenance``).
    """

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint("log IN ('caller', 'target')", name="log"),
        Index("ix_runs_agent_started_at", "agent", "started_at"),
        Index("ix_runs_caller_started_at", "caller", "started_at"),
        Index("ix_runs_started_at", "started_at"),
        Index("ix_runs_org_id_project_id_started_at", "org_id", "project_id", "started_at"),
    )

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    parent_run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), index=True)
    log: Mapped[str] = mapped_column(SafeString(6))  # "caller" or "target": whose log this record is in
    caller: Mapped[str] = mapped_column(SafeString)
    agent: Mapped[str] = mapped_column(SafeString)
    tool: Mapped[str] = mapped_column(SafeString)
    arguments_digest: Mapped[str | None] = mapped_column(SafeString)
    status: Mapped[str] = mapped_column(SafeString)  # "ok", "error", "denied", "invalid", "timeout", ...
    error: Mapped[str | None] = mapped_column(SafeText)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    policy_decision: Mapped[str | None] = mapped_column(SafeString)  # "allow" or "deny"
    policy_rule: Mapped[str | None] = mapped_column(SafeString)
    trace_id: Mapped[str | None] = mapped_column(SafeString)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    provenance: Mapped[str | None] = mapped_column(SafeText)  # compact JWS
    provenance_proof: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)  # in a batch: claims, path
    cost: Mapped[float | None] = mapped_column(Double)  # cost units charged to budgets (``budgets.py``); None: none


class DecisionRecord(Tenanted, Base):
    """A policy evaluation, kept with a digest of its input so it can be replayed and audited."""

    __tablename__ = "policy_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    allow: Mapped[bool]
    rule: Mapped[str | None] = mapped_column(SafeString)
    input_digest: Mapped[str] = mapped_column(SafeString)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReputationRecord(Tenanted, Base):
    """The learnt reputation of an agent (``tool == ""``) or of one of its tools.

    ``state`` is the JSON the reputation module's estimators serialize to (a few numbers each), so a
    restarted registry carries on learning where it stopped.
    """

    __tablename__ = "reputation"

    agent: Mapped[str] = mapped_column(SafeString, primary_key=True)
    tool: Mapped[str] = mapped_column(SafeString, primary_key=True, default="")
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TrustedKeyRecord(Base):
    """A public key the registry accepts an agent's signatures from, where that trust came from, and until when.

    Keys of the committed JWKS are recorded here too once the registry learns when they end (a verified
    rotation statement's ``old_not_after``), so that end holds even if a later document omits it.
    """

    __tablename__ = "trusted_keys"

    kid: Mapped[str] = mapped_column(SafeString, primary_key=True)
    agent: Mapped[str] = mapped_column(SafeString, index=True)
    jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    exp: Mapped[datetime | None] = mapped_column(UTCDateTime)  # end of a rotated-out key's overlap window
    source: Mapped[str] = mapped_column(SafeString)  # "workspace", "rotation" or "local"


class RevocationRecord(Base):
    """A key of an agent the registry refuses from now on, and who said so.

    Kept apart from ``trusted_keys``: a key can be revoked before the registry ever trusted it (an operator
    revoking a kid a thief might present), and a revocation is never undone by re-reading a JWKS.
    """

    __tablename__ = "key_revocations"

    agent: Mapped[str] = mapped_column(SafeString, primary_key=True)
    kid: Mapped[str] = mapped_column(SafeString, primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_by: Mapped[str] = mapped_column(SafeString)  # "key:KID" (a signed statement) or the operator's caller id
    statement: Mapped[str | None] = mapped_column(SafeText)  # the signed revocation statement, when there is one
    reason: Mapped[str | None] = mapped_column(SafeText)


class AuditRecord(Base):
    """One entry of the registry's audit log: something decided at its trust boundary.

    The log is a hash chain (``audit.py``): ``seq`` numbers the entries 1, 2, 3... without gaps, and
    ``hash`` covers the entry's canonical content and ``prev_hash``, the hash of the entry before it. An
    entry is appended only through ``audit.append`` and never changed: on both backends a trigger refuses
    UPDATE and DELETE (migration 0007). One chain for the whole registry, whose entries name their
    organisation (``org_id``, covered by the hash; migration 0017): each organisation reads its own."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"), Index("ix_audit_events_org_id_seq", "org_id", "seq"))

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(unique=True)  # the position in the chain, from 1
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The organisation the event happened in; None: registry-wide, or written before 0017 (the operator's).
    org_id: Mapped[str | None] = mapped_column(SafeString(64))
    actor: Mapped[str] = mapped_column(SafeString)  # who asked: a caller id, or "unauthenticated"
    action: Mapped[str] = mapped_column(SafeString)  # e.g. "register", "revoke-key", "policy-decision"
    subject: Mapped[str] = mapped_column(SafeString)  # what it was about, e.g. the agent's name
    outcome: Mapped[str] = mapped_column(SafeString)  # "refused", "done", "allow", "deny", ...
    detail: Mapped[str | None] = mapped_column(SafeText)
    remote: Mapped[str | None] = mapped_column(SafeString)  # the client address
    data: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)  # e.g. a decision's input, minus secrets
    prev_hash: Mapped[str] = mapped_column(SafeString)
    hash: Mapped[str] = mapped_column(SafeString)


class AuditHeadRecord(Base):
    """The chain's last entry (one row, id 1): appends lock it, so two writers never fork the chain."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int]
    hash: Mapped[str] = mapped_column(SafeString)


class AuditCheckpointRecord(Base):
    """The chain's head at ``seq``, signed by the registry's provenance key (a compact JWS in ``jws``)."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(primary_key=True)
    hash: Mapped[str] = mapped_column(SafeString)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kid: Mapped[str] = mapped_column(SafeString)
    jws: Mapped[str] = mapped_column(SafeText)


class CredentialRecord(Base):
    """A credential for a target system, named by its ``secret_ref``; the value lives in a backend
    (``credentials.py``), never here in the clear.

    Scoped to an organisation (``org_id``: "default" until tenancy), the agent it may be attached for
    ("*": any) and the target system. ``version`` is current; ``previous_version``, when set, is kept
    (resolvable on request) until a cutover destroys it."""

    __tablename__ = "credentials"

    org_id: Mapped[str] = mapped_column(SafeString, primary_key=True, default="default")
    ref: Mapped[str] = mapped_column(SafeString, primary_key=True)
    agent: Mapped[str] = mapped_column(SafeString)
    system: Mapped[str] = mapped_column(SafeString)
    backend: Mapped[str] = mapped_column(SafeString)  # "local" or "vault"
    version: Mapped[int]
    previous_version: Mapped[int | None]
    description: Mapped[str] = mapped_column(SafeText, default="")
    created_by: Mapped[str] = mapped_column(SafeString)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CredentialVersionRecord(Base):
    """One version of a credential: its ciphertext (local backend) or its version in Vault."""

    __tablename__ = "credential_versions"
    __table_args__ = (
        ForeignKeyConstraint(["org_id", "ref"], ["credentials.org_id", "credentials.ref"], ondelete="CASCADE"),
    )

    org_id: Mapped[str] = mapped_column(SafeString, primary_key=True)
    ref: Mapped[str] = mapped_column(SafeString, primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    ciphertext: Mapped[str | None] = mapped_column(SafeText)  # local backend: AES-GCM, bound to org, ref, version
    vault_version: Mapped[int | None]  # vault backend: the KV v2 version holding it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SandboxRecord(Tenanted, Base):
    """A sandbox an agent practises in: which services (OpenAPI specs of the workspace), how they answer
    (``mode``: mock, emulated or connected), their per-service configuration, and until when it lives.

    ``revision`` grows on every reset or change of what the services are: the sandbox agent keeps the
    emulated state per revision, so a new revision starts from the seed data. A removed sandbox (expired
    or deleted) keeps its row, so its runs still name it; ``status`` says which."""

    __tablename__ = "sandboxes"
    __table_args__ = (
        CheckConstraint("mode IN ('mock', 'emulated', 'connected')", name="mode"),
        CheckConstraint("status IN ('active', 'expired', 'deleted')", name="status"),
        Index("ix_sandboxes_agent_status", "agent", "status"),
        Index("ix_sandboxes_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    agent: Mapped[str] = mapped_column(SafeString)  # the agent it is for
    mode: Mapped[str] = mapped_column(SafeString)
    required_services: Mapped[list[str]] = mapped_column(JSON)
    services: Mapped[dict[str, Any]] = mapped_column(JSON)  # service -> its configuration
    secret_ref: Mapped[str | None] = mapped_column(SafeString)  # where a connected sandbox's credential is
    description: Mapped[str] = mapped_column(SafeText, default="")
    ttl_seconds: Mapped[int]
    revision: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(SafeString, default="active")
    created_by: Mapped[str] = mapped_column(SafeString)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SandboxRunRecord(Tenanted, Base):
    """One attempt at a sandbox's tool: what was asked, what the service answered, and the registry run
    that carried it (``run_id``: its provenance is there). Kept through resets and after removal."""

    __tablename__ = "sandbox_runs"
    __table_args__ = (Index("ix_sandbox_runs_sandbox_id_id", "sandbox_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"))
    revision: Mapped[int]
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"), index=True)  # None: refused before a run
    caller: Mapped[str] = mapped_column(SafeString)
    service: Mapped[str] = mapped_column(SafeString)
    operation_id: Mapped[str] = mapped_column(SafeString)
    attempt: Mapped[str | None] = mapped_column(SafeString)  # the caller's label for a try (``_meta``)
    arguments: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(SafeString)  # the run's: "ok", "error", "denied", ...
    http_status: Mapped[int | None]  # what the service answered, when it did
    answer: Mapped[Any | None] = mapped_column(NullableJSON)  # {status, headers, body}
    error: Mapped[str | None] = mapped_column(SafeText)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApprovalRecord(Tenanted, Base):
    """An operator's yes to something that leaves the machine: for now, an agent's sandbox calling a
    service's real endpoint (``scope`` "sandbox:connected"). Revoking keeps the record."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_agent_service", "agent", "service"),)

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    agent: Mapped[str] = mapped_column(SafeString)
    service: Mapped[str] = mapped_column(SafeString)
    scope: Mapped[str] = mapped_column(SafeString)
    approved_by: Mapped[str] = mapped_column(SafeString)
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    note: Mapped[str | None] = mapped_column(SafeText)
    base_url: Mapped[str | None] = mapped_column(SafeString)  # the endpoint approved; None: the spec's server
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApprovalRequestRecord(Tenanted, Base):
    """One call (or other act) the policy held for a person's approval, and each step of its life:
    requested -> approved -> executed, or requested -> denied | expired (``approvals.py`` moves it).
    Not to be confused with ``ApprovalRecord``, a standing approval of connected sandboxes."""

    __tablename__ = "approval_requests"
    __table_args__ = (
        CheckConstraint("status IN ('requested', 'approved', 'denied', 'expired', 'executed')", name="status"),
        Index("ix_approval_requests_status_requested_at", "status", "requested_at"),
    )

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    kind: Mapped[str] = mapped_column(SafeString(32), default="call")  # "call"; later e.g. "budget-override"
    status: Mapped[str] = mapped_column(SafeString(16), default="requested")
    caller: Mapped[str] = mapped_column(SafeString)  # who made the call that waits
    agent: Mapped[str] = mapped_column(SafeString)
    tool: Mapped[str] = mapped_column(SafeString)  # as runs name it: the tool, else KIND:NAME
    arguments_digest: Mapped[str | None] = mapped_column(SafeString)
    run_id: Mapped[str | None] = mapped_column(SafeString(36), index=True)  # the caller-side run, once written
    rule: Mapped[str] = mapped_column(SafeString)  # the first policy rule that asked for the approval
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    approvers: Mapped[list[str]] = mapped_column(JSON, default=list)  # roles that may approve
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(SafeString)  # who approved or denied; "registry" for expiry
    decided_via: Mapped[str | None] = mapped_column(SafeString(16))  # "api", "elicitation" or "timeout"
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(SafeText)  # the approver's word on it
    executed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- learning (``mesh.learning``): plans, runs and their iterations, attempts, assessments, prompts -----


class LearningPlanRecord(Tenanted, Base):
    """A curriculum for one agent on one target system: objectives, ordered tasks with checks, a rubric."""

    __tablename__ = "learning_plans"
    __table_args__ = (Index("ix_learning_plans_agent_system", "agent", "system"),)

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    agent: Mapped[str] = mapped_column(SafeString)
    system: Mapped[str] = mapped_column(SafeString)  # the target system, e.g. the sandbox API "petstore"
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # where it came from: spec title, digest
    objectives: Mapped[list[Any]] = mapped_column(JSON, default=list)
    tasks: Mapped[list[Any]] = mapped_column(JSON, default=list)  # training and held-out tasks, each with a check
    rubric: Mapped[list[Any]] = mapped_column(JSON, default=list)
    threshold: Mapped[float] = mapped_column(Double, default=1.0)  # success rate that counts as proficient
    budget: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    revision: Mapped[int] = mapped_column(default=1)  # +1 on every edit
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LearningRunRecord(Tenanted, Base):
    """One run of the learning loop over a plan: its budget, what it spent, how it ended."""

    __tablename__ = "learning_runs"

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    plan_id: Mapped[str] = mapped_column(ForeignKey("learning_plans.id", ondelete="CASCADE"), index=True)
    agent: Mapped[str] = mapped_column(SafeString)
    system: Mapped[str] = mapped_column(SafeString)
    status: Mapped[str] = mapped_column(SafeString)  # running, proficient, budget-spent, cancelled, failed, ...
    reason: Mapped[str | None] = mapped_column(SafeText)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    spent: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)  # time and calls to proficiency, ...
    start_version: Mapped[str | None] = mapped_column(SafeString)
    final_version: Mapped[str | None] = mapped_column(SafeString)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LearningIterationRecord(Tenanted, Base):
    """The metrics of one iteration of a learning run, and the error analysis that ended it."""

    __tablename__ = "learning_iterations"

    run_id: Mapped[str] = mapped_column(ForeignKey("learning_runs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    prompt_version: Mapped[str | None] = mapped_column(SafeString)  # the version these attempts used
    attempted: Mapped[int] = mapped_column(default=0)
    passed: Mapped[int] = mapped_column(default=0)
    success_rate: Mapped[float] = mapped_column(Double, default=0.0)
    retries: Mapped[int] = mapped_column(default=0)  # attempts at tasks that had failed before
    lm_calls: Mapped[int] = mapped_column(default=0)
    tool_calls: Mapped[int] = mapped_column(default=0)
    tokens: Mapped[int] = mapped_column(default=0)
    seconds: Mapped[float] = mapped_column(Double, default=0.0)
    analysis: Mapped[list[Any]] = mapped_column(JSON, default=list)  # structured findings of the failures
    lessons: Mapped[list[Any]] = mapped_column(JSON, default=list)  # instructions the next version carries
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LearningAttemptRecord(Tenanted, Base):
    """One attempt at a task: input, every tool call (with the registry's run ids), output, error, verdict.

    Stands in for the sandbox's ``sandbox_runs`` until those exist; ``run_id`` is a learning run's or an
    assessment's id (``kind`` says which)."""

    __tablename__ = "learning_attempts"
    __table_args__ = (Index("ix_learning_attempts_run_id_iteration", "run_id", "iteration"),)

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    run_id: Mapped[str] = mapped_column(SafeString(36))
    kind: Mapped[str] = mapped_column(SafeString)  # "train", "bootstrap", "gepa" or "assess"
    iteration: Mapped[int] = mapped_column(default=0)
    agent: Mapped[str] = mapped_column(SafeString)
    system: Mapped[str] = mapped_column(SafeString)
    task_id: Mapped[str] = mapped_column(SafeString)
    input: Mapped[str] = mapped_column(SafeText)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tool_calls: Mapped[list[Any]] = mapped_column(JSON, default=list)
    output: Mapped[str | None] = mapped_column(SafeText)
    error: Mapped[str | None] = mapped_column(SafeText)
    passed: Mapped[bool] = mapped_column(Boolean, default=False)
    check_detail: Mapped[str | None] = mapped_column(SafeText)
    prompt_version: Mapped[str | None] = mapped_column(SafeString)
    lm_calls: Mapped[int] = mapped_column(default=0)
    tokens: Mapped[int] = mapped_column(default=0)
    seconds: Mapped[float] = mapped_column(Double, default=0.0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CapabilityAssessmentRecord(Tenanted, Base):
    """An agent scored on held-out tasks of a system by the plan's rubric, with the attempts as evidence."""

    __tablename__ = "capability_assessments"
    __table_args__ = (Index("ix_capability_assessments_agent_system", "agent", "system", "created_at"),)

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    agent: Mapped[str] = mapped_column(SafeString)
    system: Mapped[str] = mapped_column(SafeString)
    plan_id: Mapped[str | None] = mapped_column(ForeignKey("learning_plans.id", ondelete="SET NULL"))
    prompt_version: Mapped[str | None] = mapped_column(SafeString)
    score: Mapped[float] = mapped_column(Double)
    level: Mapped[str] = mapped_column(SafeString)  # "novice", "competent" or "proficient"
    criteria: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the rubric, each criterion scored
    evidence: Mapped[list[Any]] = mapped_column(JSON, default=list)  # attempt ids and the registry's run ids
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PromptVersionRecord(Tenanted, Base):
    """An optimized program (``program.save`` JSON), its id the SHA-256 of that JSON, with where it came from."""

    __tablename__ = "prompt_versions"
    __table_args__ = (Index("ix_prompt_versions_agent_system", "agent", "system", "created_at"),)

    agent: Mapped[str] = mapped_column(SafeString, primary_key=True)
    id: Mapped[str] = mapped_column(SafeString(64), primary_key=True)
    system: Mapped[str] = mapped_column(SafeString)
    program: Mapped[str] = mapped_column(SafeText)
    lessons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    demos: Mapped[int] = mapped_column(default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_id: Mapped[str | None] = mapped_column(SafeString(64))
    plan_id: Mapped[str | None] = mapped_column(SafeString(36))
    run_id: Mapped[str | None] = mapped_column(SafeString(36))
    iteration: Mapped[int | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ActivePromptRecord(Tenanted, Base):
    """Which prompt version an agent serves for a system; a rollback points it at an earlier one."""

    __tablename__ = "active_prompts"

    agent: Mapped[str] = mapped_column(SafeString, primary_key=True)
    system: Mapped[str] = mapped_column(SafeString, primary_key=True)
    version_id: Mapped[str] = mapped_column(SafeString(64))
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_by: Mapped[str] = mapped_column(SafeString)


class OrgRecord(Base):
    """An organisation: the unit people belong to, and (with tenancy) what owns agents, runs and budgets."""

    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(SafeString(64), primary_key=True)  # a slug, e.g. "default", "acme"
    name: Mapped[str] = mapped_column(SafeString)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProjectRecord(Base):
    """A project of an organisation: what agents and everything they do belong to (``tenancy.py``).

    Deleting one removes its agents, and their pins with them (foreign keys, ON DELETE CASCADE); runs,
    decisions and the audit log are history and stay."""

    __tablename__ = "projects"

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[str] = mapped_column(SafeString(64), primary_key=True)  # a slug, unique in its organisation
    name: Mapped[str] = mapped_column(SafeString)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OrgPolicyRecord(Base):
    """An organisation's settings: how long an approval may wait, where budget alerts go, and the like.

    One row per setting (``key``), its value JSON, so a new setting needs no migration."""

    __tablename__ = "org_policies"

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(SafeString(64), primary_key=True)  # e.g. "approval_timeout_s", "budget_webhook"
    value: Mapped[Any] = mapped_column(JSON)
    updated_by: Mapped[str] = mapped_column(SafeString)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RoleRecord(Base):
    """A role of ``auth.ROLES`` (and ``agent``), with its rank: the tables mirror ``auth.PERMISSIONS``."""

    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(SafeString(16), primary_key=True)
    rank: Mapped[int]  # 0 is the most (owner); "agent" ranks last


class PermissionRecord(Base):
    """An action of ``auth.PERMISSIONS`` and the scope a personal API token must hold for it."""

    __tablename__ = "permissions"

    action: Mapped[str] = mapped_column(SafeString(32), primary_key=True)
    scope: Mapped[str] = mapped_column(SafeString(64))


class RolePermissionRecord(Base):
    """That a role may do an action."""

    __tablename__ = "role_permissions"

    role: Mapped[str] = mapped_column(ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True)
    action: Mapped[str] = mapped_column(ForeignKey("permissions.action", ondelete="CASCADE"), primary_key=True)


class UserRecord(Base):
    """A person, known by the issuer and subject that signed them in (the local user: issuer "local")."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[str] = mapped_column(SafeString(64), primary_key=True)  # "local", or a random hex id
    issuer: Mapped[str] = mapped_column(SafeString)
    subject: Mapped[str] = mapped_column(SafeString)
    email: Mapped[str | None] = mapped_column(SafeString)
    name: Mapped[str | None] = mapped_column(SafeString)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MembershipRecord(Base):
    """A person's role in an organisation, and whether the identity provider's groups or a person set it."""

    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint("role IN ('owner', 'admin', 'member', 'viewer')", name="role"),)

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(SafeString(16))
    source: Mapped[str] = mapped_column(SafeString(16), default="manual")  # "groups" (the issuer's claim) or "manual"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiTokenRecord(Base):
    """A personal API token: only the SHA-256 of its secret is kept, so the database cannot reveal it."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(SafeString(32), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(SafeString(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(SafeString)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- budgets (``budgets.py``): limits per organisation or agent and period, their spend, alerts, overrides --


class BudgetRecord(Base):
    """A limit on what an organisation (or one agent in it) may spend per period, in cost units."""

    __tablename__ = "budgets"
    __table_args__ = (CheckConstraint("scope IN ('org', 'agent')", name="scope"),
                      CheckConstraint("period IN ('day', 'week', 'month', 'fixed')", name="period"))

    id: Mapped[str] = mapped_column(SafeString(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    project_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    scope: Mapped[str] = mapped_column(SafeString(8))  # "org" or "agent"
    agent: Mapped[str | None] = mapped_column(SafeString)  # the spending agent, for scope "agent"
    period: Mapped[str] = mapped_column(SafeString(8))  # "day", "week", "month" (UTC calendar) or "fixed"
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the window of a "fixed" period
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cost_limit: Mapped[float] = mapped_column(Double)  # cost units per period
    alerts: Mapped[list[float]] = mapped_column(JSON, default=list)  # fractions of the limit that alert once
    hard: Mapped[bool] = mapped_column(Boolean, default=True)  # refuse calls past the limit
    status: Mapped[int] = mapped_column(default=429)  # 402 or 429: how a refusal answers
    source: Mapped[str] = mapped_column(SafeString(8))  # "config" (registry.toml) or "api"
    created_by: Mapped[str] = mapped_column(SafeString)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BudgetSpendRecord(Base):
    """What a budget has spent in one period: a running total, added to in the transaction of each run."""

    __tablename__ = "budget_spend"

    budget_id: Mapped[str] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    org_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    project_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    spent: Mapped[float] = mapped_column(Double, default=0.0)


class BudgetAlertRecord(Base):
    """A soft threshold crossed: one row per budget, period and threshold, so each alert fires once."""

    __tablename__ = "budget_alerts"

    budget_id: Mapped[str] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    threshold: Mapped[float] = mapped_column(Double, primary_key=True)
    org_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    project_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    spent: Mapped[float] = mapped_column(Double)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BudgetOverrideRecord(Base):
    """An admin's leave for calls past a budget's hard limit until ``expires_at`` (kept after it ends)."""

    __tablename__ = "budget_overrides"

    id: Mapped[str] = mapped_column(SafeString(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    budget_id: Mapped[str] = mapped_column(ForeignKey("budgets.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    project_id: Mapped[str] = mapped_column(SafeString(64), server_default="default")
    granted_by: Mapped[str] = mapped_column(SafeString)
    reason: Mapped[str] = mapped_column(SafeText, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdempotencyKeyRecord(Base):
    """A call made with an ``Idempotency-Key``: claimed while it runs, then the answer its retries get
    (``idempotency.py``). Keyed by who called and their key; ``fingerprint`` is what they asked for."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (CheckConstraint("state IN ('running', 'done')", name="state"),
                      Index("ix_idempotency_keys_created_at", "created_at"))

    org_id: Mapped[str] = mapped_column(SafeString(64), primary_key=True, default="default", server_default="default")
    project_id: Mapped[str] = mapped_column(SafeString(64), primary_key=True, default="default",
                                            server_default="default")
    caller: Mapped[str] = mapped_column(SafeString, primary_key=True)
    key: Mapped[str] = mapped_column(SafeString(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(SafeString(80))
    state: Mapped[str] = mapped_column(SafeString(8), default="running")
    status: Mapped[int | None] = mapped_column()  # the HTTP status of the answer, once done
    answer: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    run_id: Mapped[str | None] = mapped_column(SafeString(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --- engines and schema -------------------------------------------------------------------------


def database_url(workspace: Path, configured: str | None = None) -> str:
    """Where the registry keeps its state: ``MESH_DATABASE_URL``, else registry.toml's URL, else SQLite."""
    chosen = os.environ.get(DATABASE_URL_VARIABLE) or configured
    if chosen:
        return chosen
    return URL.create("sqlite", database=str(workspace / DEFAULT_DATABASE)).render_as_string()


def connect(url: str | URL) -> Engine:
    """An engine for the URL: SQLite gets its folder, WAL and enforced foreign keys; PostgreSQL gets psycopg."""
    url = make_url(url)
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: a commit survives a crash of the process
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite, per connection
    # The registry checkpoints the WAL in the background (``checkpoint``). Left on, SQLite does it inside
    # whichever commit fills the log (every 1000 pages, ~75 calls), and that call waits ~6 ms of fsync.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def checkpoint(engine: Engine) -> None:
    """Fold SQLite's write-ahead log back into the database file; blocks no reader or writer (PASSIVE)."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema with the migrations shipped inside this package.

    On PostgreSQL a transaction-scoped advisory lock makes registry processes starting together take
    turns; the DDL is transactional there, so the later ones find the schema at head and do nothing.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            # Migrations work across tenants: forced row-level security (0015) must not hide rows from them.
            connection.execute(text("SELECT set_config('app.org_id', '*', true)"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose records stay readable after commit (the registry returns them in responses)."""
    return sessionmaker(engine, expire_on_commit=False)


def refused_privilege(error: DBAPIError) -> str | None:
    """PostgreSQL's refusal of a privilege (SQLSTATE 42501) as one line with its hint; None for other errors."""
    diag = getattr(error.orig, "diag", None)
    if getattr(error.orig, "sqlstate", None) != "42501" or diag is None:
        return None
    return diag.message_primary + (f" ({diag.message_hint})" if diag.message_hint else "")


def may_act_as(engine: Engine, role: str) -> bool:
    """Can ``engine``'s login user ``SET ROLE`` to ``role`` (PostgreSQL; a superuser always can)?"""
    with engine.connect() as connection:
        return bool(connection.scalar(text(
            "SELECT CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = :role) "
            "THEN pg_has_role(current_user, :role, 'MEMBER') ELSE false END"), {"role": role}))


def bypasses_rls(engine: Engine) -> bool:
    """Does ``engine``'s login user pass every row-level security policy (a superuser, or BYPASSRLS)?"""
    with engine.connect() as connection:
        return bool(connection.scalar(text(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")))


def connect_as(url: str | URL, role: str | None) -> Engine:
    """``connect``, then on PostgreSQL: as the least-privilege ``role`` when given (``[registry]
    database_role``), else as the login user, under row-level security keyed by the acting tenant
    (``tenancy.enforce_rls``)."""
    engine = connect(url)
    if engine.dialect.name == "postgresql":
        from mesh.registry.tenancy import enforce_rls

        enforce_rls(engine, role)
    return engine


# --- projects and the permissions tables ----------------------------------------------------------


def add_project(session: Session, org_id: str, project_id: str, name: str | None = None) -> ProjectRecord:
    """Create a project in an organisation (which must exist); returns the existing one if it does."""
    record = session.get(ProjectRecord, (org_id, project_id))
    if record is None:
        record = ProjectRecord(org_id=org_id, id=project_id, name=name or project_id)
        session.add(record)
        session.flush()
    return record


def get_project(session: Session, org_id: str, project_id: str) -> ProjectRecord | None:
    return session.get(ProjectRecord, (org_id, project_id))


def list_projects(session: Session, org_id: str | None = None) -> list[ProjectRecord]:
    query = select(ProjectRecord).order_by(ProjectRecord.org_id, ProjectRecord.id)
    if org_id is not None:
        query = query.where(ProjectRecord.org_id == org_id)
    return list(session.scalars(query))


def delete_project(session: Session, org_id: str, project_id: str) -> list[str]:
    """Remove a project and its agents, whose pins (tools, descriptors) go with them; runs, decisions and
    the audit log are history and stay. Returns the agents removed."""
    agents = list(session.scalars(select(AgentRecord.name).where(AgentRecord.org_id == org_id,
                                                                  AgentRecord.project_id == project_id)))
    session.execute(delete(ProjectRecord).where(ProjectRecord.org_id == org_id, ProjectRecord.id == project_id))
    return agents


def org_policy(session: Session, org_id: str) -> dict[str, Any]:
    """An organisation's settings (``org_policies``) as ``{key: value}``."""
    query = select(OrgPolicyRecord).where(OrgPolicyRecord.org_id == org_id)
    return {record.key: record.value for record in session.scalars(query)}


def set_org_policy(session: Session, org_id: str, key: str, value: Any, *, by: str) -> OrgPolicyRecord | None:
    """Set one setting of an organisation (e.g. "approval_timeout_s", "budget_webhook"); None removes it."""
    record = session.get(OrgPolicyRecord, (org_id, key))
    if value is None:
        if record is not None:
            session.delete(record)
        return record
    if record is None:
        record = OrgPolicyRecord(org_id=org_id, key=key)
        session.add(record)
    record.value, record.updated_by, record.updated_at = value, by, utcnow()
    session.flush()
    return record


def permission_rows(permissions: dict[str, tuple[frozenset[str], str]],
                    roles: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of ``roles``, ``permissions`` and ``role_permissions`` that a permissions matrix (``auth.PERMISSIONS``)
    and its roles, most to least, stand for."""
    ranked = list(roles)
    role_rows = [{"name": role, "rank": rank} for rank, role in enumerate(ranked)]
    permission_rows_ = [{"action": action, "scope": scope} for action, (_, scope) in sorted(permissions.items())]
    grants = [{"role": role, "action": action} for action, (allowed, _) in sorted(permissions.items())
              for role in ranked if role in allowed]
    return role_rows, permission_rows_, grants


def sync_permissions(session: Session, permissions: dict[str, tuple[frozenset[str], str]],
                     roles: Iterable[str]) -> bool:
    """Make the permissions tables say what ``permissions`` says (the code is the one source of truth);
    returns whether they had drifted and were rewritten."""
    role_rows, action_rows, grants = permission_rows(permissions, roles)
    wanted = ({(r["name"], r["rank"]) for r in role_rows}, {(p["action"], p["scope"]) for p in action_rows},
              {(g["role"], g["action"]) for g in grants})

    def held() -> tuple[set[Any], set[Any], set[Any]]:
        return ({(r.name, r.rank) for r in session.scalars(select(RoleRecord))},
                {(p.action, p.scope) for p in session.scalars(select(PermissionRecord))},
                {(g.role, g.action) for g in session.scalars(select(RolePermissionRecord))})

    if held() == wanted:
        return False
    if session.get_bind().dialect.name == "postgresql":  # registry processes starting together take turns
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        if held() == wanted:
            return False
    session.execute(delete(RolePermissionRecord))
    session.execute(delete(PermissionRecord))
    session.execute(delete(RoleRecord))
    session.execute(insert(RoleRecord), role_rows)
    session.execute(insert(PermissionRecord), action_rows)
    session.execute(insert(RolePermissionRecord), grants)
    return True


# --- agents and tools ---------------------------------------------------------------------------


def upsert_agent(
    session: Session,
    name: str,
    *,
    endpoint: str,
    manifest: str | None = None,
    manifest_digest: str | None = None,
    jwks: dict[str, Any] | None = None,
    version: str = "",
    description: str = "",
    status: str = "active",
    flags: list[str] | None = None,
) -> AgentRecord:
    """Admit (or re-admit) an agent: a new registration replaces everything but when it first came."""
    agent = session.get(AgentRecord, name)
    if agent is None:
        agent = AgentRecord(name=name, registered_at=utcnow())
        session.add(agent)
    agent.endpoint = endpoint
    agent.manifest = manifest
    agent.manifest_digest = manifest_digest
    agent.jwks = jwks
    agent.version = version
    agent.description = description
    agent.status = status
    agent.flags = list(flags or [])
    agent.last_seen = utcnow()
    session.flush()
    return agent


def get_agent(session: Session, name: str) -> AgentRecord | None:
    return session.get(AgentRecord, name)


def list_agents(session: Session, status: str | None = None) -> list[AgentRecord]:
    query = select(AgentRecord).order_by(AgentRecord.name)
    if status is not None:
        query = query.where(AgentRecord.status == status)
    return list(session.scalars(query))


def set_agent_status(session: Session, name: str, status: str) -> AgentRecord:
    """Mark an agent "down", "active" again, ...; seeing it alive also moves ``last_seen``."""
    agent = _require(session.get(AgentRecord, name), f"no agent {name!r}")
    agent.status = status
    if status == "active":
        agent.last_seen = utcnow()
    return agent


def replace_tools(session: Session, agent: str, tools: Iterable[ToolRecord]) -> list[ToolRecord]:
    """Make ``tools`` the agent's whole tool list: on re-admission the old pins go, the new ones stay."""
    session.execute(delete(ToolRecord).where(ToolRecord.agent == agent))
    records = list(tools)
    for record in records:
        record.agent = agent
    session.add_all(records)
    session.flush()
    return records


def list_tools(session: Session, agent: str | None = None, status: str | None = None) -> list[ToolRecord]:
    query = select(ToolRecord).order_by(ToolRecord.agent, ToolRecord.name)
    if agent is not None:
        query = query.where(ToolRecord.agent == agent)
    if status is not None:
        query = query.where(ToolRecord.status == status)
    return list(session.scalars(query))


def block_tool(session: Session, agent: str, name: str, reason: str) -> ToolRecord:
    """Stop a tool being callable, e.g. when its live schema no longer matches its pinned digest."""
    tool = _require(session.get(ToolRecord, (agent, name)), f"no tool {name!r} on agent {agent!r}")
    tool.status = "blocked"
    tool.blocked_reason = reason
    return tool


def replace_descriptors(session: Session, agent: str,
                        descriptors: Iterable[DescriptorRecord]) -> list[DescriptorRecord]:
    """Make ``descriptors`` the agent's whole list of resources, templates and prompts (as ``replace_tools``)."""
    session.execute(delete(DescriptorRecord).where(DescriptorRecord.agent == agent))
    records = list(descriptors)
    for record in records:
        record.agent = agent
    session.add_all(records)
    session.flush()
    return records


def list_descriptors(session: Session, agent: str | None = None) -> list[DescriptorRecord]:
    query = select(DescriptorRecord).order_by(DescriptorRecord.agent, DescriptorRecord.kind, DescriptorRecord.name)
    if agent is not None:
        query = query.where(DescriptorRecord.agent == agent)
    return list(session.scalars(query))


def block_descriptor(session: Session, agent: str, kind: str, name: str, reason: str) -> DescriptorRecord:
    """Stop a resource, template or prompt being listed or served (as ``block_tool``)."""
    record = _require(session.get(DescriptorRecord, (agent, kind, name)), f"no {kind} {name!r} on agent {agent!r}")
    record.status = "blocked"
    record.blocked_reason = reason
    return record


# --- runs and policy decisions ------------------------------------------------------------------


def record_run(session: Session, run: RunRecord) -> RunRecord:
    """Log one side of a call; flushed at once, so its id and start time are set and a child may link it."""
    session.add(run)
    session.flush()
    return run


def record_calls(connection: Connection, runs: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> None:
    """Log calls' run records (dicts of RunRecord columns) and their policy decisions with plain inserts.

    The proxy's hot path (``runlog.py``: calls that finish together commit together): Core statements on a
    connection cost a fraction of ORM units of work, one ``executemany`` per table a fraction of that.
    """
    connection.execute(insert(RunRecord), runs)
    if decisions:
        decided_at = utcnow()
        connection.execute(insert(DecisionRecord), [{"decided_at": decided_at, **d} for d in decisions])


def get_run(session: Session, run_id: str) -> RunRecord | None:
    return session.get(RunRecord, run_id)


def runs_by_prefix(session: Session, prefix: str, limit: int = 2) -> list[RunRecord]:
    """Runs whose id starts with ``prefix`` (hex digits and dashes only: no LIKE wildcard can hide in it)."""
    if not prefix or prefix.strip("0123456789abcdef-"):
        return []
    return list(session.scalars(select(RunRecord).where(RunRecord.id.startswith(prefix)).limit(limit)))


def list_runs(
    session: Session,
    agent: str | None = None,
    *,
    caller: str | None = None,
    log: str | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> list[RunRecord]:
    """Runs, most recent first: to ``agent``, from ``caller``, in one side's ``log`` ("caller"/"target").

    ``before`` is the (started_at, id) of the last run of the previous page: the next page starts after it."""
    query = select(RunRecord).order_by(RunRecord.started_at.desc(), RunRecord.id.desc()).limit(limit)
    if agent is not None:
        query = query.where(RunRecord.agent == agent)
    if caller is not None:
        query = query.where(RunRecord.caller == caller)
    if log is not None:
        query = query.where(RunRecord.log == log)
    if before is not None:
        started_at, run_id = before
        query = query.where((RunRecord.started_at < started_at)
                            | ((RunRecord.started_at == started_at) & (RunRecord.id < run_id)))
    return list(session.scalars(query))


def linked_runs(session: Session, run_id: str) -> list[RunRecord]:
    """Both sides of a call from either one: the caller-side record first, then the target-side ones."""
    run = _require(session.get(RunRecord, run_id), f"no run {run_id!r}")
    root = run.parent_run_id or run.id
    query = (
        select(RunRecord)
        .where((RunRecord.id == root) | (RunRecord.parent_run_id == root))
        .order_by(RunRecord.parent_run_id.is_not(None), RunRecord.started_at)
    )
    return list(session.scalars(query))


def record_decision(
    session: Session, run_id: str, *, allow: bool, rule: str | None, input_digest: str
) -> DecisionRecord:
    """Keep a policy decision; record its run first (the decision references it)."""
    decision = DecisionRecord(run_id=run_id, allow=allow, rule=rule, input_digest=input_digest)
    session.add(decision)
    session.flush()
    return decision


# --- reputation ---------------------------------------------------------------------------------


def load_reputation(session: Session, agent: str, tool: str = "", *,
                    for_update: bool = False) -> ReputationRecord | None:
    """The stored reputation; ``for_update`` locks its row until the transaction ends (PostgreSQL), so a
    registry adding its outcomes to it cannot overwrite another's."""
    return session.get(ReputationRecord, (agent, tool), with_for_update=for_update or None,
                       populate_existing=for_update)


def list_reputation(session: Session, agent: str | None = None) -> list[ReputationRecord]:
    query = select(ReputationRecord).order_by(ReputationRecord.agent, ReputationRecord.tool)
    if agent is not None:
        query = query.where(ReputationRecord.agent == agent)
    return list(session.scalars(query))


def save_reputation(
    session: Session, agent: str, tool: str, *, state: dict[str, Any], score: float, tenant: Any = None
) -> ReputationRecord:
    """Store the estimators' state and score for an agent (``tool=""``) or one of its tools; a new record
    belongs to ``tenant`` (a ``tenancy.Tenant``: the agent's, when the registry saves for every tenant)."""
    record = session.get(ReputationRecord, (agent, tool))
    if record is None:
        record = ReputationRecord(agent=agent, tool=tool)
        if tenant is not None:
            record.org_id, record.project_id = tenant.org, tenant.project
        session.add(record)
    record.state = state
    record.score = score
    record.updated_at = utcnow()
    return record


# --- trusted keys -------------------------------------------------------------------------------


def trust_key(
    session: Session,
    kid: str,
    *,
    agent: str,
    jwk: dict[str, Any],
    source: str,
    exp: datetime | None = None,
) -> TrustedKeyRecord:
    """Trust a public key for an agent. An end once recorded only moves earlier: no later document
    (which whoever holds the key could sign) extends a key's life."""
    key = session.get(TrustedKeyRecord, kid)
    if key is None:
        key = TrustedKeyRecord(kid=kid, agent=agent, jwk=jwk, source=source, exp=exp)
        session.add(key)
        return key
    key.jwk = jwk
    if key.exp is None or (exp is not None and exp < key.exp):
        key.exp = exp
    return key


def trusted_keys(
    session: Session, agent: str | None = None, *, usable_at: datetime | None = None
) -> list[TrustedKeyRecord]:
    """Keys on record (expired ones too, so refusals can say why); ``usable_at`` keeps only unexpired ones.

    Revocations are separate (``revoked_kids``)."""
    query = select(TrustedKeyRecord).order_by(TrustedKeyRecord.agent, TrustedKeyRecord.kid)
    if agent is not None:
        query = query.where(TrustedKeyRecord.agent == agent)
    if usable_at is not None:
        query = query.where(TrustedKeyRecord.exp.is_(None) | (TrustedKeyRecord.exp > usable_at))
    return list(session.scalars(query))


def revoke_key(
    session: Session, agent: str, kid: str, *, by: str, statement: str | None = None, reason: str | None = None
) -> tuple[RevocationRecord, bool]:
    """Refuse ``kid`` for ``agent`` from now on; returns the record and whether it is new (revoking twice
    keeps the first record)."""
    record = session.get(RevocationRecord, (agent, kid))
    if record is not None:
        return record, False
    record = RevocationRecord(agent=agent, kid=kid, revoked_at=utcnow(), revoked_by=by, statement=statement,
                              reason=reason)
    session.add(record)
    session.flush()
    return record, True


def revoked_kids(session: Session, agent: str) -> set[str]:
    return set(session.scalars(select(RevocationRecord.kid).where(RevocationRecord.agent == agent)))


def list_revocations(session: Session, agent: str | None = None) -> list[RevocationRecord]:
    query = select(RevocationRecord).order_by(RevocationRecord.agent, RevocationRecord.revoked_at)
    if agent is not None:
        query = query.where(RevocationRecord.agent == agent)
    return list(session.scalars(query))


# --- audit --------------------------------------------------------------------------------------


def audit(
    session: Session, *, org: str | None, actor: str, action: str, subject: str, outcome: str,
    detail: str | None = None, remote: str | None = None, data: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one event of the trust boundary to the hash-chained log (``audit.append``: ``org`` is the
    organisation it happened in, required); never secrets, only what was decided."""
    from mesh.registry.audit import append  # the chain's rules live there; it builds on this module

    entry = append(session, org=org, actor=actor, action=action, subject=subject, outcome=outcome, detail=detail,
                   remote=remote, data=data)
    return _require(session.scalar(select(AuditRecord).where(AuditRecord.seq == entry["seq"])), "appended entry")


LARGEST_SEQ = 2**31 - 1  # the audit log's ``seq`` column (INTEGER)


def list_audit(
    session: Session, *, subject: str | None = None, actor: str | None = None, action: str | None = None,
    since: datetime | None = None, until: datetime | None = None, before_seq: int | None = None,
    after_seq: int | None = None, limit: int | None = 100, oldest_first: bool = False,
    orgs: Iterable[str | None] | None = None,
) -> list[AuditRecord]:
    """Audit entries, newest first (or in chain order), filtered; ``before_seq``/``after_seq`` page by position.
    ``orgs``: only the entries of these organisations (None among them: the registry-wide ones); unset: all."""
    order = AuditRecord.seq.asc() if oldest_first else AuditRecord.seq.desc()
    query = select(AuditRecord).order_by(order).limit(limit)
    if orgs is not None:
        wanted = set(orgs)
        named = AuditRecord.org_id.in_(sorted(org for org in wanted if org is not None))
        query = query.where(named | AuditRecord.org_id.is_(None) if None in wanted else named)
    for column, value in ((AuditRecord.subject, subject), (AuditRecord.actor, actor), (AuditRecord.action, action)):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if until is not None:
        query = query.where(AuditRecord.at < until)
    # ``seq`` is a 32-bit integer: a cursor past its range (PostgreSQL would refuse it) means "all of them".
    if before_seq is not None:
        query = query.where(AuditRecord.seq <= min(before_seq - 1, LARGEST_SEQ))
    if after_seq is not None and after_seq <= LARGEST_SEQ:
        query = query.where(AuditRecord.seq > after_seq)
    elif after_seq is not None:
        return []
    return list(session.scalars(query))


# --- sandboxes and approvals --------------------------------------------------------------------


def add_sandbox(session: Session, record: SandboxRecord) -> SandboxRecord:
    session.add(record)
    session.flush()
    return record


def get_sandbox(session: Session, sandbox_id: str) -> SandboxRecord | None:
    return session.get(SandboxRecord, sandbox_id)


def list_sandboxes(session: Session, agent: str | None = None, *, removed: bool = False) -> list[SandboxRecord]:
    """Sandboxes, newest first; only the active ones unless ``removed``."""
    query = select(SandboxRecord).order_by(SandboxRecord.created_at.desc(), SandboxRecord.id)
    if agent is not None:
        query = query.where(SandboxRecord.agent == agent)
    if not removed:
        query = query.where(SandboxRecord.status == "active")
    return list(session.scalars(query))


def expire_sandboxes(session: Session, now: datetime) -> list[str]:
    """Mark every active sandbox whose time is up as expired; returns their ids."""
    due = list(session.scalars(select(SandboxRecord).where(SandboxRecord.status == "active",
                                                           SandboxRecord.expires_at <= now)))
    for record in due:
        record.status = "expired"
        record.removed_at = now
    return [record.id for record in due]


def record_sandbox_run(session: Session, run: SandboxRunRecord) -> SandboxRunRecord:
    session.add(run)
    session.flush()
    return run


def list_sandbox_runs(session: Session, sandbox_id: str, *, limit: int = 100,
                      after: int | None = None) -> list[SandboxRunRecord]:
    """A sandbox's attempts in the order they were made (all revisions); ``after`` an id, a page at a time."""
    query = select(SandboxRunRecord).where(SandboxRunRecord.sandbox_id == sandbox_id)
    if after is not None:
        query = query.where(SandboxRunRecord.id > after)
    return list(session.scalars(query.order_by(SandboxRunRecord.id).limit(limit)))


def add_approval(session: Session, record: ApprovalRecord) -> ApprovalRecord:
    session.add(record)
    session.flush()
    return record


def get_approval(session: Session, approval_id: str) -> ApprovalRecord | None:
    return session.get(ApprovalRecord, approval_id)


def list_approvals(session: Session, agent: str | None = None, *, service: str | None = None,
                   scope: str | None = None, revoked: bool = False) -> list[ApprovalRecord]:
    """Approvals, oldest first; only standing ones unless ``revoked``."""
    query = select(ApprovalRecord).order_by(ApprovalRecord.approved_at, ApprovalRecord.id)
    if agent is not None:
        query = query.where(ApprovalRecord.agent == agent)
    if service is not None:
        query = query.where(ApprovalRecord.service == service)
    if scope is not None:
        query = query.where(ApprovalRecord.scope == scope)
    if not revoked:
        query = query.where(ApprovalRecord.revoked_at.is_(None))
    return list(session.scalars(query))


# --- learning: what discovery and policy may read ------------------------------------------------------


def proficiency(session: Session, agent: str, system: str) -> float | None:
    """``agent``'s latest assessed score (0..1) on a target ``system``, None when never assessed.

    Discovery may rank a proficient agent above a novice one for that system's tools, and the policy may
    read it; ``mesh.learning`` writes the assessments."""
    query = (select(CapabilityAssessmentRecord.score)
             .where(CapabilityAssessmentRecord.agent == agent, CapabilityAssessmentRecord.system == system)
             .order_by(CapabilityAssessmentRecord.created_at.desc()).limit(1))
    return session.scalar(query)


def proficiencies(session: Session) -> dict[str, dict[str, float]]:
    """Every agent's latest assessed score per target system: ``{agent: {system: score}}``, one query."""
    table = CapabilityAssessmentRecord
    newest = (select(table.agent, table.system, func.max(table.created_at).label("at"))
              .group_by(table.agent, table.system).subquery())
    query = (select(table.agent, table.system, table.score)
             .join(newest, (table.agent == newest.c.agent) & (table.system == newest.c.system)
                   & (table.created_at == newest.c.at))
             .order_by(table.created_at))
    scores: dict[str, dict[str, float]] = {}
    for agent, system, score in session.execute(query):
        scores.setdefault(agent, {})[system] = score
    return scores


T = TypeVar("T")


def _require(record: T | None, problem: str) -> T:
    if record is None:
        raise LookupError(problem)
    return record


# Last: tenancy's rules build on the models above and hold on every session (it installs them on import).
from mesh.registry import tenancy as _tenancy  # noqa: E402, F401
