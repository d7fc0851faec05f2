"""The A2A agent card and the A2A JSON-RPC binding, checked with code this project did not write.

Card signatures are verified with jwcrypto and with a2a-sdk's verifier; the binding is served by
uvicorn on loopback and called with a2a-sdk's client, with a real MCPServer behind it.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
import uvicorn
from a2a.client import ClientConfig, create_client
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers import get_data_parts, get_text_parts, new_data_part
from a2a.server.context import ServerCallContext
from a2a.types import Message, Role, SendMessageRequest, Task, TaskState
from a2a.utils.proto_utils import validate_proto_required_fields
from a2a.utils.signing import InvalidSignaturesError, create_signature_verifier
from google.protobuf.json_format import MessageToDict
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws
from mcp import types
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mesh.a2a import RecentTaskStore, a2a_routes
from mesh.card import (
    CARD_PATH,
    MAX_CARD_BYTES,
    CardMissing,
    CardProblem,
    build_card,
    card_url,
    fetch_agent_card,
    sign_card,
    signed_payload,
    text_tool,
    verify_card,
)
from mesh.keys import KeyRing, TrustStore, b64url, b64url_decode

TOOLS = [
    {
        "name": "add",
        "description": "Add two integers.",
        "inputSchema": {"type": "object", "examples": [{"a": 1, "b": 2}]},
        "outputSchema": {"type": "object"},
        "annotations": {"readOnlyHint": True},
        "scopes": ["math:read"],
        "_meta": {"io.mcpmesh/signature": {"kid": "ignored"}},
    },
    {"name": "shout", "description": "Upper-case a text.", "inputSchema": {"type": "object"}},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    ring = KeyRing.open(tmp_path / "keys", create=True)
    ring.rotate()  # two valid keys: the card carries two signatures
    return ring


def signed_card(ring: KeyRing, base_url: str = "http://127.0.0.1:8123", tools: list[dict] = TOOLS) -> dict:
    card = build_card(name="calc", description="Adds – naïvely", version="0.1.0", base_url=base_url, tools=tools)
    return sign_card(card, ring.signing_keys(), jku=f"{base_url}/.well-known/jwks.json")


def public_keys(ring: KeyRing) -> dict[str, dict]:
    """The ring's public JWKs by kid, as a verifier elsewhere would read them from its JWKS."""
    return {key["kid"]: {k: v for k, v in key.items() if k != "exp"} for key in ring.public_jwks()["keys"]}


def jwcrypto_verify(card: dict, signature: dict, public_jwk: dict) -> None:
    """Verify one detached §8.4 signature with jwcrypto: re-attach the canonical payload."""
    payload = b64url(signed_payload(card))
    token = jwcrypto_jws.JWS()
    token.deserialize(f"{signature['protected']}.{payload}.{signature['signature']}")
    token.verify(jwcrypto_jwk.JWK(**public_jwk), alg="ES256")


def a2a_verifier(known: dict[str, dict]) -> Any:
    """a2a-sdk's verifier; an unknown kid must raise PyJWKError or it gives up at the first signature."""

    def key_provider(kid: str | None, jku: str | None) -> jwt.PyJWK:
        if kid not in known:
            raise jwt.exceptions.PyJWKError(f"unknown kid {kid}")
        return jwt.PyJWK(known[kid])

    return create_signature_verifier(key_provider, ["ES256"])


# -- the card and its signatures --------------------------------------------------------------------


def test_card_is_an_a2a_agent_card(ring: KeyRing) -> None:
    card = signed_card(ring)
    parsed = parse_agent_card(copy.deepcopy(card))
    validate_proto_required_fields(parsed)
    assert MessageToDict(parsed) == card  # what an a2a-sdk client reads is exactly what was signed
    assert card["supportedInterfaces"] == [
        {"url": "http://127.0.0.1:8123/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ]
    assert card["capabilities"] == {"streaming": False, "pushNotifications": False}
    add, shout = card["skills"]
    assert add["id"] == "add" and add["tags"] == ["mcp-tool", "read-only", "scope:math:read"]
    assert add["examples"] == ['{"arguments":{"a":1,"b":2},"tool":"add"}']
    assert add["outputModes"] == ["application/json", "text/plain"] and shout["outputModes"] == ["text/plain"]


def test_signatures_follow_the_spec_and_verify_independently(ring: KeyRing) -> None:
    card = signed_card(ring)
    public = public_keys(ring)
    assert len(card["signatures"]) == 2
    for signature in card["signatures"]:
        header = json.loads(b64url_decode(signature["protected"]))
        assert header == {
            "alg": "ES256",
            "kid": header["kid"],
            "typ": "JOSE",
            "jku": "http://127.0.0.1:8123/.well-known/jwks.json",
        }
        jwcrypto_verify(card, signature, public[header["kid"]])
        # a2a-sdk, given only this signature's key, must still find it among the two
        a2a_verifier({header["kid"]: public[header["kid"]]})(parse_agent_card(copy.deepcopy(card)))
    assert sorted(verify_card(card, TrustStore.from_jwks(ring.public_jwks()))) == sorted(public)


def test_a_changed_card_fails_every_verifier(ring: KeyRing) -> None:
    card = signed_card(ring)
    card["description"] = "Adds, and also exfiltrates"
    public = public_keys(ring)
    for signature in card["signatures"]:
        kid = json.loads(b64url_decode(signature["protected"]))["kid"]
        with pytest.raises(jwcrypto_jws.InvalidJWSSignature):
            jwcrypto_verify(card, signature, public[kid])
    with pytest.raises(InvalidSignaturesError):
        a2a_verifier(public)(parse_agent_card(copy.deepcopy(card)))
    with pytest.raises(CardProblem, match="does not verify"):
        verify_card(card, TrustStore.from_jwks(ring.public_jwks()))


def test_verify_card_needs_a_trusted_key(ring: KeyRing, tmp_path: Path) -> None:
    stranger = KeyRing.open(tmp_path / "stranger", create=True)
    with pytest.raises(CardProblem, match="no valid signature"):
        verify_card(signed_card(ring), TrustStore.from_jwks(stranger.public_jwks()))
    with pytest.raises(CardProblem, match="no signature"):
        verify_card({k: v for k, v in signed_card(ring).items() if k != "signatures"}, TrustStore())


def test_sign_card_refuses_what_a2a_sdk_would_read_differently(ring: KeyRing) -> None:
    card = build_card(name="calc", description="d", version="1", base_url="http://x", tools=TOOLS)
    with pytest.raises(CardProblem, match="normal form"):
        sign_card({**card, "iconUrl": ""}, ring.signing_keys(), jku="http://x/jwks")
    with pytest.raises(CardProblem, match="not an A2A"):
        sign_card({**card, "url": "http://x"}, ring.signing_keys(), jku="http://x/jwks")


# -- the A2A JSON-RPC binding, served for real --------------------------------------------------------


def calculator() -> MCPServer:
    server = MCPServer("calc")

    @server.tool(annotations=types.ToolAnnotations(read_only_hint=True))
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        if b == 0:
            raise ToolError("cannot divide by zero")
        return a / b

    return server


async def mcp_error_result(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text="quota exhausted")], is_error=True)


@contextmanager
def serving(server: MCPServer, ring: KeyRing, extra: list[dict] = ()) -> Iterator[str]:
    """``server``'s tools (plus ``extra``, answered with an MCP error result) behind its signed card and
    A2A binding, served by uvicorn on loopback; yields the base URL."""
    tools = [tool.model_dump(by_alias=True, mode="json", exclude_none=True) for tool in anyio.run(server.list_tools)]
    tools += extra
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    card = signed_card(ring, base_url, tools)

    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        if name in {tool["name"] for tool in extra}:
            return await mcp_error_result(name, arguments)
        return await server.call_tool(name, arguments)  # raises ToolError on failure, as the agent's does

    async def card_route(request: Request) -> JSONResponse:
        return JSONResponse(card)

    app = Starlette(routes=[Route(CARD_PATH, card_route), *a2a_routes(card=card, call_tool=call_tool, tools=tools)])
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield base_url
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def agent_url(ring: KeyRing) -> Iterator[str]:
    """An agent on loopback: its signed card, and A2A backed by a real MCPServer."""
    flaky = {"name": "flaky", "description": "Returns an MCP error result.", "inputSchema": {"type": "object"}}
    with serving(calculator(), ring, [flaky]) as base_url:
        yield base_url


def shouter() -> MCPServer:
    server = MCPServer("shout")

    @server.tool(annotations=types.ToolAnnotations(read_only_hint=True))
    def shout(text: str, times: int = 1) -> str:
        """Upper-case a text."""
        return " ".join([text.upper()] * times)

    return server


async def send(base_url: str, ring: KeyRing, tool: str, arguments: dict[str, Any]) -> Task:
    """Fetch and verify the card with a2a-sdk's client, then send one message calling ``tool``."""
    public = public_keys(ring)
    async with httpx.AsyncClient(timeout=10) as http:
        client = await create_client(
            base_url,
            client_config=ClientConfig(streaming=False, httpx_client=http),
            signature_verifier=a2a_verifier(public),
        )
        message = Message(
            role=Role.ROLE_USER,
            message_id=str(uuid.uuid4()),
            parts=[new_data_part({"tool": tool, "arguments": arguments})],
        )
        responses = [response async for response in client.send_message(SendMessageRequest(message=message))]
    assert len(responses) == 1 and responses[0].HasField("task")
    return responses[0].task


def status_text(task: Task) -> str:
    return "\n".join(get_text_parts(task.status.message.parts))


async def test_a2a_message_calls_the_tool(agent_url: str, ring: KeyRing) -> None:
    task = await send(agent_url, ring, "add", {"a": 2, "b": 3})
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    [artifact] = task.artifacts
    assert artifact.name == "add"
    assert get_data_parts(artifact.parts) == [{"result": 5}]
    assert get_text_parts(artifact.parts) == ["5"]


async def test_unknown_tool_fails_the_task(agent_url: str, ring: KeyRing) -> None:
    task = await send(agent_url, ring, "format_disk", {})
    assert task.status.state == TaskState.TASK_STATE_FAILED
    assert "unknown tool 'format_disk'" in status_text(task)
    assert not task.artifacts


async def test_tool_errors_fail_the_task(agent_url: str, ring: KeyRing) -> None:
    raised = await send(agent_url, ring, "divide", {"a": 1, "b": 0})
    assert raised.status.state == TaskState.TASK_STATE_FAILED
    assert "cannot divide by zero" in status_text(raised)
    returned = await send(agent_url, ring, "flaky", {})
    assert returned.status.state == TaskState.TASK_STATE_FAILED
    assert status_text(returned) == "quota exhausted"


def send_json(url: str, parts: list[dict], task_id: str | None = None) -> dict:
    """One SendMessage over plain JSON-RPC; the JSON result as it came (no protobuf in between)."""
    message = {"role": "ROLE_USER", "messageId": str(uuid.uuid4()), "parts": parts}
    if task_id:
        message["taskId"] = task_id
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}
    reply = httpx.post(url, json=body, headers={"A2A-Version": "1.0"}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert "result" in reply.json(), reply.text
    return reply.json()["result"]["task"]


def test_a_text_message_asks_how_to_call_and_the_task_goes_on(agent_url: str) -> None:
    asked = send_json(f"{agent_url}/a2a", [{"text": "hello"}])
    assert asked["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    text, data = asked["status"]["message"]["parts"]
    assert text["text"].startswith("This agent answers tool calls, not free text.")
    assert "- add(a, b): Add two integers." in text["text"] and '{"tool": NAME, "arguments": {...}}' in text["text"]
    assert [tool["name"] for tool in data["data"]["tools"]] == ["add", "divide", "flaky"]
    assert data["data"]["tools"][0]["inputSchema"]["required"] == ["a", "b"]

    # The answer on the same task calls the tool: the task goes on to complete.
    done = send_json(f"{agent_url}/a2a", [{"data": {"tool": "add", "arguments": {"a": 2, "b": 3}}}], asked["id"])
    assert (done["id"], done["status"]["state"]) == (asked["id"], "TASK_STATE_COMPLETED")
    assert done["artifacts"][0]["parts"][0]["data"] == {"result": 5}


def test_integers_stay_integers_on_the_wire(agent_url: str) -> None:
    task = send_json(f"{agent_url}/a2a", [{"data": {"tool": "add", "arguments": {"a": 40, "b": 2}}}])
    [data, text] = task["artifacts"][0]["parts"]
    assert data["data"] == {"result": 42} and type(data["data"]["result"]) is int
    assert text["text"] == "42"
    halved = send_json(f"{agent_url}/a2a", [{"data": {"tool": "divide", "arguments": {"a": 5, "b": 2}}}])
    assert halved["artifacts"][0]["parts"][0]["data"] == {"result": 2.5}


def test_the_binding_answers_with_a_trailing_slash(agent_url: str) -> None:
    task = send_json(f"{agent_url}/a2a/", [{"data": {"tool": "add", "arguments": {"a": 1, "b": 1}}}])
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"


def test_the_only_tool_taking_one_string_answers_plain_text(ring: KeyRing) -> None:
    with serving(shouter(), ring) as base_url:
        card = httpx.get(f"{base_url}{CARD_PATH}").json()
        assert card["defaultInputModes"] == ["application/json", "text/plain"]
        assert card["skills"][0]["inputModes"] == ["application/json", "text/plain"]
        task = send_json(f"{base_url}/a2a/", [{"text": "hello"}])
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert task["artifacts"][0]["parts"][0]["data"] == {"result": "HELLO"}


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ([{"name": "t", "inputSchema": {"properties": {"q": {"type": "string"}}, "required": ["q"]},
           "annotations": {"readOnlyHint": True}}], ("t", "q")),
        ([{"name": "t", "inputSchema": {"properties": {"q": {"type": "string"}}},
           "annotations": {"destructiveHint": False}}], ("t", "q")),
        # may destroy something (MCP's default for a tool that is not read-only): never guessed
        ([{"name": "t", "inputSchema": {"properties": {"q": {"type": "string"}}, "required": ["q"]}}], None),
        ([{"name": "t", "inputSchema": {"properties": {"n": {"type": "integer"}}, "required": ["n"]},
           "annotations": {"readOnlyHint": True}}], None),
        ([{"name": "t", "inputSchema": {"properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                                        "required": ["a", "b"]}, "annotations": {"readOnlyHint": True}}], None),
        # two tools: a text could mean either
        ([{"name": n, "inputSchema": {"properties": {"q": {"type": "string"}}, "required": ["q"]},
           "annotations": {"readOnlyHint": True}} for n in ("a", "b")], None),
    ],
)
def test_text_tool(tools: list[dict], expected: tuple[str, str] | None) -> None:
    assert text_tool(tools) == expected


def test_routes_refuse_a_card_that_names_another_endpoint(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="no JSONRPC interface"):
        a2a_routes(card=signed_card(ring), call_tool=mcp_error_result, path="/elsewhere")


# -- fetching a card for admission ------------------------------------------------------------------------


def test_the_card_is_found_beside_the_mcp_endpoint() -> None:
    assert card_url("http://127.0.0.1:8123/mcp") == "http://127.0.0.1:8123/.well-known/agent-card.json"
    assert card_url("https://host/agents/x/mcp/") == "https://host/agents/x/.well-known/agent-card.json"
    assert card_url("https://host:8443/rpc") == "https://host:8443/.well-known/agent-card.json"


async def test_fetching_says_why_there_is_no_card(ring: KeyRing) -> None:
    card = signed_card(ring)
    answers = {
        "/ok/.well-known/agent-card.json": httpx.Response(200, json=card),
        "/junk/.well-known/agent-card.json": httpx.Response(200, text="<html>"),
        "/huge/.well-known/agent-card.json": httpx.Response(200, json={"x": "y" * MAX_CARD_BYTES}),
        "/moved/.well-known/agent-card.json": httpx.Response(302, headers={"location": "http://elsewhere/"}),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return answers.get(request.url.path, httpx.Response(404))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        assert await fetch_agent_card("http://a/ok/mcp", client=client) == card
        with pytest.raises(CardMissing, match=r"no agent card at http://a/\.well-known/agent-card\.json"):
            await fetch_agent_card("http://a/mcp", client=client)
        with pytest.raises(CardProblem, match="is not JSON"):
            await fetch_agent_card("http://a/junk/mcp", client=client)
        with pytest.raises(CardProblem, match="larger than"):
            await fetch_agent_card("http://a/huge/mcp", client=client)
        with pytest.raises(CardProblem, match="answered HTTP 302"):
            await fetch_agent_card("http://a/moved/mcp", client=client)
    with pytest.raises(CardProblem, match="cannot fetch the agent card"):
        await fetch_agent_card(f"http://127.0.0.1:{free_port()}/mcp")


async def test_the_task_store_forgets_the_oldest_tasks() -> None:
    store = RecentTaskStore(limit=2)
    context = ServerCallContext()
    for task_id in ("t1", "t2", "t1", "t3"):  # t1 saved again (an update): t2 is now the oldest
        await store.save(Task(id=task_id, context_id="c"), context)
    assert [await store.get(task_id, context) is not None for task_id in ("t1", "t2", "t3")] == [True, False, True]
