"""MeshClient: how agents and scripts reach the mesh through its registry.

>>> mesh = MeshClient("http://127.0.0.1:7300")
>>> hits = await mesh.discover("find passages about signing")
>>> result = await mesh.invoke("librarian", "search", {"query": "signing", "k": 3})

An agent's client carries the agent's identity: each request has a short-lived JWT signed by the
agent's own key. Inside a tool that the registry called, ``invoke`` also passes the trace on, so the
whole chain of calls is one trace.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

import httpx

from mesh import telemetry
from mesh.keys import SigningKey
from mesh.registry.auth import issue_token

TOKEN_LIFETIME = 120
RUN_META = "io.mcpmesh/run"

incoming_run: ContextVar[str | None] = ContextVar("incoming_run", default=None)
"""The registry's run id of the call being served, so calls made from inside it are linked to it."""


class MeshError(Exception):
    """The registry refused or could not complete a request; ``problem`` is its problem+json body."""

    def __init__(self, problem: dict[str, Any]):
        self.problem = problem
        self.kind = str(problem.get("type", "")).rsplit("/", 1)[-1]
        self.status = problem.get("status")
        super().__init__(f"{problem.get('title', 'Error')}: {problem.get('detail', '')}")


class MeshClient:
    """A connection to a registry; ``agent`` + ``key`` make requests on that agent's behalf."""

    def __init__(self, registry_url: str, *, agent: str | None = None, key: SigningKey | None = None,
                 timeout: float = 60.0):
        self.registry_url = registry_url.rstrip("/")
        self.agent = agent
        self.key = key
        self._http = httpx.AsyncClient(base_url=self.registry_url, timeout=timeout)
        self._token: tuple[str, float] | None = None

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.agent and self.key:
            if self._token is None or self._token[1] - time.time() < 30:
                self._token = (issue_token(self.agent, self.key, TOKEN_LIFETIME), time.time() + TOKEN_LIFETIME)
            headers["authorization"] = f"Bearer {self._token[0]}"
        telemetry.inject_meta(headers)
        if (run := incoming_run.get()) is not None:
            headers["x-mesh-parent-run"] = run
        return headers

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, headers=self._headers(), **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": f"HTTP {response.status_code}", "detail": response.text[:300]}
            raise MeshError(problem)
        return response.json()

    async def discover(self, query: str, *, k: int = 10, agent: str | None = None,
                       read_only: bool | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"q": query, "k": k}
        if agent:
            params["agent"] = agent
        if read_only is not None:
            params["read_only"] = str(read_only).lower()
        return (await self._request("GET", "/v1/discover", params=params))["results"]

    async def invoke(self, agent: str, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call ``agent.tool``; returns ``{"run_id", "result": CallToolResult JSON, ...}``."""
        return await self._request("POST", "/v1/invoke", json={"agent": agent, "tool": tool,
                                                               "arguments": arguments or {}})

    async def agents(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/agents"))["agents"]

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/v1/runs/{run_id}")

    async def register(self, endpoint: str, manifest: dict[str, Any], jwks: dict[str, Any]) -> dict[str, Any]:
        if not (self.agent and self.key):
            raise ValueError("only an agent's client (agent= and key=) can register")
        return await self._request("POST", "/v1/agents", json={"name": self.agent, "endpoint": endpoint,
                                                               "manifest": manifest, "jwks": jwks})
