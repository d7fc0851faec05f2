"""A sandbox's services as the sandbox agent runs them: the shipped specs, emulated and mocked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mesh.sandbox.config import SandboxRef, ServiceConfig, workspace_specs
from mesh.sandbox.emulator import SandboxHost, Service
from mesh.sandbox.openapi_mock import OpenAPIError
from mesh.sandbox.tools import find_operation, operation_tools, split_arguments

ROOT = Path(__file__).resolve().parent.parent
TOKEN = {"Authorization": "Bearer tok"}
FAR = 4_102_444_800.0  # 2100-01-01: a sandbox that does not expire during a test


def sandbox(mode: str = "emulated", revision: int = 1, services: dict[str, Any] | None = None,
            expires_at: float = FAR, names: tuple[str, ...] = ("tracker", "petstore")) -> SandboxRef:
    return SandboxRef(id="sbx-1", revision=revision, mode=mode, required_services=list(names),
                      services=services or {}, expires_at=expires_at)


@pytest.fixture
def host() -> SandboxHost:
    return SandboxHost(workspace_specs(ROOT))


def tracker(host: SandboxHost, **config: Any) -> Service:
    return host.service(sandbox(services={"tracker": {"credentials": ["tok"], **config}}), "tracker")


def test_the_workspace_ships_a_realistic_spec_beside_the_petstore(host: SandboxHost) -> None:
    assert host.known() == ["issues", "petstore", "tracker"]
    api = tracker(host).api
    paths = {op.path for op in api.operations()}
    assert {"/projects", "/tasks", "/tasks/{taskId}/comments", "/users"} <= paths  # several resources
    assert all(op.security == (("bearerAuth",),) for op in api.operations() if op.operation_id != "getHealth")
    listed = api.describe("listTasks")
    assert {p["name"] for p in listed["parameters"]} >= {"limit", "cursor", "status", "project_id"}  # pagination
    assert {"401", "422", "429"} <= set(api.describe("createTask")["responses"])  # auth and validation errors


def test_what_is_created_can_be_read_changed_listed_and_deleted(host: SandboxHost) -> None:
    service = tracker(host)
    project = service.answer("createProject", body={"name": "Web", "key": "WEB"}, headers=TOKEN)
    assert project.status == 201 and project.body["archived"] is False  # the spec's default, applied
    project_id = project.body["id"]
    assert service.answer("getProject", {"projectId": project_id}, headers=TOKEN).body == project.body
    task = service.answer("createTask", body={"project_id": project_id, "title": "Draft"}, headers=TOKEN).body
    assert (task["status"], task["priority"]) == ("todo", "medium") and "assignee" not in task  # nothing invented
    changed = service.answer("updateTask", {"taskId": task["id"]}, body={"status": "done"}, headers=TOKEN)
    assert changed.body == {**task, "status": "done"}
    comment = service.answer("addComment", {"taskId": task["id"]}, body={"body": "shipped"}, headers=TOKEN)
    assert comment.body["task_id"] == task["id"]  # linked to its parent from the path
    assert service.answer("deleteTask", {"taskId": task["id"]}, headers=TOKEN).status == 204
    assert service.answer("getTask", {"taskId": task["id"]}, headers=TOKEN).status == 404
    orphan = service.answer("listComments", {"taskId": task["id"]}, headers=TOKEN)
    assert orphan.status == 404  # the parent is gone
    never = service.answer("getProject", {"projectId": "prj_00000000"}, headers=TOKEN)
    assert (never.status, never.body["code"]) == (404, "not_found")  # a closed world: nothing is invented


def test_lists_filter_by_field_and_page_with_a_cursor(host: SandboxHost) -> None:
    service = tracker(host)
    project_id = service.answer("createProject", body={"name": "Web", "key": "WEB"}, headers=TOKEN).body["id"]
    for index in range(5):
        service.answer("createTask", body={"project_id": project_id, "title": f"task {index}",
                                           "status": "done" if index % 2 else "todo"}, headers=TOKEN)
    seen, cursor = [], None
    while True:
        query = {"limit": 2, "status": "todo", **({"cursor": cursor} if cursor else {})}
        page = service.answer("listTasks", query=query, headers=TOKEN).body
        assert page["total"] == 3
        seen += [task["title"] for task in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["task 0", "task 2", "task 4"]
    found = service.answer("listTasks", query={"q": "TASK 3"}, headers=TOKEN).body["items"]
    assert [task["title"] for task in found] == ["task 3"]
    bad = service.answer("listTasks", query={"cursor": "not-ours"}, headers=TOKEN)
    assert (bad.status, bad.body["code"]) == (400, "bad_request") and "cursor" in bad.body["message"]


def test_credentials_and_invalid_input_are_answered_as_the_api_would(host: SandboxHost) -> None:
    service = tracker(host)
    missing = service.answer("listProjects")
    assert (missing.status, missing.body["code"]) == (401, "unauthorized")
    wrong = service.answer("listProjects", headers={"Authorization": "Bearer guess"})
    assert wrong.status == 401 and wrong.body["message"] == "invalid credentials"
    assert service.answer("getHealth").status == 200  # security: [] needs no token
    invalid = service.answer("createTask", body={"title": "", "colour": "red"}, headers=TOKEN)
    assert (invalid.status, invalid.body["code"]) == (422, "validation_failed")
    assert "body.title" in invalid.body["message"] and "project_id" in invalid.body["message"]
    with pytest.raises(OpenAPIError, match="no operation 'nope'"):
        service.answer("nope")
    open_service = host.service(sandbox(names=("tracker",)), "tracker")  # no credentials listed: none checked
    assert open_service.answer("listProjects").status == 200


def test_injected_failures_fixed_responses_and_latency(host: SandboxHost) -> None:
    service = tracker(host, failures={"rate": 0.5, "status": 429, "latency_ms": 250, "operations": ["listTasks"]},
                      responses=[{"operation_id": "getUser", "body": {"id": "usr_fixedfix", "name": "Fixed",
                                                                      "email": "f@example.com"},
                                  "when": {"userId": "usr_fixedfix"}}])
    statuses = [service.answer("listTasks", headers=TOKEN).status for _ in range(40)]
    assert set(statuses) == {200, 429} and 8 <= statuses.count(429) <= 32
    again = tracker(SandboxHost(workspace_specs(ROOT)), failures={"rate": 0.5, "status": 429,
                                                                  "operations": ["listTasks"]})
    assert [again.answer("listTasks", headers=TOKEN).status for _ in range(40)] == statuses  # reproducible
    assert service.latency("listTasks") == 0.25 and service.latency("getTask") == 0.0
    assert all(service.answer("listProjects", headers=TOKEN).status == 200 for _ in range(10))  # not injected
    fixed = service.answer("getUser", {"userId": "usr_fixedfix"}, headers=TOKEN)
    assert fixed.body["name"] == "Fixed"
    assert service.answer("getUser", {"userId": "usr_other000"}, headers=TOKEN).status == 404


def test_retry_after_comes_with_an_injected_429(host: SandboxHost) -> None:
    service = tracker(host, failures={"rate": 1.0, "status": 429, "retry_after": 7})
    answer = service.answer("listProjects")
    assert (answer.status, answer.headers["retry-after"], answer.body["code"]) == (429, "7", "rate_limited")


def test_a_new_revision_starts_again_from_the_seed(host: SandboxHost) -> None:
    seed = {"petstore": {"seed": {"/pets": [{"id": 1, "name": "Seed", "species": "dog"}]}}}
    first = host.service(sandbox(services=seed), "petstore")
    created = first.answer("createPet", body={"name": "Rex", "species": "dog"}).body
    assert [pet["name"] for pet in host.state(sandbox(services=seed))["petstore"]["/pets"]] == ["Seed", "Rex"]
    second = host.service(sandbox(services=seed, revision=2), "petstore")
    assert second.answer("getPet", {"petId": created["id"]}).status == 404
    assert host.state(sandbox(services=seed, revision=2))["petstore"] == {"/pets": [
        {"id": 1, "name": "Seed", "species": "dog"}]}


def test_mock_mode_answers_from_the_spec_and_keeps_nothing(host: SandboxHost) -> None:
    service = host.service(sandbox(mode="mock"), "petstore")
    created = service.answer("createPet", body={"name": "Tom", "species": "cat"})
    assert created.status == 201
    assert service.answer("getPet", {"petId": created.body["id"]}).body != created.body
    assert host.state(sandbox(mode="mock")) == {"tracker": {}, "petstore": {}}


def test_an_expired_sandbox_is_forgotten(host: SandboxHost) -> None:
    clock = [1000.0]
    host.clock = lambda: clock[0]
    ref = sandbox(expires_at=1010.0)
    host.service(ref, "petstore").answer("createPet", body={"name": "Rex", "species": "dog"})
    assert host.state(ref)["petstore"]
    clock[0] = 1011.0
    with pytest.raises(OpenAPIError, match="sbx-1 has expired"):
        host.state(ref)  # past its time: refused, and what it held is gone
    assert host.state(sandbox(expires_at=2000.0, revision=2))["petstore"] == {}


def test_each_operation_is_a_tool_with_a_valid_schema(host: SandboxHost) -> None:
    api = tracker(host).api
    tools = operation_tools(api, "tracker", "emulated")
    assert len(tools) == len(api.operations())
    for tool in tools:
        Draft202012Validator.check_schema(tool.input_schema)
    by_name = {tool.name: tool for tool in tools}
    create = by_name["tracker__createTask"]
    assert create.input_schema["required"] == ["body"] and create.annotations.destructive_hint is False
    assert by_name["tracker__getTask"].annotations.read_only_hint is True
    assert operation_tools(api, "tracker", "connected")[0].annotations.open_world_hint is True
    service, op = find_operation({"tracker": api}, "tracker__getTask")
    assert (service, op.operation_id) == ("tracker", "getTask")
    assert split_arguments(op, {"taskId": "tsk_00000000", "headers": TOKEN}) == {
        "path_params": {"taskId": "tsk_00000000"}, "headers": TOKEN}
    with pytest.raises(ValueError, match="getTask takes no argument 'status' \\(it takes: taskId, headers\\)"):
        split_arguments(op, {"taskId": "tsk_00000000", "status": "done"})
    assert find_operation({"tracker": api}, "petstore__getPet") is None


def test_a_service_configuration_is_checked(host: SandboxHost) -> None:
    with pytest.raises(ValueError, match="base_url must be an http"):
        ServiceConfig.model_validate({"base_url": "file:///etc/passwd"})
    with pytest.raises(OpenAPIError, match="no spec 'nowhere'"):
        host.services(sandbox(names=("nowhere",)))


def test_no_attempt_in_mock_or_emulated_mode_opens_a_socket(host: SandboxHost, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a sandbox service tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for mode in ("mock", "emulated"):
        ref = sandbox(mode=mode, services={"tracker": {"credentials": ["tok"], "base_url": "https://tracker.test"}})
        service = host.service(ref, "tracker")
        for operation in service.api.operations():
            service.answer(operation.operation_id, {p.name: "prj_aaaaaaaa" for p in operation.parameters
                                                    if p.location == "path"}, headers=TOKEN)
        service.answer("createProject", body={"name": "Web", "key": "WEB"}, headers=TOKEN)
