"""A tools/call straight to an agent vs the same call through the registry, from one run.

    python bench/bench_registry.py [--calls 500] [--concurrency 8 32]

Starts a registry and the `researcher` agent of this repository as real processes on 127.0.0.1, then
calls `text_stats` (a tool that does almost no work) with the official MCP client: directly at the
agent's `/mcp`; through a bare relay that only copies requests and answers (``relay_floor.py``: what one
more HTTP hop in Python costs before any check); as `researcher__text_stats` at the registry's `/mcp`,
as `text_stats` at its per-agent endpoint `/agents/researcher/mcp`, and as a script calls it,
``POST /v1/invoke`` (each: authenticate, pinned tool,
schema, Rego policy, forward on a kept-alive connection, output schema, two run records with signed
provenance, reputation). For each path it also prints the CPU milliseconds per call spent by the process
in the middle (the relay's, the registry's), read from /proc. Then calls per second through one registry
process with several clients at once, over MCP and over `POST /v1/invoke`; then discovery latency over
10k and 100k synthetic tools (``bench_discovery``).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import anyio
import bench_discovery
import httpx
from common import fresh_workspace, percentile, start_mesh_process, start_process
from mcp import Client

from mesh.serving import free_port

REPO = Path(__file__).resolve().parent.parent
ARGUMENTS = {"text": "one two three. four five."}


async def sequential(url: str, tool: str, calls: int) -> list[float]:
    samples = []
    async with Client(url) as client:
        for _ in range(30):
            await client.call_tool(tool, ARGUMENTS)
        for _ in range(calls):
            began = time.perf_counter()
            result = await client.call_tool(tool, ARGUMENTS)
            samples.append((time.perf_counter() - began) * 1000)
            assert not result.is_error, result
    return samples


async def sequential_invoke(registry: str, calls: int) -> list[float]:
    """The same call as a script makes it: ``POST /v1/invoke`` on one kept-alive connection."""
    samples = []
    body = {"agent": "researcher", "tool": "text_stats", "arguments": ARGUMENTS}
    async with httpx.AsyncClient() as http:
        for _ in range(30):
            (await http.post(f"{registry}/v1/invoke", json=body)).raise_for_status()
        for _ in range(calls):
            began = time.perf_counter()
            (await http.post(f"{registry}/v1/invoke", json=body)).raise_for_status()
            samples.append((time.perf_counter() - began) * 1000)
    return samples


async def throughput_mcp(url: str, tool: str, clients: int, seconds: float) -> float:
    done = 0

    async def worker() -> None:
        nonlocal done
        async with Client(url) as client:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                await client.call_tool(tool, ARGUMENTS)
                done += 1

    async with anyio.create_task_group() as group:
        for _ in range(clients):
            group.start_soon(worker)
    return done / seconds


async def throughput_http(registry: str, clients: int, seconds: float) -> float:
    done = 0
    body = {"agent": "researcher", "tool": "text_stats", "arguments": ARGUMENTS}

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal done
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            (await http.post(f"{registry}/v1/invoke", json=body)).raise_for_status()
            done += 1

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as http, \
            anyio.create_task_group() as group:
        for _ in range(clients):
            group.start_soon(worker, http)
    return done / seconds


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in milliseconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def serves(url: str) -> bool:
    try:
        return httpx.post(url, json={}, headers={"accept": "application/json, text/event-stream"}).status_code != 404
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32],
                        help="concurrent clients for the throughput figures, one run each")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--discovery-sizes", type=int, nargs="*", default=[10_000, 100_000],
                        help="synthetic tool counts for the discovery figures (none: skip them)")
    args = parser.parse_args()

    workspace = fresh_workspace()
    registry_port, agent_port, relay_port = free_port(), free_port(), free_port()
    registry, agent = f"http://127.0.0.1:{registry_port}", f"http://127.0.0.1:{agent_port}"
    processes = []
    try:
        registry_args = ["registry", "run", "--workspace", str(workspace), "--port", str(registry_port),
                         "--trust-local-keys"]
        processes.append(start_mesh_process(registry_args, f"{registry}/healthz"))
        agent_args = ["agent", "run", "researcher", "--workspace", str(workspace), "--port", str(agent_port),
                      "--registry", registry]
        processes.append(start_mesh_process(agent_args, f"{agent}/healthz"))
        relay_args = [sys.executable, str(Path(__file__).with_name("relay_floor.py")), "--port", str(relay_port),
                      "--target", f"{agent}/mcp"]
        processes.append(start_process(relay_args, f"http://127.0.0.1:{relay_port}/healthz"))
        for _ in range(300):
            if httpx.get(f"{registry}/v1/agents/researcher").status_code == 200:
                break
            time.sleep(0.1)

        relay_pid, registry_pid = processes[2].pid, processes[0].pid
        paths = [("direct to the agent", f"{agent}/mcp", "text_stats", None),
                 ("through a bare relay", f"http://127.0.0.1:{relay_port}/mcp", "text_stats", relay_pid),
                 ("registry /mcp", f"{registry}/mcp", "researcher__text_stats", registry_pid),
                 ("registry /agents/researcher/mcp", f"{registry}/agents/researcher/mcp", "text_stats", registry_pid),
                 ("registry POST /v1/invoke", f"{registry}/mcp", None, registry_pid)]
        print(f"tools/call, {args.calls} sequential calls, official MCP client, streamable HTTP on loopback")
        d50 = d99 = None
        for label, url, tool, pid in paths:
            if not serves(url):
                print(f"  {label:32s} not served by this registry")
                continue
            before = cpu_ms(pid) if pid else 0.0
            samples = (anyio.run(sequential, url, tool, args.calls) if tool is not None
                       else anyio.run(sequential_invoke, registry, args.calls))
            cpu = f"{(cpu_ms(pid) - before) / (args.calls + 30):5.2f} ms cpu/call" if pid else ""
            p50, p99 = statistics.median(samples), percentile(samples, 0.99)
            d50, d99 = d50 or p50, d99 or p99
            print(f"  {label:32s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms   ratio to direct: "
                  f"p50 {p50 / d50:4.2f}x  p99 {p99 / d99:4.2f}x   {cpu}")
        for clients in args.concurrency:
            mcp_rate = anyio.run(throughput_mcp, f"{registry}/mcp", "researcher__text_stats", clients, args.seconds)
            http_rate = anyio.run(throughput_http, registry, clients, args.seconds)
            direct_rate = anyio.run(throughput_mcp, f"{agent}/mcp", "text_stats", clients, args.seconds)
            print(f"throughput with {clients} concurrent clients, {args.seconds:g} s each")
            print(f"  direct to the agent (MCP)        {direct_rate:8.0f} calls/s")
            for label, rate in (("through one registry (MCP)       ", mcp_rate),
                                ("through one registry (/v1/invoke)", http_rate)):
                print(f"  {label} {rate:7.0f} calls/s   {rate / direct_rate:4.2f} of direct")
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    if args.discovery_sizes:
        print("discovery: DiscoveryIndex.search over synthetic tools (the registry's own index)", end="")
        bench_discovery.main([str(size) for size in args.discovery_sizes])


if __name__ == "__main__":
    main()
