"""Sandboxes end to end with the registry on PostgreSQL (``MESH_TEST_DATABASE_URL``, a schema of its own):
attempts are written off the event loop there, linked to their runs; reset and expiry as on SQLite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from mcp import Client

from mesh.registry import store

from .conftest import POSTGRES_VARIABLE, postgres_schema
from .test_registry_e2e import Mesh, running_mesh


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    server = os.environ.get(POSTGRES_VARIABLE)
    if not server:
        pytest.skip(f"set {POSTGRES_VARIABLE} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    with postgres_schema(server, "mesh_test") as url:
        yield url


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Mesh]:
    previous = os.environ.get(store.DATABASE_URL_VARIABLE)
    os.environ[store.DATABASE_URL_VARIABLE] = database_url  # the registry process reads it
    try:
        with running_mesh(tmp_path_factory, "sandboxes-pg", ("sandbox",)) as network:
            yield network
    finally:
        if previous is None:
            os.environ.pop(store.DATABASE_URL_VARIABLE, None)
        else:
            os.environ[store.DATABASE_URL_VARIABLE] = previous


async def test_attempts_reset_and_expiry_on_postgres(mesh: Mesh, database_url: str) -> None:
    made = httpx.post(f"{mesh.url}/v1/agents/sandbox/sandboxes", json={
        "required_services": ["petstore"], "services": {"petstore": {"seed": {"/pets": [
            {"id": 1, "name": "Seed", "species": "dog"}]}}}}, timeout=30)
    assert made.status_code == 201, made.text
    sandbox = made.json()
    base = f"{mesh.url}/v1/agents/sandbox/sandboxes/{sandbox['id']}"
    async with Client(sandbox["mcp"]) as client:
        created = await client.call_tool("petstore__createPet", {"body": {"name": "Rex", "species": "dog"}},
                                         meta={"io.mcpmesh/attempt": "pg"})
        assert created.structured_content["status"] == 201
    state = httpx.get(f"{base}/state").json()["services"]["petstore"]["/pets"]
    assert [pet["name"] for pet in state] == ["Seed", "Rex"]
    assert httpx.post(f"{base}/reset", json={}).json()["revision"] == 2
    assert [pet["name"] for pet in httpx.get(f"{base}/state").json()["services"]["petstore"]["/pets"]] == ["Seed"]

    runs = httpx.get(f"{base}/runs").json()["runs"]
    assert [(r["attempt"], r["http_status"], r["revision"]) for r in runs] == [("pg", 201, 1)]
    assert httpx.get(f"{mesh.url}/v1/runs/{runs[0]['run_id']}").json()["provenance"]

    engine = store.connect(database_url)
    try:
        with store.session_factory(engine).begin() as session:
            assert sandbox["id"] in store.expire_sandboxes(session, datetime.fromisoformat(sandbox["expires_at"]))
    finally:
        engine.dispose()
    assert httpx.get(base).json()["status"] == "expired"
    assert httpx.get(f"{base}/runs").json()["runs"] == runs
