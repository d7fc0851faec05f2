"""Signing and verifying cost per manifest, and tools/call round trips against one agent over HTTP.

    python bench/bench_agent.py [--calls 500]

Prints figures only. The agent is this repository's `researcher` (its `text_stats` tool does almost no
work, so the round trip is the protocol's cost), run as a real process on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import anyio
from common import fresh_workspace, percentile, start_mesh_process
from mcp import Client

from mesh.keys import KeyRing, TrustStore
from mesh.manifest import Manifest, tool_signature, verify_tool
from mesh.serving import free_port
from mesh.signing import manifest_payload
from mesh.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def timed(fn, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def row(label: str, samples: list[float]) -> str:
    return f"{label:<44} p50 {statistics.median(samples):8.3f} ms   p99 {percentile(samples, 0.99):8.3f} ms"


def signing_figures(workspace: Path) -> None:
    ws = Workspace(workspace)
    ring = KeyRing.open(Path(tempfile.mkdtemp()) / "keys", create=True)
    ring.rotate()  # two valid keys: a manifest in its rotation overlap carries two signatures
    payload = anyio.run(manifest_payload, ws.agent("librarian"))
    manifest = Manifest.sign(payload, ring.signing_keys())
    trust = TrustStore.from_jwks(ring.public_jwks())
    tool = payload["tools"][0]
    wire = {k: v for k, v in tool.items() if k not in ("scopes", "digest")}
    listed = {**wire, "_meta": {"io.mcpmesh/signature": tool_signature(wire, ring.active(), manifest.digest)}}
    print(f"manifest: {len(payload['tools'])} tools, {len(manifest.payload_bytes)} bytes, 2 signatures")
    sign = timed(lambda: Manifest.sign(payload, ring.signing_keys()), 300)
    print(row("sign manifest (canonicalize + 2x ES256)", sign))
    print(row("verify manifest (2 signatures + digests)", timed(lambda: manifest.verify(trust), 300)))
    print(row("sign one tool (_meta block)", timed(lambda: tool_signature(wire, ring.active(), manifest.digest), 500)))
    print(row("verify one listed tool", timed(lambda: verify_tool(listed, trust), 500)))


async def round_trips(url: str, calls: int) -> list[float]:
    samples = []
    async with Client(url) as client:
        for _ in range(20):
            await client.call_tool("text_stats", {"text": "warm up the session"})
        for _ in range(calls):
            start = time.perf_counter()
            result = await client.call_tool("text_stats", {"text": "one two three. four five."})
            samples.append((time.perf_counter() - start) * 1000)
            assert not result.is_error
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    workspace = fresh_workspace()
    signing_figures(workspace)

    port = free_port()
    process = start_mesh_process(["agent", "run", "researcher", "--workspace", str(workspace), "--port", str(port)],
                                 f"http://127.0.0.1:{port}/healthz")
    try:
        samples = anyio.run(round_trips, f"http://127.0.0.1:{port}/mcp", args.calls)
        print(row(f"tools/call over streamable HTTP ({args.calls} calls)", samples))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()


if __name__ == "__main__":
    main()
