"""An acknowledged call is on disk: a registry killed with SIGKILL under concurrent load loses none of the
runs it answered, though calls that finish together commit together (``registry/runlog.py``).

On SQLite and, when ``MESH_TEST_DATABASE_URL`` names one, on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import anyio
import httpx
import pytest

from .conftest import POSTGRES_VARIABLE, postgres_schema
from .test_registry_e2e import ECHO, running_mesh


@pytest.fixture(params=["sqlite", "postgresql"])
def database_setting(request: pytest.FixtureRequest):
    """registry.toml's ``[registry]`` line for the database: none (SQLite under .mesh/), or a fresh schema."""
    if request.param == "sqlite":
        yield ""
        return
    server = os.environ.get(POSTGRES_VARIABLE)
    if not server:
        pytest.skip(f"set {POSTGRES_VARIABLE} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    with postgres_schema(server) as url:
        yield f'database_url = "{url}"'


def test_a_registry_killed_under_load_loses_no_acknowledged_run(tmp_path_factory, database_setting: str):
    with running_mesh(tmp_path_factory, "durability", ["echo"], sources={"echo": ECHO},
                      settings={"registry": database_setting}) as mesh:
        acknowledged: list[str] = []
        stop = threading.Event()

        async def load() -> None:
            async def client(number: int) -> None:
                async with httpx.AsyncClient(timeout=10) as http:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        try:
                            answer = await http.post(f"{mesh.url}/v1/invoke", json={
                                "agent": "echo", "tool": "echo", "arguments": {"text": f"{number}-{n}"}})
                        except httpx.HTTPError:  # the registry is gone: this call was never acknowledged
                            return
                        if answer.status_code == 200:
                            acknowledged.append(answer.json()["run_id"])

            async with anyio.create_task_group() as group:
                for number in range(8):
                    group.start_soon(client, number)

        worker = threading.Thread(target=anyio.run, args=(load,))
        worker.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        registry = mesh.processes.pop("registry")
        os.killpg(registry.pid, signal.SIGKILL)  # mid-load: calls are in flight and commits may be pending
        stop.set()
        worker.join(timeout=60)
        assert len(acknowledged) >= 150, "the load never got going"

        mesh.start_registry()
        missing = [run_id for run_id in acknowledged
                   if httpx.get(f"{mesh.url}/v1/runs/{run_id}").status_code != 200]
        assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged runs were lost"
