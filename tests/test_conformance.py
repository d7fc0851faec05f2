"""The official MCP conformance suite against a real agent process, on both protocol versions.

The fixtures agent (tests/conformance/agents/everything.py) is written with the public Agent API only.
The suite (`@modelcontextprotocol/conformance`, npm) and the node 22 it needs live in the git-ignored
`.mesh/npm/`, installed by `.ci/run`; without them these tests are skipped. `run_conformance` takes any
MCP URL, so the registry's per-agent endpoint (`/agents/{name}/mcp`) can be checked the same way.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, Process, free_port, mesh_command

NPM = REPO / ".mesh" / "npm" / "node_modules"
NODE = NPM / "node" / "bin" / "node"
SUITES = {  # the suite's versions: 0.1.16 is the last of the 2025-11-25 line, alpha.12 knows 2026-07-28
    "0.1.16": NPM / "conformance-legacy" / "dist" / "index.js",
    "0.2.0-alpha.12": NPM / "@modelcontextprotocol" / "conformance" / "dist" / "index.js",
}
FIXTURES = Path(__file__).parent / "conformance"
INSTALL = ("npm install --prefix .mesh/npm node@22 conformance-legacy@npm:@modelcontextprotocol/conformance@0.1.16 "
           "@modelcontextprotocol/conformance@0.2.0-alpha.12")

pytestmark = pytest.mark.skipif(
    not (NODE.exists() and all(path.exists() for path in SUITES.values())),
    reason=f"the MCP conformance suite is not installed under .mesh/npm (.ci/run does it: {INSTALL})",
)


def run_conformance(url: str, spec_version: str, *, suite: str = "0.2.0-alpha.12",
                    output: Path, timeout: float = 300) -> dict[str, Counter[str]]:
    """Run every server scenario of ``suite`` at ``spec_version`` against the MCP endpoint ``url``.

    Returns scenario name -> how many of its checks ended in each status (SUCCESS, FAILURE, WARNING,
    SKIPPED, INFO). 0.1.16 has no --spec-version: it always speaks 2025-11-25.
    """
    args = [str(NODE), str(SUITES[suite]), "server", "--url", url, "--suite", "all", "-o", str(output)]
    if suite != "0.1.16":
        args += ["--spec-version", spec_version]
    finished = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    results: dict[str, Counter[str]] = {}
    for checks in sorted(output.glob("server-*/checks.json")):
        scenario = re.sub(r"^server-|-\d{4}-\d{2}-\d{2}T.*$", "", checks.parent.name)
        results[scenario] = Counter(check["status"] for check in json.loads(checks.read_text()))
    assert results, f"the suite reported no scenario:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}"
    return results


def failures(results: dict[str, Counter[str]]) -> dict[str, int]:
    """Scenarios with a failed check, except tasks-* (mcp 2.3 has no tasks)."""
    return {name: counts["FAILURE"] for name, counts in results.items()
            if counts["FAILURE"] and not name.startswith("tasks-")}


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory):
    """The fixtures agent as a real process on loopback, signing a local manifest (--dev)."""
    workspace = tmp_path_factory.mktemp("conformance") / "ws"
    shutil.copytree(FIXTURES, workspace, ignore=shutil.ignore_patterns("__pycache__", ".mesh"))
    port = free_port()
    process = Process(mesh_command("agent", "run", "everything", "--workspace", str(workspace), "--port", str(port),
                                   "--dev"), workspace.parent / "agent.log")
    try:
        process.wait_http(f"http://127.0.0.1:{port}/healthz")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("suite", "spec_version", "at_least"),
    [("0.1.16", "2025-11-25", 32), ("0.2.0-alpha.12", "2025-11-25", 33), ("0.2.0-alpha.12", "2026-07-28", 40)],
)
def test_every_server_scenario_passes(everything: str, tmp_path: Path, suite: str, spec_version: str, at_least: int):
    results = run_conformance(everything, spec_version, suite=suite, output=tmp_path / "results")
    assert len(results) >= at_least, sorted(results)
    assert failures(results) == {}
    assert sum(counts["SUCCESS"] for counts in results.values()) > len(results)  # checks ran, not just skips




@pytest.fixture(scope="module")
def through_registry(tmp_path_factory: pytest.TempPathFactory):
    """A registry with the fixtures agent registered (--dev), both real processes: the registry's face of
    the agent, ``/agents/everything/mcp``, is what the suite then talks to."""
    workspace = tmp_path_factory.mktemp("conformance-registry") / "ws"
    shutil.copytree(FIXTURES, workspace, ignore=shutil.ignore_patterns("__pycache__", ".mesh"))
    shutil.copytree(REPO / "registry" / "policies", workspace / "registry" / "policies")  # the shipped policy
    with (workspace / "registry" / "registry.toml").open("a") as config:  # no fixture says it is read-only,
        config.write('\n[policy]\nallow_destructive = ["everything.*"]\n')  # so MCP deems each destructive
    registry_port, agent_port = free_port(), free_port()
    registry = f"http://127.0.0.1:{registry_port}"
    processes = [Process(mesh_command("registry", "run", "--workspace", str(workspace), "--port", str(registry_port),
                                      "--trust-local-keys"), workspace.parent / "registry.log")]
    try:
        processes[0].wait_http(f"{registry}/healthz")
        processes.append(Process(mesh_command("agent", "run", "everything", "--workspace", str(workspace), "--port",
                                              str(agent_port), "--dev", "--registry", registry),
                                 workspace.parent / "agent.log"))
        deadline = time.monotonic() + 90
        while httpx.get(f"{registry}/v1/agents/everything").json().get("status") != "active":
            assert time.monotonic() < deadline, processes[1].output() + processes[0].output()
            time.sleep(0.3)
        yield f"{registry}/agents/everything/mcp"
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.mark.parametrize(
    ("suite", "spec_version", "at_least"),
    [("0.1.16", "2025-11-25", 32), ("0.2.0-alpha.12", "2025-11-25", 33), ("0.2.0-alpha.12", "2026-07-28", 40)],
)
def test_every_server_scenario_passes_through_the_registry(through_registry: str, tmp_path: Path, suite: str,
                                                           spec_version: str, at_least: int):
    """The same suite against the agent as the registry carries it: every request through the call path."""
    results = run_conformance(through_registry, spec_version, suite=suite, output=tmp_path / "results")
    assert len(results) >= at_least, sorted(results)
    assert failures(results) == {}
    assert sum(counts["SUCCESS"] for counts in results.values()) > len(results)
