"""Group commit (``registry/runlog.py``): calls that finish together share a transaction and one signature
over a Merkle root (``mesh.merkle``), and each run is still verified alone (``mesh.provenance``).

On SQLite and, when ``MESH_TEST_DATABASE_URL`` names one, on PostgreSQL.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

from mesh import merkle
from mesh.keys import KeyRing, TrustStore
from mesh.provenance import ProvenanceProblem, verified_claims
from mesh.registry import audit, store, tenancy
from mesh.registry.config import RegistryConfig
from mesh.registry.node import Registry, run_json
from mesh.registry.runlog import PendingCall
from mesh.workspace import Workspace

from .conftest import copy_repo_workspace


def proves(leaf: bytes, index: int, size: int, path: list[bytes], top: bytes) -> bool:
    try:
        return merkle.root_from_path(leaf, index, size, path) == top
    except ValueError:  # a path that cannot belong to such a tree proves nothing either
        return False


@pytest.mark.parametrize("size", [*range(1, 18), 64, 100])
def test_every_leaf_of_a_tree_is_proved_and_no_other(size: int):
    leaves = [merkle.leaf_hash(os.urandom(8)) for _ in range(size)]
    top, paths = merkle.inclusion_paths(leaves)
    assert top == merkle.root(leaves)
    for index, path in enumerate(paths):
        assert proves(leaves[index], index, size, path, top)
        if size > 1:  # another leaf, or the same leaf at another place, is not proved
            assert not proves(leaves[index - 1], index, size, path, top)
            assert not proves(leaves[index], (index + 1) % size, size, path, top)


def test_a_path_of_the_wrong_length_is_refused():
    leaves = [merkle.leaf_hash(bytes([n])) for n in range(5)]
    _, paths = merkle.inclusion_paths(leaves)
    with pytest.raises(ValueError, match="shorter"):
        merkle.root_from_path(leaves[0], 0, 5, paths[0][:-1])
    with pytest.raises(ValueError, match="longer"):
        merkle.root_from_path(leaves[0], 0, 5, [*paths[0], paths[0][0]])
    with pytest.raises(ValueError, match="not in a tree"):
        merkle.root_from_path(leaves[0], 5, 5, paths[0])


def test_leaves_and_inner_nodes_are_hashed_apart():
    """RFC 9162's 0x00/0x01 prefixes: an inner node's two children cannot pass as one leaf."""
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.root([a, b]) != merkle.leaf_hash(a + b)


@pytest.fixture
def registry(tmp_path: Path, database_url: str) -> Registry:
    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    config = RegistryConfig.from_workspace(workspace, database_url=database_url)
    registry = Registry.open(config)
    yield registry
    registry.engine.dispose()


def pending(number: int, *, audited: bool = True) -> PendingCall:
    run_id, target_id = f"00000000-0000-4000-8000-{number:012d}", f"00000000-0000-4000-9000-{number:012d}"
    claims = {"caller": "user:local", "agent": "echo", "tool": "echo", "arguments_digest": f"sha256:{number}",
              "status": "ok", "run_id": run_id, "target_run_id": target_id}
    common = {"caller": "user:local", "agent": "echo", "tool": "echo", "arguments_digest": f"sha256:{number}",
              "status": "ok", "latency_ms": 1.0, "policy_decision": "allow", "policy_rule": "allow"}
    call = PendingCall(claims, [{**common, "id": run_id, "parent_run_id": None, "log": "caller"},
                                {**common, "id": target_id, "parent_run_id": run_id, "log": "target"}])
    call.decision = {"run_id": run_id, "allow": True, "rule": "allow", "input_digest": "sha256:x"}
    if audited:
        call.audited = {"org": "default", "caller": "user:local", "subject": "echo.echo", "allow": True,
                        "rule": "allow", "reasons": [], "policy_input": {"arguments": {"n": number}},
                        "input_digest": "sha256:x", "run_id": run_id}
    return call


async def record_together(registry: Registry, calls: list[PendingCall]) -> None:
    """The writer running, and every call finishing before it gets its turn: one batch."""
    async with anyio.create_task_group() as group:
        group.start_soon(registry.runlog.run)
        await anyio.sleep(0.05)  # the writer is waiting for its first call
        async with anyio.create_task_group() as callers:
            for call in calls:
                callers.start_soon(registry.runlog.record, call)
        group.cancel_scope.cancel()


def stored_runs(registry: Registry) -> dict[str, dict]:
    # Every project's runs: on PostgreSQL the registry serves under row-level security (the default).
    with tenancy.as_registry(), registry.sessions() as session:
        return {run.id: run_json(run) for run in session.scalars(select(store.RunRecord))}


def test_calls_that_finish_together_commit_as_one_batch_each_verifiable_alone(registry: Registry):
    calls = [pending(n) for n in range(12)]
    anyio.run(record_together, registry, calls)

    assert (registry.runlog.batches, registry.runlog.batched_calls) == (1, 12)
    runs = stored_runs(registry)
    assert len(runs) == 24  # every call's two records are on disk
    trust = TrustStore.from_jwks(registry.provenance_jwks)
    signatures = {run["provenance"] for run in runs.values()}
    assert len(signatures) == 1  # one signature for the batch
    for call in calls:
        for record in call.runs:
            run = runs[record["id"]]
            assert run["provenance_proof"]["size"] == 12
            assert verified_claims(run, trust) == call.claims
    with tenancy.as_registry(), registry.sessions() as session:  # decisions and audit entries: one commit
        assert session.scalar(select(func.count()).select_from(store.DecisionRecord)) == 12
    assert audit.verify_database(registry.sessions, registry.provenance_jwks).ok


def test_a_run_alone_is_signed_as_before(registry: Registry):
    call = pending(1)
    anyio.run(registry.runlog.record, call)  # no writer running: the call commits itself
    run = stored_runs(registry)[call.runs[0]["id"]]
    assert run["provenance_proof"] is None
    assert verified_claims(run, TrustStore.from_jwks(registry.provenance_jwks)) == call.claims


def test_a_batched_run_whose_claims_or_proof_were_changed_does_not_verify(registry: Registry):
    calls = [pending(n) for n in range(5)]
    anyio.run(record_together, registry, calls)
    runs = stored_runs(registry)
    trust = TrustStore.from_jwks(registry.provenance_jwks)
    run = runs[calls[2].runs[0]["id"]]

    changed = copy.deepcopy(run)
    changed["provenance_proof"]["claims"]["status"] = "error"
    with pytest.raises(ProvenanceProblem, match="not in the signed batch"):
        verified_claims(changed, trust)
    moved = copy.deepcopy(run)
    moved["provenance_proof"]["index"] = 3
    with pytest.raises(ProvenanceProblem, match="not in the signed batch"):
        verified_claims(moved, trust)
    resized = copy.deepcopy(run)
    resized["provenance_proof"]["size"] = 4
    with pytest.raises(ProvenanceProblem, match="batch of 4"):
        verified_claims(resized, trust)
    forged = dict(run, provenance=run["provenance"][:-6] + "AAAAAA")
    with pytest.raises(ProvenanceProblem, match="signature does not verify"):
        verified_claims(forged, trust)
    stranger = KeyRing.open(registry.config.workspace.state_dir / "keys" / "stranger", create=True)
    with pytest.raises(ProvenanceProblem, match="signature does not verify"):
        verified_claims(run, TrustStore.from_jwks(stranger.public_jwks()))


def test_a_batch_that_cannot_commit_fails_every_call_in_it_and_leaves_nothing(registry: Registry):
    calls = [pending(n) for n in range(4)]
    calls[3].runs[1]["parent_run_id"] = "no such run"  # a foreign key the database refuses

    async def together() -> list[BaseException | None]:
        errors: list[BaseException | None] = []

        async def record(call: PendingCall) -> None:
            try:
                await registry.runlog.record(call)
                errors.append(None)
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(registry.runlog.run)
            await anyio.sleep(0.05)
            async with anyio.create_task_group() as callers:
                for call in calls:
                    callers.start_soon(record, call)
            group.cancel_scope.cancel()
        return errors

    errors = anyio.run(together)
    assert len(errors) == 4 and all(error is not None for error in errors)
    assert stored_runs(registry) == {}  # none of the batch was acknowledged, none of it is on disk
    later = pending(9)
    anyio.run(registry.runlog.record, later)  # the log goes on
    assert set(stored_runs(registry)) == {run["id"] for run in later.runs}
