"""The audit log: a hash chain with signed checkpoints that catches every quiet edit.

On SQLite and, when ``MESH_TEST_DATABASE_URL`` names one, on PostgreSQL (the store fixtures of ``conftest.py``):
appends from many threads never fork the chain; the database refuses UPDATE and DELETE; an entry edited,
deleted, inserted or reordered, in the database or in an export, is found by ``verify``, and so is a
forged checkpoint.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mesh.keys import KeyRing
from mesh.registry import audit, store

from .conftest import migrate_to

# The store's fixtures: an empty database on SQLite and (when configured) on PostgreSQL, migrated.


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.open(tmp_path / "registry-key", create=True)


def fill(sessions: sessionmaker[Session], count: int, start: int = 0, org: str | None = "default") -> None:
    for number in range(start, start + count):
        with sessions.begin() as session:
            store.audit(session, org=org, actor=f"agent:a{number % 3}", action=("register", "revoke-key")[number % 2],
                        subject=f"agent{number % 4}", outcome="done", detail=f"event {number}",
                        data={"n": number, "nested": {"x": [1, 2.5, "three"]}})


def exported(sessions: sessionmaker[Session]) -> list[dict]:
    with sessions() as session:
        entries, checkpoints, _ = audit.read_chain(session)
    return [json.loads(line) for line in audit.export_lines(entries, checkpoints)]


def check(lines: list[dict], ring: KeyRing) -> audit.Verification:
    return audit.verify_lines([json.dumps(line) for line in lines], ring.public_jwks())


def tamper(engine: Engine, statement: str) -> None:
    """What someone with the database's owner rights can still do: switch the triggers off, then edit."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            connection.execute(text(statement))
            connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
            connection.execute(text("DROP TRIGGER audit_events_no_delete"))
            connection.execute(text(statement))


def test_a_chain_with_checkpoints_verifies_from_the_database_and_from_an_export(
        sessions: sessionmaker[Session], ring: KeyRing):
    assert audit.checkpoint(sessions, ring.active()) is None  # nothing to sign yet
    fill(sessions, 5)
    first = audit.checkpoint(sessions, ring.active())
    assert first is not None and first["seq"] == 5
    assert audit.checkpoint(sessions, ring.active()) is None  # the head did not move
    fill(sessions, 3, start=5)
    report = audit.verify_database(sessions, ring.public_jwks())
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints, report.anchored) == (8, 1, 5)
    assert "the last 3 entries are not yet covered" in report.summary()
    audit.checkpoint(sessions, ring.active())
    lines = exported(sessions)
    assert [line["type"] for line in lines] == ["entry"] * 5 + ["checkpoint"] + ["entry"] * 3 + ["checkpoint"]
    assert lines[0]["prev"] == audit.GENESIS and lines[1]["prev"] == lines[0]["hash"]
    report = check(lines, ring)
    assert report.ok and report.anchored == 8, report.problems


def test_the_database_refuses_to_change_or_delete_entries(sessions: sessionmaker[Session], engine: Engine):
    fill(sessions, 2)
    for statement in ("UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 1",
                      "DELETE FROM audit_events WHERE seq = 2"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_events")).scalar() == 2
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text("TRUNCATE audit_events"))


@pytest.mark.parametrize("edit, found", [
    ("UPDATE audit_events SET detail = 'nothing happened' WHERE seq = 3", "entry 3: its content does not match"),
    ("DELETE FROM audit_events WHERE seq = 3", "has seq 4"),
    ("UPDATE audit_events SET seq = seq + 100 WHERE seq = 2", "has seq 3"),  # moved to the end: reordered
    ("DELETE FROM audit_events WHERE seq = 6", "the database's head says entry 6"),  # cut from the end
])
def test_an_edit_in_the_database_is_found(sessions: sessionmaker[Session], engine: Engine, ring: KeyRing,
                                          edit: str, found: str):
    fill(sessions, 6)
    assert audit.verify_database(sessions, ring.public_jwks()).ok
    tamper(engine, edit)
    report = audit.verify_database(sessions, ring.public_jwks())
    assert not report.ok
    assert any(found in problem for problem in report.problems), report.problems


def test_an_entry_rewritten_with_its_hash_and_every_later_one_is_caught_by_the_checkpoint(
        sessions: sessionmaker[Session], ring: KeyRing):
    fill(sessions, 4)
    audit.checkpoint(sessions, ring.active())
    lines = exported(sessions)
    entries = [line for line in lines if line["type"] == "entry"]
    entries[1]["detail"] = "nothing happened"  # rewrite entry 2, then re-link the chain after it
    for before, entry in itertools.pairwise(entries):
        if entry["seq"] > 2:
            entry["prev"] = before["hash"]
        if entry["seq"] >= 2:
            entry["hash"] = audit.entry_hash(entry)
    report = check(lines, ring)
    assert report.problems == ["checkpoint at entry 4: the signed hash differs from the chain's "
                               "(entries up to 4 changed)"]


def _entries(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["type"] == "entry"]


@pytest.mark.parametrize("change, found", [
    ("edit", "entry 2: its content does not match its hash (edited)"),
    ("delete", "entry at position 2 has seq 3"),
    ("insert", "entry at position 4 has seq 3"),
    ("reorder", "entry at position 2 has seq 3"),
    ("forge-checkpoint", "its signature does not verify"),
    ("alter-checkpoint", "its record differs from what was signed"),
    ("cut-tail", "the log has no entry 5"),
])
def test_an_edit_of_an_export_is_found(sessions: sessionmaker[Session], ring: KeyRing, tmp_path: Path,
                                       change: str, found: str):
    fill(sessions, 5)
    audit.checkpoint(sessions, ring.active())
    lines = exported(sessions)
    assert check(lines, ring).ok
    entries = _entries(lines)
    if change == "edit":
        entries[1]["outcome"] = "refused"
    elif change == "delete":
        lines.remove(entries[1])
    elif change == "insert":  # a made-up entry, hashed correctly and linked after entry 2
        forged = {**entries[1], "seq": 3, "detail": "made up", "prev": entries[1]["hash"]}
        forged["hash"] = audit.entry_hash(forged)
        lines.insert(lines.index(entries[1]) + 1, forged)
    elif change == "reorder":
        first, second = lines.index(entries[1]), lines.index(entries[2])
        lines[first], lines[second] = lines[second], lines[first]
    elif change == "forge-checkpoint":  # a checkpoint over a rewritten chain, signed by a key of one's own
        other = KeyRing.open(tmp_path / "forger", create=True).active()
        forged = audit.checkpoint(sessions, other)  # nothing new to sign: forge one by hand
        assert forged is None
        claims = {"seq": 5, "hash": entries[4]["hash"], "at": "2026-11-30T12:00:00+00:00"}
        jws = other.sign(audit.canonical(claims), audit.CHECKPOINT_TYP)
        lines[-1] = {"type": "checkpoint", **claims, "kid": ring.active().kid, "jws": jws}
    elif change == "alter-checkpoint":
        lines[-1]["hash"] = entries[3]["hash"]
    elif change == "cut-tail":
        lines.remove(entries[4])
    report = check(lines, ring)
    assert not report.ok
    assert any(found in problem for problem in report.problems), report.problems


@pytest.mark.parametrize("writers", [4])
def test_concurrent_writers_never_fork_the_chain(sessions: sessionmaker[Session], ring: KeyRing, writers: int):
    per_writer = 25
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(number: int) -> None:
        try:
            for index in range(per_writer):
                start.wait()  # every round, all writers append at once
                with sessions.begin() as session:
                    audit.append(session, org=f"org{number % 2}", actor=f"agent:w{number}", action="test",
                                 subject=f"w{number}", outcome="done", data={"i": index})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    audit.checkpoint(sessions, ring.active())
    report = audit.verify_database(sessions, ring.public_jwks())
    assert report.ok, report.problems[:5]
    assert report.entries == writers * per_writer == report.anchored
    with sessions() as session:
        actors = [e.actor for e in store.list_audit(session, limit=None, oldest_first=True)]
    assert all(len(set(actors[i:i + writers])) == writers for i in range(0, len(actors), writers))  # in rounds


def test_a_rolled_back_append_leaves_no_gap(sessions: sessionmaker[Session], ring: KeyRing):
    fill(sessions, 1)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        audit.append(session, org=None, actor="x", action="test", subject="s", outcome="done")
        raise RuntimeError("the transaction fails after the append")
    fill(sessions, 1, start=1)
    report = audit.verify_database(sessions, ring.public_jwks())
    assert report.ok and report.entries == 2, report.problems


def test_entries_written_before_the_chain_are_chained_by_the_migration(database_url: str, ring: KeyRing):
    engine = store.connect(database_url)
    try:
        migrate_to(engine, "0003")
        with engine.begin() as connection:
            for number in range(3):
                connection.execute(text(
                    "INSERT INTO audit_events (at, actor, action, subject, outcome, detail) "
                    "VALUES (:at, 'unauthenticated', 'register', 'echo', 'refused', :detail)"),
                    {"at": f"2026-01-0{number + 1} 10:00:00.123456", "detail": f"old {number}"})
        store.migrate(engine)
        sessions = store.session_factory(engine)
        fill(sessions, 2)
        report = audit.verify_database(sessions, ring.public_jwks())
        assert report.ok and report.entries == 5, report.problems
        with sessions() as session:
            assert [e.detail for e in store.list_audit(session, oldest_first=True)][:3] == ["old 0", "old 1", "old 2"]
    finally:
        engine.dispose()


def test_listing_filters_and_pages(sessions: sessionmaker[Session]):
    fill(sessions, 12)
    with sessions() as session:
        revocations = store.list_audit(session, action="revoke-key", limit=4)
        assert [e.seq for e in revocations] == [12, 10, 8, 6]
        older = store.list_audit(session, action="revoke-key", before_seq=6, limit=4)
        assert [e.seq for e in older] == [4, 2]
        assert {e.actor for e in store.list_audit(session, actor="agent:a0")} == {"agent:a0"}
        assert [e.seq for e in store.list_audit(session, subject="agent1")] == [10, 6, 2]
        # a cursor past the 32-bit seq column (the API takes 15 digits) means every entry, not a database error
        assert [e.seq for e in store.list_audit(session, before_seq=10**15, limit=2)] == [12, 11]
        assert store.list_audit(session, after_seq=10**15) == []


def test_a_decisions_input_is_kept_with_arguments_that_name_secrets_redacted(sessions: sessionmaker[Session]):
    policy_input = {"caller": {"id": "agent:a"}, "target": {"agent": "b", "tool": "login"},
                    "arguments": {"user": "ada", "password": "hunter2", "options": [{"api_key": "k-123"}],
                                  "Authorization": "Bearer x"}}
    with sessions.begin() as session:
        audit.record_decision(session, org="default", caller="agent:a", subject="b.login", allow=False,
                              rule="missing_scope", reasons=["missing_scope: no"], policy_input=policy_input,
                              input_digest="sha256:d", run_id="r1")
    with sessions() as session:
        entry = audit.entry_json(store.list_audit(session)[0])
    assert entry["action"] == "policy-decision" and entry["outcome"] == "deny"
    assert entry["data"]["input"]["arguments"] == {"user": "ada", "password": "[redacted]",
                                                   "options": [{"api_key": "[redacted]"}],
                                                   "Authorization": "[redacted]"}
    assert entry["data"]["input"]["target"] == {"agent": "b", "tool": "login"}
    assert "hunter2" not in json.dumps(entry) and "k-123" not in json.dumps(entry)


def test_key_changes_are_audited(tmp_path: Path):
    from mesh.registry.auth import issue_token
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry
    from mesh.workspace import Workspace

    from .conftest import copy_repo_workspace

    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    ring = KeyRing.open(workspace.state_dir / "keys" / "echo", create=True)
    old = ring.active()
    (workspace.manifests_dir / "echo.jwks.json").write_text(json.dumps(ring.public_jwks()))
    ring.rotate(overlap_seconds=600)
    registry = Registry.open(RegistryConfig.from_workspace(workspace))
    registry.authenticate_registration("echo", issue_token("echo", ring.active()), ring.public_jwks())
    registry.revoke("echo", old.kid, by="user:local", reason="laptop lost")
    with registry.sessions() as session:
        changes = [(e.action, e.outcome, e.data["kid"]) for e in store.list_audit(session, subject="echo",
                                                                                  oldest_first=True)]
    assert changes == [("trust-key", "learned", ring.active().kid), ("trust-key", "end-set", old.kid),
                       ("revoke-key", "done", old.kid)]
    assert audit.verify_database(registry.sessions, registry.provenance_jwks).ok


# -- organisations: one chain, each organisation's own view -------------------------------------------


def fill_orgs(sessions: sessionmaker[Session]) -> None:
    """acme, beta and the registry itself take turns: 2 entries each, interleaved."""
    for round_ in range(2):
        for org in ("acme", "beta", None):
            with sessions.begin() as session:
                store.audit(session, org=org, actor=f"user:{org or 'local'}", action="set-role",
                            subject=f"{org}/someone", outcome="done", detail=f"{org or 'registry'} secret {round_}")


def org_export(sessions: sessionmaker[Session], orgs: set[str | None]) -> list[dict]:
    with sessions() as session:
        entries, checkpoints, _ = audit.read_chain(session)
    return [json.loads(line) for line in audit.export_lines(entries, checkpoints, orgs)]


def test_an_organisations_export_shows_its_entries_and_witnesses_the_rest_and_verifies(
        sessions: sessionmaker[Session], ring: KeyRing):
    fill_orgs(sessions)
    audit.checkpoint(sessions, ring.active())
    lines = org_export(sessions, {"acme"})
    assert [line["type"] for line in lines] == ["entry", "witness", "witness"] * 2 + ["checkpoint"]
    assert {line["org"] for line in lines if line["type"] == "entry"} == {"acme"}
    assert all(set(line) == {"type", "seq", "prev", "hash"} for line in lines if line["type"] == "witness")
    text_ = json.dumps(lines)
    assert "beta secret" not in text_ and "registry secret" not in text_ and "beta/" not in text_
    report = check(lines, ring)
    assert report.ok and (report.entries, report.witnesses, report.anchored) == (6, 4, 6), report.problems
    assert "4 of them another organisation's, seen as witnesses" in report.summary()
    whole = audit.verify_database(sessions, ring.public_jwks())  # the operator's: every entry in full
    assert whole.ok and (whole.entries, whole.witnesses) == (6, 0), whole.problems
    with sessions() as session:
        assert [e.seq for e in store.list_audit(session, orgs={"beta"})] == [5, 2]
        assert [e.seq for e in store.list_audit(session, orgs={"acme", None})] == [6, 4, 3, 1]


@pytest.mark.parametrize("change, found", [
    ("own-org", "entry 1: its content does not match its hash (edited)"),
    ("own-content", "entry 4: its content does not match its hash (edited)"),
    ("witness-prev", "entry 3: prev does not match the hash of the entry before it"),
    ("witness-hash", "entry 4: prev does not match the hash of the entry before it"),
    ("witness-dropped", "entry at position 2 has seq 3"),
    ("witness-content", "line 2: a witness holds seq, prev and hash only, not detail, hash, prev, seq"),
])
def test_an_edit_of_an_organisations_export_is_found(sessions: sessionmaker[Session], ring: KeyRing,
                                                     change: str, found: str):
    fill_orgs(sessions)
    audit.checkpoint(sessions, ring.active())
    lines = org_export(sessions, {"acme"})
    assert check(lines, ring).ok
    own, witnesses = ([line for line in lines if line["type"] == kind] for kind in ("entry", "witness"))
    if change == "own-org":
        own[0]["org"] = "beta"  # claim acme's entry was beta's
    elif change == "own-content":
        own[1]["outcome"] = "refused"
    elif change == "witness-prev":
        witnesses[1]["prev"] = own[0]["hash"]  # the entry after beta's now claims to follow acme's
    elif change == "witness-hash":
        witnesses[1]["hash"] = witnesses[0]["hash"]
    elif change == "witness-dropped":
        lines.remove(witnesses[0])
    elif change == "witness-content":
        witnesses[0]["detail"] = "made up"
    report = check(lines, ring)
    assert not report.ok
    assert any(found in problem for problem in report.problems), report.problems


# The fields an entry's hash covered before migration 0017: an entry of no organisation still hashes so.
BEFORE_0017 = ("seq", "at", "actor", "action", "subject", "outcome", "detail", "remote", "data", "prev")


def test_entries_written_before_0017_verify_after_it_beside_entries_of_organisations(database_url: str,
                                                                                      ring: KeyRing):
    engine = store.connect(database_url)
    try:
        migrate_to(engine, "0017")
        migrate_to(engine, "0016", downgrade=True)  # and back: the downgrade works, the triggers stay
        previous = audit.GENESIS
        with engine.begin() as connection:
            for seq in (1, 2):
                entry = {"seq": seq, "at": f"2026-01-0{seq}T10:00:00.123456+00:00", "actor": "user:local",
                         "action": "revoke-key", "subject": "echo", "outcome": "done", "detail": f"old {seq}",
                         "remote": None, "data": {"kid": "k1"}, "prev": previous}
                digest = audit.json_digest({name: entry[name] for name in BEFORE_0017})
                connection.execute(text(
                    "INSERT INTO audit_events (seq, at, actor, action, subject, outcome, detail, data, prev_hash, "
                    "hash) VALUES (:seq, :at, 'user:local', 'revoke-key', 'echo', 'done', :detail, :data, :prev, "
                    ":hash)"), {"seq": seq, "at": entry["at"], "detail": entry["detail"],
                                "data": json.dumps(entry["data"]), "prev": previous, "hash": digest})
                previous = digest
            connection.execute(text("UPDATE audit_head SET seq = 2, hash = :hash WHERE id = 1"), {"hash": previous})
        store.migrate(engine)
        sessions = store.session_factory(engine)
        fill(sessions, 2, org="acme")
        report = audit.verify_database(sessions, ring.public_jwks())
        assert report.ok and report.entries == 4, report.problems
        with sessions() as session:
            assert [(e.org_id, e.detail) for e in store.list_audit(session, oldest_first=True)] == [
                (None, "old 1"), (None, "old 2"), ("acme", "event 0"), ("acme", "event 1")]
        acme = org_export(sessions, {"acme"})
        assert [line["type"] for line in acme] == ["witness", "witness", "entry", "entry"]
        assert check(acme, ring).ok
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text("UPDATE audit_events SET org_id = 'acme' WHERE seq = 1"))
    finally:
        engine.dispose()
