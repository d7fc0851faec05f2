"""Registry-wide routes and MCP faces show a caller only the project it acts in: health, metrics, an
agent's keys and A2A card, resource routing on ``/mcp`` and list-change and resource-update notices.

A real registry (on SQLite, then PostgreSQL) with ``desk`` and ``lamp`` in project default/default and
``shelf`` in default/library, reached over HTTP on loopback; the MCP items with the SDK's own ``Client``.
Each test checks that the other project's agent is unknown (404, absent, unheard) while the caller's own
project's still answers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mesh.card import CARD_PATH
from mesh.registry.app import build_app
from mesh.registry.config import RegistryConfig
from mesh.registry.node import Registry
from mesh.registry.proxy import RESOURCE_NOT_FOUND
from mesh.telemetry import AGENT_LABEL
from mesh.workspace import Workspace

from .conftest import POSTGRES_VARIABLE, copy_repo_workspace, postgres_schema
from .test_a2a_registry import call, send
from .test_approvals import a_member
from .test_registry_e2e import Mesh
from .test_tenancy_registry import LIBRARY, kind

AGENT = '''
from mcp.types import Completion

from mesh import Agent

agent = Agent("{name}", description="The {name}, an agent of its project.")


@agent.resource("test://shared", name="shared")
def shared() -> str:
    return "{name}'s shared"
{extra}

@agent.completion
async def complete(ref, argument, context) -> Completion:
    return Completion(values=["{name}"])


@agent.tool(read_only=True)
async def touch(uri: str) -> str:
    """Say that a resource changed, to whoever follows it."""
    await agent.resource_updated(uri)
    return "touched"
'''
SHELF_ONLY = '''
@agent.resource("test://theirs-only", name="theirs_only")
def theirs_only() -> str:
    return "shelf's own"


@agent.resource("test://theirs/{id}", name="theirs")
def theirs(id: str) -> str:
    return f"theirs {id}"
'''
SOURCES = {"desk": AGENT.format(name="desk", extra=""), "lamp": AGENT.format(name="lamp", extra=""),
           "shelf": AGENT.format(name="shelf", extra=SHELF_ONLY)}


class TwoProjects(Mesh):
    """A mesh whose ``shelf`` lives in project default/library, looked up there."""

    def agent(self, name: str) -> dict:
        response = httpx.get(f"{self.url}/v1/agents/{name}", headers=LIBRARY if name == "shelf" else None)
        return response.json() if response.status_code == 200 else {"status": None}


@contextmanager
def registry_database(backend: str) -> Iterator[None]:
    """The registry's database: the workspace's SQLite file, or a fresh PostgreSQL schema given as
    ``MESH_DATABASE_URL`` (read by the registry process and by ``a_member``)."""
    if backend == "sqlite":
        yield
        return
    server = os.environ.get(POSTGRES_VARIABLE)
    if not server:
        pytest.skip(f"set {POSTGRES_VARIABLE} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    with postgres_schema(server, "mesh_leaks") as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MESH_DATABASE_URL", url)
        yield


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with registry_database(request.param):
        workspace = copy_repo_workspace(tmp_path_factory.mktemp("leaks") / "ws")
        for name, source in SOURCES.items():
            (workspace / "agents" / f"{name}.py").write_text(source)
        config = workspace / "registry" / "registry.toml"
        config.write_text(config.read_text() + '\n[agents.shelf]\nproject = "default/library"\n')
        network = TwoProjects(workspace, tmp_path_factory.mktemp("logs"))
        try:
            network.start_registry()
            for name in SOURCES:
                network.start_agent(name)
            yield network
        finally:
            network.close()


def library_client(url: str, mode: str, **options: Any) -> Client:
    """The SDK's client acting in project default/library."""
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(headers=LIBRARY, timeout=60))
    return Client(transport, mode=mode, **options)


def test_the_health_check_holds_no_tenants_data(mesh: Mesh):
    health = httpx.get(f"{mesh.url}/healthz")
    assert health.status_code == 200 and health.json().keys() == {"status", "replica"}
    assert health.json()["status"] == "ok"


def metric_agents(text: str) -> set[str]:
    """Every agent a Prometheus text exposition has a series of (labels parsed, escapes and all)."""
    return {sample.labels[AGENT_LABEL] for family in text_string_to_metric_families(text)
            for sample in family.samples if AGENT_LABEL in sample.labels}


def test_metrics_show_the_callers_project_and_the_operator_everything(mesh: Mesh):
    assert mesh.invoke("desk", "touch", {"uri": "test://shared"}).status_code == 200
    assert mesh.invoke("shelf", "touch", {"uri": "test://shared"}, headers=LIBRARY).status_code == 200
    member = {"authorization": f"Bearer {a_member(mesh)}"}  # a member of the default organisation

    scraped = httpx.get(f"{mesh.url}/metrics", headers=member)
    assert scraped.status_code == 200
    assert metric_agents(scraped.text) == {"desk", "lamp"}
    assert "mesh_invoke_calls_total{" in scraped.text  # desk's call, counted
    assert "process_start_time_seconds" in scraped.text  # a series of no agent stays
    library = httpx.get(f"{mesh.url}/metrics", headers={**member, **LIBRARY})
    assert metric_agents(library.text) == {"shelf"}
    # The operator (the local user owns the default organisation) scrapes every series.
    assert metric_agents(httpx.get(f"{mesh.url}/metrics").text) == {"desk", "lamp", "shelf"}


@pytest.mark.parametrize("path", ["/agents/{}/jwks.json", "/agents/{}" + CARD_PATH])
def test_an_agents_keys_and_card_only_for_its_project(mesh: Mesh, path: str):
    nobody = httpx.get(mesh.url + path.format("nobody"))
    assert nobody.status_code == 404 and kind(nobody) == "unknown-agent"
    for name, headers, other in (("desk", None, "shelf"), ("shelf", LIBRARY, "desk")):
        assert httpx.get(mesh.url + path.format(name), headers=headers).status_code == 200, name
        hidden = httpx.get(mesh.url + path.format(other), headers=headers)
        assert hidden.status_code == 404 and kind(hidden) == "unknown-agent", other
        assert hidden.json()["detail"] == nobody.json()["detail"].replace("nobody", other)
    assert httpx.get(mesh.url + path.format("desk"), headers={"authorization": "Bearer junk"}).status_code == 401


def test_an_anonymous_caller_gets_no_agents_keys_nor_card(tmp_path: Path, database_url: str):
    """Off loopback, without a token, a caller acts in no project: the gate asks it to authenticate, for
    every agent name alike."""
    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    registry = Registry.open(RegistryConfig.from_workspace(workspace, database_url=database_url))
    try:
        with TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("10.1.2.3", 5000)) as remote:
            for path in ("/agents/{}/jwks.json", "/agents/{}" + CARD_PATH):
                for name in ("librarian", "nobody"):
                    answer = remote.get(path.format(name))
                    assert answer.status_code == 401 and kind(answer) == "unauthenticated", path
                    assert "resource_metadata=" in answer.headers["www-authenticate"]
    finally:
        registry.engine.dispose()


def a2a_refusal(mesh: Mesh, name: str) -> httpx.Response:
    message = {"role": "ROLE_USER", "messageId": str(uuid.uuid4()), "parts": call("touch", {"uri": "test://x"})}
    return httpx.post(f"{mesh.url}/agents/{name}/a2a", headers={"A2A-Version": "1.0"}, timeout=60,
                      json={"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}})


def test_an_agents_a2a_binding_only_for_its_project(mesh: Mesh):
    nobody, shelf = a2a_refusal(mesh, "nobody"), a2a_refusal(mesh, "shelf")
    assert nobody.status_code == shelf.status_code == 404
    assert shelf.json()["error"]["message"] == nobody.json()["error"]["message"].replace("nobody", "shelf")
    task = send(f"{mesh.url}/agents/shelf/a2a", call("touch", {"uri": "test://x"}), headers=LIBRARY)
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    assert send(f"{mesh.url}/agents/desk/a2a", call("touch", {"uri": "test://x"}))["status"]["state"] == \
        "TASK_STATE_COMPLETED"


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_resources_and_completions_route_only_among_the_callers_project(mesh: Mesh, mode: str):
    template = types.ResourceTemplateReference(type="ref/resource", uri="test://theirs/{id}")
    async with Client(f"{mesh.url}/mcp", mode=mode) as mine:
        assert (await mine.read_resource("test://shared")).contents[0].text == "desk's shared"
        with pytest.raises(MCPError) as nowhere:
            await mine.read_resource("test://nowhere")
        for uri in ("test://theirs-only", "test://theirs/7"):
            with pytest.raises(MCPError) as theirs:
                await mine.read_resource(uri)
            assert theirs.value.error.code == nowhere.value.error.code == RESOURCE_NOT_FOUND
            assert str(theirs.value) == str(nowhere.value).replace("test://nowhere", uri)
        with pytest.raises(MCPError) as unlisted:
            await mine.complete(template, {"name": "id", "value": ""})
        assert unlisted.value.error.code == types.INVALID_PARAMS
        assert "no agent of this mesh lists 'test://theirs/{id}'" in str(unlisted.value)
        if mode == "legacy":
            with pytest.raises(MCPError):
                await mine.subscribe_resource("test://theirs-only")
    async with library_client(f"{mesh.url}/mcp", mode) as theirs:
        assert (await theirs.read_resource("test://shared")).contents[0].text == "shelf's shared"
        assert (await theirs.read_resource("test://theirs-only")).contents[0].text == "shelf's own"
        assert (await theirs.complete(template, {"name": "id", "value": ""})).completion.values == ["shelf"]


@asynccontextmanager
async def listening(client: Client, seen: list[object], **kinds: Any) -> AsyncIterator[None]:
    """A ``subscriptions/listen`` stream of ``client`` open for the block; each event it brings kept in ``seen``."""

    async def read(subscription: Any) -> None:
        async for event in subscription:
            seen.append(event)

    async with client.listen(**kinds) as subscription, anyio.create_task_group() as group:
        group.start_soon(read, subscription)
        yield
        group.cancel_scope.cancel()


async def until(seen: list[object], touch: Any, timeout: float = 15) -> None:
    """Call ``touch`` until ``seen`` has something (the registry's watch on the agent opens a moment after
    the stream's acknowledgement)."""
    with anyio.fail_after(timeout):
        while not seen:
            await touch()
            await anyio.sleep(0.2)


QUIET_S = 0.8  # how long an event that should not come is waited for, once one that should has come


async def test_a_listening_stream_hears_only_its_projects_resources(mesh: Mesh):
    mine_seen: list[object] = []
    theirs_seen: list[object] = []
    async with Client(f"{mesh.url}/mcp", mode="2026-07-28") as mine, \
            library_client(f"{mesh.url}/mcp", "2026-07-28") as theirs, \
            listening(mine, mine_seen, resource_subscriptions=["test://shared", "test://theirs-only"]), \
            listening(theirs, theirs_seen, resource_subscriptions=["test://shared"]):

        async def shelf_touches() -> None:
            for uri in ("test://shared", "test://theirs-only"):
                assert not (await theirs.call_tool("shelf__touch", {"uri": uri})).is_error

        await until(theirs_seen, shelf_touches)
        await anyio.sleep(QUIET_S)
        assert mine_seen == []  # shelf's updates, even of a URI both projects serve, are the library's

        async def desk_touches() -> None:
            assert not (await mine.call_tool("desk__touch", {"uri": "test://shared"})).is_error

        heard_by_library = len(theirs_seen)
        await until(mine_seen, desk_touches)
        await anyio.sleep(QUIET_S)
    assert all(event == ResourceUpdated(uri="test://shared") for event in mine_seen)
    assert len(theirs_seen) == heard_by_library  # desk's update is not the library's


def revoke(mesh: Mesh, agent: str, headers: dict[str, str] | None = None) -> None:
    """Revoke the agent's key as the operator: its tools are blocked, so every face's lists change."""
    kid = httpx.get(f"{mesh.url}/agents/{agent}/jwks.json", headers=headers).json()["keys"][0]["kid"]
    revoked = httpx.post(f"{mesh.url}/v1/agents/{agent}/keys/{kid}/revoke", json={"reason": "test"}, headers=headers)
    assert revoked.status_code < 300, revoked.text


async def test_list_changes_reach_only_the_changed_agents_project(mesh: Mesh):
    """(Last in this module: it revokes every agent's key, which blocks their tools.)"""
    heard: dict[str, list[object]] = {"mine": [], "mine stream": [], "desk's face": [], "theirs": [],
                                      "theirs stream": []}

    def on_change(listener: str) -> Any:
        async def on_message(message: object) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                heard[listener].append(message)

        return on_message

    async with Client(f"{mesh.url}/mcp", mode="legacy", message_handler=on_change("mine")) as mine, \
            Client(f"{mesh.url}/agents/desk/mcp", mode="legacy", message_handler=on_change("desk's face")) as desk, \
            library_client(f"{mesh.url}/mcp", "legacy", message_handler=on_change("theirs")) as theirs, \
            Client(f"{mesh.url}/mcp", mode="2026-07-28") as mine_modern, \
            library_client(f"{mesh.url}/mcp", "2026-07-28") as theirs_modern, \
            listening(mine_modern, heard["mine stream"], tools_list_changed=True), \
            listening(theirs_modern, heard["theirs stream"], tools_list_changed=True):
        for session in (mine, desk, theirs):
            await session.list_tools()  # the face now knows the session, and whom it stands for

        async def heard_only(*listeners: str) -> None:
            with anyio.fail_after(15):
                while not all(heard[listener] for listener in listeners):
                    await anyio.sleep(0.05)
            await anyio.sleep(QUIET_S)
            assert {listener for listener, events in heard.items() if events} == set(listeners)
            assert all(isinstance(event, ToolsListChanged) for event in heard["mine stream"] + heard["theirs stream"])
            for events in heard.values():
                events.clear()

        revoke(mesh, "shelf", LIBRARY)
        await heard_only("theirs", "theirs stream")
        revoke(mesh, "lamp")  # of the default project, but not the agent of /agents/desk/mcp
        await heard_only("mine", "mine stream")
        revoke(mesh, "desk")
        await heard_only("mine", "mine stream", "desk's face")
