"""The registry's forwarder against a real agent process, and its check of answers against output schemas."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx2
import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp.types import CallToolResult, TextContent

from mesh.registry.forward import AgentError, Forwarder
from mesh.registry.node import PinnedTool
from mesh.registry.proxy import _output_violation

from .conftest import free_port, mesh_command

PROGRESS_AGENT = '''
import anyio
from mcp.server.mcpserver import Context
from mesh import Agent

agent = Agent("ticker", description="Counts with progress.")


@agent.tool(read_only=True)
async def count(to: int, ctx: Context) -> dict[str, int]:
    """Count to a number, reporting each step as progress."""
    for step in range(1, to + 1):
        await ctx.report_progress(step, to, f"at {step}")
        await anyio.sleep(0.01)
    return {"counted": to}


@agent.tool(read_only=True)
async def stall(ctx: Context) -> str:
    """Never answer."""
    await anyio.sleep_forever()
'''


@pytest.fixture
def ticker(hello_workspace: Path, agent_server) -> str:
    (hello_workspace / "agents" / "ticker.py").write_text(PROGRESS_AGENT)
    return agent_server(hello_workspace, "ticker", "--dev") + "/mcp"


async def test_it_lists_tools_exactly_as_the_sdk_client_sees_them(ticker: str):
    forwarder = Forwarder()
    try:
        listed = await forwarder.list_tools(ticker)
    finally:
        await forwarder.aclose()
    async with Client(ticker) as client:
        tools = (await client.list_tools()).tools
    expected = [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in tools]
    assert listed == expected
    assert {t["name"] for t in listed} == {"count", "stall"}
    assert all("io.mcpmesh/signature" in t["_meta"] for t in listed)


async def test_a_call_returns_the_result_and_passes_progress_on(ticker: str):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    forwarder = Forwarder()
    try:
        quiet = await forwarder.call_tool(ticker, "count", {"to": 2})
        result = await forwarder.call_tool(ticker, "count", {"to": 5}, progress=on_progress)
    finally:
        await forwarder.aclose()
    assert quiet.structured_content == {"counted": 2}
    assert result.structured_content == {"counted": 5} and not result.is_error
    assert seen == [(float(i), 5.0, f"at {i}") for i in range(1, 6)]


async def test_a_json_rpc_error_from_the_agent_is_raised_with_its_code(ticker: str):
    forwarder = Forwarder()
    try:
        with pytest.raises(AgentError) as caught:
            await forwarder.request(ticker, "no/such-method", {})
    finally:
        await forwarder.aclose()
    assert caught.value.code == -32601  # method not found
    assert caught.value.http_status is not None and caught.value.http_status < 500


async def test_an_agent_refusing_the_request_itself_is_raised_with_its_http_status(ticker: str):
    forwarder = Forwarder()
    try:
        with pytest.raises(AgentError) as caught:  # the MCP SDK refuses bodies over 4 MiB
            await forwarder.call_tool(ticker, "count", {"to": 1, "padding": "x" * (5 << 20)})
        # The pooled connection survives the early refusal.
        assert (await forwarder.call_tool(ticker, "count", {"to": 1})).structured_content == {"counted": 1}
    finally:
        await forwarder.aclose()
    assert caught.value.http_status == 413 and caught.value.code == 0
    assert "HTTP 413" in str(caught.value)


async def test_every_answer_names_the_manifest_it_was_served_under(ticker: str):
    forwarder = Forwarder()
    try:
        result = await forwarder.call_tool(ticker, "count", {"to": 1})
    finally:
        await forwarder.aclose()
    async with Client(ticker) as client:
        listed = (await client.list_tools()).tools
    signed_for = {tool.meta["io.mcpmesh/signature"]["manifest"] for tool in listed}
    assert result.meta["io.mcpmesh/manifest"] in signed_for and len(signed_for) == 1


async def test_cancelling_a_call_closes_it_and_the_connection_pool_stays_usable(ticker: str):
    forwarder = Forwarder()
    try:
        with anyio.move_on_after(0.3) as scope:
            await forwarder.call_tool(ticker, "stall", {})
        assert scope.cancelled_caught
        assert (await forwarder.call_tool(ticker, "count", {"to": 1})).structured_content == {"counted": 1}
    finally:
        await forwarder.aclose()


async def test_an_agent_restarted_on_the_same_port_is_reached_on_a_new_connection(hello_workspace: Path, start):
    (hello_workspace / "agents" / "ticker.py").write_text(PROGRESS_AGENT)
    port = free_port()
    command = mesh_command("agent", "run", "ticker", "--workspace", str(hello_workspace), "--port", str(port), "--dev")
    url = f"http://127.0.0.1:{port}"
    forwarder = Forwarder()
    try:
        first = start(command)
        first.wait_http(f"{url}/healthz")
        assert (await forwarder.call_tool(f"{url}/mcp", "count", {"to": 1})).structured_content == {"counted": 1}
        first.stop()  # the pooled connection to it is now dead
        start(command).wait_http(f"{url}/healthz")
        assert (await forwarder.call_tool(f"{url}/mcp", "count", {"to": 2})).structured_content == {"counted": 2}
    finally:
        await forwarder.aclose()


async def test_an_agent_that_is_down_is_a_transport_error():
    forwarder = Forwarder()
    try:
        with pytest.raises(httpx2.ConnectError):
            await forwarder.call_tool(f"http://127.0.0.1:{free_port()}/mcp", "count", {"to": 1})
    finally:
        await forwarder.aclose()


def pinned_with_output(schema: dict | None) -> PinnedTool:
    wire = {"name": "count", "inputSchema": {"type": "object"}, "outputSchema": schema}
    return PinnedTool("ticker", "count", wire, [], "digest", "verified", None, Draft202012Validator({}),
                      Draft202012Validator(schema) if schema else None)


OUTPUT = {"type": "object", "properties": {"counted": {"type": "integer"}}, "required": ["counted"]}


def answer(structured: dict | None, *, is_error: bool = False) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text="...")], structured_content=structured,
                          is_error=is_error)


def test_an_answer_that_keeps_to_the_signed_output_schema_passes():
    assert _output_violation(pinned_with_output(OUTPUT), answer({"counted": 3})) is None
    assert _output_violation(pinned_with_output(None), answer(None)) is None  # no schema, nothing to keep to


def test_an_answer_outside_the_signed_output_schema_is_named():
    assert _output_violation(pinned_with_output(OUTPUT), answer({"counted": "three"})) == (
        "counted: 'three' is not of type 'integer'")
    assert "required property" in _output_violation(pinned_with_output(OUTPUT), answer({}))
    assert "no structured content" in _output_violation(pinned_with_output(OUTPUT), answer(None))


def test_a_tool_error_is_not_checked_against_the_output_schema():
    assert _output_violation(pinned_with_output(OUTPUT), answer(None, is_error=True)) is None
