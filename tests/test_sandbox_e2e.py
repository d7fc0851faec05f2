"""Sandboxes end to end: a registry and the `sandbox` and `researcher` agents as real processes on
loopback, the HTTP API with httpx, each sandbox's tools with the official MCP client."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import uvicorn
from mcp import Client
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mesh.client import MeshClient, MeshError
from mesh.keys import KeyRing
from mesh.registry import store
from mesh.registry.auth import issue_token
from mesh.sandbox.client import SandboxClient

from .conftest import free_port, run_mesh
from .test_registry_e2e import Mesh, running_mesh

SECRET_VARIABLE = "MESH_SECRET_TEST_TRACKER"
SECRET = "real-tracker-token"
TOKEN = {"Authorization": "Bearer tok"}


class RealTracker:
    """A stand-in for the real tracker service, on loopback: what connected mode reaches."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.seen: list[dict[str, Any]] = []

        async def projects(request: Request) -> JSONResponse:
            self.seen.append({"method": request.method, "path": request.url.path,
                              "authorization": request.headers.get("authorization"),
                              "query": dict(request.query_params)})
            return JSONResponse({"items": [], "next_cursor": None, "total": 0, "real": True})

        app = Starlette(routes=[Route("/api/projects", projects, methods=["GET"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RealTracker:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def real_tracker() -> Iterator[RealTracker]:
    with RealTracker() as server:
        yield server


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The sandbox agent holds a credential for connected mode (exported for the purpose, MESH_SECRET_*);
    the researcher may call sandboxes' services; connected calls are allowed by the policy."""
    os.environ[SECRET_VARIABLE] = SECRET  # the agent processes inherit it; nothing else reads it
    try:
        with running_mesh(tmp_path_factory, "sandboxes", ("sandbox", "researcher"), settings={
                "grants": 'researcher = ["docs:read", "sandbox:call", "sandbox:read"]',
                "policy": 'allow_destructive = ["sandbox.sandbox_connected_call"]'}) as network:
            yield network
    finally:
        os.environ.pop(SECRET_VARIABLE, None)


def create(mesh: Mesh, body: dict[str, Any], agent: str = "researcher", headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{mesh.url}/v1/agents/{agent}/sandboxes", json=body, headers=headers, timeout=30)


def sandbox_url(mesh: Mesh, sandbox: dict[str, Any], *rest: str) -> str:
    return "/".join([f"{mesh.url}/v1/agents/{sandbox['agent']}/sandboxes/{sandbox['id']}", *rest])


def problem(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + kind), response.json()
    return response.json()["detail"]


def test_bad_requests_are_problems_that_name_what_is_wrong(mesh: Mesh) -> None:
    assert "no spec 'nowhere'" in problem(create(mesh, {"required_services": ["nowhere"]}), 400, "bad-request")
    assert "required_services" in problem(create(mesh, {"required_services": []}), 400, "bad-request")
    assert "mode" in problem(create(mesh, {"required_services": ["petstore"], "mode": "live"}), 400, "bad-request")
    assert "ttl_seconds" in problem(create(mesh, {"required_services": ["petstore"], "ttl_seconds": 0}), 400,
                                    "bad-request")
    assert "which required_services does not name" in problem(
        create(mesh, {"required_services": ["petstore"], "services": {"tracker": {}}}), 400, "bad-request")
    assert "petstore has no operation 'adoptPet'" in problem(create(mesh, {
        "required_services": ["petstore"],
        "services": {"petstore": {"responses": [{"operation_id": "adoptPet"}]}}}), 400, "bad-request")
    assert "services.petstore.failures.rate" in problem(create(mesh, {
        "required_services": ["petstore"], "services": {"petstore": {"failures": {"rate": 2}}}}), 400, "bad-request")
    problem(create(mesh, {"required_services": ["petstore"]}, agent="nobody"), 404, "unknown-agent")
    missing = httpx.get(f"{mesh.url}/v1/agents/researcher/sandboxes/00000000-0000-0000-0000-000000000000")
    problem(missing, 404, "unknown-sandbox")


def test_lifecycle_create_list_get_patch_delete(mesh: Mesh) -> None:
    made = create(mesh, {"required_services": ["petstore"], "mode": "mock", "ttl_seconds": 600,
                         "description": "first steps"})
    assert made.status_code == 201, made.text
    sandbox = made.json()
    assert (sandbox["mode"], sandbox["status"], sandbox["revision"], sandbox["created_by"]) == (
        "mock", "active", 1, "user:local")
    assert sandbox["mcp"] == f"{mesh.url}/agents/researcher/sandboxes/{sandbox['id']}/mcp"
    listed = httpx.get(f"{mesh.url}/v1/agents/researcher/sandboxes").json()["sandboxes"]
    assert sandbox["id"] in [s["id"] for s in listed]
    assert httpx.get(sandbox_url(mesh, sandbox)).json() == sandbox

    patched = httpx.patch(sandbox_url(mesh, sandbox), json={"mode": "emulated", "ttl_seconds": 1200}).json()
    assert (patched["mode"], patched["revision"], patched["ttl_seconds"]) == ("emulated", 2, 1200)
    assert patched["expires_at"] > sandbox["expires_at"]
    same = httpx.patch(sandbox_url(mesh, sandbox), json={"description": "renamed"}).json()
    assert (same["description"], same["revision"]) == ("renamed", 2)  # nothing the services depend on changed
    assert "colour" in problem(httpx.patch(sandbox_url(mesh, sandbox), json={"colour": "red"}), 400, "bad-request")

    deleted = httpx.delete(sandbox_url(mesh, sandbox)).json()
    assert (deleted["status"], deleted["removed_at"] is not None) == ("deleted", True)
    assert sandbox["id"] not in [s["id"] for s in httpx.get(f"{mesh.url}/v1/agents/researcher/sandboxes").json()[
        "sandboxes"]]
    removed = httpx.get(f"{mesh.url}/v1/sandboxes", params={"removed": "true"}).json()["sandboxes"]
    assert sandbox["id"] in [s["id"] for s in removed]
    problem(httpx.post(sandbox_url(mesh, sandbox, "reset"), json={}), 410, "sandbox-expired")


async def test_emulated_tracker_through_the_registry(mesh: Mesh) -> None:
    sandbox = create(mesh, {"required_services": ["tracker"], "mode": "emulated", "services": {"tracker": {
        "credentials": ["tok"],
        "seed": {"/users": [{"id": "usr_adaadaad", "name": "Ada", "email": "ada@example.com"}]}}}}).json()
    async with Client(sandbox["mcp"]) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert {"tracker__createProject", "tracker__listTasks", "tracker__addComment"} <= set(tools)
        assert set(tools["tracker__listTasks"].input_schema["properties"]) >= {"limit", "cursor", "status", "headers"}
        assert tools["tracker__createTask"].input_schema["required"] == ["body"]

        refused = await client.call_tool("tracker__createProject", {"body": {"name": "Web", "key": "WEB"}})
        assert refused.structured_content["status"] == 401  # the service's answer: no token sent
        invalid = await client.call_tool("tracker__createProject",
                                         {"body": {"name": "Web", "key": "web"}, "headers": TOKEN})
        assert invalid.structured_content["status"] == 422
        assert "body.key" in invalid.structured_content["body"]["message"]
        created = await client.call_tool("tracker__createProject",
                                         {"body": {"name": "Web", "key": "WEB"}, "headers": TOKEN}, meta={
                                             "io.mcpmesh/attempt": "task-1/try-1"})
        assert created.structured_content["status"] == 201 and not created.is_error
        project = created.structured_content["body"]
        assert created.meta["io.mcpmesh/run"]  # the registry's run id, as on any call through it
        read = await client.call_tool("tracker__getProject", {"projectId": project["id"], "headers": TOKEN})
        assert read.structured_content["body"] == project
        for title in ("one", "two", "three"):
            await client.call_tool("tracker__createTask",
                                   {"body": {"project_id": project["id"], "title": title}, "headers": TOKEN})
        first = (await client.call_tool("tracker__listTasks", {"limit": 2, "status": "todo",
                                                                "headers": TOKEN})).structured_content["body"]
        assert [t["title"] for t in first["items"]] == ["one", "two"] and first["total"] == 3
        rest = (await client.call_tool("tracker__listTasks", {"limit": 2, "cursor": first["next_cursor"],
                                                               "headers": TOKEN})).structured_content["body"]
        assert [t["title"] for t in rest["items"]] == ["three"] and rest["next_cursor"] is None
        gone = await client.call_tool("tracker__getTask", {"taskId": "tsk_00000000", "headers": TOKEN})
        assert gone.structured_content["status"] == 404
        stray = await client.call_tool("tracker__getTask", {"taskId": "tsk_00000000", "colour": "red"})
        assert stray.is_error and "takes no argument 'colour'" in stray.content[0].text

    state = httpx.get(sandbox_url(mesh, sandbox, "state")).json()
    assert [p["name"] for p in state["services"]["tracker"]["/projects"]] == ["Web"]
    assert len(state["services"]["tracker"]["/tasks"]) == 3 and state["run_id"]

    runs = httpx.get(sandbox_url(mesh, sandbox, "runs")).json()["runs"]
    assert [r["http_status"] for r in runs[:3]] == [401, 422, 201]
    assert runs[2]["attempt"] == "task-1/try-1" and runs[2]["answer"]["body"] == project
    assert runs[1]["arguments"]["headers"] == {"Authorization": "(redacted)"}  # credentials are not kept
    recorded = httpx.get(f"{mesh.url}/v1/runs/{runs[2]['run_id']}").json()
    assert (recorded["agent"], recorded["tool"], recorded["status"]) == ("sandbox", "sandbox_call", "ok")
    assert recorded["provenance"] and recorded["policy_decision"] == "allow"


async def test_mock_mode_fixed_responses_and_injected_failures(mesh: Mesh) -> None:
    sandbox = create(mesh, {"required_services": ["petstore"], "mode": "mock", "services": {"petstore": {
        "responses": [{"operation_id": "getPet", "status": 200, "body": {"id": 7, "name": "Fixed", "species": "dog"},
                       "when": {"petId": 7}}],
        "failures": {"rate": 1.0, "status": 429, "operations": ["listPets"], "retry_after": 3}}}}).json()
    async with Client(sandbox["mcp"], mode="legacy") as client:  # a 2025-11-25 session works as well
        created = (await client.call_tool("petstore__createPet", {"body": {"name": "Tom", "species": "cat"}}))
        pet_id = created.structured_content["body"]["id"]
        again = await client.call_tool("petstore__getPet", {"petId": pet_id})
        assert again.structured_content["body"] != created.structured_content["body"]  # a mock remembers nothing
        fixed = await client.call_tool("petstore__getPet", {"petId": 7})
        assert fixed.structured_content["body"]["name"] == "Fixed"
        limited = await client.call_tool("petstore__listPets", {})
        assert limited.structured_content["status"] == 429
        assert limited.structured_content["headers"]["retry-after"] == "3"


async def test_reset_empties_the_state_and_keeps_runs_and_provenance(mesh: Mesh) -> None:
    sandbox = create(mesh, {"required_services": ["petstore"], "mode": "emulated", "services": {"petstore": {
        "seed": {"/pets": [{"id": 1, "name": "Seed", "species": "dog"}]}}}}).json()
    async with Client(sandbox["mcp"]) as client:
        created = await client.call_tool("petstore__createPet", {"body": {"name": "Rex", "species": "dog"}})
        pet = created.structured_content["body"]
        assert (await client.call_tool("petstore__getPet", {"petId": pet["id"]})).structured_content["body"] == pet
    before = httpx.get(sandbox_url(mesh, sandbox, "runs")).json()["runs"]
    assert len(before) == 2

    reset = httpx.post(sandbox_url(mesh, sandbox, "reset"), json={}).json()
    assert reset["revision"] == sandbox["revision"] + 1
    async with Client(sandbox["mcp"]) as client:
        gone = await client.call_tool("petstore__getPet", {"petId": pet["id"]})
        assert gone.structured_content["status"] == 404  # what was created is gone...
        listed = await client.call_tool("petstore__listPets", {})
        assert listed.structured_content["body"] == [{"id": 1, "name": "Seed", "species": "dog"}]  # ...the seed is back

    after = httpx.get(sandbox_url(mesh, sandbox, "runs")).json()["runs"]
    assert after[:2] == before and [r["revision"] for r in after] == [1, 1, 2, 2]
    for kept in before:
        record = httpx.get(f"{mesh.url}/v1/runs/{kept['run_id']}").json()
        assert record["provenance"] and record["status"] == "ok"


def test_an_agent_manages_its_own_sandboxes_only_and_calls_them_as_the_policy_allows(mesh: Mesh) -> None:
    ring = KeyRing.open(mesh.workspace / ".mesh" / "keys" / "researcher")
    as_researcher = {"Authorization": f"Bearer {issue_token('researcher', ring.active())}"}
    assert create(mesh, {"required_services": ["petstore"]}, headers=as_researcher).status_code == 201
    problem(create(mesh, {"required_services": ["petstore"]}, agent="sandbox", headers=as_researcher), 403,
            "forbidden")
    problem(httpx.post(f"{mesh.url}/v1/approvals", json={"agent": "researcher", "service": "tracker"},
                       headers=as_researcher), 403, "forbidden")


async def test_connected_mode_needs_a_credential_and_an_approval(mesh: Mesh, real_tracker: RealTracker) -> None:
    body = {"required_services": ["tracker"], "mode": "connected",
            "services": {"tracker": {"base_url": real_tracker.url}}}
    assert "secret_ref" in problem(create(mesh, body), 400, "bad-request")
    assert "env:MESH_SECRET_" in problem(create(mesh, {**body, "secret_ref": "env:HOME"}), 400, "bad-request")
    body["secret_ref"] = f"env:{SECRET_VARIABLE}"
    refused = problem(create(mesh, body), 403, "approval-required")
    assert f"mesh approve researcher tracker --base-url {real_tracker.url}" in refused
    emulated = create(mesh, {"required_services": ["tracker"]}).json()
    to_connected = httpx.patch(sandbox_url(mesh, emulated), json={"mode": "connected",
                                                                  "secret_ref": body["secret_ref"]})
    assert "approve it first" in problem(to_connected, 403, "approval-required")
    assert not real_tracker.seen  # nothing was sent anywhere

    approved = run_mesh("approve", "researcher", "tracker", "--base-url", real_tracker.url, "--note", "test account",
                        "--registry", mesh.url)
    assert approved.returncode == 0, approved.stderr
    approval = json.loads(approved.stdout)
    elsewhere = {**body, "services": {"tracker": {"base_url": "http://127.0.0.1:9/steal"}}}
    assert "at http://127.0.0.1:9/steal" in problem(create(mesh, elsewhere), 403, "approval-required")
    sandbox = create(mesh, body)
    assert sandbox.status_code == 201, sandbox.text
    async with Client(sandbox.json()["mcp"]) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["tracker__deleteTask"].annotations.open_world_hint is True
        answer = await client.call_tool("tracker__listProjects", {"limit": 5})
        assert answer.structured_content == {"status": 200, "headers": {"content-type": "application/json"},
                                             "body": {"items": [], "next_cursor": None, "total": 0, "real": True}}
    assert real_tracker.seen == [{"method": "GET", "path": "/api/projects", "authorization": f"Bearer {SECRET}",
                                  "query": {"limit": "5"}}]
    runs = httpx.get(sandbox_url(mesh, sandbox.json(), "runs")).json()["runs"]
    assert SECRET not in json.dumps(runs)
    assert httpx.get(f"{mesh.url}/v1/runs/{runs[0]['run_id']}").json()["tool"] == "sandbox_connected_call"

    # Calling the sandbox agent directly, with a sandbox description of one's own, is refused by the policy.
    forged = {"id": "forged", "revision": 1, "mode": "connected", "required_services": ["tracker"],
              "secret_ref": f"env:{SECRET_VARIABLE}", "expires_at": 4102444800,
              "services": {"tracker": {"base_url": "http://127.0.0.1:9/steal"}}}
    direct = mesh.invoke("sandbox", "sandbox_connected_call", {"sandbox": forged, "service": "tracker",
                                                               "operation_id": "listProjects"})
    assert "sandbox_front_only" in problem(direct, 403, "policy-denied")

    assert httpx.delete(f"{mesh.url}/v1/approvals/{approval['id']}").json()["revoked_at"]
    async with Client(sandbox.json()["mcp"]) as client:  # revoked: refused at the next call, nothing sent
        again = await client.call_tool("tracker__listProjects", {})
        assert again.is_error and again.content[0].text.startswith("Approval required")
    assert len(real_tracker.seen) == 1


async def test_an_expired_sandbox_is_removed_refuses_calls_and_keeps_its_runs(mesh: Mesh) -> None:
    sandbox = create(mesh, {"required_services": ["petstore"], "ttl_seconds": 1}).json()
    async with Client(sandbox["mcp"]) as client:
        assert (await client.call_tool("petstore__listPets", {})).structured_content["status"] == 200
    # The sweep the registry runs every few seconds, run here on its database with the sandbox's end as "now".
    engine = store.connect(f"sqlite:///{mesh.workspace / '.mesh' / 'registry.db'}")
    try:
        with store.session_factory(engine).begin() as session:
            store.expire_sandboxes(session, datetime.fromisoformat(sandbox["expires_at"]))
    finally:
        engine.dispose()
    expired = httpx.get(sandbox_url(mesh, sandbox)).json()
    assert (expired["status"], expired["removed_at"] is not None) == ("expired", True)
    assert sandbox["id"] not in [s["id"] for s in httpx.get(f"{mesh.url}/v1/sandboxes").json()["sandboxes"]]
    async with Client(sandbox["mcp"]) as client:
        with pytest.raises(MCPError, match="is expired"):
            await client.list_tools()
        with pytest.raises(MCPError, match="is expired"):
            await client.call_tool("petstore__listPets", {})
    problem(httpx.get(sandbox_url(mesh, sandbox, "state")), 410, "sandbox-expired")
    runs = httpx.get(sandbox_url(mesh, sandbox, "runs")).json()["runs"]
    assert len(runs) == 1 and httpx.get(f"{mesh.url}/v1/runs/{runs[0]['run_id']}").json()["provenance"]


async def test_an_agent_uses_its_sandbox_with_the_sandbox_client_and_the_policy_decides(mesh: Mesh) -> None:
    def key(agent: str) -> Any:
        return KeyRing.open(mesh.workspace / ".mesh" / "keys" / agent).active()

    async with MeshClient(mesh.url, agent="researcher", key=key("researcher")) as researcher:
        sandbox = await SandboxClient.create(researcher, "researcher", ["tracker"],
                                             services={"tracker": {"credentials": ["tok"]}}, ttl_seconds=300)
        assert sandbox.sandbox["created_by"] == "agent:researcher"
        assert "tracker__createTask" in {tool.name for tool in await sandbox.tools()}
        answer = await sandbox.call("tracker__createProject", {"body": {"name": "Web", "key": "WEB"},
                                                               "headers": TOKEN}, attempt="t1")
        assert answer["status"] == 201 and answer["run_id"]
        assert [p["key"] for p in (await sandbox.state())["tracker"]["/projects"]] == ["WEB"]
        assert (await sandbox.reset())["revision"] == 2
        assert (await sandbox.state())["tracker"] == {}

    # An agent without scope sandbox:call (no grant) is refused by the policy; the attempt is still recorded.
    async with MeshClient(mesh.url, agent="sandbox", key=key("sandbox")) as other:
        with pytest.raises(MeshError) as refused:
            await SandboxClient(other, sandbox.sandbox).call("tracker__getHealth", {})
        assert refused.value.kind == "policy-denied" and "sandbox:call" in str(refused.value)
    runs = httpx.get(sandbox_url(mesh, sandbox.sandbox, "runs")).json()["runs"]
    assert [(r["caller"], r["status"], r["attempt"]) for r in runs] == [
        ("agent:researcher", "ok", "t1"), ("agent:sandbox", "policy-denied", None)]
    denied = httpx.get(f"{mesh.url}/v1/runs/{runs[1]['run_id']}").json()
    assert (denied["status"], denied["policy_rule"]) == ("denied", "missing_scope")


def test_the_sandbox_commands(mesh: Mesh, tmp_path) -> None:
    config = tmp_path / "sandbox.json"
    config.write_text(json.dumps({"services": {"petstore": {"failures": {"latency_ms": 5}}}, "description": "cli"}))
    made = run_mesh("sandbox", "create", "researcher", "petstore", "--mode", "mock", "--ttl", "120", "--config",
                    str(config), "--registry", mesh.url)
    assert made.returncode == 0, made.stderr
    sandbox = json.loads(made.stdout)
    assert (sandbox["mode"], sandbox["ttl_seconds"], sandbox["description"]) == ("mock", 120, "cli")
    listed = run_mesh("sandbox", "ls", "--agent", "researcher", "--registry", mesh.url)
    assert sandbox["id"] in listed.stdout and "petstore" in listed.stdout
    reset = run_mesh("sandbox", "reset", "researcher", sandbox["id"], "--registry", mesh.url)
    assert json.loads(reset.stdout)["revision"] == 2
    removed = run_mesh("sandbox", "rm", "researcher", sandbox["id"], "--registry", mesh.url)
    assert json.loads(removed.stdout)["status"] == "deleted"
    again = run_mesh("sandbox", "reset", "researcher", sandbox["id"], "--registry", mesh.url)
    assert again.returncode == 1 and again.stderr.strip().startswith("mesh: the registry refused: Sandbox expired")
    nowhere = run_mesh("sandbox", "create", "researcher", "nowhere", "--registry", mesh.url)
    assert nowhere.returncode == 1 and "no spec 'nowhere'" in nowhere.stderr and "Traceback" not in nowhere.stderr
