"""A real agent process on loopback, seen through the official MCP client and plain HTTP."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import httpx
import pytest
import rfc8785
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws
from mcp import Client, StdioServerParameters

from mesh.keys import TrustStore, b64url
from mesh.manifest import SIGNATURE_META, ManifestProblem, verify_tool

from .conftest import REPO, run_mesh

PROTOCOLS = ["legacy", "2026-07-28"]  # legacy negotiates 2025-11-25


def tracked_state(workspace: Path) -> dict[str, str]:
    """Hashes of every file outside .mesh/: what `git status` would see change."""
    return {
        str(p.relative_to(workspace)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(workspace.rglob("*"))
        if p.is_file() and ".mesh" not in p.parts and "__pycache__" not in p.parts
    }


def independent_verify(tool: dict, jwks: dict) -> None:
    """Check a listed tool's signature with jwcrypto, from the README's description alone."""
    block = tool["_meta"][SIGNATURE_META]
    body = rfc8785.dumps({k: v for k, v in tool.items() if k != "_meta"})
    assert block["digest"] == "sha256:" + hashlib.sha256(body).hexdigest()
    protected, _, signature = block["jws"].split(".")
    token = jwcrypto_jws.JWS()
    token.deserialize(f"{protected}.{b64url(body)}.{signature}")
    key = next(k for k in jwks["keys"] if k["kid"] == block["kid"])
    token.verify(jwcrypto_jwk.JWK(**key))


@pytest.mark.parametrize("mode", PROTOCOLS)
async def test_every_listed_tool_is_signed_and_verifies_from_the_jwks_fetched_over_http(
    hello_workspace: Path, agent_server, mode: str
):
    base = agent_server(hello_workspace, "hello")
    jwks = httpx.get(f"{base}/.well-known/jwks.json").json()
    trust = TrustStore.from_jwks(jwks)
    async with Client(f"{base}/mcp", mode=mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else mode)
        listed = (await client.list_tools()).tools
        assert {t.name for t in listed} == {"greet", "word_count"}  # word_count comes from tools/text.py
        manifest_digests = set()
        for tool in listed:
            wire = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
            block = verify_tool(wire, trust)
            independent_verify(wire, jwks)
            manifest_digests.add(block["manifest"])
        assert len(manifest_digests) == 1

        result = await client.call_tool("greet", {"name": "Ada"})
        assert not result.is_error and result.structured_content == {"result": "Hello, Ada!"}

        bad = await client.call_tool("greet", {"nom": "Ada"})
        assert bad.is_error and "name" in bad.content[0].text and "required" in bad.content[0].text.lower()


async def test_a_tool_served_with_a_changed_schema_fails_verification(hello_workspace: Path, agent_server):
    base = agent_server(hello_workspace, "hello")
    trust = TrustStore.from_jwks(httpx.get(f"{base}/.well-known/jwks.json").json())
    async with Client(f"{base}/mcp", mode="legacy") as client:
        tool = (await client.list_tools()).tools[0].model_dump(by_alias=True, mode="json", exclude_none=True)
    tool["inputSchema"]["properties"] = {"name": {"type": "integer"}}
    with pytest.raises(ManifestProblem, match="does not match the signed digest"):
        verify_tool(tool, trust)


def test_the_agent_refuses_to_serve_tools_that_differ_from_its_signed_manifest(hello_workspace: Path, agent_server):
    agent_file = hello_workspace / "agents" / "hello.py"
    agent_file.write_text(agent_file.read_text().replace("Say hello to someone by name.", "Say hi."))
    refused = run_mesh("agent", "run", "hello", "--workspace", str(hello_workspace), timeout=60)
    assert refused.returncode != 0
    assert "tool 'greet' changed" in refused.stderr and "mesh sign hello" in refused.stderr
    assert "Traceback" not in refused.stderr
    # mesh verify tells the same truth: the signature holds, but the code no longer serves what it signs.
    verified = run_mesh("verify", "--workspace", str(hello_workspace))
    assert verified.returncode == 1 and "tool 'greet' changed" in verified.stderr, verified.stderr

    base = agent_server(hello_workspace, "hello", "--dev")  # --dev re-signs for local iteration, and says so
    log = Path(next(p for p in hello_workspace.parent.glob("process-*.log")))
    assert "--dev re-signed the tracked manifests/hello.manifest.json and manifests/hello.jwks.json" in log.read_text()
    async def listed() -> list:
        async with Client(f"{base}/mcp", mode="legacy") as client:
            return (await client.list_tools()).tools

    import anyio

    tools = anyio.run(listed)
    assert next(t for t in tools if t.name == "greet").description == "Say hi."
    assert run_mesh("verify", "--workspace", str(hello_workspace)).returncode == 0


def test_a_fresh_clone_runs_on_local_keys_without_touching_tracked_files(repo_workspace: Path, agent_server, start):
    # The repository's committed manifests were signed by keys this checkout does not have.
    before = tracked_state(repo_workspace)
    strict = run_mesh("agent", "run", "sandbox", "--strict", "--workspace", str(repo_workspace), timeout=60)
    assert strict.returncode != 0 and "strict mode" in strict.stderr

    base = agent_server(repo_workspace, "sandbox")
    assert httpx.get(f"{base}/healthz").json()["mode"] == "local"
    assert tracked_state(repo_workspace) == before
    local_jwks = json.loads((repo_workspace / ".mesh" / "manifests" / "sandbox.jwks.json").read_text())
    assert httpx.get(f"{base}/.well-known/jwks.json").json() == local_jwks
    # `mesh verify` still checks the committed manifests with their public keys alone.
    verified = run_mesh("verify", "--workspace", str(repo_workspace))
    assert verified.returncode == 0, verified.stderr


async def test_stdio_serves_signed_tools(hello_workspace: Path):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mesh.cli", "agent", "run", "hello", "--stdio", "--workspace", str(hello_workspace)],
        cwd=str(REPO),
    )
    jwks = json.loads((hello_workspace / "manifests" / "hello.jwks.json").read_text())
    async with Client(params, mode="legacy") as client:
        tools = (await client.list_tools()).tools
        for tool in tools:
            verify_tool(tool, TrustStore.from_jwks(jwks))
        result = await client.call_tool("word_count", {"text": "one two three"})
        assert result.structured_content == {"result": 3}


def test_the_agent_card_is_signed_and_names_only_interfaces_that_answer(hello_workspace: Path, agent_server):
    base = agent_server(hello_workspace, "hello")
    card = httpx.get(f"{base}/.well-known/agent-card.json").json()
    jwks = httpx.get(f"{base}/.well-known/jwks.json").json()
    unsigned = rfc8785.dumps({k: v for k, v in card.items() if k != "signatures"})
    for signature in card["signatures"]:
        header = json.loads(__import__("base64").urlsafe_b64decode(signature["protected"] + "=="))
        assert header["typ"] == "JOSE" and header["jku"] == f"{base}/.well-known/jwks.json"
        token = jwcrypto_jws.JWS()
        token.deserialize(f"{signature['protected']}.{b64url(unsigned)}.{signature['signature']}")
        token.verify(jwcrypto_jwk.JWK(**next(k for k in jwks["keys"] if k["kid"] == header["kid"])))
    assert {s["id"] for s in card["skills"]} == {"greet", "word_count"}
    for interface in card["supportedInterfaces"]:
        request = {
            "jsonrpc": "2.0", "id": 1, "method": "SendMessage",
            "params": {"message": {"messageId": "m1", "role": "ROLE_USER",
                                   "parts": [{"data": {"tool": "greet", "arguments": {"name": "Bo"}}}]}},
        }
        answer = httpx.post(interface["url"], json=request, headers={"A2A-Version": "1.0"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert "Hello, Bo!" in answer.text


def test_cli_errors_name_the_problem(hello_workspace: Path):
    broken = hello_workspace / "agents" / "broken.py"
    broken.write_text("from mesh import Agent\nagent = Agent('broken')\nraise RuntimeError('no database')\n")
    result = run_mesh("agent", "run", "broken", "--workspace", str(hello_workspace), timeout=60)
    assert result.returncode == 1
    assert "agents/broken.py failed to import (line 3): RuntimeError: no database" in result.stderr
    assert "Traceback" not in result.stderr

    missing = run_mesh("agent", "run", "nobody", "--workspace", str(hello_workspace))
    assert missing.returncode == 1 and "no agent 'nobody'" in missing.stderr

    manifest = hello_workspace / "manifests" / "hello.manifest.json"
    document = json.loads(manifest.read_text())
    document["signatures"][0]["signature"] = document["signatures"][0]["signature"][::-1]
    manifest.write_text(json.dumps(document))
    tampered = run_mesh("verify", "hello", "--workspace", str(hello_workspace))
    assert tampered.returncode == 1
    assert "hello.manifest.json" in tampered.stderr and "does not verify" in tampered.stderr

    assert run_mesh("keys", "revoke", "hello", "nokid", "--workspace", str(hello_workspace)).returncode == 1
