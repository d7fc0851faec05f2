"""Shared fixtures: workspaces in temporary folders and real processes on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
WORKSPACE_PARTS = ("agents", "tools", "registry", "manifests", "docs", "README.md")


def mesh_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mesh.cli", *args]


def run_mesh(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``mesh`` command the way a user does and capture what it says."""
    return subprocess.run(mesh_command(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server process started by a test, stopped by its process id when the test ends."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_http(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited with {self.popen.returncode}:\n{self.output()}")
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} did not answer within {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Process]]:
    """Start servers with ``start(args)``; every one is stopped at the end of the test."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def start(processes: list[Process], tmp_path: Path):
    def start_process(args: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(args, tmp_path / f"process-{len(processes)}.log", env)
        processes.append(process)
        return process

    return start_process


@pytest.fixture
def agent_server(start):
    """``agent_server(workspace, name, *extra)`` runs ``mesh agent run`` and returns its base URL."""

    def run(workspace: Path, name: str, *extra: str) -> str:
        port = free_port()
        process = start(mesh_command("agent", "run", name, "--workspace", str(workspace), "--port", str(port), *extra))
        base = f"http://127.0.0.1:{port}"
        process.wait_http(f"{base}/healthz")
        return base

    return run


@pytest.fixture
def hello_workspace(tmp_path: Path) -> Path:
    """A workspace made by ``mesh init`` and signed by ``mesh sign``, as a new user would."""
    workspace = tmp_path / "ws"
    assert run_mesh("init", str(workspace)).returncode == 0
    signed = run_mesh("sign", "--workspace", str(workspace))
    assert signed.returncode == 0, signed.stderr
    return workspace


def copy_repo_workspace(workspace: Path) -> Path:
    """Copy this repository's own workspace to ``workspace``, as a fresh clone has it (no .mesh/)."""
    workspace.mkdir(parents=True)
    for part in WORKSPACE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, workspace / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, workspace / part)
    return workspace


@pytest.fixture
def repo_workspace(tmp_path: Path) -> Path:
    return copy_repo_workspace(tmp_path / "repo")


POSTGRES_VARIABLE = "MESH_TEST_DATABASE_URL"  # a PostgreSQL server for the tests that need one; else they skip


@contextmanager
def postgres_schema(server: str, prefix: str = "mesh_test") -> Iterator[str]:
    """A fresh, empty schema on PostgreSQL ``server``, as a URL whose connections use it; dropped after."""
    import uuid

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from mesh.registry import store

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = store.connect(server)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(server).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file under a fresh ``.mesh/``, or a fresh PostgreSQL schema (skipped
    without ``MESH_TEST_DATABASE_URL``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / '.mesh' / 'registry.db'}"
        return
    server = os.environ.get(POSTGRES_VARIABLE)
    if not server:
        pytest.skip(f"set {POSTGRES_VARIABLE} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    with postgres_schema(server) as url:
        yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL schema alone (skipped without ``MESH_TEST_DATABASE_URL``), for what only it has."""
    server = os.environ.get(POSTGRES_VARIABLE)
    if not server:
        pytest.skip(f"set {POSTGRES_VARIABLE} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    with postgres_schema(server) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Any]:
    """The registry's store on that database, migrated to the newest revision, connected as the URL's user
    (the tables' owner, a superuser on the test server): the store's own rules, which row-level security
    does not stand behind here. A registry opened on it (``Registry.open``) serves under row-level security
    on PostgreSQL, as a user's would (``tests/test_tenancy_registry.py``)."""
    from mesh.registry import store

    engine = store.connect(database_url)
    store.migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Any) -> Any:
    from mesh.registry import store

    return store.session_factory(engine)


def migrate_to(engine: Any, revision: str, *, downgrade: bool = False) -> None:
    """Alembic up (or down) to ``revision`` on ``engine`` in one transaction: a database as an older release
    left it, for the upgrade tests."""
    from alembic import command
    from alembic.config import Config

    from mesh.registry import store

    config = Config()
    config.set_main_option("script_location", str(store.MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, revision)
