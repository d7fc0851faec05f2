"""Run an agent and a registry in one process with the in-memory span exporter, make one call through
the registry over real HTTP, and print the spans as JSON (used by test_tracing.py in a fresh interpreter,
because OpenTelemetry's global provider can be set only once per process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import httpx
import uvicorn

from mesh import telemetry
from mesh.client import MeshClient
from mesh.registry.app import build_app
from mesh.registry.config import RegistryConfig
from mesh.registry.node import Registry
from mesh.serving import SignedAgent, free_port
from mesh.workspace import Workspace


async def main(workspace: Path) -> None:
    recorded = telemetry.configure("trace-probe", "memory")
    ws = Workspace(workspace)
    agent_port, registry_port = free_port(), free_port()
    signed = await SignedAgent.prepare(ws, "hello")
    agent_server = uvicorn.Server(uvicorn.Config(signed.http_app(f"http://127.0.0.1:{agent_port}"),
                                                 port=agent_port, log_level="error"))
    config = RegistryConfig.from_workspace(ws, port=registry_port, trust_local_keys=True)
    registry_server = uvicorn.Server(uvicorn.Config(build_app(Registry.open(config)), port=registry_port,
                                                    log_level="error"))
    async with anyio.create_task_group() as group:
        group.start_soon(agent_server.serve)
        group.start_soon(registry_server.serve)
        while not (agent_server.started and registry_server.started):
            await anyio.sleep(0.05)
        async with MeshClient(config.base_url, agent="hello", key=signed.identity.active) as mesh:
            await mesh.register(f"http://127.0.0.1:{agent_port}/mcp", signed.identity.manifest.to_json(),
                                signed.identity.jwks)
            with telemetry.span("script") as root:
                headers = telemetry.inject_meta({})
                async with httpx.AsyncClient() as http:
                    answer = await http.post(f"{config.base_url}/v1/invoke", headers=headers,
                                             json={"agent": "hello", "tool": "greet", "arguments": {"name": "T"}})
        agent_server.should_exit = registry_server.should_exit = True
    spans = [
        {"name": s.name, "trace_id": format(s.context.trace_id, "032x"), "span_id": format(s.context.span_id, "016x"),
         "parent": format(s.parent.span_id, "016x") if s.parent else None, "kind": s.kind.name,
         "resource": s.resource.attributes.get("service.name")}
        for s in recorded.spans.get_finished_spans()
    ]
    print(json.dumps({"root_trace": format(root.get_span_context().trace_id, "032x"),
                      "invoke": answer.json(), "spans": spans}))


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]))
