"""`mesh up` on this repository's workspace: the whole mesh comes up, works from the CLI, and goes down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from .conftest import free_port, mesh_command, run_mesh


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in found]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def test_mesh_up_runs_every_agent_reports_a_broken_one_and_stops_them_all(repo_workspace: Path, start):
    (repo_workspace / "agents" / "broken.py").write_text("import no_such_module_here\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = start(mesh_command("up", "--workspace", str(repo_workspace), "--port", str(port)))

    deadline = time.monotonic() + 180
    while "mcpmesh is up" not in up.output():  # said only once every agent is admitted or has failed
        assert time.monotonic() < deadline, up.output()
        assert up.popen.poll() is None, up.output()
        time.sleep(0.5)
    report = up.output()
    for name in ("librarian", "researcher", "sandbox"):
        assert report.index(f"mesh: {name} admitted") < report.index("mcpmesh is up")
    assert report.index("mesh: agent broken FAILED") < report.index("mcpmesh is up")
    agents = {a["name"]: a["status"] for a in httpx.get(f"{url}/v1/agents").json()["agents"]}
    assert all(agents.get(name) == "active" for name in ("librarian", "researcher", "sandbox"))
    # Every URL it printed answers (the README's snippets among them).
    printed = set(re.findall(r"http://127\.0\.0\.1:\d+[^\s\"']*", report))
    assert f"{url}/mcp" in printed and len(printed) >= 4
    for address in printed:
        assert httpx.get(address, timeout=10).status_code < 500, address
    assert '"type": "http"' in report  # the VS Code snippet

    called = run_mesh("call", "researcher.brief", "topic=signed tool schemas", "k=2", "--registry", url)
    assert called.returncode == 0, called.stderr
    assert "librarian_run" in called.stdout
    listed = run_mesh("ls", "--registry", url)
    assert listed.returncode == 0 and all(name in listed.stdout for name in ("librarian", "researcher", "sandbox"))
    runs = run_mesh("runs", "--registry", url)
    assert runs.returncode == 0 and "agent:researcher" in runs.stdout
    found = run_mesh("discover", "mock", "an", "OpenAPI", "operation", "--registry", url)
    assert found.returncode == 0 and "sandbox" in found.stdout

    deadline = time.monotonic() + 30
    while "broken" not in up.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    report = up.output()
    assert "broken" in report and "no_such_module_here" in report
    assert "mcpServers" in report  # a ready-to-paste client config

    children = children_of(up.pid)
    assert len(children) >= 4  # the registry and three agents
    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while any(alive(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(child) for child in children)


def test_an_agent_written_while_the_mesh_runs_is_started_once_signed(hello_workspace: Path, start):
    """What `mesh build` relies on in a running `mesh up`: a new, signed module of agents/ is started and admitted."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = start(mesh_command("up", "--workspace", str(hello_workspace), "--port", str(port)))
    deadline = time.monotonic() + 120
    while "mcpmesh is up" not in up.output():
        assert time.monotonic() < deadline and up.popen.poll() is None, up.output()
        time.sleep(0.3)
    state = json.loads((hello_workspace / ".mesh" / "up.json").read_text())
    assert state == {"pid": up.pid, "registry": url}

    (hello_workspace / "agents" / "second.py").write_text(
        'from mesh import Agent\n\nagent = Agent("second", description="A second agent.")\n\n\n'
        '@agent.tool(read_only=True, idempotent=True, open_world=False)\ndef ping() -> str:\n'
        '    """Answer pong."""\n    return "pong"\n')
    signed = run_mesh("sign", "second", "--workspace", str(hello_workspace))
    assert signed.returncode == 0, signed.stderr
    deadline = time.monotonic() + 120
    while "mesh: second admitted" not in up.output():  # the supervisor says so once the registry does
        assert time.monotonic() < deadline, up.output()
        time.sleep(0.3)
    assert "new agent second" in up.output()
    assert httpx.get(f"{url}/v1/agents/second").json()["status"] == "active"
    called = run_mesh("call", "second.ping", "--registry", url)
    assert called.returncode == 0 and "pong" in called.stdout

    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(timeout=60) == 0
    assert not (hello_workspace / ".mesh" / "up.json").exists()
