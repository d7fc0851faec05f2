"""The registry's store on SQLite and, when ``MESH_TEST_DATABASE_URL`` names one, on PostgreSQL.

Each PostgreSQL test works in a schema of its own (created and dropped here), because CI and other
test runs share that database.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mesh.registry import store
from mesh.registry.store import DecisionRecord, RunRecord, ToolRecord

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def admit(session: Session, name: str = "librarian") -> None:
    store.upsert_agent(
        session,
        name,
        endpoint=f"http://127.0.0.1:8001/{name}/mcp",
        manifest='{"payload": "...", "signatures": []}',
        manifest_digest="sha256:m1",
        jwks={"keys": [{"kid": "k1"}], "revoked": [], "rotations": []},
        version="1.0.0",
        description="finds passages",
    )


def tool(name: str, digest: str = "sha256:t") -> ToolRecord:
    schema = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    return ToolRecord(
        name=name,
        title=name.title(),
        description=f"{name} things",
        input_schema=schema,
        output_schema=None,
        annotations={"readOnlyHint": True},
        scopes=["library:read"],
        pinned_digest=digest,
        wire={"name": name, "inputSchema": schema, "_meta": {"io.mcpmesh/signature": {"digest": digest}}},
    )


def run(caller: str, agent: str, log: str, started_at: datetime, **fields: object) -> RunRecord:
    fields = {"tool": "search", "status": "ok", **fields}
    return RunRecord(caller=caller, agent=agent, log=log, started_at=started_at, **fields)


def test_migration_from_empty_matches_the_models(database_url: str) -> None:
    engine = store.connect(database_url)
    try:
        assert inspect(engine).get_table_names() == []
        store.migrate(engine)
        store.migrate(engine)  # a second start finds the schema at head and leaves it alone
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, store.Base.metadata) == []
            head = ScriptDirectory(str(store.MIGRATIONS)).get_current_head()
            assert context.get_current_revision() == head
    finally:
        engine.dispose()


def test_sqlite_is_created_under_mesh_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = store.database_url(tmp_path)
    assert url == f"sqlite:///{tmp_path / '.mesh' / 'registry.db'}"
    engine = store.connect(url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (tmp_path / ".mesh" / "registry.db").exists()
    finally:
        engine.dispose()


def test_commits_leave_the_wal_to_the_background_checkpoint(tmp_path: Path) -> None:
    engine = store.connect(store.database_url(tmp_path))
    try:
        store.migrate(engine)
        sessions = sessionmaker(engine)
        for hour in range(300):  # more than 1000 pages of WAL: SQLite's own threshold for a checkpoint
            with sessions.begin() as session:
                store.record_run(session, run("planner", "librarian", "caller", T0 + timedelta(hours=hour),
                                             provenance="x" * 4000))
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        database, wal = tmp_path / ".mesh" / "registry.db", tmp_path / ".mesh" / "registry.db-wal"
        assert wal.stat().st_size > 1000 * 4096  # no commit folded the log back on the way
        assert database.stat().st_size < 1000 * 4096  # so the rows are not in the database file yet
        store.checkpoint(engine)
        assert database.stat().st_size > 300 * 4000  # now they are
        with sessions() as session:
            assert len(store.list_runs(session, "librarian", limit=1000)) == 300
    finally:
        engine.dispose()


def test_database_url_prefers_the_environment_then_registry_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(store.DATABASE_URL_VARIABLE, raising=False)
    assert store.database_url(tmp_path, "postgresql://db/mesh") == "postgresql://db/mesh"
    monkeypatch.setenv(store.DATABASE_URL_VARIABLE, "postgresql://env/mesh")
    assert store.database_url(tmp_path, "postgresql://db/mesh") == "postgresql://env/mesh"


def test_agent_round_trip_and_readmission(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        admit(session)
        admit(session, "archivist")
    with sessions() as session:
        agent = store.get_agent(session, "librarian")
        assert agent is not None
        assert agent.endpoint == "http://127.0.0.1:8001/librarian/mcp"
        assert agent.jwks == {"keys": [{"kid": "k1"}], "revoked": [], "rotations": []}
        assert agent.flags == []
        assert agent.registered_at.tzinfo is UTC
        first_registered = agent.registered_at
        assert [a.name for a in store.list_agents(session)] == ["archivist", "librarian"]
        assert store.get_agent(session, "nobody") is None

    with sessions.begin() as session:
        store.upsert_agent(session, "librarian", endpoint="http://127.0.0.1:9000/mcp", flags=["slow"])
        store.set_agent_status(session, "archivist", "down")
    with sessions() as session:
        agent = store.get_agent(session, "librarian")
        assert agent is not None
        assert (agent.endpoint, agent.flags, agent.manifest) == ("http://127.0.0.1:9000/mcp", ["slow"], None)
        assert agent.registered_at == first_registered
        assert agent.last_seen >= first_registered
        assert [a.name for a in store.list_agents(session, status="down")] == ["archivist"]


def test_replacing_and_blocking_tools(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        admit(session)
        store.replace_tools(session, "librarian", [tool("search"), tool("fetch")])
    with sessions() as session:
        tools = store.list_tools(session, "librarian")
        assert [t.name for t in tools] == ["fetch", "search"]
        search = tools[1]
        assert search.input_schema["required"] == ["query"]
        assert search.output_schema is None
        assert (search.annotations, search.scopes, search.status) == (
            {"readOnlyHint": True},
            ["library:read"],
            "verified",
        )

    with sessions.begin() as session:  # re-admission: only the new list remains, pinned to new digests
        store.replace_tools(session, "librarian", [tool("search", "sha256:t2")])
    with sessions.begin() as session:
        store.block_tool(session, "librarian", "search", "live schema no longer matches its pinned digest")
        with pytest.raises(LookupError):
            store.block_tool(session, "librarian", "fetch", "gone")
    with sessions() as session:
        [search] = store.list_tools(session, agent="librarian")
        assert (search.pinned_digest, search.status) == ("sha256:t2", "blocked")
        assert search.blocked_reason == "live schema no longer matches its pinned digest"
        assert store.list_tools(session, status="verified") == []
        assert store.list_tools(session, status="blocked") == [search]


def described(kind: str, name: str, digest: str = "sha256:d1") -> store.DescriptorRecord:
    wire = {"name": name, "uri": f"notes://{name}", "_meta": {"io.mcpmesh/signature": {"digest": digest}}}
    return store.DescriptorRecord(kind=kind, name=name, wire=wire, scopes=["notes:read"], pinned_digest=digest,
                                  status="verified", signed_by="kid-1")


def test_resources_templates_and_prompts_are_pinned_replaced_and_blocked(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        admit(session)
        # A resource and a prompt may share a name: each kind has its own names.
        store.replace_descriptors(session, "librarian", [described("resource", "today"), described("prompt", "today"),
                                                         described("resource_template", "day")])
    with sessions() as session:
        listed = store.list_descriptors(session, "librarian")
        assert [(d.kind, d.name) for d in listed] == [("prompt", "today"), ("resource", "today"),
                                                      ("resource_template", "day")]
        assert (listed[1].wire["uri"], listed[1].scopes, listed[1].signed_by) == ("notes://today", ["notes:read"],
                                                                                   "kid-1")
    with sessions.begin() as session:  # re-admission: only the new list remains
        store.replace_descriptors(session, "librarian", [described("prompt", "today", "sha256:d2")])
        store.block_descriptor(session, "librarian", "prompt", "today", "changed after approval")
        with pytest.raises(LookupError):
            store.block_descriptor(session, "librarian", "resource", "today", "gone")
    with sessions() as session:
        [prompt] = store.list_descriptors(session)
        assert (prompt.pinned_digest, prompt.status, prompt.blocked_reason) == (
            "sha256:d2", "blocked", "changed after approval")
    with pytest.raises(IntegrityError), sessions.begin() as session:  # only these three kinds
        store.replace_descriptors(session, "librarian", [described("tool", "search")])


def test_tools_belong_to_an_admitted_agent(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), sessions.begin() as session:
        store.replace_tools(session, "stranger", [tool("search")])


def test_linked_runs_are_listed_on_both_sides(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        caller_side = store.record_run(
            session, run("planner", "librarian", "caller", T0, policy_decision="allow", policy_rule="same-team")
        )
        target_side = store.record_run(
            session, run("planner", "librarian", "target", T0 + timedelta(milliseconds=3), parent_run_id=caller_side.id)
        )
        store.record_run(session, run("planner", "archivist", "caller", T0 + timedelta(seconds=1)))
        caller_id, target_id = caller_side.id, target_side.id
    with sessions() as session:
        [in_callers_log] = store.list_runs(session, "librarian", caller="planner", log="caller")
        [in_targets_log] = store.list_runs(session, "librarian", log="target")
        assert (in_callers_log.id, in_targets_log.id) == (caller_id, target_id)
        assert in_targets_log.parent_run_id == caller_id
        assert [r.id for r in store.linked_runs(session, target_id)] == [caller_id, target_id]
        assert [r.id for r in store.linked_runs(session, caller_id)] == [caller_id, target_id]
        assert len(store.list_runs(session, caller="planner")) == 3
        fetched = store.get_run(session, caller_id)
        assert fetched is not None
        assert (fetched.policy_decision, fetched.policy_rule, fetched.started_at) == ("allow", "same-team", T0)
        assert store.get_run(session, str(uuid.uuid4())) is None


def test_runs_are_listed_most_recent_first(sessions: sessionmaker[Session]) -> None:
    offsets = [5, 1, 9, 3, 7]
    with sessions.begin() as session:
        for minutes in offsets:
            store.record_run(session, run("planner", "librarian", "caller", T0 + timedelta(minutes=minutes)))
    with sessions() as session:
        listed = store.list_runs(session, "librarian")
        assert [r.started_at for r in listed] == [T0 + timedelta(minutes=m) for m in sorted(offsets, reverse=True)]
        assert [r.started_at for r in store.list_runs(session, limit=2)] == [
            T0 + timedelta(minutes=9),
            T0 + timedelta(minutes=7),
        ]


def test_a_recorded_run_gets_an_id_and_a_start(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        recorded = store.record_run(
            session, RunRecord(caller="planner", agent="librarian", tool="search", log="caller", status="timeout")
        )
        uuid.UUID(recorded.id)
        assert recorded.started_at.tzinfo is UTC


def test_policy_decisions_reference_their_run(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        denied = store.record_run(session, run("planner", "librarian", "caller", T0, status="denied"))
        store.record_decision(session, denied.id, allow=False, rule="budget", input_digest="sha256:i")
        run_id = denied.id
    with sessions() as session:
        [decision] = session.scalars(select(DecisionRecord)).all()
        assert (decision.run_id, decision.allow, decision.rule) == (run_id, False, "budget")
        assert decision.decided_at.tzinfo is UTC
    with pytest.raises(IntegrityError), sessions.begin() as session:
        store.record_decision(session, "no-such-run", allow=True, rule=None, input_digest="sha256:i")


def test_reputation_survives_a_restart(database_url: str) -> None:
    state = {"success": {"mean": 0.93, "n": 41}, "latency": {"mean": 12.5, "var": 4.25, "n": 41}}
    engine = store.connect(database_url)
    store.migrate(engine)
    with store.session_factory(engine).begin() as session:
        store.save_reputation(session, "librarian", "", state={"success": {"mean": 0.5, "n": 1}}, score=0.5)
        store.save_reputation(session, "librarian", "search", state=state, score=0.91)
    with store.session_factory(engine).begin() as session:
        store.save_reputation(session, "librarian", "", state=state, score=0.9)
    engine.dispose()

    engine = store.connect(database_url)  # a restarted registry
    try:
        store.migrate(engine)
        with store.session_factory(engine)() as session:
            whole = store.load_reputation(session, "librarian")
            assert whole is not None
            assert (whole.state, whole.score) == (state, 0.9)
            assert whole.updated_at.tzinfo is UTC
            assert [(r.tool, r.score) for r in store.list_reputation(session, "librarian")] == [
                ("", 0.9),
                ("search", 0.91),
            ]
            assert store.load_reputation(session, "librarian", "fetch") is None
    finally:
        engine.dispose()


def test_trusted_keys_expire_and_an_end_only_moves_earlier(sessions: sessionmaker[Session]) -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}
    with sessions.begin() as session:
        store.trust_key(session, "old", agent="librarian", jwk=jwk, source="workspace", exp=T0 + timedelta(days=7))
        store.trust_key(session, "new", agent="librarian", jwk=jwk, source="rotation")
        store.trust_key(session, "other", agent="archivist", jwk=jwk, source="local")
    with sessions.begin() as session:  # a later statement can shorten an end, never lift or extend it
        store.trust_key(session, "old", agent="librarian", jwk=jwk, source="workspace", exp=None)
        store.trust_key(session, "old", agent="librarian", jwk=jwk, source="workspace", exp=T0 + timedelta(days=30))
    with sessions() as session:
        usable_now = store.trusted_keys(session, "librarian", usable_at=T0)
        assert [k.kid for k in usable_now] == ["new", "old"]
        assert usable_now[1].exp == T0 + timedelta(days=7)
        later = T0 + timedelta(days=8)
        assert [k.kid for k in store.trusted_keys(session, usable_at=later)] == ["other", "new"]


def test_revocations_are_kept_once_per_agent_and_kid(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        first, created = store.revoke_key(session, "librarian", "k1", by="key:k2", statement="a.b.c")
        assert created and first.revoked_by == "key:k2"
        again, created = store.revoke_key(session, "librarian", "k1", by="user:local")
        assert not created and again.revoked_by == "key:k2"
        store.revoke_key(session, "archivist", "k9", by="user:local", reason="stolen laptop")
    with sessions() as session:
        assert store.revoked_kids(session, "librarian") == {"k1"}
        assert store.revoked_kids(session, "nobody") == set()
        assert [(r.agent, r.kid) for r in store.list_revocations(session)] == [("archivist", "k9"),
                                                                              ("librarian", "k1")]


def test_audit_events_are_listed_newest_first(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        store.audit(session, org=None, actor="unauthenticated", action="register", subject="echo", outcome="refused",
                    detail="the token does not verify", remote="127.0.0.1")
        store.audit(session, org="default", actor="user:local", action="revoke-key", subject="echo", outcome="done")
    with sessions() as session:
        events = store.list_audit(session, subject="echo")
        assert [(e.action, e.outcome) for e in events] == [("revoke-key", "done"), ("register", "refused")]
        assert events[1].remote == "127.0.0.1"


def test_runs_page_with_a_cursor(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        admit(session)
        for minute in range(5):
            store.record_run(session, run("planner", "librarian", "caller", T0 + timedelta(minutes=minute)))
    with sessions() as session:
        first = store.list_runs(session, limit=2)
        second = store.list_runs(session, limit=2, before=(first[-1].started_at, first[-1].id))
        third = store.list_runs(session, limit=2, before=(second[-1].started_at, second[-1].id))
        minutes = [int((r.started_at - T0).total_seconds() // 60) for r in first + second + third]
        assert minutes == [4, 3, 2, 1, 0]


def test_naive_datetimes_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(Exception, match="timezone-aware"), sessions.begin() as session:
        store.record_run(session, run("planner", "librarian", "caller", datetime(2025, 1, 1)))


def test_a_nul_in_stored_text_is_kept_on_both_backends(sessions: sessionmaker[Session]) -> None:
    """PostgreSQL refuses NUL in text; a tool's error message may hold one and must not lose the run."""
    with sessions.begin() as session:
        admit(session)
        recorded = store.record_run(session, run("planner", "librarian", "caller", T0, error="bad\x00byte"))
        store.audit(session, org="default", actor="user:local", action="revoke-key", subject="librarian",
                    outcome="done", detail="reason: \x00")
    with sessions() as session:
        assert store.get_run(session, recorded.id).error == "bad\ufffdbyte"
        assert store.list_audit(session)[0].detail == "reason: \ufffd"
