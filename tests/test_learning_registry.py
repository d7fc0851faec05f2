"""Learning through a real registry: plans, the loop, attempts as recorded calls, assessments, prompt versions.

The learner's model is the model double (``tests/lm_double.py``) on loopback, reached by the registry
process through ``dspy.LM`` and LiteLLM over real HTTP. Its replies follow its prompt: it fills a field
the task does not name only when the prompt's lessons or demonstrations hold it. These tests check the
mechanics (what is learned reaches the prompt, is recorded, versioned, served, rolled back), not a model's
intelligence.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from unittest import mock

import httpx
import pytest
from mcp import Client

from mesh.lm.settings import HOW_TO_CONFIGURE

from .conftest import copy_repo_workspace, free_port, mesh_command, run_mesh
from .lm_double import ModelDouble, curriculum_agent
from .test_registry_e2e import Mesh, running_mesh

LEARNER = '''
from mcp.server.mcpserver import Context

from mesh import Agent
from mesh.learning.progress import learn_with_progress

agent = Agent("learner", description="Learns the sandbox's APIs and serves what it learned.")


@agent.tool(destructive=False, idempotent=False, open_world=False)
async def learn(system: str, ctx: Context) -> dict:
    """Learn a sandbox API until proficient, reporting progress as it goes."""
    run = await learn_with_progress(agent.mesh, agent.name, system, ctx.report_progress)
    return {"status": run["status"], "iterations": len(run["iterations"])}


@agent.tool(read_only=True, idempotent=True, open_world=False)
async def serving(system: str) -> dict:
    """The prompt version this agent serves for a system, as the registry keeps it."""
    version = await agent.active_prompt(system)
    return {"id": version["id"], "lessons": version["lessons"]}
'''


@pytest.fixture(scope="module")
def double() -> Iterator[ModelDouble]:
    with ModelDouble(curriculum_agent) as server:
        yield server


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, double: ModelDouble) -> Iterator[Mesh]:
    settings = {"grants": 'learner = ["sandbox:read", "sandbox:call"]'}
    with mock.patch.dict(os.environ, double.env(engine="litellm")), \
            running_mesh(tmp_path_factory, "learning", ("sandbox", "learner"), sources={"learner": LEARNER},
                         settings=settings) as network:
        yield network


def serving(mesh: Mesh, system: str) -> dict:
    answer = mesh.invoke("learner", "serving", {"system": system}).json()
    return json.loads(answer["result"]["content"][0]["text"])


def api(mesh: Mesh, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{mesh.url}/v1{path}", timeout=120, **kwargs)


def finished(mesh: Mesh, run_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(mesh, "GET", f"/learning-runs/{run_id}").json()
        if run["status"] != "running":
            return run
        time.sleep(0.2)
    raise AssertionError(f"learning run {run_id} did not finish within {timeout}s")


@pytest.fixture(scope="module")
def plan(mesh: Mesh) -> dict:
    made = api(mesh, "POST", "/agents/learner/learning-plans", json={"system": "petstore"})
    assert made.status_code == 200, made.text
    return made.json()


def test_a_plan_is_derived_from_the_spec_persisted_and_editable(mesh: Mesh, plan: dict):
    tasks = plan["tasks"]
    training = [t for t in tasks if not t["held_out"]]
    assert [t["level"] for t in training] == sorted(t["level"] for t in training)  # simple to composite
    assert {"create-pet", "fetch-pet", "delete-pet"} <= {t["id"] for t in training}
    assert any(t["held_out"] for t in tasks) and plan["rubric"] and plan["objectives"]
    assert all(t["check"]["kind"] in ("state_contains", "all", "answer_count") for t in tasks)

    listed = api(mesh, "GET", "/agents/learner/learning-plans").json()["plans"]
    assert plan["id"] in [p["id"] for p in listed]
    edited = api(mesh, "PATCH", f"/learning-plans/{plan['id']}", json={"threshold": 0.9})
    assert edited.status_code == 200 and edited.json()["revision"] == 2 and edited.json()["threshold"] == 0.9
    refused = api(mesh, "PATCH", f"/learning-plans/{plan['id']}", json={"tasks": [{"id": "x"}]})
    assert refused.status_code == 400 and "check" in refused.json()["detail"]
    api(mesh, "PATCH", f"/learning-plans/{plan['id']}", json={"threshold": 1.0})


def test_the_loop_learns_through_the_registry_and_success_rises_because_of_the_prompt(mesh: Mesh, plan: dict,
                                                                                      double: ModelDouble):
    """Mechanics, not intelligence: the double only fills `species` once the prompt says so."""
    started = api(mesh, "POST", f"/learning-plans/{plan['id']}/run", json={"budget": {"iterations": 4}})
    assert started.status_code == 202, started.text
    run = finished(mesh, started.json()["id"])
    assert run["status"] == "proficient", run
    rates = [i["success_rate"] for i in run["iterations"]]
    assert rates[0] < 0.5 and rates[-1] == 1.0 and len(rates) >= 2
    first = run["iterations"][0]
    assert any(f["tool"] == "createPet" and "species" in f["said"] for f in first["analysis"])
    assert any("body.species" in lesson for lesson in first["lessons"])
    # The lesson reached the model: its prompt in the last iteration carries it.
    assert any("always set `body.species`" in r["messages"][0]["content"] for r in double.requests[-5:])
    assert run["result"]["to_proficiency"]["iterations"] == len(rates)

    # The run practised in a sandbox it created: emulated, for the plan's system.
    sandbox = api(mesh, "GET", f"/agents/learner/sandboxes/{started.json()['sandbox']}").json()
    assert (sandbox["mode"], sandbox["required_services"]) == ("emulated", ["petstore"])
    assert run["result"]["sandbox"] == sandbox["id"]

    # Every attempt is recorded, its tool calls carried (and policy-checked) by the registry as agent:learner
    # through the sandbox's call path, each kept as a sandbox_runs row labelled with its attempt.
    attempts = api(mesh, "GET", f"/learning-runs/{run['id']}/attempts").json()["attempts"]
    assert {a["kind"] for a in attempts} >= {"train"}
    failed = next(a for a in attempts if not a["passed"] and a["tool_calls"])
    call = next(c for c in failed["tool_calls"] if not c["ok"])
    assert call["status"] == 422 and "species" in json.dumps(call["body"]) and call["run_id"]
    recorded = api(mesh, "GET", f"/runs/{call['run_id']}").json()
    assert (recorded["caller"], recorded["agent"], recorded["tool"]) == ("agent:learner", "sandbox", "sandbox_call")
    assert recorded["policy_decision"] == "allow"
    kept = {r["id"]: r for r in api(mesh, "GET", f"/agents/learner/sandboxes/{sandbox['id']}/runs",
                                    params={"limit": 1000}).json()["runs"]}
    evidence = [c for a in attempts for c in a["tool_calls"]]
    assert evidence and all(c["sandbox_run"] in kept for c in evidence)
    row = kept[call["sandbox_run"]]
    assert (row["run_id"], row["operation_id"], row["http_status"], row["caller"]) == (
        call["run_id"], "createPet", 422, "agent:learner")
    assert row["attempt"] == f"{run['id'][:8]}/{failed['kind']}-{failed['iteration']}/{failed['task_id']}"
    assert any(r["attempt"].endswith("/check") for r in kept.values())  # checks read the sandbox's state too

    # Versions: content-hashed, the measured best is active, and the agent serves it.
    versions = api(mesh, "GET", "/agents/learner/prompts").json()
    active = versions["active"]["petstore"]
    assert active == run["final_version"] and len(versions["versions"]) >= 2
    assert all(len(v["id"]) == 64 for v in versions["versions"])
    served = serving(mesh, "petstore")
    assert served["id"] == active and any("species" in lesson for lesson in served["lessons"])


def test_an_assessment_on_held_out_tasks_shows_proficiency(mesh: Mesh, plan: dict):
    assessed = api(mesh, "POST", f"/learning-plans/{plan['id']}/assess", json={})
    assert assessed.status_code == 200, assessed.text
    document = assessed.json()
    assert document["level"] == "proficient" and document["score"] == 1.0
    held_out = {t["id"] for t in plan["tasks"] if t["held_out"]}
    assert {e["task"] for e in document["evidence"]} == held_out
    assert all(e["runs"] for e in document["evidence"])  # the registry's run ids, as evidence
    agent = api(mesh, "GET", "/agents/learner").json()
    assert agent["proficiency"]["petstore"]["level"] == "proficient"
    listed = run_mesh("ls", "--registry", mesh.url)
    assert "petstore" in listed.stdout and "proficient" in listed.stdout
    # Discovery sees it: for a query that names the petstore, the learner's tools weigh its proficiency.
    found = api(mesh, "GET", "/discover", params={"q": "learn the petstore API", "agent": "learner"}).json()
    hit = next(h for h in found["results"] if h["tool"] == "learn")
    assert hit["why"]["proficiency"] == {"system": "petstore", "score": 1.0}
    from mesh.registry import store

    engine = store.connect(store.database_url(mesh.workspace))
    try:
        with store.session_factory(engine).begin() as session:
            assert store.proficiency(session, "learner", "petstore") == 1.0
            assert store.proficiency(session, "learner", "issues") is None
    finally:
        engine.dispose()


def test_rollback_restores_an_earlier_version_and_the_agent_serves_it(mesh: Mesh):
    versions = api(mesh, "GET", "/agents/learner/prompts").json()
    active = versions["active"]["petstore"]
    rolled = run_mesh("prompts", "rollback", "learner", "--registry", mesh.url)
    assert rolled.returncode == 0, rolled.stderr
    now = api(mesh, "GET", "/agents/learner/prompts/active", params={"system": "petstore"}).json()
    parent = next(v for v in versions["versions"] if v["id"] == active)["parent_id"]
    assert now["id"] == parent != active
    served = serving(mesh, "petstore")
    assert served["id"] == parent
    diff = run_mesh("prompts", "diff", "learner", parent[:12], active[:12], "--registry", mesh.url)
    assert diff.returncode == 0 and "+" in diff.stdout and "species" in diff.stdout
    listed = run_mesh("prompts", "list", "learner", "--registry", mesh.url)
    assert parent[:12] in listed.stdout
    shown = run_mesh("prompts", "show", "learner", active[:12], "--registry", mesh.url)
    assert shown.returncode == 0 and "always set `body.species`" in shown.stdout and active in shown.stdout
    assert api(mesh, "POST", f"/agents/learner/prompts/{active}/activate", json={}).status_code == 200


def test_a_budget_stops_the_loop(mesh: Mesh, plan: dict):
    started = api(mesh, "POST", f"/learning-plans/{plan['id']}/run",
                  json={"budget": {"calls": 6}, "lessons": False, "optimizer": "none"})
    run = finished(mesh, started.json()["id"])
    assert run["status"] == "budget-spent" and "call budget" in run["reason"]
    assert run["spent"]["calls"] <= 6 + 8  # checked before every model-driven tool call


def test_the_tokens_a_run_spends_count_against_the_learners_budget(mesh: Mesh, plan: dict):
    made = api(mesh, "POST", "/budgets", json={"id": "learner-day", "scope": "agent", "agent": "learner",
                                               "period": "day", "limit": 1e9})
    assert made.status_code == 201, made.text

    def calls() -> dict[str, float]:
        runs = api(mesh, "GET", "/runs", params={"caller": "agent:learner", "log": "caller", "limit": 1000})
        return {run["id"]: run["cost"] or 0.0 for run in runs.json()["runs"]}

    before = calls()
    started = api(mesh, "POST", f"/learning-plans/{plan['id']}/run",
                  json={"budget": {"iterations": 1}, "lessons": False, "optimizer": "none"})
    run = finished(mesh, started.json()["id"])
    tokens = run["spent"]["tokens"]
    assert tokens > 0  # the double reports usage, as a provider does
    spent_on_calls = sum(cost for run_id, cost in calls().items() if run_id not in before)
    budget = api(mesh, "GET", "/budgets/learner-day").json()
    assert budget["current"]["spent"] == pytest.approx(spent_on_calls + tokens * 0.001)  # [budgets] token_cost
    assert api(mesh, "DELETE", "/budgets/learner-day").status_code == 204


def test_a_run_can_be_cancelled(mesh: Mesh):
    # The tracker asks for a project key matching a pattern, which the double never learns: the run goes on.
    tracker = api(mesh, "POST", "/agents/learner/learning-plans", json={"system": "issues"}).json()
    started = api(mesh, "POST", f"/learning-plans/{tracker['id']}/run", json={"budget": {"iterations": 100}})
    run_id = started.json()["id"]
    time.sleep(0.5)
    assert api(mesh, "POST", f"/learning-runs/{run_id}/cancel", json={}).json()["cancelling"] is True
    run = finished(mesh, run_id)
    assert run["status"] == "cancelled"


def test_a_run_reuses_a_named_sandbox_and_resets_it_between_iterations_when_asked(mesh: Mesh):
    # The tracker's project key needs a pattern the double never learns: every iteration runs.
    tracker = api(mesh, "POST", "/agents/learner/learning-plans", json={"system": "issues"}).json()
    made = api(mesh, "POST", "/agents/learner/sandboxes", json={"required_services": ["issues"]})
    assert made.status_code == 201, made.text
    sandbox = made.json()
    started = api(mesh, "POST", f"/learning-plans/{tracker['id']}/run",
                  json={"sandbox": sandbox["id"], "reset_between_iterations": True, "budget": {"iterations": 2},
                        "lessons": False, "optimizer": "none"})
    assert started.status_code == 202 and started.json()["sandbox"] == sandbox["id"], started.text
    run = finished(mesh, started.json()["id"])
    assert len(run["iterations"]) == 2 and run["result"]["sandbox"] == sandbox["id"]
    after = api(mesh, "GET", f"/agents/learner/sandboxes/{sandbox['id']}").json()
    assert after["revision"] == sandbox["revision"] + 1  # one reset, between the two iterations
    runs = api(mesh, "GET", f"/agents/learner/sandboxes/{sandbox['id']}/runs", params={"limit": 1000}).json()["runs"]
    assert {r["revision"] for r in runs} == {1, 2}  # the reset kept the first iteration's runs

    # Connected mode only through the sandbox's own rules: no credential named, no approval, no run.
    refused = api(mesh, "POST", f"/learning-plans/{tracker['id']}/run", json={"sandbox": {"mode": "connected"}})
    assert refused.status_code == 400 and "secret_ref" in refused.json()["detail"]


def test_mesh_learn_runs_the_loop_shows_each_iteration_and_assesses(mesh: Mesh):
    done = run_mesh("learn", "learner", "petstore", "--iterations", "3", "--registry", mesh.url, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ITERATION" in done.stdout and "proficient" in done.stdout
    assert "assessment on held-out tasks: proficient" in done.stdout


async def test_the_sandbox_a_run_practised_in_is_the_same_mcp_server_any_client_sees(mesh: Mesh):
    """The loop's calls and an MCP client's calls are one kind of thing: tools of the sandbox's server, rows
    of its sandbox_runs."""
    sandboxes = api(mesh, "GET", "/agents/learner/sandboxes").json()["sandboxes"]
    sandbox = next(s for s in sandboxes if s["required_services"] == ["petstore"]
                   and (s["description"] or "").startswith("learning plan"))
    learned = api(mesh, "GET", f"/agents/learner/sandboxes/{sandbox['id']}/runs", params={"limit": 1000}).json()
    called = {r["operation_id"] for r in learned["runs"]}
    async with Client(sandbox["mcp"]) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("petstore__listPets", {}, meta={"io.mcpmesh/attempt": "by-hand"})
    assert {f"petstore__{operation}" for operation in called} <= listed
    assert not result.is_error and result.structured_content["status"] == 200
    runs = api(mesh, "GET", f"/agents/learner/sandboxes/{sandbox['id']}/runs", params={"limit": 1000}).json()["runs"]
    assert runs[-1]["attempt"] == "by-hand" and runs[-1]["run_id"] == result.meta["io.mcpmesh/run"]
    assert {r["caller"] for r in runs[:-1]} == {"agent:learner"}


async def test_learning_as_a_tool_reports_mcp_progress_through_the_registry(mesh: Mesh):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with Client(f"{mesh.url}/mcp", mode="legacy") as client:
        result = await client.call_tool("learner__learn", {"system": "petstore"}, progress_callback=on_progress)
    assert not result.is_error, result.content
    assert json.loads(result.content[0].text)["status"] == "proficient"
    assert progress and [p[0] for p in progress] == sorted({p[0] for p in progress})  # only grows
    assert progress[-1][2].startswith("proficient")


def test_without_a_model_learning_refuses_with_one_line(tmp_path, start):
    workspace = copy_repo_workspace(tmp_path / "ws")
    port = free_port()
    registry = start(mesh_command("registry", "run", "--workspace", str(workspace), "--port", str(port)),
                     env={"MESH_LM_MODEL": "", "MESH_LM_BASE_URL": ""})
    url = f"http://127.0.0.1:{port}"
    registry.wait_http(f"{url}/healthz")
    assert httpx.get(f"{url}/v1/lm").json() == {"configured": False, "model": None}
    refused = httpx.post(f"{url}/v1/learning-plans/00000000-0000-4000-8000-000000000000/run", json={})
    assert refused.status_code == 503 and refused.json()["detail"] == HOW_TO_CONFIGURE
    done = run_mesh("learn", "learner", "petstore", "--registry", url)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "MESH_LM_MODEL" in done.stderr
    # Nothing else depends on a model: the rest of the registry works.
    assert httpx.get(f"{url}/v1/agents").status_code == 200


def test_versions_and_assessments_survive_a_registry_restart(mesh: Mesh):
    before = api(mesh, "GET", "/agents/learner/prompts").json()
    mesh.stop("registry")
    mesh.start_registry()
    after = api(mesh, "GET", "/agents/learner/prompts").json()
    assert after == before
    assert api(mesh, "GET", "/agents/learner/assessments").json()["proficiency"]["petstore"]["level"] == "proficient"
