"""The Agent API beyond tools: resources, templates, prompts, completions, explicit input schemas, and
the signatures that cover every descriptor a model sees."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.server.mcpserver import Context
from mcp.types import Completion, PromptReference

from mesh import Agent, ToolKit
from mesh.keys import KeyRing, TrustStore
from mesh.manifest import KINDS, SIGNATURE_META, Manifest, ManifestProblem, verify_descriptor, verify_tool
from mesh.names import NameProblem

from .conftest import run_mesh

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"city": {"type": "string", "minLength": 2}},
    "properties": {"city": {"$ref": "#/$defs/city"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}

EXTRA = '''

@agent.resource("notes://today", mime_type="text/plain", scopes=["notes:read"])
def today() -> str:
    """Today's notes."""
    return "buy milk"


@agent.resource("notes://day/{day}")
def day(day: str) -> str:
    """The notes of one day."""
    return f"notes of {day}"


@agent.prompt
def summarise(topic: str) -> str:
    """Ask for a summary of a topic."""
    return f"Summarise {topic}."
'''


def weather_agent() -> Agent:
    agent = Agent("weather")

    @agent.tool(input_schema=SCHEMA)
    def forecast(city: str, days: int = 1) -> str:
        """Forecast for a city."""
        return f"{city}: sunny for {days} days"

    @agent.prompt(name="ask-weather")
    def ask(city: str) -> str:
        """Ask about the weather."""
        return f"What is the weather in {city}?"

    @agent.completion
    async def complete(ref, argument, context) -> Completion:
        return Completion(values=[c for c in ("Paris", "Porto") if c.startswith(argument.value)])

    return agent


async def test_an_explicit_input_schema_is_listed_verbatim_and_checked_before_the_call():
    agent = weather_agent()
    async with Client(agent.build_server()) as client:
        tool = (await client.list_tools()).tools[0]
        assert tool.input_schema == SCHEMA  # $schema, $defs and additionalProperties kept exactly
        good = await client.call_tool("forecast", {"city": "Oslo", "days": 2})
        assert not good.is_error and good.structured_content == {"result": "Oslo: sunny for 2 days"}
        extra = await client.call_tool("forecast", {"city": "Oslo", "wind": True})
        assert extra.is_error and "wind" in extra.content[0].text
        short = await client.call_tool("forecast", {"city": "O"})
        assert short.is_error and "city" in short.content[0].text


async def test_prompts_and_completions_pass_through_to_the_sdk():
    async with Client(weather_agent().build_server()) as client:
        prompt = await client.get_prompt("ask-weather", {"city": "Oslo"})
        assert prompt.messages[0].content.text == "What is the weather in Oslo?"
        completed = await client.complete(PromptReference(type="ref/prompt", name="ask-weather"),
                                          {"name": "city", "value": "P"})
        assert completed.completion.values == ["Paris", "Porto"]


def test_input_schemas_that_mcp_cannot_list_are_refused_where_they_are_written():
    agent = Agent("schemas")
    with pytest.raises(ValueError, match="type"):
        agent.tool(input_schema={"type": "array"})
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        agent.tool(input_schema={"type": "object", "properties": {"x": {"type": 5}}})


def test_resource_and_prompt_names_follow_the_name_rule_and_are_unique():
    kit = ToolKit("docs")
    with pytest.raises(NameProblem, match="resource name"):
        kit.resource("docs://a", name="a/b")(lambda: "x")
    with pytest.raises(NameProblem, match="prompt name"):
        kit.prompt(name="__init__")(lambda: "x")
    kit.resource("docs://a", name="a")(lambda: "x")
    with pytest.raises(ValueError, match="declared twice"):
        kit.resource("docs://a", name="other")(lambda: "y")
    agent = Agent("reader")
    agent.resource("docs://b", name="a")(lambda: "z")
    agent.mount(kit)
    with pytest.raises(ValueError, match="resource names declared more than once: a"):
        agent.all_resources()


def test_the_manifest_signs_every_kind_and_a_tools_only_payload_is_unchanged(tmp_path: Path):
    ring = KeyRing.open(tmp_path / "keys", create=True)
    tool = {"name": "t", "inputSchema": {"type": "object"}}
    tools_only = Manifest.payload("a", "1", "", [(tool, [])])
    assert set(tools_only) == {"format", "agent", "version", "description", "tools"}
    resource = {"uri": "x://r", "name": "r"}
    body = Manifest.payload("a", "1", "", [(tool, [])], resources=[(resource, ["r:read"])],
                            prompts=[({"name": "p"}, [])])
    manifest = Manifest.sign(body, ring.signing_keys())
    trust = TrustStore.from_jwks(ring.public_jwks())
    assert manifest.verify(trust) and manifest.resources["r"]["scopes"] == ["r:read"]
    assert set(manifest.prompts) == {"p"} and manifest.resource_templates == {}
    body["resources"][0]["uri"] = "x://elsewhere"
    with pytest.raises(ManifestProblem, match="resource 'r': digest"):
        Manifest.sign(body, ring.signing_keys()).verify(trust)
    with pytest.raises(ManifestProblem, match="used more than once"):
        Manifest.payload("a", "1", "", [(tool, [])], resources=[(resource, [])],
                         resource_templates=[({"uriTemplate": "x://{id}", "name": "r"}, [])])


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_every_listed_resource_template_and_prompt_is_signed(hello_workspace: Path, agent_server, mode: str):
    agent_file = hello_workspace / "agents" / "hello.py"
    agent_file.write_text(agent_file.read_text() + EXTRA)
    assert run_mesh("sign", "--workspace", str(hello_workspace)).returncode == 0
    manifest = Manifest.load(hello_workspace / "manifests" / "hello.manifest.json")
    assert set(manifest.resources) == {"today"} and set(manifest.resource_templates) == {"day"}
    assert set(manifest.prompts) == {"summarise"}
    base = agent_server(hello_workspace, "hello")
    trust = TrustStore.from_jwks(httpx.get(f"{base}/.well-known/jwks.json").json())
    async with Client(f"{base}/mcp", mode=mode) as client:
        listed = {
            "resource": (await client.list_resources()).resources,
            "resource_template": (await client.list_resource_templates()).resource_templates,
            "prompt": (await client.list_prompts()).prompts,
            "tool": (await client.list_tools()).tools,
        }
        for kind, items in listed.items():
            assert items
            for item in items:
                block = verify_descriptor(kind, item, trust)
                assert block["manifest"] == manifest.digest
                assert block["digest"] == manifest.descriptors(kind)[item.name]["digest"]
        with pytest.raises(ManifestProblem, match="kid/typ"):
            verify_tool(listed["prompt"][0], trust)  # a signed prompt does not pass for a tool
        read = await client.read_resource("notes://day/monday")
        assert read.contents[0].text == "notes of monday"
    assert {kind.typ for kind in KINDS.values()} >= {"mcpmesh-resource+jws", "mcpmesh-prompt+jws"}
    assert SIGNATURE_META in (listed["resource"][0].meta or {})


def test_an_agent_whose_resources_changed_refuses_to_start_naming_them(hello_workspace: Path):
    agent_file = hello_workspace / "agents" / "hello.py"
    agent_file.write_text(agent_file.read_text() + EXTRA)
    assert run_mesh("sign", "--workspace", str(hello_workspace)).returncode == 0
    agent_file.write_text(agent_file.read_text().replace("Today's notes.", "Notes of today.")
                          .replace("def summarise", "def summarize"))
    refused = run_mesh("agent", "run", "hello", "--workspace", str(hello_workspace), timeout=60)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "resource 'today' changed" in refused.stderr
    assert "prompt 'summarise' is signed but no longer served" in refused.stderr
    assert "prompt 'summarize' is served but not signed" in refused.stderr


async def test_a_refused_call_through_the_mesh_reaches_the_tools_caller_in_words():
    from mesh.client import MeshError

    agent = Agent("asker")

    @agent.tool
    async def ask_without_registry() -> str:
        """Call another agent, with no registry to go through."""
        return await agent.mesh.invoke("librarian", "search", {"query": "x"})

    @agent.tool
    async def ask_and_get_denied() -> str:
        """A call the registry refuses."""
        raise MeshError({"title": "Policy denied", "detail": "denied by rule 'missing_scope': agent:asker lacks "
                                                             "scope 'docs:read'", "rule": "missing_scope"})

    async with Client(agent.build_server()) as client:
        alone = await client.call_tool("ask_without_registry", {})
        assert alone.is_error and "asker runs without a registry" in alone.content[0].text
        denied = await client.call_tool("ask_and_get_denied", {})
        assert denied.is_error
        assert denied.content[0].text.endswith("Policy denied: denied by rule 'missing_scope': agent:asker lacks "
                                                "scope 'docs:read'")


async def test_a_session_logs_at_the_level_it_set_and_followers_hear_of_updates():
    """2025-11-25: ``logging/setLevel`` holds for the session's later calls; ``Agent.resource_updated``
    reaches a session subscribed to that resource, and only for it."""
    agent = Agent("levels")

    @agent.resource("notes://today")
    def today() -> str:
        return "milk"

    @agent.tool(read_only=True)
    async def chatty(ctx: Context) -> str:
        """Log at two levels, then say that today's notes changed."""
        await ctx.debug("debug")
        await ctx.info("info")
        await agent.resource_updated("notes://today")
        await agent.resource_updated("notes://other")
        return "ok"

    logs: list[str] = []
    updates: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async with Client(agent.build_server(), mode="legacy", logging_callback=on_log,
                      message_handler=on_message) as client:
        await client.call_tool("chatty", {})
        await client.set_logging_level("info")
        await client.subscribe_resource("notes://today")
        await client.call_tool("chatty", {})
        with anyio.fail_after(5):
            while not updates:
                await anyio.sleep(0.01)
    assert logs == ["debug", "info", "info"]
    assert updates == ["notes://today"]
