"""``SandboxClient``: one sandbox from Python — what a learning loop or a script needs, and nothing else.

    async with MeshClient(REGISTRY, agent="researcher", key=key) as mesh:
        sandbox = await SandboxClient.create(mesh, "researcher", ["tracker"], services={
            "tracker": {"credentials": ["tok"]}})
        tools = await sandbox.tools()                        # MCP Tool objects, SERVICE__OPERATION
        answer = await sandbox.call("tracker__createProject", {"body": {"name": "Web", "key": "WEB"},
                                    "headers": {"Authorization": "Bearer tok"}}, attempt="task-1/try-1")
        answer["status"], answer["body"], answer["run_id"]   # the service's answer and the registry's run
        state = await sandbox.state()                        # {service: {collection path: [records]}}
        await sandbox.reset()

Tools are listed and called over MCP (the official client) at the sandbox's endpoint, so every call takes
the registry's call path; the rest is the HTTP API. Requests carry ``mesh``'s credentials (an agent's
token, or none for the local user). A refusal by the registry raises ``MeshError``; a service's own
error (401, 404, 422, 429...) is an answer, not an exception.
"""

from __future__ import annotations

from typing import Any

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mesh.client import PROBLEM_META, RUN_META, MeshClient, MeshError
from mesh.sandbox.front import ATTEMPT_META


class SandboxClient:
    def __init__(self, mesh: MeshClient, sandbox: dict[str, Any]):
        self.mesh = mesh
        self.sandbox = sandbox

    @classmethod
    async def create(cls, mesh: MeshClient, agent: str, required_services: list[str], *, mode: str = "emulated",
                     **fields: Any) -> SandboxClient:
        """A new sandbox for ``agent``; ``fields``: services (configuration), ttl_seconds, secret_ref..."""
        body = {"required_services": required_services, "mode": mode, **fields}
        return cls(mesh, await mesh._request("POST", f"/v1/agents/{agent}/sandboxes", json=body))

    @classmethod
    async def attach(cls, mesh: MeshClient, agent: str, sandbox_id: str) -> SandboxClient:
        return cls(mesh, await mesh._request("GET", f"/v1/agents/{agent}/sandboxes/{sandbox_id}"))

    @property
    def id(self) -> str:
        return self.sandbox["id"]

    @property
    def _path(self) -> str:
        return f"/v1/agents/{self.sandbox['agent']}/sandboxes/{self.id}"

    def _client(self) -> Client:
        http = httpx2.AsyncClient(headers=self.mesh._headers(), timeout=httpx2.Timeout(60.0, read=300.0))
        return Client(streamable_http_client(self.sandbox["mcp"], http_client=http))

    async def tools(self) -> list[types.Tool]:
        async with self._client() as client:
            return list((await client.list_tools()).tools)

    async def call(self, tool: str, arguments: dict[str, Any] | None = None, *,
                   attempt: str | None = None) -> dict[str, Any]:
        """The service's answer ``{status, headers, body}`` with the registry's ``run_id``; a refusal by the
        registry (policy, expired sandbox, a connected call without approval) raises ``MeshError``."""
        async with self._client() as client:
            result = await client.call_tool(tool, arguments or {}, meta={ATTEMPT_META: attempt} if attempt else None)
        meta = result.meta or {}
        if result.is_error:
            text = " ".join(getattr(block, "text", "") for block in result.content)
            raise MeshError(meta.get(PROBLEM_META) or {"title": "Tool error", "detail": text})
        return {**(result.structured_content or {}), "run_id": meta.get(RUN_META)}

    async def state(self) -> dict[str, Any]:
        return (await self.mesh._request("GET", f"{self._path}/state"))["services"]

    async def runs(self, *, limit: int = 1000) -> list[dict[str, Any]]:
        return (await self.mesh._request("GET", f"{self._path}/runs", params={"limit": limit}))["runs"]

    async def reset(self) -> dict[str, Any]:
        self.sandbox = await self.mesh._request("POST", f"{self._path}/reset", json={})
        return self.sandbox

    async def update(self, **fields: Any) -> dict[str, Any]:
        self.sandbox = await self.mesh._request("PATCH", self._path, json=fields)
        return self.sandbox

    async def delete(self) -> dict[str, Any]:
        self.sandbox = await self.mesh._request("DELETE", self._path)
        return self.sandbox
