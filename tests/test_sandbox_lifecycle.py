"""The registry's sandbox records on SQLite and PostgreSQL, with a clock the test moves: TTL expiry,
reset and change keeping runs and provenance, connected mode refused without a credential and an approval."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mesh.registry import store, tenancy
from mesh.registry.auth import Caller
from mesh.registry.config import RegistryConfig
from mesh.registry.node import Registry
from mesh.registry.problems import Problem
from mesh.sandbox.lifecycle import Sandboxes
from mesh.workspace import Workspace

from .conftest import copy_repo_workspace
from .test_store import T0

OPERATOR = Caller("user:local", "user", ["*"])
SECRET_REF = "env:MESH_SECRET_TRACKER"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandboxes(database_url: str, tmp_path: Path, clock: Clock) -> Iterator[Sandboxes]:
    """A registry of this repository's workspace on the database under test, with `researcher` admitted.

    The test acts in the default project, as the gate makes a request of it do: on PostgreSQL the registry
    serves under row-level security (the default), which shows no row to work done in no project."""
    workspace = copy_repo_workspace(tmp_path / "ws")
    registry = Registry.open(RegistryConfig.from_workspace(Workspace(workspace), database_url=database_url))
    with tenancy.acting_as(tenancy.DEFAULT):
        with registry.sessions.begin() as session:
            store.upsert_agent(session, "researcher", endpoint="http://127.0.0.1:9/mcp")
        registry.load()
        yield Sandboxes(registry, clock=clock)
    registry.engine.dispose()


def attempt(sandboxes: Sandboxes, record: store.SandboxRecord, operation_id: str) -> str:
    """An attempt as the sandbox front records it: the registry's run (with its provenance), then the row."""
    run = store.RunRecord(caller="user:local", agent="sandbox", tool="sandbox_call", log="caller", status="ok",
                          provenance="header.claims.signature", started_at=sandboxes.clock())
    with sandboxes.registry.sessions.begin() as session:
        store.record_run(session, run)
    sandboxes.record_run(store.SandboxRunRecord(
        sandbox_id=record.id, revision=record.revision, run_id=run.id, caller="user:local", service="petstore",
        operation_id=operation_id, arguments={}, status="ok", http_status=200, answer={"status": 200},
        started_at=sandboxes.clock()))
    return run.id


def kind(problem: pytest.ExceptionInfo[Problem]) -> str:
    return problem.value.kind


def test_a_sandbox_expires_after_its_ttl_and_its_runs_stay(sandboxes: Sandboxes, clock: Clock) -> None:
    record = sandboxes.create(OPERATOR, "researcher", {"required_services": ["petstore"], "ttl_seconds": 60})
    assert (record.status, record.expires_at) == ("active", T0 + timedelta(seconds=60))
    run_id = attempt(sandboxes, record, "listPets")

    clock.advance(59)
    assert sandboxes.expire_due() == []
    assert sandboxes.active("researcher", record.id).status == "active"
    clock.advance(1)
    assert sandboxes.expire_due() == [record.id]  # what the registry's sweep does every few seconds
    expired = sandboxes.get("researcher", record.id)
    assert (expired.status, expired.removed_at) == ("expired", clock.now)
    with pytest.raises(Problem) as refused:
        sandboxes.active("researcher", record.id)
    assert kind(refused) == "sandbox-expired" and refused.value.status == 410
    assert record.id not in [s.id for s in sandboxes.list("researcher")]
    assert record.id in [s.id for s in sandboxes.list("researcher", removed=True)]
    assert [r.run_id for r in sandboxes.runs("researcher", record.id)] == [run_id]
    with sandboxes.registry.sessions.begin() as session:
        assert store.get_run(session, run_id).provenance  # the run and its provenance are untouched
    assert sandboxes.expire_due() == []  # once


def test_a_sandbox_past_its_time_is_expired_when_read_even_before_a_sweep(sandboxes: Sandboxes,
                                                                          clock: Clock) -> None:
    record = sandboxes.create(OPERATOR, "researcher", {"required_services": ["petstore"], "ttl_seconds": 5})
    clock.advance(5)
    assert sandboxes.get("researcher", record.id).status == "expired"
    with pytest.raises(Problem) as refused:
        sandboxes.reset("researcher", record.id)
    assert kind(refused) == "sandbox-expired"


def test_reset_and_changes_start_a_new_revision_and_keep_runs(sandboxes: Sandboxes, clock: Clock) -> None:
    record = sandboxes.create(OPERATOR, "researcher", {"required_services": ["petstore"], "mode": "emulated"})
    first = attempt(sandboxes, record, "createPet")
    clock.advance(10)
    reset = sandboxes.reset("researcher", record.id)
    assert (reset.revision, reset.updated_at) == (2, clock.now)
    second = attempt(sandboxes, reset, "getPet")
    assert [(r.run_id, r.revision) for r in sandboxes.runs("researcher", record.id)] == [(first, 1), (second, 2)]

    renamed = sandboxes.update("researcher", record.id, {"description": "pets", "ttl_seconds": 30})
    assert (renamed.revision, renamed.expires_at) == (2, clock.now + timedelta(seconds=30))  # same services
    seeded = sandboxes.update("researcher", record.id, {"services": {"petstore": {"seed": {"/pets": [{"id": 1}]}}}})
    assert seeded.revision == 3 and seeded.services == {"petstore": {"seed": {"/pets": [{"id": 1}]}}}
    assert sandboxes.ref(seeded)["revision"] == 3
    assert len(sandboxes.runs("researcher", record.id)) == 2

    deleted = sandboxes.delete("researcher", record.id)
    assert (deleted.status, len(sandboxes.runs("researcher", record.id))) == ("deleted", 2)


def test_connected_mode_needs_a_named_credential_and_an_approval(sandboxes: Sandboxes) -> None:
    body = {"required_services": ["tracker", "petstore"], "mode": "connected"}
    with pytest.raises(Problem) as refused:
        sandboxes.create(OPERATOR, "researcher", body)
    assert kind(refused) == "bad-request" and "secret_ref" in refused.value.detail
    body["secret_ref"] = SECRET_REF
    with pytest.raises(Problem) as refused:
        sandboxes.create(OPERATOR, "researcher", body)
    assert kind(refused) == "approval-required" and "mesh approve researcher tracker" in refused.value.detail

    tracker = sandboxes.approve(OPERATOR, {"agent": "researcher", "service": "tracker", "note": "test account"})
    with pytest.raises(Problem) as refused:  # each service needs its own approval
        sandboxes.create(OPERATOR, "researcher", body)
    assert "mesh approve researcher petstore" in refused.value.detail
    sandboxes.approve(OPERATOR, {"agent": "researcher", "service": "petstore"})
    record = sandboxes.create(OPERATOR, "researcher", body)
    sandboxes.check_callable(record)

    revoked = sandboxes.revoke_approval(OPERATOR, tracker.id)
    assert revoked.revoked_at is not None
    with pytest.raises(Problem) as refused:  # checked again at every call
        sandboxes.check_callable(record)
    assert kind(refused) == "approval-required"
    assert [a.service for a in sandboxes.approvals("researcher")] == ["petstore"]
    assert len(sandboxes.approvals("researcher", revoked=True)) == 2
    with pytest.raises(Problem) as refused:
        sandboxes.update("researcher", record.id, {"description": "still connected"})
    assert kind(refused) == "approval-required"
    with sandboxes.registry.sessions.begin() as session:
        actions = [event.action for event in store.list_audit(session, subject="researcher")]
    assert actions == ["revoke-approval", "approve", "approve"]


def test_other_agents_approvals_and_unknown_ones(sandboxes: Sandboxes) -> None:
    sandboxes.approve(OPERATOR, {"agent": "librarian", "service": "tracker"})
    body = {"required_services": ["tracker"], "mode": "connected", "secret_ref": SECRET_REF}
    with pytest.raises(Problem) as refused:  # an approval is for one agent
        sandboxes.create(OPERATOR, "researcher", body)
    assert kind(refused) == "approval-required"
    with pytest.raises(Problem) as refused:
        sandboxes.approve(OPERATOR, {"agent": "researcher", "service": "nowhere"})
    assert kind(refused) == "bad-request" and "no spec 'nowhere'" in refused.value.detail
    with pytest.raises(Problem) as refused:
        sandboxes.revoke_approval(OPERATOR, "no-such-approval")
    assert kind(refused) == "unknown-approval"



def test_an_approval_names_the_endpoint_the_credential_may_go_to(sandboxes: Sandboxes) -> None:
    sandboxes.approve(OPERATOR, {"agent": "researcher", "service": "tracker", "base_url": "https://tracker.test/v2"})
    body = {"required_services": ["tracker"], "mode": "connected", "secret_ref": SECRET_REF}
    record = sandboxes.create(OPERATOR, "researcher", body)
    endpoints = sandboxes.check_callable(record)
    assert endpoints == {"tracker": "https://tracker.test/v2"}
    assert sandboxes.ref(record, endpoints)["services"] == {"tracker": {"base_url": "https://tracker.test/v2"}}
    with pytest.raises(Problem) as refused:
        sandboxes.create(OPERATOR, "researcher", {**body, "services": {"tracker": {"base_url": "https://evil.test"}}})
    assert kind(refused) == "approval-required"
    assert "mesh approve researcher tracker --base-url https://evil.test" in refused.value.detail
