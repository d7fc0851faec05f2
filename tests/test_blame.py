"""Whose fault a failed call is, against real processes: a hostile caller cannot sink a healthy agent.

The rule (``mesh/registry/proxy.py``): a failure counts against the target only when the target could
have avoided it whatever the caller sent. Oversized or malformed calls are refused before they reach
it, its refusals of the request itself (HTTP 413 and the like) are the caller's, tool error results
weigh at most a fifth of its score, and a failure caused by a call it made through the mesh is blamed
on that inner call.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from mesh.registry import proxy
from mesh.registry.auth import Caller

from .test_registry_e2e import Mesh, agent_client, running_mesh

TARGET_AGENT = '''
from mcp.shared.exceptions import MCPError
from mesh import Agent

agent = Agent("target", description="A healthy agent that callers try to sink.")


@agent.tool(read_only=True, idempotent=True, open_world=False)
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@agent.tool(read_only=True, idempotent=True, open_world=False)
def size(blob: str) -> int:
    """Count the characters of a blob."""
    return len(blob)


@agent.tool(read_only=True, idempotent=True, open_world=False)
def parse(number: str) -> int:
    """Parse a decimal integer, rejecting anything else."""
    return int(number)  # ValueError on bad input: a tool error the caller provoked


@agent.tool(read_only=True, idempotent=True, open_world=False)
def strict(code: int) -> str:
    """Answer with the JSON-RPC error of the given code."""
    raise MCPError(code, "not with these parameters")
'''

MIB = 1 << 20
BODY_LIMIT = 6 * MIB  # above the agents' own 4 MiB limit (the MCP SDK's), so a 5 MB call reaches them
MIN_REPUTATION = 0.3  # registry/registry.toml [policy]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory, "blame", ("librarian", "researcher", "target"),
                      sources={"target": TARGET_AGENT},
                      settings={"registry": f"max_body_bytes = {BODY_LIMIT}"}) as network:
        assert f"min_reputation = {MIN_REPUTATION}" in (network.workspace / "registry" / "registry.toml").read_text()
        yield network


def reputation(mesh: Mesh, name: str) -> dict:
    return mesh.agent(name)["reputation"]


async def test_a_hostile_caller_cannot_push_a_healthy_agent_under_min_reputation(mesh: Mesh):
    for i in range(10):
        assert mesh.invoke("target", "echo", {"text": f"hello {i}"}).status_code == 200
    healthy = reputation(mesh, "target")
    assert healthy["score"] > 0.7

    # Too big for the registry: refused at its door, the target never hears of it.
    for _ in range(5):
        refused = mesh.invoke("target", "size", {"blob": "x" * (BODY_LIMIT + MIB)})
        assert refused.status_code == 413 and refused.json()["type"].endswith("/payload-too-large")
    assert reputation(mesh, "target")["calls"] == healthy["calls"]

    # Small enough for the registry, too big for the agent: its 413 is the caller's fault, and says so.
    for _ in range(25):
        refused = mesh.invoke("target", "size", {"blob": "x" * (5 * MIB)})
        assert refused.status_code == 413, refused.text
        assert "target.size refused the request" in refused.json()["detail"]
        assert "HTTP 413" in refused.json()["detail"]
    run = httpx.get(f"{mesh.url}/v1/runs/{refused.json()['run_id']}").json()
    assert run["status"] == "invalid"
    after_oversized = reputation(mesh, "target")
    assert after_oversized["score"] == healthy["score"]
    assert after_oversized["calls"] == healthy["calls"] + 25

    # Inputs the tool rejects: tool errors, counted apart and bounded.
    for _ in range(60):
        rejected = mesh.invoke("target", "parse", {"number": "not a number"})
        assert rejected.status_code == 200 and rejected.json()["result"]["isError"]
    after = reputation(mesh, "target")
    assert after["tool_errors"] > 20  # near its ceiling of 1 / (1 - 2 ** (-1 / 20)) ≈ 29
    assert after["score"] < healthy["score"]  # they do count...
    assert after["score"] >= 0.8 * healthy["score"] * 0.99  # ...by at most a fifth (latency aside)
    assert after["score"] >= MIN_REPUTATION
    assert after["success_rate"] == healthy["success_rate"]

    # Another caller still gets through: the policy did not shun the target.
    async with agent_client(mesh, "researcher") as researcher:
        answer = await researcher.invoke("target", "echo", {"text": "still there?"})
    assert answer["result"]["structuredContent"] == {"result": "still there?"}


@pytest.mark.parametrize(("arguments", "named"), [
    ('{"text": NaN}', "arguments/text: nan is not a finite number"),
    ('{"text": "x", "more": [1, {"deep": -Infinity}]}', "arguments/more/1/deep: -inf is not a finite number"),
    ('{"text": 1e400}', "arguments/text: inf is not a finite number"),
    ('{"text": 9007199254740992}', "arguments/text: an integer beyond"),
    ('{"text": "x", "n": [-9007199254740993]}', "arguments/n/0: an integer beyond"),
])
def test_arguments_canonical_json_cannot_hold_are_the_callers_fault(mesh: Mesh, arguments: str, named: str):
    before = reputation(mesh, "target")
    for agent in ("target", "nobody"):  # an unknown agent too: the check comes first
        body = f'{{"agent": "{agent}", "tool": "echo", "arguments": {arguments}}}'
        refused = httpx.post(f"{mesh.url}/v1/invoke", content=body, headers={"content-type": "application/json"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["type"].endswith("/invalid-arguments") and named in refused.json()["detail"]
        assert "run_id" not in refused.json()  # refused before anything was recorded
    assert reputation(mesh, "target") == before


def test_an_agent_answering_invalid_params_blames_the_caller_other_json_rpc_errors_the_agent(mesh: Mesh):
    before = reputation(mesh, "target")
    invalid = mesh.invoke("target", "strict", {"code": -32602})
    assert invalid.status_code == 400 and invalid.json()["type"].endswith("/invalid-arguments")
    assert "not with these parameters (JSON-RPC error -32602)" in invalid.json()["detail"]
    assert reputation(mesh, "target")["success_rate"] == before["success_rate"]

    broken = mesh.invoke("target", "strict", {"code": -32603})
    assert broken.status_code == 502 and broken.json()["type"].endswith("/target-error")
    assert reputation(mesh, "target")["success_rate"] < before["success_rate"]


def test_a_failed_inner_call_is_blamed_on_that_call_not_on_the_agent_that_made_it(mesh: Mesh):
    ok = mesh.invoke("researcher", "brief", {"topic": "signing keys", "k": 2})
    assert ok.status_code == 200 and not ok.json()["result"].get("isError"), ok.text
    before = reputation(mesh, "researcher")
    librarian_before = reputation(mesh, "librarian")

    mesh.stop("librarian")  # every brief's inner call to the librarian now fails
    try:
        for _ in range(8):
            failed = mesh.invoke("researcher", "brief", {"topic": "signing keys", "k": 2})
            assert failed.status_code == 200 and failed.json()["result"]["isError"], failed.text
        outer = httpx.get(f"{mesh.url}/v1/runs/{failed.json()['run_id']}").json()
        assert outer["status"] == "error"
        assert outer["error"].startswith("an inner call failed: librarian.search")

        after = reputation(mesh, "researcher")
        assert after["calls"] == before["calls"] + 8
        assert after["tool_errors"] == before["tool_errors"] and after["score"] == before["score"]
        # The inner calls carried the blame: the librarian was unreachable.
        assert reputation(mesh, "librarian")["success_rate"] < librarian_before["success_rate"]
        inner = httpx.get(f"{mesh.url}/v1/runs", params={"caller": "agent:researcher", "log": "caller",
                                                         "limit": 1}).json()["runs"][0]
        assert (inner["agent"], inner["tool"]) == ("librarian", "search")
        assert inner["status"] in ("unavailable", "circuit_open")  # unreachable, then its breaker opened
        assert inner["id"] in outer["error"]
    finally:
        mesh.start_agent("librarian")


class FakeRegistry:
    """The one thing ``proxy._tell_parent`` reads: which agent serves which run in flight."""

    def __init__(self) -> None:
        self.in_flight = {"run-a": "researcher"}
        self.inner_failures: dict[str, str] = {}


def test_only_the_target_of_a_run_in_flight_can_name_it_as_parent():
    registry = FakeRegistry()
    researcher = Caller("agent:researcher", "agent")
    memory = registry
    proxy._tell_parent(registry, Caller("agent:echo", "agent"), "run-a", "forged")  # type: ignore[arg-type]
    proxy._tell_parent(registry, Caller("user:local", "user"), "run-a", "forged")  # type: ignore[arg-type]
    proxy._tell_parent(registry, researcher, "run-b", "not in flight")  # type: ignore[arg-type]
    assert memory.inner_failures == {}
    proxy._tell_parent(registry, researcher, "run-a", "librarian.search failed")  # type: ignore[arg-type]
    proxy._tell_parent(registry, researcher, "run-a", "a later failure")  # type: ignore[arg-type]
    assert memory.inner_failures == {"run-a": "librarian.search failed"}  # the first one is the cause
