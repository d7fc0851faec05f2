"""What the benchmarks share: a fresh-clone copy of this repository's workspace, percentiles, processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
WORKSPACE_PARTS = ("agents", "tools", "registry", "manifests", "docs", "README.md")


def fresh_workspace() -> Path:
    """A temporary copy of the workspace without .mesh/, as a fresh clone has it."""
    workspace = Path(tempfile.mkdtemp()) / "ws"
    for part in WORKSPACE_PARTS:
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, workspace / part)
    return workspace


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_mesh_process(args: list[str], health: str) -> subprocess.Popen:
    """Run ``mesh ARGS`` in its own process group and wait until ``health`` answers 200."""
    return start_process([sys.executable, "-m", "mesh.cli", *args], health)


def start_process(command: list[str], health: str) -> subprocess.Popen:
    """Run ``command`` in its own process group and wait until ``health`` answers 200."""
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(600):
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{health} did not come up")
