"""The registry's trust boundary, tried as an attacker would, against real processes on loopback.

Forged registrations leave the real agent untouched; a revoked key stays revoked across a restart;
browsers and foreign Host headers are turned away; read routes need a caller; oversized or malformed
input gets a clear 4xx, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from mesh.keys import KeyRing, b64url
from mesh.registry.auth import issue_token

from .conftest import run_mesh
from .test_registry_e2e import ECHO, Mesh, running_mesh, wait_until


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """The repository's workspace with only the `echo` agent running beside the registry."""
    with running_mesh(tmp_path_factory, "trust", ("echo",), sources={"echo": ECHO}) as network:
        yield network


def echo_ring(mesh: Mesh) -> KeyRing:
    return KeyRing.open(mesh.workspace / ".mesh" / "keys" / "echo")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def registration(mesh: Mesh) -> dict:
    """What the echo agent registers with: its manifest and JWKS as served."""
    manifest = json.loads((mesh.workspace / ".mesh" / "manifests" / "echo.manifest.json").read_text())
    jwks = json.loads((mesh.workspace / ".mesh" / "manifests" / "echo.jwks.json").read_text())
    endpoint = f"http://127.0.0.1:{mesh.agent_ports['echo']}/mcp"
    return {"name": "echo", "endpoint": endpoint, "manifest": manifest, "jwks": jwks}


def test_a_forged_registration_leaves_the_real_agent_callable(mesh: Mesh):
    active = echo_ring(mesh).active().kid
    body = registration(mesh)
    # Garbage token, and a JWKS that "revokes" the real key: refused, and nothing of it is kept.
    forged = {**body, "jwks": {**body["jwks"], "revoked": [active], "rotations": ["junk", "a.b.c"]}}
    for headers in ({"authorization": "Bearer not-a-token"}, {}, bearer(issue_token("echo", KeyRing.open(
            mesh.workspace / ".mesh" / "keys" / "thief", create=True).active()))):
        refused = httpx.post(f"{mesh.url}/v1/agents", json=forged, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
    # The real agent still registers and is still callable, its token still accepted.
    token = issue_token("echo", echo_ring(mesh).active())
    assert httpx.post(f"{mesh.url}/v1/agents", json=body, headers=bearer(token)).status_code == 200
    answer = mesh.invoke("echo", "echo", {"text": "still here"}, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["structuredContent"]["result"] == "still here"


@pytest.mark.parametrize("name", ["../../somewhere/evil", "a/b", "echo__x", ".hidden", "x" * 65, "nul\x00"])
def test_a_name_outside_the_rule_never_reaches_the_file_system(mesh: Mesh, name: str):
    body = {**registration(mesh), "name": name}
    answer = httpx.post(f"{mesh.url}/v1/agents", json=body, headers=bearer("a.b.c"))
    assert answer.status_code == 400 and "not a valid name" in answer.json()["detail"]
    assert mesh.invoke(name, "echo", {"text": "x"}).status_code in (400, 404)


def test_tokens_with_bad_claims_are_401_naming_the_reason(mesh: Mesh):
    key = echo_ring(mesh).active()
    header = b64url(json.dumps({"alg": "ES256", "kid": [key.kid]}).encode())
    good = issue_token("echo", key)
    listed_kid = f"{header}.{good.split('.')[1]}.{good.split('.')[2]}"
    for token, reason in [(listed_kid, "names no key"), ("x.y.z", "not base64url JSON"),
                          (issue_token("echo", key, audience="another-registry"), "not for this registry"),
                          (issue_token("echo", key, lifetime=3600), "lives longer")]:
        answer = httpx.get(f"{mesh.url}/v1/agents", headers=bearer(token))
        assert answer.status_code == 401 and reason in answer.json()["detail"], answer.text
    assert httpx.get(f"{mesh.url}/v1/agents", headers={"authorization": "Basic abc"}).status_code == 401


def test_browsers_and_foreign_hosts_are_turned_away(mesh: Mesh):
    call = json.dumps({"agent": "echo", "tool": "echo", "arguments": {"text": "x"}})
    # A page elsewhere posting as a "simple" request (text/plain) must not act as the local user.
    cross_site = httpx.post(f"{mesh.url}/v1/invoke", content=call,
                            headers={"content-type": "text/plain", "origin": "https://evil.example"})
    assert cross_site.status_code == 403 and cross_site.json()["type"].endswith("/forbidden-origin")
    not_json = httpx.post(f"{mesh.url}/v1/invoke", content=call, headers={"content-type": "text/plain"})
    assert not_json.status_code == 415
    rebound = httpx.get(f"{mesh.url}/v1/agents", headers={"host": "evil.example:7300"})
    assert rebound.status_code == 421
    mcp = httpx.post(f"{mesh.url}/mcp", content="{}", headers={"content-type": "application/json",
                                                                  "origin": "https://evil.example"})
    assert mcp.status_code == 403 and mcp.json()["error"]["code"] == -32600
    # The registry's own origin is fine.
    own = httpx.post(f"{mesh.url}/v1/invoke", content=call,
                     headers={"content-type": "application/json", "origin": mesh.url})
    assert own.status_code == 200, own.text


def test_limits_answer_with_clear_errors(mesh: Mesh):
    big = {"agent": "echo", "tool": "echo", "arguments": {"text": "x" * (2 << 20)}}
    runs_before = httpx.get(f"{mesh.url}/v1/runs", params={"agent": "echo", "limit": 1000}).json()["runs"]
    reputation_before = mesh.agent("echo")["reputation"]
    too_large = httpx.post(f"{mesh.url}/v1/invoke", json=big)
    assert too_large.status_code == 413 and "at most 1048576" in too_large.json()["detail"]
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "echo__echo", "arguments": {"text": "x" * (2 << 20)}}}
    over_mcp = httpx.post(f"{mesh.url}/mcp", json=rpc, headers={"accept": "application/json, text/event-stream"})
    assert over_mcp.status_code == 413 and over_mcp.json()["error"]["data"]["status"] == 413
    # Refused before anything reached the agent: no run, no change to its reputation.
    assert httpx.get(f"{mesh.url}/v1/runs", params={"agent": "echo", "limit": 1000}).json()["runs"] == runs_before
    assert mesh.agent("echo")["reputation"] == reputation_before

    deep = '{"agent": "echo", "tool": "echo", "arguments": ' + '{"a": ' * 5000 + "1" + "}" * 5001
    nested = httpx.post(f"{mesh.url}/v1/invoke", content=deep, headers={"content-type": "application/json"})
    assert nested.status_code == 400 and "nested deeper" in nested.json()["detail"]
    for limit in ("-1", "0", "1000000", "ten"):
        assert httpx.get(f"{mesh.url}/v1/runs", params={"limit": limit}).status_code == 400
    for params in ({"agent": "a\x00b"}, {"caller": "root"}, {"cursor": "junk"}):
        assert httpx.get(f"{mesh.url}/v1/runs", params=params).status_code == 400
    assert httpx.get(f"{mesh.url}/v1/runs/not-a-run").status_code == 404


def test_runs_page_with_a_cursor(mesh: Mesh):
    for n in range(5):
        assert mesh.invoke("echo", "echo", {"text": f"page {n}"}).status_code == 200
    seen, cursor = [], None
    while True:
        page = httpx.get(f"{mesh.url}/v1/runs", params={"agent": "echo", "limit": 2,
                                                        **({"cursor": cursor} if cursor else {})}).json()
        seen += [run["id"] for run in page["runs"]]
        if not (cursor := page["next_cursor"]):
            break
    assert len(seen) == len(set(seen)) >= 10  # every run once: two records per call
    everything = httpx.get(f"{mesh.url}/v1/runs", params={"agent": "echo", "limit": 1000}).json()["runs"]
    assert seen == [run["id"] for run in everything]


def test_bad_registrations_are_refused_not_500(mesh: Mesh):
    token = issue_token("echo", echo_ring(mesh).active())
    body = registration(mesh)
    no_agent = {**body, "manifest": {"payload": b64url(json.dumps({"tools": []}).encode()),
                                     "signatures": body["manifest"]["signatures"]}}
    junk_rotations = {**body, "jwks": {"keys": [], "rotations": [["a"], 7, "x.y"]}}
    for bad in (no_agent, junk_rotations, {**body, "jwks": "keys"}, {**body, "endpoint": "file:///etc/passwd"}):
        answer = httpx.post(f"{mesh.url}/v1/agents", json=bad, headers=bearer(token))
        assert 400 <= answer.status_code < 500, answer.text
    # None of it cost the real agent its admission.
    assert mesh.invoke("echo", "echo", {"text": "x"}).status_code == 200


def test_a_run_can_be_shown_and_its_provenance_verified_from_the_cli(mesh: Mesh):
    run_id = mesh.invoke("echo", "echo", {"text": "prove it"}).json()["run_id"]
    shown = run_mesh("runs", "show", run_id[:8], "--registry", mesh.url)
    assert shown.returncode == 0, shown.stderr
    assert f"id                {run_id}" in shown.stdout and "target side of echo.echo" in shown.stdout
    verified = run_mesh("runs", "--registry", mesh.url, "verify", run_id[:10])
    assert verified.returncode == 0, verified.stderr
    assert f"verified: run {run_id} is signed by the registry's key" in verified.stdout
    assert "user:local called echo.echo with arguments sha256:" in verified.stdout
    unknown = run_mesh("runs", "show", "0123456789", "--registry", mesh.url)
    assert unknown.returncode == 1 and "no run '0123456789'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_concurrent_calls_are_each_on_disk_and_each_verifiable_alone(mesh: Mesh):
    """Calls that finish together may commit as one batch with one signature (``runlog.py``): each is still
    recorded with what it was, and its own provenance proves it, with the registry's JWKS alone."""
    from mesh.keys import TrustStore
    from mesh.provenance import verified_claims

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            answers: list[httpx.Response] = []

            async def one(n: int) -> None:
                answers.append(await http.post(f"{mesh.url}/v1/invoke", json={
                    "agent": "echo", "tool": "echo", "arguments": {"text": f"call {n}"}}))

            async with anyio.create_task_group() as group:
                for n in range(24):
                    group.start_soon(one, n)
            return answers

    answers = anyio.run(call_all)
    assert [a.status_code for a in answers] == [200] * 24
    trust = TrustStore.from_jwks(httpx.get(f"{mesh.url}/.well-known/jwks.json").json())
    for answer in answers:
        run = httpx.get(f"{mesh.url}/v1/runs/{answer.json()['run_id']}").json()
        claims = verified_claims(run, trust)
        assert (claims["run_id"], claims["agent"], claims["tool"], claims["status"]) == (run["id"], "echo", "echo",
                                                                                          "ok")
        assert claims["arguments_digest"] == run["arguments_digest"]
        target = next(linked for linked in run["linked"] if linked["log"] == "target")
        assert verified_claims(target, trust)["target_run_id"] == target["id"]
    batched = [a.json()["run_id"] for a in answers
               if httpx.get(f"{mesh.url}/v1/runs/{a.json()['run_id']}").json()["provenance_proof"]]
    if batched:  # the CLI says so too (whether calls shared a commit depends on timing)
        verified = run_mesh("runs", "--registry", mesh.url, "verify", batched[0])
        assert verified.returncode == 0, verified.stderr
        assert "calls whose Merkle root is signed by the registry's key" in verified.stdout


def test_an_owner_revokes_a_key_with_the_cli_and_comes_back_with_a_new_one(mesh: Mesh):
    old = echo_ring(mesh).active()
    done = run_mesh("keys", "revoke", "echo", old.kid, "--registry", mesh.url, "--workspace", str(mesh.workspace))
    assert done.returncode == 0, done.stderr
    assert f"registry at {mesh.url}: key {old.kid} of echo revoked" in done.stdout
    # The running agent still serves tools signed by the revoked key: blocked, its tokens refused.
    blocked = mesh.invoke("echo", "echo", {"text": "x"})
    assert blocked.status_code == 409 and "revoked" in blocked.json()["detail"]
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(issue_token("echo", old))).status_code == 401
    # Restarted, it serves what its new key signed and is admitted again.
    mesh.stop("echo")
    mesh.start_agent("echo")
    wait_until(lambda: mesh.invoke("echo", "echo", {"text": "back"}).status_code == 200, what="echo to be back")
    new = echo_ring(mesh).active()
    assert new.kid != old.kid
    back = httpx.get(f"{mesh.url}/v1/agents", headers=bearer(issue_token("echo", new)))
    assert back.status_code == 200, back.text
    # Posting the same statement again changes nothing; one forged to name the new key is refused.
    statement = echo_ring(mesh).revocation_for(old.kid)
    again = httpx.post(f"{mesh.url}/v1/agents/echo/revocations", json={"statement": statement})
    assert again.status_code == 200 and again.json()["status"] == "already revoked"
    protected, _, signature = statement.split(".")
    claims = b64url(json.dumps({"agent": "echo", "kid": new.kid, "iat": 1}).encode())
    forged = httpx.post(f"{mesh.url}/v1/agents/echo/revocations",
                        json={"statement": f"{protected}.{claims}.{signature}"})
    assert forged.status_code == 401 and "refused" in forged.json()["detail"]
    assert mesh.invoke("echo", "echo", {"text": "still back"}).status_code == 200


def test_a_revoked_key_stays_revoked_across_a_restart(mesh: Mesh, tmp_path: Path):
    """Runs last in this module: it leaves echo's key revoked."""
    key = echo_ring(mesh).active()
    token = issue_token("echo", key)
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(token)).status_code == 200  # cached from now on

    revoked = httpx.post(f"{mesh.url}/v1/agents/echo/keys/{key.kid}/revoke", json={"reason": "laptop stolen"})
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"

    def refused_everywhere() -> None:
        # The cached token stops working at once, and so does any new one signed by the key.
        for attempt in (token, issue_token("echo", key)):
            answer = httpx.get(f"{mesh.url}/v1/agents", headers=bearer(attempt))
            assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
        # Tools signed by it are blocked.
        blocked = mesh.invoke("echo", "echo", {"text": "x"})
        assert blocked.status_code == 409 and "revoked" in blocked.json()["detail"]
        # A thief holding the key cannot re-register the agent at its own endpoint.
        thief = {**registration(mesh), "endpoint": "http://127.0.0.1:9/mcp"}
        answer = httpx.post(f"{mesh.url}/v1/agents", json=thief, headers=bearer(issue_token("echo", key)))
        assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
        detail = mesh.agent("echo")
        assert detail["endpoint"] != thief["endpoint"]
        assert key.kid in [r["kid"] for r in detail["revoked_keys"]]

    refused_everywhere()
    mesh.stop("registry")
    mesh.start_registry()
    wait_until(lambda: mesh.agent("echo")["status"] is not None, what="the registry to load echo")
    refused_everywhere()
