"""The registry carries MCP, both protocol versions, at /agents/{name}/mcp and /mcp.

Real processes on loopback (a registry and two agents), the SDK's own ``Client`` on 2025-11-25
(``mode="legacy"``, a session) and 2026-07-28 (stateless): logging with a level, progress, elicitation and
sampling answered by the client's callbacks and reaching the agent's tool, JSON-RPC errors with their
code and data, cancellation recorded, tools listed with signatures a client can verify itself, and
an agent whose tool calls another through the mesh passing the question up to the human at the top.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

from mesh.keys import TrustStore
from mesh.manifest import verify_tool

from .test_registry_e2e import Mesh, running_mesh

ASKER = '''
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.resolve import Elicit, Resolve, Sample
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged
from mcp.types import CreateMessageResult, SamplingMessage, TextContent
from pydantic import BaseModel

from mesh import Agent



agent = Agent("asker", description="Asks its client things.")


@agent.resource("test://static-text", name="static_text")
def static_text() -> str:
    return "static text"


@agent.resource("test://notes/{id}", name="note")
def note(id: str) -> str:
    return f"note {id}"


@agent.prompt(name="greeting")
def greeting(name: str) -> str:
    return f"Hello {name}"


class Name(BaseModel):
    name: str


def ask_name() -> Elicit[Name]:
    return Elicit("What is your name?", Name)


def ask_model() -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text="Say a colour"))],
                  max_tokens=20)


@agent.tool(read_only=True)
async def greet(who: Annotated[Name, Resolve(ask_name)]) -> str:
    """Greet whoever the client says it is."""
    return f"hello {who.name}"


@agent.tool(read_only=True)
async def colour(answer: Annotated[CreateMessageResult, Resolve(ask_model)]) -> str:
    """Ask the client's model for a colour."""
    return answer.content.text


@agent.tool(read_only=True)
async def chatty(steps: int, ctx: Context) -> str:
    """Log at two levels and report progress."""
    for step in range(steps):
        await ctx.debug(f"debug {step}")
        await ctx.info(f"info {step}")
        await ctx.report_progress(step + 1, steps, f"step {step + 1}")
    return "talked"


@agent.tool(read_only=True)
def refuse() -> str:
    """Answer with a JSON-RPC error that carries data."""
    raise MCPError(-32001, "refused at the protocol level", {"why": "because", "retry": False})


@agent.tool(read_only=True)
async def wait(seconds: float) -> str:
    """Wait, so the caller can cancel."""
    await anyio.sleep(seconds)
    return "done"


@agent.tool(read_only=True)
async def greet_in_session(ctx: Context) -> str:
    """Ask the client over its session, in the middle of the call (2025-11-25 only)."""
    answer = await ctx.elicit("What is your name?", Name)
    return f"hello {answer.data.name}"


@agent.tool(read_only=True)
async def colour_in_session(ctx: Context) -> str:
    """Ask the client's model over the session's own stream (no related request: 2025-11-25 only)."""
    answer = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text="Say a colour"))],
        max_tokens=20)
    return answer.content.text


@agent.tool(read_only=True)
async def resumed(ctx: Context) -> str:
    """Close the call's stream half-way (SSE polling): the caller resumes it and still gets the answer."""
    await ctx.info("before")
    await ctx.close_sse_stream()
    await anyio.sleep(0.2)
    await ctx.info("after")
    return "resumed"


@agent.tool(read_only=True)
async def touch(uri: str) -> str:
    """Say that a resource changed, to whoever follows it."""
    await agent.resource_updated(uri)
    return "touched"
'''

RELAY = '''
from typing import Any

from mcp.server.mcpserver import Context

from mesh import Agent
from mesh.client import InputRequired

agent = Agent("relay", description="Calls the asker through the mesh.")


@agent.tool(read_only=True)
async def greet_via_mesh(ctx: Context) -> Any:
    """Ask asker.greet through the registry; its question goes up to our own client."""
    try:
        answer = await agent.mesh.invoke("asker", "greet", {}, context=ctx)
    except InputRequired as needed:
        return needed.result
    return "relayed: " + answer["result"]["structuredContent"]["result"]


@agent.tool(read_only=True)
async def chatty_via_mesh(ctx: Context) -> Any:
    """Call asker.chatty through the registry; its logs and progress reach our own client."""
    answer = await agent.mesh.invoke("asker", "chatty", {"steps": 2}, context=ctx)
    return "relayed: " + answer["result"]["structuredContent"]["result"]
'''

VERSIONS = ["legacy", "2026-07-28"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    sources = {"asker": ASKER, "relay": RELAY}
    with running_mesh(tmp_path_factory, "front", ("asker", "relay"), sources=sources) as network:
        yield network


def urls(mesh: Mesh, agent: str, tool: str) -> list[tuple[str, str]]:
    """(endpoint, name there) for one tool: the agent's own face and the whole mesh."""
    return [(f"{mesh.url}/agents/{agent}/mcp", tool), (f"{mesh.url}/mcp", f"{agent}__{tool}")]


async def on_elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def on_sample(context, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    assert params.messages[0].content.text == "Say a colour"
    return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="teal"),
                                     model="scripted")


@pytest.mark.parametrize("mode", VERSIONS)
async def test_elicitation_and_sampling_reach_the_client_and_the_answer_the_tool(mesh: Mesh, mode: str):
    for url, prefix in [(f"{mesh.url}/agents/asker/mcp", ""), (f"{mesh.url}/mcp", "asker__")]:
        async with Client(url, mode=mode, elicitation_callback=on_elicit, sampling_callback=on_sample) as client:
            greeted = await client.call_tool(f"{prefix}greet", {})
            assert not greeted.is_error, greeted
            assert greeted.structured_content == {"result": "hello Ada"}
            coloured = await client.call_tool(f"{prefix}colour", {})
            assert coloured.structured_content == {"result": "teal"}
            assert coloured.meta["io.mcpmesh/run"]


@pytest.mark.parametrize("mode", VERSIONS)
async def test_a_client_without_elicitation_hears_the_agents_own_error(mesh: Mesh, mode: str):
    for url, name in urls(mesh, "asker", "greet"):
        async with Client(url, mode=mode) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool(name, {})
            assert refused.value.error.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY
            assert "elicitation" in refused.value.error.data["requiredCapabilities"]


@pytest.mark.parametrize("mode", VERSIONS)
async def test_json_rpc_errors_keep_their_code_and_data(mesh: Mesh, mode: str):
    for url, name in urls(mesh, "asker", "refuse"):
        async with Client(url, mode=mode) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool(name, {})
            assert refused.value.error.code == -32001
            assert refused.value.error.data == {"why": "because", "retry": False}


@pytest.mark.parametrize("mode", VERSIONS)
async def test_logs_at_the_clients_level_and_progress_reach_it(mesh: Mesh, mode: str):
    logs: list[str] = []
    progress: list[float] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    for url, name in urls(mesh, "asker", "chatty"):
        logs.clear()
        progress.clear()
        options = {} if mode == "legacy" else {"log_level": "info"}
        async with Client(url, mode=mode, logging_callback=on_log, **options) as client:
            if mode == "legacy":
                await client.set_logging_level("info")
            result = await client.call_tool(name, {"steps": 3}, progress_callback=on_progress)
            assert result.structured_content == {"result": "talked"}
        assert logs == ["info 0", "info 1", "info 2"], url
        assert progress == [1.0, 2.0, 3.0], url


@pytest.mark.parametrize("mode", VERSIONS)
async def test_a_cancelled_call_is_recorded_as_cancelled(mesh: Mesh, mode: str):
    async with Client(f"{mesh.url}/agents/asker/mcp", mode=mode) as client:
        with anyio.move_on_after(0.5):
            await client.call_tool("wait", {"seconds": 5})

    def cancelled() -> bool:
        runs = httpx.get(f"{mesh.url}/v1/runs", params={"agent": "asker", "limit": 20}).json()["runs"]
        return any(run["tool"] == "wait" and run["status"] == "cancelled" for run in runs)

    with anyio.fail_after(10):
        while not cancelled():
            await anyio.sleep(0.1)


@pytest.mark.parametrize("mode", VERSIONS)
async def test_listed_tools_carry_signatures_a_client_verifies_itself(mesh: Mesh, mode: str):
    for url, _ in urls(mesh, "asker", "greet"):
        async with Client(url, mode=mode) as client:
            tools = [tool for tool in (await client.list_tools()).tools
                     if tool.name not in ("discover", "invoke", "build_agent")]  # the registry's own
        assert {t.name.removeprefix("asker__") for t in tools if "asker" in t.name or "__" not in t.name} >= {
            "greet", "colour", "chatty", "refuse", "wait"}
        for tool in tools:
            wire = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
            meta = wire["_meta"]
            if "io.mcpmesh/name" in meta:  # /mcp renamed it AGENT__NAME: the signed name is in _meta
                wire["name"] = meta["io.mcpmesh/name"]
            trust = TrustStore.from_jwks(httpx.get(meta["io.mcpmesh/jwks"]).json())
            block = verify_tool(wire, trust)
            assert block["kid"] in trust.keys
            forged = {**wire, "description": "something else"}
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do
                verify_tool(forged, trust)


@pytest.mark.parametrize("mode", VERSIONS)
async def test_resources_and_prompts_take_the_call_path(mesh: Mesh, mode: str):
    for url, prefix in [(f"{mesh.url}/agents/asker/mcp", ""), (f"{mesh.url}/mcp", "asker__")]:
        async with Client(url, mode=mode) as client:
            listed = (await client.list_resources()).resources
            assert [r.uri for r in listed] == ["test://static-text"]
            assert listed[0].meta["io.mcpmesh/jwks"].endswith("/agents/asker/jwks.json")
            read = await client.read_resource("test://static-text")
            assert read.contents[0].text == "static text"
            assert [p.name for p in (await client.list_prompts()).prompts] == [f"{prefix}greeting"]
            prompt = await client.get_prompt(f"{prefix}greeting", {"name": "Ada"})
            assert prompt.messages[0].content.text == "Hello Ada"
            assert (await client.read_resource("test://notes/7")).contents[0].text == "note 7"  # by its template
            if mode == "legacy":  # a session may subscribe to what is pinned, and only to that
                await client.subscribe_resource("test://static-text")
                await client.unsubscribe_resource("test://static-text")
                with pytest.raises(MCPError):
                    await client.subscribe_resource("test://nothing-here")
    runs = httpx.get(f"{mesh.url}/v1/runs", params={"agent": "asker", "limit": 50}).json()["runs"]
    carried = {(run["tool"], run["status"], run["policy_decision"]) for run in runs if run["log"] == "caller"}
    assert {("resource:test://static-text", "ok", "allow"), ("prompt:greeting", "ok", "allow")} <= carried


async def test_an_unknown_agent_has_no_face(mesh: Mesh):
    async with Client(f"{mesh.url}/agents/nobody/mcp", mode="2026-07-28") as client:
        with pytest.raises(MCPError):
            await client.call_tool("greet", {})


@pytest.mark.parametrize("mode", VERSIONS)
async def test_a_chain_asks_the_human_at_the_top(mesh: Mesh, mode: str):
    """relay.greet_via_mesh → registry → asker.greet, which elicits: the question reaches the top client."""
    for url, name in urls(mesh, "relay", "greet_via_mesh"):
        async with Client(url, mode=mode, elicitation_callback=on_elicit) as client:
            result = await client.call_tool(name, {})
            assert not result.is_error, result
            assert result.content[0].text == "relayed: hello Ada"


@pytest.mark.parametrize("mode", VERSIONS)
async def test_a_chain_passes_logs_to_the_top(mesh: Mesh, mode: str):
    logs: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    options = {} if mode == "legacy" else {"log_level": "info"}
    async with Client(f"{mesh.url}/agents/relay/mcp", mode=mode, logging_callback=on_log, **options) as client:
        if mode == "legacy":
            await client.set_logging_level("info")
        result = await client.call_tool("chatty_via_mesh", {})
        assert result.content[0].text == "relayed: talked"
    assert logs == ["info 0", "info 1"]


async def test_a_session_tool_asks_the_client_in_the_middle_of_the_call(mesh: Mesh):
    """2025-11-25 tools that use the session itself (``ctx.elicit``, ``ctx.session.create_message`` on the
    session's own stream): the registry holds a session with the agent and puts the questions to the client."""
    for url, name in urls(mesh, "asker", "greet_in_session"):
        async with Client(url, mode="legacy", elicitation_callback=on_elicit) as client:
            result = await client.call_tool(name, {})
            assert not result.is_error, result
            assert result.structured_content == {"result": "hello Ada"}
    for url, name in urls(mesh, "asker", "colour_in_session"):
        async with Client(url, mode="legacy", sampling_callback=on_sample) as client:
            result = await client.call_tool(name, {})
            assert not result.is_error, result
            assert result.structured_content == {"result": "teal"}


async def test_a_stream_the_agent_closes_is_resumed(mesh: Mesh):
    logs: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async with Client(f"{mesh.url}/agents/asker/mcp", mode="legacy", logging_callback=on_log) as client:
        result = await client.call_tool("resumed", {})
        assert result.structured_content == {"result": "resumed"}
    assert logs == ["before", "after"]


async def test_resource_updates_reach_a_subscribed_session(mesh: Mesh):
    updates: list[str] = []

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async with Client(f"{mesh.url}/agents/asker/mcp", mode="legacy", message_handler=on_message) as client:
        await client.subscribe_resource("test://static-text")
        await client.call_tool("touch", {"uri": "test://notes/1"})  # not followed: not told
        await client.call_tool("touch", {"uri": "test://static-text"})
        with anyio.fail_after(10):
            while not updates:
                await anyio.sleep(0.05)
        await client.unsubscribe_resource("test://static-text")
        await client.call_tool("touch", {"uri": "test://static-text"})
        await anyio.sleep(0.3)
    assert updates == ["test://static-text"]


async def first_event(subscription: object, seen: list[object]) -> None:
    async for event in subscription:
        seen.append(event)
        return


async def test_resource_updates_reach_a_listening_stream(mesh: Mesh):
    for url, touch in ((f"{mesh.url}/agents/asker/mcp", "touch"), (f"{mesh.url}/mcp", "asker__touch")):
        seen: list[object] = []
        async with Client(url, mode="2026-07-28") as client, \
                client.listen(resource_subscriptions=["test://static-text"]) as subscription, \
                anyio.create_task_group() as group:
            group.start_soon(first_event, subscription, seen)
            with anyio.fail_after(10):
                while not seen:  # the registry's own watch on the agent opens a moment after the ack
                    await client.call_tool(touch, {"uri": "test://static-text"})
                    await anyio.sleep(0.2)
        assert seen[0] == ResourceUpdated(uri="test://static-text"), url


async def test_list_changes_reach_sessions_and_listening_streams(mesh: Mesh):
    """The registry's lists change when it admits, re-admits or blocks: both kinds of client hear of it.
    (Last in this module: it revokes the relay agent's key, which blocks the relay's tools.)"""
    heard: list[str] = []

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            heard.append("session")

    async with Client(f"{mesh.url}/mcp", mode="legacy", message_handler=on_message) as legacy, \
            Client(f"{mesh.url}/mcp", mode="2026-07-28") as modern:
        await legacy.list_tools()  # the face now knows the session
        async with modern.listen(tools_list_changed=True) as subscription, anyio.create_task_group() as group:

            async def read() -> None:
                async for event in subscription:
                    if isinstance(event, ToolsListChanged):
                        heard.append("stream")
                        return

            group.start_soon(read)
            kid = httpx.get(f"{mesh.url}/agents/relay/jwks.json").json()["keys"][0]["kid"]
            revoked = httpx.post(f"{mesh.url}/v1/agents/relay/keys/{kid}/revoke", json={"reason": "test"})
            assert revoked.status_code < 300, revoked.text
            with anyio.fail_after(10):
                while sorted(set(heard)) != ["session", "stream"]:
                    await anyio.sleep(0.05)
        assert not [tool for tool in (await legacy.list_tools()).tools if tool.name.startswith("relay__")]
