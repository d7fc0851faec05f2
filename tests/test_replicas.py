"""Several registries on one PostgreSQL database: what one admits, blocks or revokes, the others enforce;
reputation learnt by each is merged without lost updates; one killed leaves the others serving.

Real processes: two `mesh registry run` on their own ports (as on two machines), and `--workers 2`
(one port, two processes). Skipped without ``MESH_TEST_DATABASE_URL``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from mesh.keys import KeyRing
from mesh.registry.auth import issue_token

from .conftest import (
    POSTGRES_VARIABLE,
    Process,
    copy_repo_workspace,
    free_port,
    mesh_command,
    postgres_schema,
    run_mesh,
)
from .test_registry_e2e import ECHO, wait_until

SERVER = os.environ.get(POSTGRES_VARIABLE)
needs_postgres = pytest.mark.skipif(not SERVER, reason=f"set {POSTGRES_VARIABLE} to run replicas on PostgreSQL")


class Replicas:
    """Registries ``a`` and ``b`` on one database schema, agents registered with ``a``."""

    def __init__(self, workspace: Path, logs: Path, database: str):
        self.workspace, self.logs, self.env = workspace, logs, {"MESH_DATABASE_URL": database}
        self.urls: dict[str, str] = {}
        self.processes: dict[str, Process] = {}

    def start_registry(self, name: str, *extra: str) -> str:
        port = free_port()
        url = self.urls[name] = f"http://127.0.0.1:{port}"
        process = Process(mesh_command("registry", "run", "--workspace", str(self.workspace), "--port", str(port),
                                       "--trust-local-keys", *extra), self.logs / f"registry-{name}.log", self.env)
        self.processes[name] = process
        process.wait_http(f"{url}/healthz")
        return url

    def start_agent(self, name: str) -> None:
        port = free_port()
        process = Process(mesh_command("agent", "run", name, "--workspace", str(self.workspace), "--port", str(port),
                                       "--registry", self.urls["a"]), self.logs / f"{name}.log")
        self.processes[name] = process
        process.wait_http(f"http://127.0.0.1:{port}/healthz")

    def agent(self, replica: str, name: str) -> dict:
        answer = httpx.get(f"{self.urls[replica]}/v1/agents/{name}", timeout=10)
        return answer.json() if answer.status_code == 200 else {"status": None}

    def invoke(self, replica: str, agent: str, tool: str, arguments: dict, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.urls[replica]}/v1/invoke", json={"agent": agent, "tool": tool,
                                                                   "arguments": arguments}, timeout=30, **kwargs)

    def close(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    if not SERVER:
        pytest.skip(f"set {POSTGRES_VARIABLE} to run replicas on PostgreSQL")
    workspace = copy_repo_workspace(tmp_path_factory.mktemp("replicas") / "ws")
    (workspace / "agents" / "echo.py").write_text(ECHO)
    (workspace / "agents" / "marked.py").write_text(ECHO.replace('Agent("echo"', 'Agent("marked"'))
    config = workspace / "registry" / "registry.toml"
    # A long key cache: a revocation must reach the other replica by notification, not by the cache expiring.
    config.write_text(config.read_text().replace("[registry]\n", "[registry]\ntrust_ttl = 600\n", 1))
    with postgres_schema(SERVER, "mesh_replicas") as database:
        mesh = Replicas(workspace, tmp_path_factory.mktemp("logs"), database)
        try:
            mesh.start_registry("a")
            mesh.start_registry("b")
            for name in ("echo", "marked"):
                mesh.start_agent(name)
                # Admitted by a; b hears of it (pins, endpoint, discovery) without anyone telling it directly.
                wait_until(lambda n=name: mesh.agent("b", n)["status"] == "active", what=f"b to know {name}")
            yield mesh
        finally:
            mesh.close()


def test_an_agent_admitted_by_one_replica_is_callable_and_discoverable_through_the_other(replicas: Replicas):
    answer = replicas.invoke("b", "echo", "echo", {"text": "via b"})
    assert answer.status_code == 200, answer.text
    hits = httpx.get(f"{replicas.urls['b']}/v1/discover", params={"q": "return the text unchanged"}).json()
    assert any(hit["agent"] == "echo" and hit["tool"] == "echo" for hit in hits["results"])


def test_no_reputation_update_is_lost_between_replicas(replicas: Replicas):
    def calls(replica: str) -> int:
        return replicas.agent(replica, "echo")["reputation"]["calls"]

    wait_until(lambda: calls("a") == calls("b"), timeout=10, what="both replicas to agree before the load")
    before = calls("a")
    total = 300

    def one(i: int) -> int:
        return replicas.invoke("ab"[i % 2], "echo", "echo", {"text": f"call {i}"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(total)))
    assert statuses.count(200) == total
    # Each replica saves what it learnt once a second and tells the other; both end with every call.
    wait_until(lambda: calls("a") == calls("b") == before + total, timeout=15,
               what=f"both replicas to count {before + total} calls (a: {calls('a')}, b: {calls('b')})")


def test_a_revocation_made_in_one_replica_is_enforced_by_the_other(replicas: Replicas):
    key = KeyRing.open(replicas.workspace / ".mesh" / "keys" / "marked").active()
    as_marked = {"authorization": f"Bearer {issue_token('marked', key)}"}
    accepted = replicas.invoke("b", "echo", "echo", {"text": "from marked"}, headers=as_marked)
    assert accepted.status_code == 200, accepted.text  # b now holds marked's key and this token in its caches
    assert replicas.invoke("b", "marked", "echo", {"text": "still fine"}).status_code == 200

    revoked = httpx.post(f"{replicas.urls['a']}/v1/agents/marked/keys/{key.kid}/revoke",
                         json={"reason": "test"}, timeout=10)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked", revoked.text

    def b_refuses_the_token() -> bool:
        return replicas.invoke("b", "echo", "echo", {"text": "again"}, headers=as_marked).status_code == 401

    wait_until(b_refuses_the_token, timeout=10, what="b to refuse a token signed by the revoked key")
    blocked = replicas.invoke("b", "marked", "echo", {"text": "blocked?"})
    assert blocked.status_code == 409 and blocked.json()["type"].endswith("/tool-blocked"), blocked.text
    assert replicas.agent("b", "marked")["tools"][0]["status"] == "blocked"


def test_a_retry_with_an_idempotency_key_on_the_other_replica_gets_the_first_answer(replicas: Replicas):
    key = {"Idempotency-Key": "replicas-" + os.urandom(8).hex()}
    first = replicas.invoke("a", "echo", "echo", {"text": "once"}, headers=key)
    retry = replicas.invoke("b", "echo", "echo", {"text": "once"}, headers=key)
    assert first.status_code == retry.status_code == 200, retry.text
    assert retry.json()["run_id"] == first.json()["run_id"] and retry.headers["idempotent-replayed"] == "true"


def test_a_replica_killed_under_load_leaves_the_other_serving_and_loses_no_acknowledged_run(replicas: Replicas):
    acknowledged: list[str] = []
    failed_on_a = 0
    killed = threading.Event()
    lock = threading.Lock()

    def load(worker: int) -> None:
        nonlocal failed_on_a
        with httpx.Client(timeout=30) as client:
            for i in range(60):
                replica = "ab"[(worker + i) % 2]
                try:
                    answer = client.post(f"{replicas.urls[replica]}/v1/invoke",
                                         json={"agent": "echo", "tool": "echo", "arguments": {"text": f"{worker}/{i}"}})
                except httpx.HTTPError:
                    assert replica == "a" and killed.is_set(), f"b failed a call: {replica}"
                    with lock:
                        failed_on_a += 1
                    continue
                assert answer.status_code == 200, answer.text
                with lock:
                    acknowledged.append(answer.json()["run_id"])

    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(load, worker) for worker in range(6)]
        wait_until(lambda: len(acknowledged) >= 60, timeout=60, what="the load to be under way")
        killed.set()
        os.killpg(replicas.processes["a"].pid, signal.SIGKILL)
        for future in running:
            future.result()
    assert replicas.processes["a"].popen.wait(timeout=10) == -signal.SIGKILL
    assert failed_on_a > 0  # a really died under load
    assert replicas.invoke("b", "echo", "echo", {"text": "still here"}).status_code == 200
    with httpx.Client(timeout=10) as client:
        lost = [run for run in acknowledged if client.get(f"{replicas.urls['b']}/v1/runs/{run}").status_code != 200]
    assert len(acknowledged) > 60 and lost == []


@needs_postgres
def test_workers_share_one_port(tmp_path: Path):
    workspace = copy_repo_workspace(tmp_path / "ws")
    assert SERVER is not None
    with postgres_schema(SERVER, "mesh_workers") as database:
        port = free_port()
        process = Process(mesh_command("registry", "run", "--workspace", str(workspace), "--port", str(port),
                                       "--workers", "2"), tmp_path / "registry.log", {"MESH_DATABASE_URL": database})
        try:
            process.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=240)  # two registries starting at once
            seen: set[str] = set()
            deadline = time.monotonic() + 240  # the other worker may still be starting
            while len(seen) < 2 and time.monotonic() < deadline:
                # A new connection each time: the kernel hands each to one of the listening workers.
                seen.add(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["replica"])
            assert len(seen) == 2, f"only {seen} answered:\n{process.output()}"
        finally:
            process.stop()


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path):
    workspace = copy_repo_workspace(tmp_path / "ws")
    refused = run_mesh("registry", "run", "--workspace", str(workspace), "--port", str(free_port()),
                       "--workers", "2")
    assert refused.returncode == 1
    assert "--workers 2 needs a PostgreSQL database" in refused.stderr
    assert "Traceback" not in refused.stderr
    refused = run_mesh("up", "--workspace", str(workspace), "--port", str(free_port()), "--workers", "3")
    assert refused.returncode == 1 and "--workers 3 needs a PostgreSQL database" in refused.stderr


@needs_postgres
def test_replicas_saving_reputation_at_once_lose_no_outcome(tmp_path: Path):
    """In one process, no listener: each save adds its outcomes to what the database holds, under a row lock,
    whatever the other replica saved meanwhile (and even when both save at the same moment)."""
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry
    from mesh.registry.reputation import Outcome
    from mesh.workspace import Workspace

    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    assert SERVER is not None
    with postgres_schema(SERVER, "mesh_merge") as database:
        a, b = (Registry.open(RegistryConfig(workspace=workspace, database_url=database)) for _ in range(2))
        try:
            for _round in range(20):
                for registry, status in ((a, "ok"), (b, "error")):
                    for _ in range(5):
                        registry.learn("echo", "echo", Outcome(status, latency_ms=3.0))
                with ThreadPoolExecutor(2) as pool:  # both save at once: one waits for the other's row lock
                    for saved in [pool.submit(a.save_reputations), pool.submit(b.save_reputations)]:
                        saved.result()
            fresh = Registry.open(RegistryConfig(workspace=workspace, database_url=database))
            assert fresh.reputation("echo").calls == fresh.reputation("echo", "echo").calls == 200
            assert 0.1 < fresh.reputation("echo").success_rate() < 0.9  # both replicas' outcomes, not one's
            fresh.engine.dispose()
        finally:
            a.engine.dispose()
            b.engine.dispose()


@needs_postgres
def test_a_change_too_big_to_name_in_one_notification_says_everything(tmp_path: Path):
    """PostgreSQL refuses a notification over 8000 bytes, and the transaction with it: a flush naming hundreds
    of reputations must still commit, and tell the others to reload everything."""
    import json

    import psycopg

    from mesh.registry import replicas as replication
    from mesh.registry import store, tenancy
    from mesh.registry.config import RegistryConfig
    from mesh.registry.node import Registry
    from mesh.registry.reputation import Outcome, Reputation
    from mesh.workspace import Workspace

    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    assert SERVER is not None
    with postgres_schema(SERVER, "mesh_notify") as database:
        registry = Registry.open(RegistryConfig(workspace=workspace, database_url=database))
        try:
            with psycopg.connect(replication.conninfo(registry.engine), autocommit=True) as listener:
                listener.execute(f'LISTEN "{registry.channel}"')
                reputation = Reputation()
                reputation.learn_one(Outcome("ok", latency_ms=1.0))
                with tenancy.as_registry(), registry.sessions.begin() as session:  # one flush naming 400
                    session.add_all(store.ReputationRecord(agent="echo", tool=f"tool_with_a_longish_name_{tool}",
                                                           state=reputation.to_state(), score=reputation.score())
                                    for tool in range(400))
                heard = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
            assert heard == [{"origin": registry.replica_id, "everything": True}]
            fresh = Registry.open(RegistryConfig(workspace=workspace, database_url=database))
            assert len(fresh.reputations) == 400  # the transaction committed
            fresh.engine.dispose()
        finally:
            registry.engine.dispose()
