"""A2A through the registry, with a real registry and agents as processes: each agent's binding at
``/agents/NAME/a2a`` goes through the call path (caller, policy, run records, provenance), its card is the
registry's and says so, and an agent's own card is checked as admission would."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_data_parts, new_data_part
from a2a.types import Message, Role, SendMessageRequest, TaskState
from a2a.utils.signing import create_signature_verifier

from mesh.card import (
    CARD_PATH,
    CardProblem,
    build_card,
    card_url,
    fetch_verified_card,
    sign_card,
    verify_agent_card,
    verify_card,
)
from mesh.keys import KeyRing, TrustStore
from mesh.manifest import Manifest
from mesh.registry.a2a_front import PROXY_EXTENSION
from mesh.registry.auth import issue_token

from .test_registry_e2e import ECHO, Mesh, running_mesh

SHOUT_AGENT = '''
from mesh import Agent

agent = Agent("shout", description="Upper-cases what it is told.")


@agent.tool(read_only=True, idempotent=True, open_world=False)
def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()
'''


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """This repository's workspace plus `echo` (five tools) and `shout` (one text tool), all running."""
    with running_mesh(tmp_path_factory, "a2a", ("librarian", "researcher", "echo", "shout"),
                      sources={"echo": ECHO, "shout": SHOUT_AGENT}) as network:
        yield network


def agent_base(mesh: Mesh, name: str) -> str:
    return f"http://127.0.0.1:{mesh.agent_ports[name]}"


def send(url: str, parts: list[dict], headers: dict | None = None, task_id: str | None = None) -> dict:
    """One SendMessage as plain JSON-RPC; the task as the JSON that came back."""
    message: dict[str, Any] = {"role": "ROLE_USER", "messageId": str(uuid.uuid4()), "parts": parts}
    if task_id:
        message["taskId"] = task_id
    reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}},
                       headers={"A2A-Version": "1.0", **(headers or {})}, timeout=60)
    assert reply.status_code == 200 and "result" in reply.json(), reply.text
    return reply.json()["result"]["task"]


def call(tool: str, arguments: dict) -> list[dict]:
    return [{"data": {"tool": tool, "arguments": arguments}}]


def registry_trust(mesh: Mesh) -> TrustStore:
    return TrustStore.from_jwks(httpx.get(f"{mesh.url}/.well-known/jwks.json").json())


def run(mesh: Mesh, run_id: str) -> dict:
    return httpx.get(f"{mesh.url}/v1/runs/{run_id}").json()


def a2a_verifier(trust: TrustStore) -> Any:
    known = {kid: {k: v for k, v in key.jwk.items() if k != "exp"} for kid, key in trust.keys.items()}

    def key_provider(kid: str | None, jku: str | None) -> jwt.PyJWK:
        if kid not in known:
            raise jwt.exceptions.PyJWKError(f"unknown kid {kid}")
        return jwt.PyJWK(known[kid])

    return create_signature_verifier(key_provider, ["ES256"])


# -- the registry's binding and card -------------------------------------------------------------------


def test_the_registry_serves_a_card_it_signed_for_each_agent(mesh: Mesh):
    card = httpx.get(f"{mesh.url}/agents/echo{CARD_PATH}").json()
    assert card["name"] == "echo"
    assert [i["url"] for i in card["supportedInterfaces"]] == [f"{mesh.url}/agents/echo/a2a"]
    assert [s["id"] for s in card["skills"]] == ["echo", "fail", "refuse", "wait", "wipe"]
    # Signed by the registry's key, not the agent's, and saying so.
    assert verify_card(card, registry_trust(mesh))
    echo_keys = TrustStore.from_jwks(KeyRing.open(mesh.workspace / ".mesh" / "keys" / "echo").public_jwks())
    with pytest.raises(CardProblem, match="no valid signature"):
        verify_card(card, echo_keys)
    [extension] = card["capabilities"]["extensions"]
    assert extension["uri"] == PROXY_EXTENSION
    manifest_digest = httpx.get(f"{mesh.url}/v1/agents/echo").json()["manifest_digest"]
    assert extension["params"] == {"agent": "echo", "agentCard": f"{agent_base(mesh, 'echo')}{CARD_PATH}",
                                   "manifestDigest": manifest_digest}
    # The skills are what the agent's own card, signed by the agent, says.
    own = httpx.get(extension["params"]["agentCard"]).json()
    assert verify_card(own, echo_keys) and own["skills"] == card["skills"]

    missing = httpx.get(f"{mesh.url}/agents/nobody{CARD_PATH}")
    assert missing.status_code == 404 and missing.json()["type"].endswith("/unknown-agent")


async def test_an_a2a_client_calls_a_tool_through_the_registry_and_the_run_is_recorded(mesh: Mesh):
    async with httpx.AsyncClient(timeout=60) as http:
        client = await create_client(f"{mesh.url}/agents/researcher",
                                     client_config=ClientConfig(streaming=False, httpx_client=http),
                                     signature_verifier=a2a_verifier(registry_trust(mesh)))
        message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()),
                          parts=[new_data_part({"tool": "brief", "arguments": {"topic": "signing keys", "k": 2}})])
        [response] = [r async for r in client.send_message(SendMessageRequest(message=message))]
    task = response.task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    [artifact] = task.artifacts
    brief = get_data_parts(artifact.parts)[0]
    assert len(brief["sources"]) == 2 and brief["summary"]

    recorded = run(mesh, artifact.metadata["io.mcpmesh/run"])
    assert (recorded["caller"], recorded["agent"], recorded["tool"], recorded["status"]) == (
        "user:local", "researcher", "brief", "ok")
    assert (recorded["policy_decision"], recorded["policy_rule"]) == ("allow", "allow")
    assert recorded["linked"][0]["id"] == artifact.metadata["io.mcpmesh/target-run"]
    claims = json.loads(registry_trust(mesh).verify_compact(recorded["provenance"],
                                                            expected_typ="mcpmesh-provenance+jws"))
    assert (claims["run_id"], claims["caller"], claims["status"]) == (recorded["id"], "user:local", "ok")
    # The researcher's own call to the librarian hangs below it, as usual.
    assert run(mesh, brief["librarian_run"])["caller"] == "agent:researcher"


def test_integers_stay_integers_at_the_agent_and_through_the_registry(mesh: Mesh):
    for url in (f"{agent_base(mesh, 'researcher')}/a2a/", f"{mesh.url}/agents/researcher/a2a/"):
        task = send(url, call("brief", {"topic": "signing keys", "k": 2}))
        assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
        brief = task["artifacts"][0]["parts"][0]["data"]
        assert [type(source["chunk"]) for source in brief["sources"]] == [int, int]
        assert all(type(source["score"]) is float for source in brief["sources"])


def test_a_policy_denial_fails_the_task_naming_the_rule(mesh: Mesh):
    task = send(f"{mesh.url}/agents/echo/a2a", call("wipe", {}))
    assert task["status"]["state"] == "TASK_STATE_FAILED"
    text, data = task["status"]["message"]["parts"]
    assert text["text"].startswith("Policy denied: denied by rule 'destructive_not_allowed'")
    problem = data["data"]
    assert problem["type"].endswith("/policy-denied") and problem["rule"] == "destructive_not_allowed"
    recorded = run(mesh, problem["run_id"])
    assert (recorded["status"], recorded["policy_decision"], recorded["policy_rule"]) == (
        "denied", "deny", "destructive_not_allowed")
    assert "artifacts" not in task


def test_failures_on_the_way_are_failed_tasks_or_errors(mesh: Mesh):
    invalid = send(f"{mesh.url}/agents/echo/a2a", call("echo", {"text": 42}))
    assert invalid["status"]["state"] == "TASK_STATE_FAILED"
    problem = invalid["status"]["message"]["parts"][1]["data"]
    assert problem["type"].endswith("/invalid-arguments") and run(mesh, problem["run_id"])["status"] == "invalid"

    tool_error = send(f"{mesh.url}/agents/echo/a2a", call("fail", {"reason": "disk on fire"}))
    assert tool_error["status"]["state"] == "TASK_STATE_FAILED"
    assert "disk on fire" in tool_error["status"]["message"]["parts"][0]["text"]
    assert run(mesh, tool_error["status"]["message"]["metadata"]["io.mcpmesh/run"])["status"] == "error"

    unknown_tool = send(f"{mesh.url}/agents/echo/a2a", call("format_disk", {}))
    assert unknown_tool["status"]["state"] == "TASK_STATE_FAILED"
    assert "unknown tool 'format_disk'; this agent offers: echo, fail, refuse, wait, wipe" in (
        unknown_tool["status"]["message"]["parts"][0]["text"])

    nobody = httpx.post(f"{mesh.url}/agents/nobody/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
                                                              "params": {}})
    assert nobody.status_code == 404
    assert nobody.json()["error"]["data"]["type"].endswith("/unknown-agent")


def test_plain_text_asks_for_a_tool_call_or_calls_the_text_tool(mesh: Mesh):
    asked = send(f"{mesh.url}/agents/librarian/a2a", [{"text": "what do the documents say about keys?"}])
    assert asked["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    text, data = asked["status"]["message"]["parts"]
    assert "- search(query, k?)" in text["text"] and '{"tool": NAME, "arguments": {...}}' in text["text"]
    assert [tool["name"] for tool in data["data"]["tools"]] == ["list_documents", "read", "search"]
    answered = send(f"{mesh.url}/agents/librarian/a2a", call("search", {"query": "keys", "k": 1}), task_id=asked["id"])
    assert answered["status"]["state"] == "TASK_STATE_COMPLETED"
    assert len(answered["artifacts"][0]["parts"][0]["data"]["result"]) == 1

    for url in (f"{agent_base(mesh, 'shout')}/a2a", f"{mesh.url}/agents/shout/a2a/"):
        shouted = send(url, [{"text": "hello"}])
        assert shouted["status"]["state"] == "TASK_STATE_COMPLETED"
        assert shouted["artifacts"][0]["parts"][0]["data"] == {"result": "HELLO"}
    assert run(mesh, shouted["artifacts"][0]["metadata"]["io.mcpmesh/run"])["tool"] == "shout"


def test_an_agent_calls_as_itself_and_its_tasks_are_its_own(mesh: Mesh):
    key = KeyRing.open(mesh.workspace / ".mesh" / "keys" / "researcher").active()
    as_researcher = {"authorization": f"Bearer {issue_token('researcher', key)}"}
    task = send(f"{mesh.url}/agents/echo/a2a", call("echo", {"text": "hi"}), headers=as_researcher)
    assert run(mesh, task["artifacts"][0]["metadata"]["io.mcpmesh/run"])["caller"] == "agent:researcher"

    def get_task(headers: dict) -> dict:
        body = {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": task["id"]}}
        return httpx.post(f"{mesh.url}/agents/echo/a2a", json=body, headers={"A2A-Version": "1.0", **headers}).json()

    assert get_task(as_researcher)["result"]["id"] == task["id"]
    assert "error" in get_task({})  # the local user did not send it: no such task for them


# -- admitting an agent's own card ------------------------------------------------------------------------


def admitted(mesh: Mesh, name: str) -> tuple[str, TrustStore, list[dict]]:
    """What admission has for an agent: its endpoint, the keys it trusts for it, its signed tools."""
    detail = httpx.get(f"{mesh.url}/v1/agents/{name}").json()
    trust = TrustStore.from_jwks(KeyRing.open(mesh.workspace / ".mesh" / "keys" / name).public_jwks())
    return detail["endpoint"], trust, list(Manifest.from_json(detail["manifest"]).tools.values())


async def test_an_agents_card_is_checked_as_admission_would(mesh: Mesh):
    endpoint, trust, tools = admitted(mesh, "echo")
    assert card_url(endpoint) == f"{agent_base(mesh, 'echo')}{CARD_PATH}"
    card = await fetch_verified_card(endpoint, trust, agent="echo", tools=tools)
    assert card["name"] == "echo"

    tampered = copy.deepcopy(card)
    tampered["skills"][0]["description"] = "Echoes, and also exfiltrates"
    with pytest.raises(CardProblem, match="does not verify"):
        verify_agent_card(tampered, trust, agent="echo", endpoint=endpoint, tools=tools)
    with pytest.raises(CardProblem, match="names agent 'echo', not 'shout'"):
        verify_agent_card(card, trust, agent="shout", endpoint=endpoint, tools=tools)
    stranger = TrustStore.from_jwks(KeyRing.open(mesh.workspace / ".mesh" / "keys" / "shout").public_jwks())
    with pytest.raises(CardProblem, match="no valid signature"):
        verify_agent_card(card, stranger, agent="echo", endpoint=endpoint, tools=tools)
    with pytest.raises(CardProblem, match=r"is not trusted .*\(card at http://127\.0\.0\.1:\d+/\.well-known/"):
        await fetch_verified_card(endpoint, TrustStore(), agent="echo", tools=tools)

    # Signed by the agent's own key, yet not what its signed tools are, or sending clients elsewhere.
    keys = KeyRing.open(mesh.workspace / ".mesh" / "keys" / "echo").signing_keys()
    base = agent_base(mesh, "echo")

    def signed(base_url: str, offered: list[dict]) -> dict:
        built = build_card(name="echo", description="d", version="1", base_url=base_url, tools=offered)
        return sign_card(built, keys, jku=f"{base_url}/.well-known/jwks.json")

    fewer = [tool for tool in tools if tool["name"] != "wipe"]
    with pytest.raises(CardProblem, match="signed tool 'wipe' has no skill"):
        verify_agent_card(signed(base, fewer), trust, agent="echo", endpoint=endpoint, tools=tools)
    milder = [{**tool, "annotations": {"readOnlyHint": True}} if tool["name"] == "wipe" else tool for tool in tools]
    with pytest.raises(CardProblem, match="skill 'wipe' differs from its signed tool in tags"):
        verify_agent_card(signed(base, milder), trust, agent="echo", endpoint=endpoint, tools=tools)
    with pytest.raises(CardProblem, match=re.escape("sends clients to 'http://elsewhere.example/a2a'")):
        verify_agent_card(signed("http://elsewhere.example", tools), trust, agent="echo", endpoint=endpoint,
                          tools=tools)
