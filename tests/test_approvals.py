"""Calls held for a person's approval (``mesh/registry/approvals.py``).

The state machine on SQLite and (with ``MESH_TEST_DATABASE_URL``) PostgreSQL: every step it allows, every
step it refuses, a step raced by another writer, each step in the audit log. The shipped policy's
``approval_required`` answer with real regopy. Then a real registry and agent on loopback: a destructive tool
listed in ``approve_destructive`` waits while other calls go on, the caller hears progress, and the call is
approved by the API, denied by the CLI, expires after a short ``[approvals] timeout``, or is decided by the
calling person answering an MCP elicitation in the official SDK client; someone without the right role is
neither asked nor able to decide.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy.orm import Session, sessionmaker

from mesh.client import PROBLEM_META
from mesh.registry import approvals, people, store
from mesh.registry.approvals import TRANSITIONS
from mesh.registry.auth import Caller
from mesh.registry.config import ConfigProblem, RegistryConfig
from mesh.registry.policy import PolicyEngine
from mesh.registry.problems import Problem
from mesh.workspace import Workspace

from .conftest import REPO, run_mesh
from .test_registry_e2e import ECHO, Mesh, running_mesh, wait_until

OWNER = Caller("user:local", "user", ["*"], org="default", role="owner", via="loopback")
ADA = Caller("user:ada", "user", ["*"], org="default", role="admin", via="oidc")
STATES = ("requested", "approved", "denied", "expired", "executed")


# -- the state machine ---------------------------------------------------------------------------------------


def new_request(session: Session, timeout: float = 60.0) -> str:
    record = approvals.create(session, caller=OWNER, agent="echo", tool="wipe", rule="destructive_needs_approval",
                              reasons=["destructive_needs_approval: echo.wipe is destructive"],
                              approvers=["admin", "owner"], timeout=timeout, run_id="r-1", arguments_digest="sha256:x")
    return record.id


def steps(session: Session, request_id: str) -> list[tuple[str, str, str | None]]:
    """(outcome, actor, via) of the request's audit entries, in order."""
    entries = store.list_audit(session, action="approval", oldest_first=True, limit=None)
    return [(e.outcome, e.actor, e.data["via"]) for e in entries if e.data["request_id"] == request_id]


def test_a_request_is_approved_then_executed_and_each_step_is_audited(sessions: sessionmaker[Session]):
    with sessions.begin() as session:
        request_id = new_request(session)
    with sessions.begin() as session:
        approved = approvals.transition(session, request_id, "approved", actor="user:ada", via="api", note="ok")
        assert (approved.status, approved.decided_by, approved.decided_via, approved.note) == (
            "approved", "user:ada", "api", "ok")
        assert approved.decided_at is not None and approved.executed_at is None
    with sessions.begin() as session:
        executed = approvals.transition(session, request_id, "executed", actor="registry")
        assert executed.status == "executed" and executed.executed_at >= executed.decided_at
        assert steps(session, request_id) == [("requested", "user:local", None), ("approved", "user:ada", "api"),
                                              ("executed", "registry", None)]
        entry = store.list_audit(session, action="approval", limit=1)[0]
        assert entry.subject == "echo.wipe" and entry.data["run_id"] == "r-1"
        assert entry.data["approvers"] == ["admin", "owner"]


ILLEGAL = [(before, after) for before in STATES for after in STATES if after not in TRANSITIONS.get(before, ())]
PATHS = {"requested": [], "approved": ["approved"], "denied": ["denied"], "expired": ["expired"],
         "executed": ["approved", "executed"]}


@pytest.mark.parametrize(("before", "after"), ILLEGAL)
def test_every_step_the_machine_does_not_allow_is_refused(sessions: sessionmaker[Session], before: str, after: str):
    with sessions.begin() as session:
        request_id = new_request(session)
        for step in PATHS[before]:
            approvals.transition(session, request_id, step, actor="user:ada", via="api")
    with sessions.begin() as session, pytest.raises(Problem) as refused:
        approvals.transition(session, request_id, after, actor="user:ada", via="api")
    assert refused.value.kind == "approval-conflict" and refused.value.status == 409
    assert f"is {before}: it cannot become {after}" in refused.value.detail
    with sessions.begin() as session:
        assert session.get(store.ApprovalRequestRecord, request_id).status == before
        assert [step for step, _, _ in steps(session, request_id)] == ["requested", *PATHS[before]]


def test_a_step_raced_by_another_writer_is_refused(sessions: sessionmaker[Session]):
    """Two registry processes decide at once: the second one's compare-and-set finds the row moved."""
    with sessions.begin() as session:
        request_id = new_request(session)
    with sessions.begin() as late:
        stale = late.get(store.ApprovalRequestRecord, request_id)  # read before the other writer, and kept
        assert stale.status == "requested"
        with sessions.begin() as first:
            approvals.transition(first, request_id, "denied", actor="user:ada", via="api")
        with pytest.raises(Problem, match="changed meanwhile"):
            approvals.transition(late, request_id, "approved", actor="user:local", via="api")
    with sessions.begin() as session:
        assert session.get(store.ApprovalRequestRecord, request_id).status == "denied"
        assert [step for step, _, _ in steps(session, request_id)] == ["requested", "denied"]


def test_unknown_requests_and_states_are_named(sessions: sessionmaker[Session]):
    with sessions.begin() as session, pytest.raises(Problem, match="no approval request 'nope'") as unknown:
        approvals.transition(session, "nope", "approved", actor="user:ada")
    assert unknown.value.status == 404
    with sessions.begin() as session:
        request_id = new_request(session)
        with pytest.raises(ValueError, match="unknown approval state 'maybe'"):
            approvals.transition(session, request_id, "maybe", actor="user:ada")


def test_overdue_requests_are_expired_by_the_registry(sessions: sessionmaker[Session]):
    with sessions.begin() as session:
        overdue, waiting = new_request(session, timeout=0.001), new_request(session, timeout=600)
    with sessions.begin() as session:
        assert approvals.expire_due(session, store.utcnow() + timedelta(seconds=1)) == [overdue]
        assert {r.id for r in approvals.listing(session)} == {waiting}
        assert steps(session, overdue)[-1] == ("expired", "registry", "timeout")


def test_only_the_roles_a_request_names_may_decide_it():
    assert approvals.may_approve(ADA, ["admin", "owner"]) is None
    assert "needs role owner" in approvals.may_approve(ADA, ["owner"])
    member = Caller("user:bob", "user", ["*"], org="default", role="member", via="oidc")
    assert "it needs role owner or admin" in approvals.may_approve(member, ["admin", "owner", "member"])
    token = Caller("user:ada", "user", ["registry:invoke"], org="default", role="admin", via="api-token")
    assert "needs scope 'registry:approve'" in approvals.may_approve(token, ["admin"])
    assert approvals.may_approve(Caller("user:ada", "user", ["registry:approve"], org="default", role="admin",
                                        via="api-token"), ["admin"]) is None
    assert "registry:admin" in approvals.may_approve(Caller("agent:echo", "agent", []), ["admin", "owner"])


def test_approval_settings_are_read_and_a_misspelt_one_is_named(tmp_path: Path):
    (tmp_path / "registry").mkdir()
    config = tmp_path / "registry" / "registry.toml"
    config.write_text("[approvals]\ntimeout = 2.5\n")
    settings = RegistryConfig.from_workspace(Workspace(tmp_path)).approvals
    assert (settings.timeout, settings.poll_interval) == (2.5, 1.0)
    config.write_text("[approvals]\ntimout = 3\n")
    with pytest.raises(ConfigProblem, match=r"approvals\.timout: unknown setting \(did you mean timeout\?\)"):
        RegistryConfig.from_workspace(Workspace(tmp_path))
    config.write_text("[approvals]\ntimeout = 0\n")
    with pytest.raises(ConfigProblem, match=r"approvals\.timeout: Input should be greater than 0"):
        RegistryConfig.from_workspace(Workspace(tmp_path))


# -- the policy's answer ---------------------------------------------------------------------------------------


def policy_call(agent: str = "echo", tool: str = "wipe", annotations: dict | None = None,
                scopes: list[str] | None = None) -> dict[str, Any]:
    return {"caller": {"id": "user:local", "kind": "user", "scopes": ["*"], "reputation": None},
            "target": {"agent": agent, "tool": tool, "annotations": annotations or {"destructiveHint": True},
                       "scopes": scopes or [], "reputation": 0.9},
            "arguments": {}}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "mesh.rego").write_text((REPO / "registry" / "policies" / "mesh.rego").read_text())
    return folder


def test_the_shipped_policy_asks_approval_for_listed_destructive_and_open_world_tools(policies: Path):
    engine = PolicyEngine(policies, {"min_reputation": 0.3, "allow_destructive": ["keeper.*"],
                                     "approve_destructive": ["echo.wipe", "keeper.*"],
                                     "approve_open_world": ["web.*"]})
    held = engine.evaluate(policy_call())
    assert (held.allow, held.approval_required, held.rule) == (False, True, "destructive_needs_approval")
    assert held.approvers == ("admin", "owner") and held.reasons == ["destructive_needs_approval: echo.wipe is "
                                                                      "destructive"]
    refused = engine.evaluate(policy_call(tool="shred"))  # not listed: refused as before
    assert (refused.rule, refused.approval_required) == ("destructive_not_allowed", False)
    assert engine.evaluate(policy_call(agent="keeper")).allow  # allow_destructive still lets it through unasked
    world = engine.evaluate(policy_call("web", "fetch", {"readOnlyHint": True, "openWorldHint": True}))
    assert (world.rule, world.approval_required) == ("open_world_needs_approval", True)
    assert engine.evaluate(policy_call("web", "fetch", {"readOnlyHint": True})).allow
    # A denial wins over an approval: no one can approve a call the caller lacks the scopes for.
    scoped = policy_call(scopes=["ops:write"])
    scoped["caller"] |= {"id": "agent:x", "kind": "agent", "scopes": []}
    denied = engine.evaluate(scoped)
    assert (denied.rule, denied.approval_required) == ("missing_scope", False)
    # Without approve_destructive (the shipped registry.toml), destructive tools are refused as they were.
    assert PolicyEngine(policies, {"min_reputation": 0.3}).evaluate(policy_call()).rule == "destructive_not_allowed"


def test_a_policy_file_may_add_an_approval_rule_and_narrow_the_roles(policies: Path):
    (policies / "owners.rego").write_text('''package mesh.authz

approval_required contains {"rule": "owner_must_approve", "reason": "payments", "roles": ["owner"]} if {
	input.target.agent == "payments"
}
''')
    engine = PolicyEngine(policies, {"min_reputation": 0.3, "approve_destructive": ["payments.*"]})
    held = engine.evaluate(policy_call("payments", "refund"))
    assert held.approvers == ("owner",)  # the roles every rule accepts
    assert held.reasons == ["destructive_needs_approval: payments.refund is destructive",
                            "owner_must_approve: payments"]
    assert engine.evaluate(policy_call("payments", "refund", {"readOnlyHint": True})).approvers == ("owner",)
    (policies / "owners.rego").write_text((policies / "owners.rego").read_text().replace('["owner"]', '["viewer"]'))
    engine.reload_if_changed()
    nobody = engine.evaluate(policy_call("payments", "refund"))
    assert not nobody.allow and not nobody.approval_required
    assert nobody.reasons[-1] == "destructive_needs_approval: no role may approve every rule"


# -- a real registry and agent ------------------------------------------------------------------------------


def approvals_mesh(tmp_path_factory: pytest.TempPathFactory, label: str, timeout: float):
    settings = {"policy": 'approve_destructive = ["echo.wipe"]',
                "approvals": f"timeout = {timeout}\npoll_interval = 0.2"}
    return running_mesh(tmp_path_factory, label, ("echo",), sources={"echo": ECHO}, settings=settings)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with approvals_mesh(tmp_path_factory, "approvals", timeout=120) as network:
        yield network


def waiting(mesh: Mesh, caller: str = "user:local") -> dict:
    """The one request of ``caller`` waiting now (waits for it to appear)."""
    found: list[dict] = []

    def appeared() -> bool:
        requests = httpx.get(f"{mesh.url}/v1/approvals/requests").json()["requests"]
        found[:] = [r for r in requests if r["caller"] == caller and r["tool"] == "wipe"]
        return len(found) == 1

    wait_until(appeared, timeout=60, what="a request waiting for approval")
    return found[0]


def audit_steps(mesh: Mesh, request_id: str) -> list[tuple[str, str, str | None]]:
    entries = httpx.get(f"{mesh.url}/v1/audit", params={"action": "approval", "limit": 200}).json()["entries"]
    return [(e["outcome"], e["actor"], e["data"]["via"]) for e in reversed(entries)
            if e["data"]["request_id"] == request_id]


async def test_a_held_call_waits_without_holding_up_others_and_goes_on_when_approved(mesh: Mesh):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with Client(f"{mesh.url}/mcp") as client, anyio.create_task_group() as group:
        answer: dict[str, Any] = {}

        async def call() -> None:
            answer["result"] = await client.call_tool("echo__wipe", {}, progress_callback=on_progress)

        group.start_soon(call)
        request = await anyio.to_thread.run_sync(waiting, mesh)
        assert (request["status"], request["rule"], request["approvers"]) == (
            "requested", "destructive_needs_approval", ["admin", "owner"])
        echoed = await client.call_tool("echo__echo", {"text": "meanwhile"})  # the wait holds up no one
        assert echoed.structured_content == {"result": "meanwhile"}
        with anyio.fail_after(30):
            while len(progress) < 2:
                await anyio.sleep(0.05)
        decided = await anyio.to_thread.run_sync(lambda: httpx.post(
            f"{mesh.url}/v1/approvals/requests/{request['id']}/approve", json={"note": "go ahead"}))
        assert decided.status_code == 200, decided.text
        assert (decided.json()["status"], decided.json()["decided_by"]) == ("approved", "user:local")

    result = answer["result"]
    assert not result.is_error and result.structured_content == {"result": "wiped"}
    assert [total for _, total, _ in progress] == [120.0] * len(progress)
    assert all(request["id"] in message for _, _, message in progress)
    assert [done for done, _, _ in progress] == sorted(done for done, _, _ in progress)

    final = httpx.get(f"{mesh.url}/v1/approvals/requests/{request['id']}").json()
    assert (final["status"], final["decided_via"], final["note"]) == ("executed", "api", "go ahead")
    run = httpx.get(f"{mesh.url}/v1/runs/{result.meta['io.mcpmesh/run']}").json()
    assert (run["status"], run["policy_decision"], run["policy_rule"]) == ("ok", "allow", "destructive_needs_approval")
    assert final["run_id"] == run["id"]
    assert audit_steps(mesh, request["id"]) == [("requested", "user:local", None), ("approved", "user:local", "api"),
                                                ("executed", "registry", None)]
    decision = httpx.get(f"{mesh.url}/v1/audit", params={"action": "policy-decision", "subject": "echo.wipe",
                                                         "limit": 1}).json()["entries"][0]
    assert decision["outcome"] == "allow" and decision["data"]["run_id"] == run["id"]
    assert f"approved: request {request['id']} by user:local (api)" in decision["data"]["reasons"]
    again = httpx.post(f"{mesh.url}/v1/approvals/requests/{request['id']}/approve", json={})
    assert again.status_code == 409 and again.json()["type"].endswith("/approval-conflict")
    assert "is executed: it cannot become approved" in again.json()["detail"]


async def test_a_call_denied_with_the_cli_is_refused_naming_the_request(mesh: Mesh):
    async with anyio.create_task_group() as group:
        answer: dict[str, httpx.Response] = {}

        async def call() -> None:
            answer["response"] = await anyio.to_thread.run_sync(lambda: mesh.invoke("echo", "wipe", {}))

        group.start_soon(call)
        request = await anyio.to_thread.run_sync(waiting, mesh)
        listed = await anyio.to_thread.run_sync(lambda: run_mesh("approvals", "--registry", mesh.url))
        assert listed.returncode == 0, listed.stderr
        assert request["id"] in listed.stdout and "echo.wipe" in listed.stdout and "admin owner" in listed.stdout
        denied = await anyio.to_thread.run_sync(
            lambda: run_mesh("deny", request["id"], "--note", "not today", "--registry", mesh.url))
        assert denied.returncode == 0, denied.stderr
        assert denied.stdout.strip() == f"denied: echo.wipe called by user:local (request {request['id']})"

    response = answer["response"]
    problem = response.json()
    assert (response.status_code, response.headers["content-type"]) == (403, "application/problem+json")
    assert problem["type"].endswith("/approval-denied") and problem["request_id"] == request["id"]
    assert problem["detail"] == (f"echo.wipe: approval request {request['id']} was denied by user:local; not today")
    run = httpx.get(f"{mesh.url}/v1/runs/{problem['run_id']}").json()
    assert (run["status"], run["policy_decision"], run["policy_rule"]) == ("denied", "deny",
                                                                          "destructive_needs_approval")
    assert audit_steps(mesh, request["id"]) == [("requested", "user:local", None), ("denied", "user:local", "api")]
    late = run_mesh("approve", request["id"], "--registry", mesh.url)
    assert late.returncode == 1 and f"Approval conflict: approval request {request['id']} is denied: it cannot " \
                                    "become approved" in late.stderr
    listed = run_mesh("approvals", "--status", "denied", "--registry", mesh.url)
    assert request["id"] in listed.stdout and "denied" in listed.stdout


def on_elicit(answer: types.ElicitResult, asked: list[types.ElicitRequestParams]):
    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return answer

    return elicit


@pytest.mark.parametrize(("answer", "status"), [
    (types.ElicitResult(action="accept", content={"approve": True}), "executed"),
    (types.ElicitResult(action="decline"), "denied"),
])
async def test_a_person_who_may_approve_is_asked_by_elicitation(mesh: Mesh, answer: types.ElicitResult, status: str):
    asked: list[types.ElicitRequestParams] = []
    async with Client(f"{mesh.url}/mcp", mode="legacy", elicitation_callback=on_elicit(answer, asked)) as client:
        result = await client.call_tool("echo__wipe", {})
    assert len(asked) == 1 and asked[0].message.startswith("Approve the call of echo.wipe?")
    assert asked[0].requested_schema["required"] == ["approve"]
    request_id = asked[0].message.rsplit("request ", 1)[1].rstrip(".")
    final = httpx.get(f"{mesh.url}/v1/approvals/requests/{request_id}").json()
    assert (final["status"], final["decided_by"], final["decided_via"]) == (status, "user:local", "elicitation")
    if status == "executed":
        assert not result.is_error and result.structured_content == {"result": "wiped"}
        assert [step for step, _, _ in audit_steps(mesh, request_id)] == ["requested", "approved", "executed"]
    else:
        assert result.is_error and result.meta[PROBLEM_META]["type"].endswith("/approval-denied")
        assert result.meta[PROBLEM_META]["request_id"] == request_id
        assert audit_steps(mesh, request_id) == [("requested", "user:local", None),
                                                 ("denied", "user:local", "elicitation")]


def a_member(mesh: Mesh) -> str:
    """A signed-in person with role member, written into the registry's database; their API token."""
    engine = store.connect(store.database_url(mesh.workspace, None))
    try:
        with store.session_factory(engine).begin() as session:
            user = people.sign_in(session, issuer="https://id.example", subject="bob", email="bob@example.com")
            people.set_role(session, "default", user.id, "member")
            _, secret = people.create_token(session, user_id=user.id, org_id="default", name="t", scopes=["*"],
                                            expires_at=store.utcnow() + timedelta(days=1))
    finally:
        engine.dispose()
    return secret


async def test_someone_without_the_role_is_not_asked_and_cannot_decide(mesh: Mesh):
    secret = await anyio.to_thread.run_sync(a_member, mesh)
    headers = {"authorization": f"Bearer {secret}"}
    asked: list[types.ElicitRequestParams] = []
    transport = streamable_http_client(f"{mesh.url}/mcp", http_client=httpx2.AsyncClient(headers=headers))
    elicit = on_elicit(types.ElicitResult(action="accept", content={"approve": True}), asked)
    async with Client(transport, mode="legacy", elicitation_callback=elicit) as client, \
            anyio.create_task_group() as group:
        answer: dict[str, Any] = {}

        async def call() -> None:
            answer["result"] = await client.call_tool("echo__wipe", {})

        group.start_soon(call)
        member = (await anyio.to_thread.run_sync(lambda: httpx.get(f"{mesh.url}/v1/users/me",
                                                                  headers=headers))).json()["id"]
        request = await anyio.to_thread.run_sync(waiting, mesh, member)
        refused = await anyio.to_thread.run_sync(lambda: httpx.post(
            f"{mesh.url}/v1/approvals/requests/{request['id']}/approve", json={}, headers=headers))
        assert refused.status_code == 403 and "it needs role owner or admin" in refused.json()["detail"]
        approved = await anyio.to_thread.run_sync(lambda: run_mesh("approve", request["id"], "--registry", mesh.url))
        assert approved.returncode == 0, approved.stderr
    assert asked == []  # a member may not approve: never asked
    assert not answer["result"].is_error and answer["result"].structured_content == {"result": "wiped"}


# -- expiry ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hasty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A registry whose held calls wait 1.5 s."""
    with approvals_mesh(tmp_path_factory, "hasty", timeout=1.5) as network:
        yield network


async def test_a_call_no_one_approves_in_time_expires(hasty: Mesh):
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with Client(f"{hasty.url}/mcp") as client:
        result = await client.call_tool("echo__wipe", {}, progress_callback=on_progress)
    problem = result.meta[PROBLEM_META]
    assert result.is_error and problem["type"].endswith("/approval-expired") and problem["status"] == 408
    request_id = problem["request_id"]
    assert problem["detail"] == f"echo.wipe: no one approved request {request_id} within 1.5 s"
    assert progress and all(0 <= done < 1.5 for done in progress)
    final = httpx.get(f"{hasty.url}/v1/approvals/requests/{request_id}").json()
    assert (final["status"], final["decided_by"], final["decided_via"]) == ("expired", "registry", "timeout")
    run = httpx.get(f"{hasty.url}/v1/runs/{problem['run_id']}").json()
    assert run["status"] == "expired"
    assert audit_steps(hasty, request_id) == [("requested", "user:local", None), ("expired", "registry", "timeout")]
    too_late = httpx.post(f"{hasty.url}/v1/approvals/requests/{request_id}/approve", json={})
    assert too_late.status_code == 409 and "is expired: it cannot become approved" in too_late.json()["detail"]
    over_http = hasty.invoke("echo", "wipe", {})
    assert over_http.status_code == 408 and over_http.json()["type"].endswith("/approval-expired")
    assert json.loads(over_http.text)["request_id"] != request_id
