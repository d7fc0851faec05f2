"""A mixed, bounded load through one registry, and a report against the SLOs the README states.

    python bench/load.py [--clients 8] [--seconds 20] [--report load-report.md]

Starts a registry and three agents as real processes on 127.0.0.1, in a fresh copy of this workspace:
``researcher`` and ``librarian`` from this repository, and ``loadgen``, written into the copy by this
script, whose tools take different times and sometimes fail on purpose. Then:

1. **Added latency.** The same no-op call (``researcher.text_stats``) sequentially, straight to the agent
   and through the registry's ``/mcp``: the p50 the registry adds, and its CPU per call.
2. **Mixed load.** ``--clients`` MCP clients, each with its own session with the registry, call a weighted
   mix for ``--seconds``: no-op tools, a Faiss search, tools that wait 20 ms and 100 ms, a tool that
   fails one call in four (a tool error: the tool's fault, not the mesh's), a call that chains through a
   second agent (researcher → librarian), and arguments outside the schema (refused by the registry: the
   caller's fault). Each call's latency is measured by the client; errors are sorted by kind.

The report (printed, and written to ``--report`` as Markdown) gives p50/p95/p99 overall and per tool,
errors by kind, calls per second and the registry's CPU per call, and says which SLO held. An SLO is
about what the mesh itself does: refusals it was asked to make and tool errors are counted, shown, and
kept out of the error budget.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from bench_registry import cpu_ms
from common import fresh_workspace, percentile, start_mesh_process
from mcp import Client

from mesh.client import PROBLEM_META
from mesh.serving import free_port

LOADGEN = '''\
"""Tools for bench/load.py: each takes a known time, one fails on purpose."""

import anyio

from mesh import Agent

agent = Agent("loadgen", version="0.1.0", description="Tools of known latency for load tests.")


@agent.tool(read_only=True, idempotent=True, open_world=False)
async def pause(ms: int) -> int:
    """Wait ms milliseconds (0 to 1000), then answer how long it waited."""
    await anyio.sleep(min(max(ms, 0), 1000) / 1000)
    return ms


@agent.tool(read_only=True, idempotent=True, open_world=False)
def wobbly(n: int) -> int:
    """Answer n squared, except for multiples of four, which fail."""
    if n % 4 == 0:
        raise ValueError(f"{n} is a multiple of four")
    return n * n
'''

# (weight, label, namespaced tool, arguments()): what each client picks from, by weight.
MIX = [
    (35, "text_stats (no-op)", "researcher__text_stats", lambda r: {"text": "one two three. four five."}),
    (15, "librarian.search (Faiss)", "librarian__search", lambda r: {"query": "key rotation", "k": 3}),
    (15, "pause 20 ms", "loadgen__pause", lambda r: {"ms": 20}),
    (8, "pause 100 ms", "loadgen__pause", lambda r: {"ms": 100}),
    (15, "wobbly (1 in 4 fails)", "loadgen__wobbly", lambda r: {"n": r.randrange(1000)}),
    (6, "researcher.brief (chained)", "researcher__brief", lambda r: {"topic": "key rotation", "k": 2}),
    (6, "bad arguments (refused)", "loadgen__pause", lambda r: {"ms": "soon"}),
]
# Errors that are not the mesh failing: the caller's request refused as asked, the tool's own answer.
EXPECTED = {"invalid-arguments", "tool-error"}

# The SLOs the README states (section "Service levels"), checked by this report.
SLO_ADDED_P50_MS = 5.0  # the registry adds at most this to a no-op call's p50, sequentially
SLO_TAIL_RATIO = 2.5  # under the mixed load, each tool's p99 at most 2.5x its p50...
SLO_TAIL_FLOOR_MS = 10.0  # ...or within 10 ms of it, for tools whose p50 is only a few ms
SLO_ERROR_BUDGET = 0.001  # at most 0.1 % of calls fail by the mesh's fault (5xx, transport, target errors)


@dataclass
class Tally:
    """What the clients saw: latencies per label, outcomes by kind."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    kinds: Counter[str] = field(default_factory=Counter)
    calls: int = 0


def kind_of(result) -> str:
    """``ok``, ``tool-error``, or the registry's problem kind (``invalid-arguments``, ``policy-denied``...)."""
    if not result.is_error:
        return "ok"
    problem = (result.meta or {}).get(PROBLEM_META)
    if problem:
        return str(problem.get("type", "problem")).rsplit("/", 1)[-1]
    return "tool-error"


async def mixed_load(url: str, clients: int, seconds: float, seed: int) -> Tally:
    tally = Tally()
    weights = [weight for weight, *_ in MIX]

    async def client_loop(number: int) -> None:
        chooser = random.Random(seed + number)
        async with Client(url) as client:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                _, label, tool, arguments = chooser.choices(MIX, weights)[0]
                began = time.perf_counter()
                try:
                    kind = kind_of(await client.call_tool(tool, arguments(chooser)))
                except Exception as exc:  # a transport or JSON-RPC failure is an outcome here
                    kind = f"exception:{type(exc).__name__}"
                tally.latencies[label].append((time.perf_counter() - began) * 1000)
                tally.kinds[kind] += 1
                tally.calls += 1

    async with anyio.create_task_group() as group:
        for number in range(clients):
            group.start_soon(client_loop, number)
    return tally


async def sequential(url: str, tool: str, calls: int) -> list[float]:
    samples = []
    async with Client(url) as client:
        for _ in range(20):
            await client.call_tool(tool, MIX[0][3](None))
        for _ in range(calls):
            began = time.perf_counter()
            result = await client.call_tool(tool, MIX[0][3](None))
            samples.append((time.perf_counter() - began) * 1000)
            assert not result.is_error, result
    return samples


def tail_ok(p50: float, p99: float) -> bool:
    return p99 <= max(SLO_TAIL_RATIO * p50, p50 + SLO_TAIL_FLOOR_MS)


def report(args: argparse.Namespace, added: tuple[float, float, float], tally: Tally, cpu_per_call: float) -> str:
    direct_p50, mesh_p50, sequential_cpu = added
    lines = [f"# Load report ({time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.2f})", ""]
    lines += ["## Added latency (no-op tool, sequential)", "",
              f"- direct p50 {direct_p50:.2f} ms, through the registry p50 {mesh_p50:.2f} ms: "
              f"adds {mesh_p50 - direct_p50:.2f} ms; registry CPU {sequential_cpu:.2f} ms per call", ""]
    everything = [value for values in tally.latencies.values() for value in values]
    lines += [f"## Mixed load: {args.clients} clients for {args.seconds:g} s", "",
              f"- {tally.calls} calls, {tally.calls / args.seconds:.0f} calls/s, registry CPU "
              f"{cpu_per_call:.2f} ms per call",
              f"- overall p50 {statistics.median(everything):.1f} ms, p95 {percentile(everything, 0.95):.1f} ms, "
              f"p99 {percentile(everything, 0.99):.1f} ms", "",
              "| call | n | p50 ms | p95 ms | p99 ms | tail SLO |", "|---|---:|---:|---:|---:|---|"]
    tails = []
    for label, values in sorted(tally.latencies.items()):
        p50, p95, p99 = statistics.median(values), percentile(values, 0.95), percentile(values, 0.99)
        tails.append(tail_ok(p50, p99))
        lines.append(f"| {label} | {len(values)} | {p50:.1f} | {p95:.1f} | {p99:.1f} | "
                     f"{'met' if tails[-1] else 'missed'} |")
    lines += ["", "| outcome | calls | share | counts against the error budget |", "|---|---:|---:|---|"]
    for kind, count in tally.kinds.most_common():
        budget = "no" if kind == "ok" or kind in EXPECTED else "yes"
        lines.append(f"| {kind} | {count} | {count / tally.calls:.2%} | {budget} |")
    mesh_errors = sum(count for kind, count in tally.kinds.items() if kind != "ok" and kind not in EXPECTED)
    error_rate = mesh_errors / tally.calls
    slos = [("added p50 over direct", f"<= {SLO_ADDED_P50_MS:g} ms", f"{mesh_p50 - direct_p50:.2f} ms",
             mesh_p50 - direct_p50 <= SLO_ADDED_P50_MS),
            ("p99 per tool under load", f"<= {SLO_TAIL_RATIO:g}x p50 (or p50 + {SLO_TAIL_FLOOR_MS:g} ms)",
             f"{sum(tails)} of {len(tails)} tools", all(tails)),
            ("error budget", f"<= {SLO_ERROR_BUDGET:.1%} of calls", f"{error_rate:.3%} ({mesh_errors} calls)",
             error_rate <= SLO_ERROR_BUDGET)]
    lines += ["", "## SLOs", "", "| SLO | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {name} | {target} | {measured} | {'met' if met else 'MISSED'} |"
              for name, target, measured, met in slos]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=300, help="sequential calls for the added-latency figure")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--report", type=Path, default=None, help="also write the report here (Markdown)")
    args = parser.parse_args()

    workspace = fresh_workspace()
    (workspace / "agents" / "loadgen.py").write_text(LOADGEN)
    signed = subprocess.run([sys.executable, "-m", "mesh.cli", "sign", "--workspace", str(workspace), "loadgen"],
                            capture_output=True, text=True)
    if signed.returncode != 0:
        sys.exit(f"mesh sign failed: {signed.stderr}")
    registry = f"http://127.0.0.1:{free_port()}"
    processes = []
    try:
        processes.append(start_mesh_process(["registry", "run", "--workspace", str(workspace), "--port",
                                             registry.rsplit(":", 1)[1], "--trust-local-keys"],
                                            f"{registry}/healthz"))
        agents = {}
        for name in ("librarian", "researcher", "loadgen"):
            agents[name] = f"http://127.0.0.1:{free_port()}"
            processes.append(start_mesh_process(["agent", "run", name, "--workspace", str(workspace), "--port",
                                                 agents[name].rsplit(":", 1)[1], "--registry", registry],
                                                f"{agents[name]}/healthz"))
        for name in agents:
            for _ in range(300):
                if httpx.get(f"{registry}/v1/agents/{name}").json().get("status") == "verified":
                    break
                time.sleep(0.1)
        registry_pid = processes[0].pid

        direct = anyio.run(sequential, f"{agents['researcher']}/mcp", "text_stats", args.calls)
        before = cpu_ms(registry_pid)
        meshed = anyio.run(sequential, f"{registry}/mcp", "researcher__text_stats", args.calls)
        sequential_cpu = (cpu_ms(registry_pid) - before) / (args.calls + 20)

        before = cpu_ms(registry_pid)
        tally = anyio.run(mixed_load, f"{registry}/mcp", args.clients, args.seconds, args.seed)
        cpu_per_call = (cpu_ms(registry_pid) - before) / max(tally.calls, 1)
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    text = report(args, (statistics.median(direct), statistics.median(meshed), sequential_cpu), tally, cpu_per_call)
    print(text)
    if args.report:
        args.report.write_text(text)
        print(textwrap.shorten(f"written to {args.report}", 200))


if __name__ == "__main__":
    main()
