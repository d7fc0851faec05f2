"""Tenancy in the store: run as one tenant, each store operation neither sees nor changes another's rows.

On SQLite and PostgreSQL through the same session rules (``tenancy.py``); on PostgreSQL also with raw SQL as
the least-privilege role ``mesh_registry``, to show row-level security holds by itself. And migration 0015
upgrades a database at 0008 holding runs without losing them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mesh.learning import records as learning
from mesh.registry import approvals, store
from mesh.registry.auth import PERMISSIONS, ROLES, Caller
from mesh.registry.migrations.rls import REGISTRY_ROLE
from mesh.registry.problems import Problem
from mesh.registry.store import RunRecord, SandboxRecord, ToolRecord
from mesh.registry.tenancy import TenancyViolation, Tenant, acting_as, as_registry

from .conftest import migrate_to

ACME = Tenant("acme", "web")
BETA = Tenant("beta", "api")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def tool(name: str) -> ToolRecord:
    schema = {"type": "object"}
    return ToolRecord(name=name, input_schema=schema, pinned_digest=f"sha256:{name}",
                      wire={"name": name, "inputSchema": schema})


def populate(sessions: sessionmaker[Session]) -> None:
    """Two organisations with a project each; each project an agent with a tool, a run, a reputation,
    a sandbox and a learning plan, all written as that project."""
    with as_registry(), sessions.begin() as session:
        for tenant in (ACME, BETA):
            session.add(store.OrgRecord(id=tenant.org, name=tenant.org))
            session.flush()
            store.add_project(session, tenant.org, tenant.project)
    for tenant, agent in ((ACME, "alpha"), (BETA, "bravo")):
        with acting_as(tenant), sessions.begin() as session:
            store.upsert_agent(session, agent, endpoint=f"http://127.0.0.1:1/{agent}")
            store.replace_tools(session, agent, [tool("search")])
            store.record_run(session, RunRecord(caller="user:local", agent=agent, tool="search", log="caller",
                                                status="ok", started_at=T0))
            store.save_reputation(session, agent, "", state={"n": 1}, score=0.9)
            store.add_sandbox(session, SandboxRecord(agent=agent, mode="mock", required_services=[], services={},
                                                     ttl_seconds=60, created_by="user:local",
                                                     expires_at=T0 + timedelta(hours=1)))
            learning.add_plan(session, agent, "petstore", {"objectives": [], "tasks": [], "rubric": []},
                              source={}, threshold=0.8, budget={})


@pytest.fixture
def tenants(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    populate(sessions)
    return sessions


def test_reads_show_only_the_acting_tenant(tenants: sessionmaker[Session]) -> None:
    with acting_as(ACME), tenants.begin() as session:
        assert [a.name for a in store.list_agents(session)] == ["alpha"]
        assert store.get_agent(session, "bravo") is None  # by primary key too
        assert {t.agent for t in store.list_tools(session)} == {"alpha"}
        assert store.list_tools(session, "bravo") == []
        runs = store.list_runs(session)
        assert [r.agent for r in runs] == ["alpha"]
        assert {r.agent for r in store.list_reputation(session)} == {"alpha"}
        assert store.load_reputation(session, "bravo") is None
        assert [s.agent for s in store.list_sandboxes(session)] == ["alpha"]
        assert [p.agent for p in learning.list_plans(session)] == ["alpha"]
    with acting_as(BETA), tenants.begin() as session:
        bravo_run = store.list_runs(session)[0]
        assert [a.name for a in store.list_agents(session)] == ["bravo"]
    with acting_as(ACME), tenants.begin() as session:
        assert store.get_run(session, bravo_run.id) is None
        assert store.runs_by_prefix(session, bravo_run.id[:8]) == []
    with as_registry(), tenants.begin() as session:  # the registry's own work sees every tenant
        assert [a.name for a in store.list_agents(session)] == ["alpha", "bravo"]
        assert {(a.org_id, a.project_id) for a in store.list_agents(session)} == {("acme", "web"), ("beta", "api")}


def test_writes_change_only_the_acting_tenant(tenants: sessionmaker[Session]) -> None:
    with acting_as(ACME), tenants.begin() as session:
        store.replace_tools(session, "bravo", [])  # its bulk DELETE cannot reach bravo's tools
        with pytest.raises(LookupError):
            store.set_agent_status(session, "bravo", "down")
        with pytest.raises(LookupError):
            store.block_tool(session, "bravo", "search", "no")
    with as_registry(), tenants.begin() as session:
        assert [t.name for t in store.list_tools(session, "bravo")] == ["search"]
        assert store.get_agent(session, "bravo").status == "active"


def test_a_row_of_another_tenant_is_refused_at_flush(tenants: sessionmaker[Session]) -> None:
    with acting_as(ACME), tenants() as session, pytest.raises(TenancyViolation, match="beta/api"):
        store.record_run(session, RunRecord(caller="x", agent="alpha", tool="t", log="caller", status="ok",
                                            org_id="beta", project_id="api"))
    with as_registry(), tenants.begin() as session:
        bravo = store.get_agent(session, "bravo")
    with acting_as(ACME), tenants() as session:
        bravo = session.merge(bravo, load=False)
        bravo.description = "changed by acme"
        with pytest.raises(TenancyViolation, match="may not change or remove"):
            session.flush()


def test_deleting_a_project_removes_its_agents_pins_but_keeps_runs_and_audit(
        tenants: sessionmaker[Session]) -> None:
    with as_registry(), tenants.begin() as session:
        store.audit(session, org="acme", actor="user:local", action="register", subject="alpha", outcome="admitted")
        assert store.delete_project(session, "acme", "web") == ["alpha"]
    with as_registry(), tenants.begin() as session:
        assert [a.name for a in store.list_agents(session)] == ["bravo"]
        assert {t.agent for t in store.list_tools(session)} == {"bravo"}
        assert {r.agent for r in store.list_runs(session)} == {"alpha", "bravo"}
        assert [e.subject for e in store.list_audit(session)] == ["alpha"]
        assert store.get_project(session, "acme", "web") is None


def test_the_permissions_tables_agree_with_the_code(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        assert store.sync_permissions(session, PERMISSIONS, (*ROLES, "agent")) is False  # seeded by 0015
        grants = {(g.role, g.action) for g in session.scalars(select(store.RolePermissionRecord))}
        assert ("viewer", "read") in grants and ("viewer", "invoke") not in grants
        session.execute(text("DELETE FROM role_permissions WHERE role = 'owner' AND action = 'members'"))
    with sessions.begin() as session:  # drifted: rewritten from the code
        assert store.sync_permissions(session, PERMISSIONS, (*ROLES, "agent")) is True
        assert session.get(store.RolePermissionRecord, ("owner", "members")) is not None
        assert store.sync_permissions(session, PERMISSIONS, (*ROLES, "agent")) is False


def test_approval_requests_belong_to_the_project_they_were_made_in(tenants: sessionmaker[Session]) -> None:
    local = Caller("user:local", "user", ["*"], org="default", role="owner")
    with acting_as(ACME), tenants.begin() as session:
        request = approvals.create(session, caller=local, agent="alpha", tool="search", rule="needs_approval",
                                   reasons=["a person says yes first"], approvers=["admin"], timeout=60)
        assert (request.org_id, request.project_id) == ("acme", "web")
    with acting_as(BETA), tenants.begin() as session:
        assert approvals.listing(session) == []
        assert session.get(store.ApprovalRequestRecord, request.id) is None
        with pytest.raises(Problem, match="no approval request"):  # another project's: unknown here
            approvals.transition(session, request.id, "approved", actor="user:local")
    with acting_as(ACME), tenants.begin() as session:
        assert [r.id for r in approvals.listing(session)] == [request.id]


def test_an_organisations_settings_are_its_own(tenants: sessionmaker[Session]) -> None:
    with tenants.begin() as session:
        store.set_org_policy(session, "acme", "approval_timeout_s", 300, by="user:local")
        store.set_org_policy(session, "acme", "budget_webhook", {"url": "https://hooks.example/acme"}, by="user:local")
        store.set_org_policy(session, "beta", "approval_timeout_s", 60, by="user:local")
    with tenants.begin() as session:
        assert store.org_policy(session, "acme") == {"approval_timeout_s": 300,
                                                    "budget_webhook": {"url": "https://hooks.example/acme"}}
        store.set_org_policy(session, "acme", "budget_webhook", None, by="user:local")
    with tenants.begin() as session:
        assert store.org_policy(session, "acme") == {"approval_timeout_s": 300}
        assert store.org_policy(session, "beta") == {"approval_timeout_s": 60}


# --- PostgreSQL: row-level security holds by itself, as the least-privilege role ---------------------------


def names(engine: Any, sql: str = "SELECT name FROM agents ORDER BY name") -> list[str]:
    with engine.begin() as connection:
        return list(connection.scalars(text(sql)))


def test_row_level_security_holds_for_raw_sql_as_the_registry_role(postgres_url: str) -> None:
    owner = store.connect(postgres_url)
    store.migrate(owner)
    restricted = store.connect_as(postgres_url, REGISTRY_ROLE)
    try:
        populate(store.session_factory(restricted))  # written through RLS: WITH CHECK let each write its own
        with restricted.connect() as connection:
            assert connection.scalar(text("SELECT current_user")) == REGISTRY_ROLE
        with acting_as(ACME):
            assert names(restricted) == ["alpha"]
            assert names(restricted, "SELECT agent FROM runs") == ["alpha"]
            assert names(restricted, "SELECT agent FROM sandboxes") == ["alpha"]
            assert names(restricted, "SELECT id FROM projects") == ["web"]
            with restricted.begin() as connection:
                changed = connection.execute(text("UPDATE agents SET description = 'x' WHERE name = 'bravo'"))
                assert changed.rowcount == 0
                gone = connection.execute(text("DELETE FROM tools WHERE agent = 'bravo'"))
                assert gone.rowcount == 0
            with pytest.raises(DBAPIError, match="row-level security"), restricted.begin() as connection:
                connection.execute(text("INSERT INTO runs (id, log, caller, agent, tool, status, started_at, "
                                        "org_id, project_id) VALUES ('r1', 'caller', 'x', 'bravo', 't', 'ok', "
                                        "now(), 'beta', 'api')"))
        assert names(restricted) == []  # outside any context the role sees no tenant row at all
        with as_registry():
            assert names(restricted) == ["alpha", "bravo"]
        assert names(owner) == ["alpha", "bravo"]  # the superuser that owns the tables is not bound
        with acting_as(BETA):
            assert names(restricted, "SELECT name || ':' || description FROM agents") == ["bravo:"]
    finally:
        restricted.dispose()
        owner.dispose()


# --- migration 0015 upgrades a database from before tenancy (0008) that holds runs ---------------------------


def test_an_existing_database_upgrades_and_downgrades_keeping_its_runs_and_pins(database_url: str) -> None:
    engine = store.connect(database_url)
    try:
        migrate_to(engine, "0008")
        stamp = T0.replace(tzinfo=None) if engine.dialect.name == "sqlite" else T0
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO agents (name, endpoint, status, version, description, "
                                    "registered_at, last_seen, flags) VALUES ('old', 'http://h', 'active', '', '', "
                                    ":at, :at, '[]')"), {"at": stamp})
            connection.execute(text("INSERT INTO tools (agent, name, description, input_schema, scopes, "
                                    "pinned_digest, status, wire) VALUES ('old', 'search', '', '{}', '[]', 'sha256:x',"
                                    " 'verified', '{}')"))
            for number in range(3):
                connection.execute(text("INSERT INTO runs (id, log, caller, agent, tool, status, started_at) VALUES "
                                        "(:id, 'caller', 'user:local', 'old', 'search', 'ok', :at)"),
                                   {"id": f"00000000-0000-0000-0000-00000000000{number}", "at": stamp})
        store.migrate(engine)
        sessions = store.session_factory(engine)
        with acting_as(Tenant("default", "default")), sessions.begin() as session:
            assert len(store.list_runs(session)) == 3
            assert [t.name for t in store.list_tools(session, "old")] == ["search"]
            assert store.get_project(session, "default", "default") is not None
        with acting_as(ACME), sessions.begin() as session:
            assert store.list_runs(session) == []
        # and back: nothing lost either way (SQLite's rebuilds cascade otherwise)
        migrate_to(engine, "0014", downgrade=True)
        with engine.begin() as connection:
            assert [connection.scalar(text(f"SELECT count(*) FROM {table}")) for table in ("runs", "tools")] == [3, 1]
        store.migrate(engine)
        with sessions.begin() as session:
            assert len(store.list_runs(session)) == 3 and len(store.list_tools(session)) == 1
    finally:
        engine.dispose()
