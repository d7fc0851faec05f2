"""One call through the registry is one trace: script → registry → agent, across a real HTTP hop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO


def test_a_call_through_the_registry_is_a_single_trace(hello_workspace: Path):
    probe = subprocess.run([sys.executable, str(REPO / "tests" / "trace_probe.py"), str(hello_workspace)],
                           capture_output=True, text=True, timeout=180, cwd=REPO)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["invoke"]["result"]["structuredContent"] == {"result": "Hello, T!"}
    trace = report["root_trace"]
    assert report["invoke"]["trace_id"] == trace  # the run record names the trace

    spans = {span["name"]: span for span in report["spans"]}
    registry_span = spans["mesh.invoke"]
    agent_span = spans["tools/call greet"]  # the agent's server span (mcp's own instrumentation)
    assert registry_span["trace_id"] == agent_span["trace_id"] == trace
    assert registry_span["kind"] == "SERVER" and agent_span["kind"] == "SERVER"

    by_id = {span["span_id"]: span for span in report["spans"]}
    ancestors, parent = [], agent_span["parent"]
    while parent in by_id:
        ancestors.append(by_id[parent]["name"])
        parent = by_id[parent]["parent"]
    assert "mesh.invoke" in ancestors and ancestors[-1] == "script"
    assert ancestors[0] == "mesh.forward" and spans["mesh.forward"]["kind"] == "CLIENT"  # the registry's hop
