"""Where the registry's CPU goes per proxied call: a profile of its hot path, by component.

    python bench/profile_registry.py [--calls 1000] [--path mcp|invoke] [--top 25]

Runs a registry under cProfile (timed by the process's CPU clock, so waiting costs nothing) and the
``researcher`` agent as real processes on 127.0.0.1, makes ``--calls`` sequential calls to the no-op
``text_stats`` through ``/mcp`` (or ``POST /v1/invoke``), stops the registry, and prints each
component's own CPU milliseconds per call: a module of ``mesh`` by name, a library by its package, the
standard library as one. Start-up, admission and warm-up calls are left out (the profile is reset by a
``SIGUSR1`` after warm-up), so the table is the steady state of the call path.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import signal
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio
import httpx
from bench_registry import ARGUMENTS, sequential, sequential_invoke
from common import fresh_workspace, start_mesh_process, start_process

from mesh.serving import free_port

STDLIB = sysconfig.get_paths()["stdlib"]


def component(filename: str) -> str:
    """``mesh.registry.proxy``, a package name such as ``starlette``, ``python`` for the standard library."""
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        package = path.split("/site-packages/", 1)[1].split("/", 1)[0]
        return package.removesuffix(".py").split(".")[0]
    if "/mesh/" in path:
        module = path.rsplit("/mesh/", 1)[1].removesuffix(".py").replace("/", ".")
        return f"mesh.{module}"
    if path.startswith(STDLIB) or path.startswith("<frozen"):
        return "python (stdlib)"
    return "built-ins (C)" if path == "~" else path


def profiled_registry(output: str) -> None:
    """Run ``mesh registry run`` in this process under a CPU-time profile; SIGUSR1 resets it (end of
    warm-up), a normal shutdown (SIGINT) writes it to ``output``."""
    from mesh.cli import main

    profile = cProfile.Profile(time.process_time)
    signal.signal(signal.SIGUSR1, lambda *_: (profile.disable(), profile.clear(), profile.enable()))
    profile.enable()
    try:
        main(sys.argv[1:])
    finally:
        profile.disable()
        profile.dump_stats(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--path", choices=["mcp", "invoke"], default="mcp")
    parser.add_argument("--top", type=int, default=25, help="components to list")
    args = parser.parse_args()

    workspace = fresh_workspace()
    output = Path(tempfile.mkdtemp()) / "registry.prof"
    registry_port, agent_port = free_port(), free_port()
    registry, agent = f"http://127.0.0.1:{registry_port}", f"http://127.0.0.1:{agent_port}"
    command = [sys.executable, __file__, "--profiled", str(output), "registry", "run", "--workspace",
               str(workspace), "--port", str(registry_port), "--trust-local-keys"]
    processes = [start_process(command, f"{registry}/healthz")]
    try:
        processes.append(start_mesh_process(["agent", "run", "researcher", "--workspace", str(workspace), "--port",
                                             str(agent_port), "--registry", registry], f"{agent}/healthz"))
        for _ in range(300):
            if httpx.get(f"{registry}/v1/agents/researcher").json().get("status") == "verified":
                break
            time.sleep(0.1)
        warm = (lambda: anyio.run(sequential, f"{registry}/mcp", "researcher__text_stats", 50)) \
            if args.path == "mcp" else (lambda: anyio.run(sequential_invoke, registry, 50))
        warm()
        os.kill(processes[0].pid, signal.SIGUSR1)
        time.sleep(0.2)
        if args.path == "mcp":
            anyio.run(sequential, f"{registry}/mcp", "researcher__text_stats", args.calls)
        else:
            anyio.run(sequential_invoke, registry, args.calls)
        calls = args.calls + 30  # both helpers warm up with 30 calls of their own
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGINT)
        for process in processes:
            process.wait(timeout=30)
    stats = pstats.Stats(str(output))
    own: Counter[str] = Counter()
    builtins: Counter[str] = Counter()  # C functions by name: sqlite3's execute, hashing, the socket...
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        own[component(filename)] += tottime
        if filename == "~":
            builtins[name] += tottime
    total = sum(own.values())
    print(f"registry CPU per call through {'/mcp' if args.path == 'mcp' else 'POST /v1/invoke'}, "
          f"{calls} calls of researcher.text_stats {ARGUMENTS}: {total * 1000 / calls:.2f} ms (profiled; "
          "cProfile itself slows Python code, so compare shares, not totals, with bench_registry)")
    for name, seconds in own.most_common(args.top):
        print(f"  {name:40s} {seconds * 1000 / calls:6.3f} ms  {seconds / total:6.1%}")
    print("of which built-ins (C), the largest:")
    for name, seconds in builtins.most_common(10):
        print(f"  {name[:60]:60s} {seconds * 1000 / calls:6.3f} ms")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--profiled":
        output = sys.argv[2]
        del sys.argv[1:3]
        profiled_registry(output)
    else:
        main()
