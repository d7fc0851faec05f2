"""Tenancy: which organisation and project a piece of work acts in, and the store rules that follow.

Organisations and projects own agents, their pins (tools, descriptors), runs, decisions, reputations,
sandboxes and their runs, approvals and approval requests, learning records and prompt versions: every
such table has ``org_id`` and ``project_id`` columns (``store.Tenanted``). A table added later joins by
subclassing ``store.Tenanted`` and calling ``migrations/rls.enable_tenant_rls`` in its migration.

Agent names stay unique in one registry (a name is the agent's identity, bound to its keys), so the
registry's in-memory maps stay keyed by name, and ``Registry.tenancy`` (``Tenancy``) says which project
each agent belongs to.

Who acts where:

- An agent acts in its own project, which the registry's configuration gives it: ``[agents.NAME]
  project = "ORG/PROJECT"`` in ``registry/registry.toml`` (default ``default/default``). The agent cannot
  choose it: the registry assigns it at admission.
- A person acts in the project named by the header ``X-Project-Id: ORG/PROJECT`` (default: the project
  ``default`` of the organisation they act in); ORG must be that organisation (a personal API token's, or
  the local user's default organisation). ``mesh project use ORG/PROJECT`` makes the CLI send it.

The rules, one code path on both backends (``install``, on every SQLAlchemy ``Session``):

- reads (ORM SELECT, UPDATE, DELETE) see only the acting tenant's rows (``with_loader_criteria`` for
  every ``Tenanted`` model);
- new rows are stamped with the acting tenant, and a flush that writes or deletes another tenant's row
  is refused (``TenancyViolation``).

Work is done in one of three contexts: ``acting_as(tenant)`` (a request, a call, an agent's own work);
``as_registry()`` — the registry's own cross-tenant work (loading every pin at start, saving reputations,
admission bookkeeping), visible in code where it happens; or none, which the store treats as unscoped
(tests and tools that open the store directly). On PostgreSQL, row-level security is the database's own
backstop (``migrations/rls.py``), on by default: having migrated as the tables' owner, the registry serves
as the least-privilege role ``mesh_registry`` (``[registry] database_role``; ``""`` opts out, with a warning)
and ``app.org_id``/``app.project_id`` are set at the start of every transaction from the context
(``enforce_rls``). With no context that role sees no tenant row at all and may write none: every piece of
registry work that touches the database runs in one of the two contexts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker, with_loader_criteria

from mesh.registry import store
from mesh.registry.auth import Caller
from mesh.registry.problems import Problem

if TYPE_CHECKING:
    from mesh.registry.config import RegistryConfig

HEADER = "X-Project-Id"
DEFAULT_ORG = DEFAULT_PROJECT = "default"
# Organisation and project ids are slugs, as ``[auth] default_org`` is.
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
# What ``app.org_id`` holds while the registry does its own cross-tenant work (the RLS policies let it by).
REGISTRY_SETTING = "*"


class TenancyViolation(Exception):
    """A write that would create, change or remove a row of a tenant other than the acting one."""


@dataclass(frozen=True, order=True)
class Tenant:
    """One organisation's project: the unit that owns agents, runs and the rest."""

    org: str
    project: str

    @property
    def key(self) -> str:
        return f"{self.org}/{self.project}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, value: Any, what: str = "project") -> Tenant:
        """``ORG/PROJECT`` (both slugs) as a Tenant; ValueError naming what is wrong otherwise."""
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string 'ORG/PROJECT'")
        org, slash, project = value.partition("/")
        if not slash or not SLUG.fullmatch(org) or not SLUG.fullmatch(project):
            raise ValueError(f"{what} {value[:80]!r} is not 'ORG/PROJECT' (each lowercase letters, digits and "
                             "dashes, at most 64)")
        return cls(org, project)


DEFAULT = Tenant(DEFAULT_ORG, DEFAULT_PROJECT)


class _Registry:
    """The marker of the registry's own cross-tenant work."""

    def __repr__(self) -> str:
        return "REGISTRY"


REGISTRY = _Registry()
_acting: ContextVar[Tenant | _Registry | None] = ContextVar("mesh_tenant", default=None)


def current() -> Tenant | _Registry | None:
    """The acting tenant, ``REGISTRY`` for the registry's own work, or None outside any context."""
    return _acting.get()


@contextmanager
def acting_as(tenant: Tenant) -> Iterator[Tenant]:
    """Run the block as ``tenant``: the store shows and writes only its rows."""
    token = _acting.set(tenant)
    try:
        yield tenant
    finally:
        _acting.reset(token)


@contextmanager
def as_registry() -> Iterator[None]:
    """Run the block as the registry itself, across every tenant (startup, bookkeeping, admission)."""
    token = _acting.set(REGISTRY)
    try:
        yield
    finally:
        _acting.reset(token)


# --- the store rules: one code path on SQLite and PostgreSQL -----------------------------------------------


def _only_acting_tenant(state: ORMExecuteState) -> None:
    tenant = _acting.get()
    if not isinstance(tenant, Tenant) or not (state.is_select or state.is_update or state.is_delete):
        return
    org, project = tenant.org, tenant.project
    state.statement = state.statement.options(with_loader_criteria(
        store.Tenanted, lambda cls: (cls.org_id == org) & (cls.project_id == project), include_aliases=True))


def _stamp_and_check(session: Session, _context: Any, _instances: Any) -> None:
    tenant = _acting.get()
    if not isinstance(tenant, Tenant):
        return
    for record in session.new:
        if isinstance(record, store.Tenanted):
            if record.org_id is None and record.project_id is None:
                record.org_id, record.project_id = tenant.org, tenant.project
            elif (record.org_id, record.project_id) != (tenant.org, tenant.project):
                raise TenancyViolation(f"{tenant} may not add a {record.__tablename__} row of "
                                       f"{record.org_id}/{record.project_id}")
    for record in (*session.dirty, *session.deleted):
        if isinstance(record, store.Tenanted) and (record.org_id, record.project_id) != (tenant.org, tenant.project):
            raise TenancyViolation(f"{tenant} may not change or remove a {record.__tablename__} row of "
                                   f"{record.org_id}/{record.project_id}")


def install() -> None:
    """Put the rules on every SQLAlchemy session (idempotent; done when this module is imported, which
    ``store`` does)."""
    if not event.contains(Session, "do_orm_execute", _only_acting_tenant):
        event.listen(Session, "do_orm_execute", _only_acting_tenant)
        event.listen(Session, "before_flush", _stamp_and_check)


# --- PostgreSQL: row-level security as the database's backstop ------------------------------------------------


def enforce_rls(engine: Engine, role: str | None) -> None:
    """Make ``engine`` connect as ``role`` (least privilege, not the tables' owner, so row-level security
    applies to it; None: as the login user) and tell PostgreSQL the acting tenant at the start of every
    transaction: the forced policies bind a login user that owns the tables too, unless it bypasses them
    (a superuser, or BYPASSRLS).

    Costs one statement per transaction, sent on the connection the transaction already uses."""
    if engine.dialect.name != "postgresql":
        raise ValueError("row-level security needs PostgreSQL")
    if role is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise ValueError(f"database_role {role!r} is not a plain PostgreSQL role name")

    if role is not None:
        @event.listens_for(engine, "connect")
        def set_role(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET ROLE {role}")
            dbapi_connection.commit()

    @event.listens_for(engine, "begin")
    def set_tenant(connection: Connection) -> None:
        tenant = _acting.get()
        org, project = ((tenant.org, tenant.project) if isinstance(tenant, Tenant)
                        else (REGISTRY_SETTING, REGISTRY_SETTING) if tenant is REGISTRY else ("", ""))
        with connection.connection.dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.org_id', %s, true), set_config('app.project_id', %s, true)",
                           (org, project))


# --- the registry's side: who acts where ----------------------------------------------------------------------


def assigned_projects(config: RegistryConfig) -> dict[str, Tenant]:
    """Each agent's project from registry.toml's ``[agents.NAME] project``; a ConfigProblem names a bad one."""
    from mesh.registry.config import CONFIG_FILE, ConfigProblem  # the store imports this module, config the store

    try:
        return {name: Tenant.parse(value, f"[agents.{name}] project") for name, value in config.agent_projects.items()}
    except ValueError as exc:
        raise ConfigProblem(f"{CONFIG_FILE}: {exc}") from None


def requested(header: str | None, org: str | None) -> Tenant:
    """The project a person asks to act in (the ``X-Project-Id`` header), bound to the organisation they act
    in. One they cannot act in is unknown to them: 404, as every object of another tenant is."""
    if not header:
        return Tenant(org or DEFAULT_ORG, DEFAULT_PROJECT)
    try:
        tenant = Tenant.parse(header.strip(), HEADER)
    except ValueError as exc:
        raise Problem("bad-request", str(exc)) from exc
    if tenant.org != org:
        raise Problem("unknown-project", f"no project {tenant} that this caller can act in (it acts in "
                                         f"organisation {org!r}; a token of another organisation acts there)")
    return tenant


def unknown_agent(name: str) -> Problem:
    """What a caller hears of an agent of another tenant: exactly what it hears of one that does not exist."""
    return Problem("unknown-agent", f"no agent {name!r} is registered")


class Tenancy:
    """What one registry process knows of tenants, in memory so a call costs no database read: which project
    each agent belongs to, which projects exist, and so where each caller acts."""

    def __init__(self, sessions: sessionmaker[Session], assigned: dict[str, Tenant], default_org: str):
        self.sessions = sessions
        self.assigned = assigned  # from registry.toml: where an agent goes when it is admitted
        self.default_org = default_org
        self.agents: dict[str, Tenant] = {}  # admitted agent -> its project
        self.projects: set[Tenant] = set()

    def load(self) -> None:
        """At start, as the registry: make every project registry.toml names (and the default organisation's
        ``default``), then read which agent belongs where."""
        with as_registry(), self.sessions.begin() as session:
            for tenant in sorted({*self.assigned.values(), Tenant(self.default_org, DEFAULT_PROJECT)}):
                if session.get(store.OrgRecord, tenant.org) is None:
                    session.add(store.OrgRecord(id=tenant.org, name=tenant.org))
                    session.flush()
                store.add_project(session, tenant.org, tenant.project)
            self.projects = {Tenant(p.org_id, p.id) for p in store.list_projects(session)}
            self.agents = {a.name: Tenant(a.org_id, a.project_id) for a in store.list_agents(session)}

    def of(self, agent: str) -> Tenant:
        """The project ``agent`` belongs to (admitted), or will belong to (registry.toml, else the default)."""
        return self.agents.get(agent) or self.assigned.get(agent) or DEFAULT

    def admitted(self, agent: str) -> None:
        self.agents[agent] = self.of(agent)

    def of_caller(self, caller: Caller) -> Tenant:
        """Where ``caller`` acts: as placed by ``place``; else an agent in its own project, anyone else in
        the default project of their organisation."""
        if caller.project is not None and caller.org is not None:
            return Tenant(caller.org, caller.project)
        if caller.agent is not None:
            return self.of(caller.agent)
        return Tenant(caller.org or self.default_org, DEFAULT_PROJECT)

    def place(self, caller: Caller, header: str | None) -> Caller:
        """``caller`` with the organisation and project it acts in on this request (``X-Project-Id``)."""
        if caller.kind == "anonymous":
            return caller
        if caller.agent is not None:
            tenant = self.of(caller.agent)
            if header and header.strip() != tenant.key:
                raise Problem("unknown-project", f"agent {caller.agent!r} acts in its own project only ({tenant})")
        else:
            tenant = requested(header, caller.org or self.default_org)
            # Every organisation has its ``default`` project (a row once registry.toml assigns an agent to it).
            if tenant.project != DEFAULT_PROJECT and tenant not in self.projects and not self._exists(tenant):
                raise Problem("unknown-project", f"no project {tenant} in organisation {tenant.org!r}")
        if (caller.org, caller.project) == (tenant.org, tenant.project):
            return caller
        return replace(caller, org=tenant.org, project=tenant.project)

    def _exists(self, tenant: Tenant) -> bool:
        """A project made by another registry process sharing the database (read only for one not known)."""
        with as_registry(), self.sessions.begin() as session:
            found = store.get_project(session, tenant.org, tenant.project) is not None
        if found:
            self.projects.add(tenant)
        return found

    def visible(self, caller: Caller, agent: str) -> bool:
        """May ``caller`` know ``agent`` exists? Only when it is admitted into the project the caller acts in."""
        tenant = self.agents.get(agent)
        return tenant is not None and tenant == self.of_caller(caller)

    def visible_agents(self, caller: Caller, agents: Iterable[str]) -> list[str]:
        tenant = self.of_caller(caller)
        return [agent for agent in agents if self.agents.get(agent) == tenant]

    def elsewhere(self, caller: Caller, agent: str) -> bool:
        """Is ``agent`` admitted into a project other than the caller's? (Not yet admitted: not elsewhere.)"""
        tenant = self.agents.get(agent)
        return tenant is not None and tenant != self.of_caller(caller)


install()
