"""The supervisor behind `mesh up`, driving stand-in processes: tiny http.server programs with a /healthz.

The stand-ins act out what real children do — come up, fail to import, ignore SIGTERM, leave a worker
behind, never answer — so starting, reporting and stopping every process by its pid are really exercised.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.supervisor import Supervisor, desktop_config, stdio_config
from mesh.workspace import Workspace

from .conftest import REPO, free_port

STAND_IN = r"""
import http.server, os, pathlib, signal, subprocess, sys, time
name, port, piddir = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
(piddir / f"{name}.pid").write_text(str(os.getpid()))
if name == "broken":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("mesh: agents/broken.py failed to import (line 1): NameError: name 'oops' is not defined", file=sys.stderr)
    sys.exit(1)
if name == "silent":
    time.sleep(600)
if name == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if name == "forks":
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    worker = subprocess.Popen([sys.executable, "-c", deaf])
    (piddir / "forks-worker.pid").write_text(str(worker.pid))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "ok"}'
        if name == "registry" and self.path == "/v1/agents":  # every agent that started is "admitted"
            agents = [{"name": p.stem, "status": "active"} for p in piddir.glob("*.pid") if p.stem != "registry"]
            body = ('{"agents": %s}' % str(agents).replace("'", '"')).encode()
        self.send_response(200 if self.path in ("/healthz", "/v1/agents") else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", port), Health)
print(f"{name} listening on {port}", flush=True)
server.serve_forever()
"""


class StandInMesh(Supervisor):
    """A Supervisor whose registry and agents are stand-ins that write their pid into ``piddir``."""

    def __init__(self, workspace: Workspace, piddir: Path, **options):
        options.setdefault("out", io.StringIO())
        options.setdefault("err", io.StringIO())
        super().__init__(workspace, **options)
        self.piddir = piddir

    def registry_command(self) -> list[str]:
        return [sys.executable, "-c", STAND_IN, "registry", str(self.port), str(self.piddir)]

    def agent_command(self, name: str, port: int) -> list[str]:
        return [sys.executable, "-c", STAND_IN, name, str(port), str(self.piddir)]


def make_workspace(root: Path, *agents: str) -> Workspace:
    (root / "agents").mkdir(parents=True)
    for name in agents:
        (root / "agents" / f"{name}.py").write_text("# a stand-in: the supervisor never imports agents\n")
    (root / "pids").mkdir()
    return Workspace(root)


def recorded_pids(piddir: Path) -> dict[str, int]:
    return {path.stem: int(path.read_text()) for path in piddir.glob("*.pid")}


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting for a reaper that never comes counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_all_gone(pids: dict[str, int], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids.values()):
        time.sleep(0.05)
    assert not {name: pid for name, pid in pids.items() if alive(pid)}


@pytest.fixture
def mesh_of(tmp_path: Path):
    """``mesh_of(*agents, **options)`` builds a StandInMesh; every one built is stopped at the end."""
    built: list[StandInMesh] = []

    def build(*agents: str, **options) -> StandInMesh:
        ws = make_workspace(tmp_path / f"ws{len(built)}", *agents)
        options = {"port": free_port(), "ready_timeout": 20, "grace": 5, **options}
        supervisor = StandInMesh(ws, ws.root / "pids", **options)
        built.append(supervisor)
        return supervisor

    yield build
    for supervisor in built:
        supervisor.stop()


# -- in process -------------------------------------------------------------------------------------------


def test_a_broken_agent_is_reported_and_the_rest_of_the_mesh_comes_up(mesh_of):
    mesh = mesh_of("broken", "good")
    assert mesh.start()
    good, broken = (next(a for a in mesh.agents if a.name == n) for n in ("good", "broken"))
    assert good.ready and good.failure is None
    assert not broken.ready
    assert broken.failure == (
        "agents/broken.py failed to import (line 1): NameError: name 'oops' is not defined (exit 1)")

    logs = mesh.console.stream.getvalue()
    assert "[broken] Traceback (most recent call last):" in logs
    assert "[good] good listening on" in logs
    assert "mesh: agent broken FAILED: agents/broken.py failed to import" in logs

    summary = mesh.summary()
    assert f"registry  {mesh.registry_url}   MCP {mesh.registry_url}/mcp" in summary
    assert f"good      {good.base_url}/mcp" in summary
    assert "broken    FAILED: agents/broken.py failed to import" in summary
    assert '"mcp-remote",' in summary and '"--stdio",' in summary

    pids = recorded_pids(mesh.piddir)
    assert set(pids) == {"registry", "good", "broken"}
    mesh.stop()
    assert_all_gone(pids)


def test_stop_kills_what_ignores_sigterm_and_what_a_child_left_in_its_group(mesh_of):
    mesh = mesh_of("stubborn", "forks", grace=1)
    assert mesh.start()
    assert all(agent.ready for agent in mesh.agents)
    pids = recorded_pids(mesh.piddir)
    assert set(pids) == {"registry", "stubborn", "forks", "forks-worker"}

    began = time.monotonic()
    mesh.stop()
    assert time.monotonic() - began < 8
    assert_all_gone(pids)


def test_an_agent_that_never_answers_is_reported_and_stopped(mesh_of):
    mesh = mesh_of("silent", "good", ready_timeout=2, grace=1)
    assert mesh.start()
    silent = next(a for a in mesh.agents if a.name == "silent")
    assert silent.failure == f"no answer at {silent.base_url}/healthz within 2s"
    assert not silent.alive
    assert next(a for a in mesh.agents if a.name == "good").ready


def test_a_second_mesh_on_a_busy_port_refuses_to_start(mesh_of):
    first = mesh_of("good")
    assert first.start()
    second = mesh_of(port=first.port)
    assert not second.start()
    assert second.registry is None
    assert f"something already answers at {first.registry_url}" in second.console.stream.getvalue()


def test_the_default_commands_run_the_mesh_cli(tmp_path: Path):
    ws = make_workspace(tmp_path / "ws")
    supervisor = Supervisor(ws, port=7301, python="/venv/bin/python", agent_flags=["--dev"])
    assert supervisor.registry_command() == [
        "/venv/bin/python", "-m", "mesh.cli", "registry", "run", "--workspace", str(ws.root),
        "--host", "127.0.0.1", "--port", "7301", "--trust-local-keys"]
    assert supervisor.agent_command("librarian", 5001) == [
        "/venv/bin/python", "-m", "mesh.cli", "agent", "run", "librarian", "--workspace", str(ws.root),
        "--host", "127.0.0.1", "--port", "5001", "--registry", "http://127.0.0.1:7301", "--dev"]
    assert Supervisor(ws, host="0.0.0.0", port=7300).registry_url == "http://127.0.0.1:7300"


def test_client_configs():
    assert desktop_config("http://127.0.0.1:7300/mcp") == {
        "mcpServers": {"mcpmesh": {"command": "npx", "args": ["-y", "mcp-remote", "http://127.0.0.1:7300/mcp"]}}}
    assert stdio_config("librarian", Path("/ws"), "/venv/bin/mesh") == {"mcpServers": {"librarian": {
        "command": "/venv/bin/mesh", "args": ["agent", "run", "librarian", "--stdio", "--workspace", "/ws"]}}}


# -- as a process, signalled the way a terminal or a service manager does -------------------------------


def run_stand_in_mesh(root: str, port: int, grace: float) -> int:
    """What the supervisor process below runs: ``up()`` with stand-ins, printing to the real streams."""
    ws = Workspace(root)
    return StandInMesh(ws, ws.root / "pids", port=port, grace=grace, ready_timeout=20,
                       out=sys.stdout, err=sys.stderr).up()


def start_supervisor(tmp_path: Path, *agents: str, grace: float = 5) -> tuple[subprocess.Popen, Path, Path]:
    ws = make_workspace(tmp_path / "ws", *agents)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    code = f"import sys; from tests.test_supervisor import run_stand_in_mesh; " \
           f"sys.exit(run_stand_in_mesh({str(ws.root)!r}, {free_port()}, {grace}))"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=stdout, stderr=stderr,
                                   start_new_session=True)
    deadline = time.monotonic() + 30
    while "mcpmesh is up" not in out.read_text():
        assert process.poll() is None, err.read_text()
        assert time.monotonic() < deadline, err.read_text()
        time.sleep(0.05)
    return process, ws.root / "pids", err


def finish(process: subprocess.Popen, timeout: float = 20) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_every_child_and_exits_zero(tmp_path: Path, signum: int):
    process, piddir, _ = start_supervisor(tmp_path, "good", "broken", "forks")
    pids = recorded_pids(piddir)
    assert set(pids) == {"registry", "good", "broken", "forks", "forks-worker"}
    assert alive(pids["good"]) and alive(pids["registry"])

    os.kill(process.pid, signum)
    assert finish(process) == 0
    assert_all_gone(pids)


def test_a_second_ctrl_c_skips_the_grace_period(tmp_path: Path):
    process, piddir, _ = start_supervisor(tmp_path, "stubborn", grace=60)
    pids = recorded_pids(piddir)
    os.kill(process.pid, signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None  # waiting for the stubborn agent's grace period
    began = time.monotonic()
    os.kill(process.pid, signal.SIGINT)
    assert finish(process, timeout=10) == 0
    assert time.monotonic() - began < 5
    assert_all_gone(pids)


def test_the_mesh_stops_when_its_registry_dies(tmp_path: Path):
    process, piddir, err = start_supervisor(tmp_path, "good")
    pids = recorded_pids(piddir)
    os.kill(pids["registry"], signal.SIGKILL)
    assert finish(process) == 1
    assert_all_gone(pids)
    assert "the registry stopped (killed by SIGKILL); stopping the mesh" in err.read_text()


def test_the_summary_is_valid_json_to_paste(tmp_path: Path):
    process, _, _ = start_supervisor(tmp_path, "good")
    os.kill(process.pid, signal.SIGTERM)
    finish(process)
    text = (tmp_path / "out.txt").read_text()
    blocks = [json.loads(block) for block in _json_blocks(text)]
    assert [list(b["mcpServers"]) for b in blocks] == [["mcpmesh"], ["good"]]


def _json_blocks(text: str) -> list[str]:
    """The indented JSON documents in ``text``: from a line "{" to the next line "}"."""
    blocks, current = [], None
    for line in text.splitlines():
        if line == "{":
            current = [line]
        elif current is not None:
            current.append(line)
            if line == "}":
                blocks.append("\n".join(current))
                current = None
    return blocks
