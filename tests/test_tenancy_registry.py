"""Tenancy through a running registry: a caller sees only the project it acts in, and another project's
agent, run or sandbox is unknown to it (404) on every route and MCP face; a cross-project call is refused as
unknown, and the shipped policy denies one too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from mesh.client import MeshError
from mesh.registry import idempotency, store, tenancy
from mesh.registry.app import build_app
from mesh.registry.auth import Caller
from mesh.registry.config import ConfigProblem, RegistryConfig
from mesh.registry.migrations.rls import REGISTRY_ROLE
from mesh.registry.node import Registry
from mesh.registry.policy import PolicyEngine
from mesh.registry.reputation import Outcome
from mesh.registry.tenancy import Tenant
from mesh.sandbox.lifecycle import Sandboxes
from mesh.sandbox.routes import SandboxRoutes
from mesh.workspace import Workspace

from .conftest import POSTGRES_VARIABLE, copy_repo_workspace, run_mesh
from .test_registry_e2e import ECHO, Mesh, agent_client

LIBRARY = {"X-Project-Id": "default/library"}
SHIPPED = Path(__file__).resolve().parents[1] / "registry" / "policies"


class ProjectsMesh(Mesh):
    """A mesh whose agents live in projects: an agent is looked up in the project it belongs to."""

    def agent(self, name: str) -> dict:
        headers = LIBRARY if name == "librarian" else None
        response = httpx.get(f"{self.url}/v1/agents/{name}", headers=headers)
        return response.json() if response.status_code == 200 else {"status": None}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """This repository's workspace with the librarian in project default/library and echo in default/default."""
    workspace = copy_repo_workspace(tmp_path_factory.mktemp("tenancy") / "ws")
    (workspace / "agents" / "echo.py").write_text(ECHO)
    config = workspace / "registry" / "registry.toml"
    config.write_text(config.read_text().replace("[agents.librarian]\n",
                                                 '[agents.librarian]\nproject = "default/library"\n', 1))
    network = ProjectsMesh(workspace, tmp_path_factory.mktemp("logs"))
    try:
        network.start_registry()
        for name in ("librarian", "echo"):
            network.start_agent(name)
        yield network
    finally:
        network.close()


def kind(response: httpx.Response) -> str:
    return response.json()["type"].rsplit("/", 1)[-1]


def test_a_caller_sees_only_the_project_it_acts_in(mesh: Mesh):
    mine = httpx.get(f"{mesh.url}/v1/agents").json()["agents"]
    assert [a["name"] for a in mine] == ["echo"]
    theirs = httpx.get(f"{mesh.url}/v1/agents", headers=LIBRARY).json()["agents"]
    assert [a["name"] for a in theirs] == ["librarian"]

    hits = httpx.get(f"{mesh.url}/v1/discover", params={"q": "search passages of the documentation"}).json()
    assert {hit["agent"] for hit in hits["results"]} <= {"echo"}
    hits = httpx.get(f"{mesh.url}/v1/discover", params={"q": "search passages of the documentation"},
                     headers=LIBRARY).json()
    assert {hit["agent"] for hit in hits["results"]} == {"librarian"}


def test_another_projects_agent_and_run_are_unknown(mesh: Mesh):
    answer = httpx.get(f"{mesh.url}/v1/agents/librarian")
    assert answer.status_code == 404 and kind(answer) == "unknown-agent"
    assert httpx.get(f"{mesh.url}/v1/agents/librarian", headers=LIBRARY).status_code == 200
    for path in ("/v1/agents/librarian/recheck", "/v1/agents/librarian/keys/abc/revoke"):
        answer = httpx.post(f"{mesh.url}{path}", json={})
        assert answer.status_code == 404 and kind(answer) == "unknown-agent", path

    refused = mesh.invoke("librarian", "search", {"query": "keys", "k": 1})
    assert refused.status_code == 404 and kind(refused) == "unknown-agent"
    assert refused.json()["detail"] == "no agent 'librarian' is registered"  # as for one that does not exist

    called = mesh.invoke("librarian", "search", {"query": "keys", "k": 1}, headers=LIBRARY)
    assert called.status_code == 200, called.text
    run_id = called.json()["run_id"]
    run = httpx.get(f"{mesh.url}/v1/runs/{run_id}", headers=LIBRARY).json()
    assert run["project"] == "default/library" and run["linked"][0]["project"] == "default/library"
    assert httpx.get(f"{mesh.url}/v1/runs/{run_id}").status_code == 404
    assert httpx.get(f"{mesh.url}/v1/runs/{run_id[:8]}").status_code == 404
    assert run_id not in {r["id"] for r in httpx.get(f"{mesh.url}/v1/runs").json()["runs"]}

    sandbox = httpx.post(f"{mesh.url}/v1/agents/librarian/sandboxes", json={"required_services": []})
    assert sandbox.status_code == 404 and kind(sandbox) == "unknown-agent"


def test_a_project_the_caller_cannot_act_in_is_unknown(mesh: Mesh):
    for header, status, problem in (("default/nope", 404, "unknown-project"), ("acme/web", 404, "unknown-project"),
                                    ("not a project", 400, "bad-request")):
        answer = httpx.get(f"{mesh.url}/v1/agents", headers={"X-Project-Id": header})
        assert (answer.status_code, kind(answer)) == (status, problem), header
        assert "X-Project-Id" in answer.json()["detail"] or header in answer.json()["detail"]


def test_an_agent_calls_only_agents_of_its_own_project(mesh: Mesh):
    async def call() -> None:
        async with agent_client(mesh, "echo") as client:
            with pytest.raises(MeshError) as refused:
                await client.invoke("librarian", "search", {"query": "keys", "k": 1})
            assert refused.value.kind == "unknown-agent"

    asyncio.run(call())


async def test_the_mcp_faces_show_only_the_callers_project(mesh: Mesh):
    async with Client(f"{mesh.url}/mcp", mode="legacy") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "echo__echo" in names and not any(name.startswith("librarian__") for name in names)
        refused = await client.call_tool("librarian__search", {"query": "keys", "k": 1})
        assert refused.is_error and "no agent 'librarian' is registered" in refused.content[0].text
    library = streamable_http_client(f"{mesh.url}/mcp", http_client=httpx2.AsyncClient(headers=LIBRARY))
    async with Client(library) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "librarian__search" in names and "echo__echo" not in names
    with pytest.raises(Exception) as raised:
        async with Client(f"{mesh.url}/agents/librarian/mcp", mode="legacy") as client:
            await client.list_tools()
    assert "no agent 'librarian' is registered" in messages(raised.value)


def messages(error: BaseException) -> str:
    """Every message in an error, and in the errors a task group gathered into it."""
    if isinstance(error, BaseExceptionGroup):
        return " | ".join(messages(inner) for inner in error.exceptions)
    return str(error)


def test_the_shipped_policy_denies_a_cross_project_call(tmp_path: Path):
    policy = PolicyEngine(SHIPPED, data={"min_reputation": 0.3, "allow_destructive": []})

    def decide(caller_project: str, target_project: str):
        return policy.evaluate({
            "kind": "tool", "method": "tools/call",
            "caller": {"id": "user:local", "kind": "user", "scopes": ["*"], "reputation": None, "proficiency": {},
                       "org": "default", "project": caller_project, "role": "owner"},
            "target": {"agent": "librarian", "tool": "search", "kind": "tool", "annotations": {"readOnlyHint": True},
                       "scopes": [], "reputation": 0.9, "probe": False, "org": "default", "project": target_project},
            "arguments": {}})

    assert decide("library", "library").allow
    denied = decide("default", "library")
    assert not denied.allow and denied.rule == "cross_project"
    assert "acts in default/default; librarian.search belongs to default/library" in denied.reasons[0]


def test_the_cli_acts_in_its_current_project(mesh: Mesh):
    def mesh_ls() -> str:
        listed = run_mesh("ls", "--registry", mesh.url, cwd=mesh.workspace)
        assert listed.returncode == 0, listed.stderr
        return listed.stdout

    assert "echo" in mesh_ls() and "librarian" not in mesh_ls()
    bad = run_mesh("project", "use", "Not/A Project", cwd=mesh.workspace)
    assert bad.returncode == 1 and "is not 'ORG/PROJECT'" in bad.stderr
    assert run_mesh("project", "use", "default/library", cwd=mesh.workspace).returncode == 0
    try:
        assert run_mesh("project", "show", cwd=mesh.workspace).stdout.strip() == "default/library"
        assert "librarian" in mesh_ls() and "echo" not in mesh_ls()
    finally:
        assert run_mesh("project", "use", "-", cwd=mesh.workspace).returncode == 0
    assert "echo" in mesh_ls()


def seed_two_projects(url: str) -> None:
    """As the tables' owner: agent ``mine`` and a run of it in default/default, ``theirs`` in default/library."""
    owner = store.connect(url)
    store.migrate(owner)
    with owner.begin() as connection:
        connection.execute(text("SELECT set_config('app.org_id', '*', true)"))  # a non-superuser owner is bound too
        connection.execute(text("INSERT INTO projects (org_id, id, name, created_at) "
                                "VALUES ('default', 'library', 'library', now())"))
        for name, project in (("mine", "default"), ("theirs", "library")):
            connection.execute(text("INSERT INTO agents (name, endpoint, status, version, description, registered_at, "
                                    "last_seen, flags, org_id, project_id) VALUES (:name, 'http://127.0.0.1:1/mcp', "
                                    "'active', '', '', now(), now(), '[]', 'default', :project)"),
                               {"name": name, "project": project})
            connection.execute(text("INSERT INTO runs (id, log, caller, agent, tool, status, started_at, org_id, "
                                    "project_id) VALUES (:id, 'caller', 'user:local', :name, 't', 'ok', now(), "
                                    "'default', :project)"),
                               {"id": str(uuid.uuid4()), "name": name, "project": project})
    owner.dispose()


def raw_agents(registry: Registry, tenant: Tenant | None) -> set[str]:
    """The agents a plain SQL read through the registry's engine sees, acting as ``tenant`` (None: no one):
    the store's own rules do not touch raw SQL, so only row-level security filters it."""
    with contextlib.ExitStack() as stack:
        if tenant is not None:
            stack.enter_context(tenancy.acting_as(tenant))
        with registry.engine.connect() as connection:
            return set(connection.scalars(text("SELECT name FROM agents")))


def test_the_registry_runs_under_row_level_security_as_its_own_role(tmp_path: Path, postgres_url: str):
    """By default on PostgreSQL (no ``[registry] database_role``) the registry serves as mesh_registry, not the
    tables' owner: it loads every project's pins as the registry, and serves each caller only its project's
    rows; even plain SQL in a request's context sees no other tenant's row."""
    seed_two_projects(postgres_url)
    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    config = RegistryConfig.from_workspace(workspace, database_url=postgres_url)
    assert config.database_role is None  # nothing configured: the default
    registry = Registry.open(config)
    try:
        with registry.engine.connect() as connection:
            assert connection.scalar(text("SELECT current_user")) == REGISTRY_ROLE
        assert raw_agents(registry, Tenant("default", "default")) == {"mine"}
        assert raw_agents(registry, Tenant("default", "library")) == {"theirs"}
        assert raw_agents(registry, None) == set()  # work done in no context sees no tenant row
        assert registry.tenancy.agents == {"mine": Tenant("default", "default"),
                                           "theirs": Tenant("default", "library")}
        with TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("127.0.0.1", 5000)) as local:
            assert [a["name"] for a in local.get("/v1/agents").json()["agents"]] == ["mine"]
            assert [r["agent"] for r in local.get("/v1/runs").json()["runs"]] == ["mine"]
            assert local.get("/v1/agents/theirs").status_code == 404
            library = local.get("/v1/runs", headers=LIBRARY).json()["runs"]
            assert [r["agent"] for r in library] == ["theirs"]
            assert local.get(f"/v1/runs/{library[0]['id']}").status_code == 404
            assert local.post("/v1/tokens", json={"name": "under rls"}).status_code == 201  # people's tables too
        registry.learn("theirs", "t", Outcome("ok", latency_ms=1.0))
        registry.save_reputations()  # as the registry, each record in its agent's project
        owner = store.connect(postgres_url)
        with owner.begin() as connection:
            saved = set(connection.execute(text("SELECT agent, project_id FROM reputation")))
        owner.dispose()
        assert saved == {("theirs", "library")}
    finally:
        registry.engine.dispose()


def test_opting_out_serves_as_the_url_user_and_warns(tmp_path: Path, postgres_url: str,
                                                     caplog: pytest.LogCaptureFixture):
    """``database_role = ""``: the registry serves as the URL's user (here a superuser, which row-level
    security does not bind), and says at start that isolation rests on the store layer alone."""
    seed_two_projects(postgres_url)
    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    with caplog.at_level(logging.WARNING, logger="mesh.registry.node"):
        registry = Registry.open(RegistryConfig.from_workspace(workspace, database_url=postgres_url, database_role=""))
    try:
        with registry.engine.connect() as connection:
            assert connection.scalar(text("SELECT current_user")) == make_url(postgres_url).username
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "rests on the store layer alone" in warnings[0], warnings
        assert raw_agents(registry, Tenant("default", "default")) == {"mine", "theirs"}  # no backstop
        with TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("127.0.0.1", 5000)) as local:
            assert [a["name"] for a in local.get("/v1/agents").json()["agents"]] == ["mine"]  # the store's rules
    finally:
        registry.engine.dispose()


@contextlib.contextmanager
def owned_schema(server: str, *, createrole: bool) -> Iterator[tuple[str, str]]:
    """A throwaway LOGIN role that is not a superuser and a fresh schema it owns: (its URL, its name); both
    dropped after."""
    name = f"mesh_owner_{uuid.uuid4().hex[:10]}"
    admin = store.connect(server)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE ROLE {name} LOGIN{' CREATEROLE' if createrole else ''}"))
        connection.execute(text(f"CREATE SCHEMA {name} AUTHORIZATION {name}"))
    url = make_url(server).set(username=name, password=None).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False), name
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
            connection.execute(text(f"DROP OWNED BY {name}"))  # its default privileges
            connection.execute(text(f"DROP ROLE {name}"))
        admin.dispose()


def postgres_server() -> str:
    server = os.environ.get(POSTGRES_VARIABLE)
    if not server:
        pytest.skip(f"set {POSTGRES_VARIABLE} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    return server


def test_an_owner_that_is_not_a_superuser_migrates_and_serves_as_the_role(tmp_path: Path):
    """The usual managed database: the URL's user owns the schema and may create roles, nothing more. The
    migrations make it a member of mesh_registry, and the registry serves as that role."""
    with owned_schema(postgres_server(), createrole=True) as (url, name):
        seed_two_projects(url)
        registry = Registry.open(RegistryConfig.from_workspace(Workspace(copy_repo_workspace(tmp_path / "ws")),
                                                               database_url=url))
        try:
            with registry.engine.connect() as connection:
                assert connection.execute(text("SELECT current_user, session_user")).one() == (REGISTRY_ROLE, name)
            assert raw_agents(registry, Tenant("default", "library")) == {"theirs"}
            assert registry.tenancy.agents.keys() == {"mine", "theirs"}
        finally:
            registry.engine.dispose()


def test_an_owner_that_cannot_become_the_role_fails_at_start_naming_the_fix(tmp_path: Path):
    """A user that may not grant itself the role still migrates; the registry then refuses to start, in
    one line naming the GRANT (or the opt-out); once granted, it serves."""
    server = postgres_server()
    with owned_schema(server, createrole=False) as (url, name):
        workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
        with pytest.raises(ConfigProblem) as refused:
            Registry.open(RegistryConfig.from_workspace(workspace, database_url=url))
        message = str(refused.value)
        assert f"GRANT {REGISTRY_ROLE} TO {name}" in message and 'database_role = ""' in message
        assert "\n" not in message
        admin = store.connect(server)
        with admin.begin() as connection:
            connection.execute(text(f"GRANT {REGISTRY_ROLE} TO {name}"))
        admin.dispose()
        registry = Registry.open(RegistryConfig.from_workspace(workspace, database_url=url))
        try:
            with registry.engine.connect() as connection:
                assert connection.scalar(text("SELECT current_user")) == REGISTRY_ROLE
        finally:
            registry.engine.dispose()


def test_the_serving_role_is_mesh_registry_on_postgresql_unless_opted_out(tmp_path: Path):
    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    assert RegistryConfig(workspace=workspace).serving_role("postgresql") == REGISTRY_ROLE
    assert RegistryConfig(workspace=workspace).serving_role("sqlite") is None
    assert RegistryConfig(workspace=workspace, database_role="").serving_role("postgresql") is None
    named = RegistryConfig(workspace=workspace, database_role="tenant_reader")
    assert named.serving_role("postgresql") == "tenant_reader"
    with pytest.raises(ConfigProblem, match=r"\[registry\] database_role = 'mesh_registry' needs a PostgreSQL"):
        RegistryConfig(workspace=workspace, database_role=REGISTRY_ROLE).serving_role("sqlite")


def test_the_sandbox_sweep_expires_every_projects_sandboxes_under_row_level_security(tmp_path: Path,
                                                                                     postgres_url: str):
    """Background work acts in no request's context: the expiry sweep works as the registry, across projects
    (in no context, row-level security would show it no sandbox at all)."""
    seed_two_projects(postgres_url)
    registry = Registry.open(RegistryConfig.from_workspace(Workspace(copy_repo_workspace(tmp_path / "ws")),
                                                           database_url=postgres_url))
    now = [datetime.now(UTC)]
    sandboxes = Sandboxes(registry, clock=lambda: now[0])
    library = Tenant("default", "library")
    try:
        with tenancy.acting_as(library):
            person = Caller("user:local", "user", ["*"], org=library.org, project=library.project)
            record = sandboxes.create(person, "theirs", {"required_services": ["petstore"], "ttl_seconds": 60})
        now[0] += timedelta(seconds=61)

        async def sweep_a_while() -> None:
            with anyio.move_on_after(2):
                await SandboxRoutes(registry, sandboxes).sweep_forever(interval=0.05)

        anyio.run(sweep_a_while)
        with tenancy.acting_as(library), registry.sessions.begin() as session:
            assert store.get_sandbox(session, record.id).status == "expired"
    finally:
        registry.engine.dispose()


def test_a_refused_privilege_reads_as_one_line_and_other_errors_do_not(tmp_path: Path):
    """What ``Registry.open`` says when migrating is refused a privilege (e.g. creating mesh_registry)."""
    with owned_schema(postgres_server(), createrole=False) as (url, _):
        engine = store.connect(url)
        try:
            with pytest.raises(DBAPIError) as refused, engine.begin() as connection:
                connection.execute(text("CREATE ROLE mesh_never_made NOLOGIN"))
            assert store.refused_privilege(refused.value) == "permission denied to create role"
            with pytest.raises(DBAPIError) as other, engine.begin() as connection:
                connection.execute(text("SELECT * FROM no_such_table"))
            assert store.refused_privilege(other.value) is None
        finally:
            engine.dispose()


def test_expired_idempotency_keys_are_purged_in_every_project(tmp_path: Path, postgres_url: str,
                                                               monkeypatch: pytest.MonkeyPatch):
    """A call in one project purges the old keys of all (bookkeeping, as the registry): under row-level
    security, in the caller's context, it would reach its own project's only."""
    seed_two_projects(postgres_url)
    registry = Registry.open(RegistryConfig.from_workspace(Workspace(copy_repo_workspace(tmp_path / "ws")),
                                                           database_url=postgres_url))
    old = store.utcnow() - idempotency.KEEP - timedelta(minutes=1)
    try:
        with tenancy.as_registry(), registry.sessions.begin() as session:
            session.add_all(store.IdempotencyKeyRecord(org_id="default", project_id=project, caller="user:local",
                                                       key=f"k-{project}", fingerprint="f", state="done",
                                                       created_at=old)
                            for project in ("default", "library"))
        monkeypatch.setattr(idempotency, "_last_purge", 0.0)
        with tenancy.acting_as(Tenant("default", "default")):
            idempotency._purge(registry)
        with tenancy.as_registry(), registry.sessions.begin() as session:
            assert session.scalars(select(store.IdempotencyKeyRecord)).all() == []
    finally:
        registry.engine.dispose()
