"""The registry sends a call again when the agent dropped the connection before answering — only for a tool
whose signed annotations say repeating it is harmless (read-only or idempotent); never for another.

The agent here is a stub on a real loopback socket that drops its first connection after reading the
request and answers the next ones, so the test can count exactly how many times a call reached it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from jsonschema import Draft202012Validator

from mesh.manifest import MANIFEST_META
from mesh.registry import proxy
from mesh.registry.config import RegistryConfig
from mesh.registry.forward import Forwarder
from mesh.registry.node import PinnedTool, Registry
from mesh.registry.problems import Problem
from mesh.workspace import Workspace

from .conftest import copy_repo_workspace

DIGEST = "sha256:" + "0" * 64  # the manifest the stub says it serves, as pinned below


class DroppingAgent:
    """Answers every tools/call with "ok", except that it drops the first ``drops`` connections unanswered."""

    def __init__(self, drops: int):
        self.drops = drops
        self.requests = 0  # requests that reached it, dropped or answered

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            request = await _read_request(stream)
            if request is None:
                return
            self.requests += 1
            if self.drops > 0:
                self.drops -= 1
                return  # closed without a word: the registry saw a reset before any answer
            answer = {"jsonrpc": "2.0", "id": request["id"], "result": {
                "content": [{"type": "text", "text": "ok"}], "isError": False, "_meta": {MANIFEST_META: DIGEST}}}
            body = json.dumps(answer).encode()
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _read_request(stream: SocketStream) -> dict[str, Any] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return None
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.partition(b":")[2]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += await stream.receive()
    return json.loads(body)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    node = Registry.open(RegistryConfig(workspace=workspace, database_url=f"sqlite:///{tmp_path / 'registry.db'}"))
    node.forwarder = Forwarder()
    try:
        yield node
    finally:
        await node.forwarder.aclose()
        node.engine.dispose()


def pin(registry: Registry, endpoint: str, tool: str, annotations: dict[str, Any]) -> None:
    """Pin a tool of agent ``stub`` at ``endpoint`` as admission would have."""
    registry.endpoints["stub"] = endpoint
    registry.manifest_digests["stub"] = DIGEST
    registry.tenancy.admitted("stub")  # in the default project, where the test's caller acts
    wire = {"name": tool, "inputSchema": {"type": "object"}, "annotations": annotations}
    registry.tools[("stub", tool)] = PinnedTool("stub", tool, wire, [], DIGEST, "verified", None,
                                                Draft202012Validator({"type": "object"}), None)


async def call_through(registry: Registry, agent: DroppingAgent, tool: str, annotations: dict[str, Any]) -> Any:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    pin(registry, f"http://127.0.0.1:{port}/mcp", tool, annotations)
    answer: list[Any] = []
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, agent.handle)
        try:
            answer.append(await proxy.invoke(registry, registry.people.local_caller(), "stub", tool, {}))
        except Problem as problem:
            answer.append(problem)  # raised outside the task group, so not wrapped in an exception group
        group.cancel_scope.cancel()
    if isinstance(answer[0], Problem):
        raise answer[0]
    return answer[0]


@pytest.mark.anyio
@pytest.mark.parametrize("annotations", [{"readOnlyHint": True}, {"idempotentHint": True, "destructiveHint": False}])
async def test_a_tool_safe_to_repeat_is_sent_again_after_a_dropped_connection(registry: Registry, annotations):
    agent = DroppingAgent(drops=1)
    outcome = await call_through(registry, agent, "look", annotations)
    assert outcome.result.content[0].text == "ok"
    assert agent.requests == 2  # dropped once, answered the second time


@pytest.mark.anyio
async def test_retries_are_bounded(registry: Registry):
    agent = DroppingAgent(drops=10)
    with pytest.raises(Problem) as refused:
        await call_through(registry, agent, "look", {"readOnlyHint": True})
    assert refused.value.kind == "target-unavailable"
    assert agent.requests == registry.config.retry_attempts == 3


@pytest.mark.anyio
async def test_a_tool_not_known_to_be_idempotent_is_never_sent_twice(registry: Registry):
    agent = DroppingAgent(drops=1)
    with pytest.raises(Problem) as refused:
        await call_through(registry, agent, "charge", {"destructiveHint": False, "idempotentHint": False})
    assert refused.value.kind == "target-unavailable" and "run_id" in refused.value.extra
    assert agent.requests == 1  # the caller hears of the failure and decides; the registry did not repeat it
