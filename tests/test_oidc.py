"""Sign-in with OpenID Connect against a real provider (node's oidc-provider) and a real registry on loopback.

The registry is an OAuth protected resource (MCP authorization, 2025-11-25): its metadata names the issuer,
every 401 points to it, it accepts the issuer's access tokens for itself and nothing else, maps groups to
roles, and creates a person at their first sign-in. People sign in from a browser (code + PKCE) and from the
CLI (`mesh login`: device code, or a loopback redirect); the official MCP client carries their tokens.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.shared.exceptions import MCPError
from sqlalchemy import text

from mesh.keys import KeyRing
from mesh.registry import store
from mesh.registry.auth import issue_token

from .conftest import Process, copy_repo_workspace, mesh_command, postgres_schema
from .oidc_provider import OpenIdProvider, browse, cli_client, require_provider, running_provider
from .test_registry_e2e import ECHO, Mesh

OIDC_SETTINGS = """
[oidc]
issuer = "{issuer}"
groups_claim = "groups"
client_id = "mcpmesh"

[oidc.roles]
mesh-admins = "default:admin"
acme-devs = "acme:member"
mesh-viewers = "default:viewer"
"""


class SignInMesh(Mesh):
    """A registry without a local user: even on loopback every caller needs a token. The harness itself
    asks as the echo agent, with echo's own key. Its database is PostgreSQL when ``MESH_TEST_DATABASE_URL``
    names a server (as in CI), else SQLite."""

    provider: OpenIdProvider
    database_url: str | None = None

    def start_registry(self) -> None:
        env = {"MESH_DATABASE_URL": self.database_url} if self.database_url else None
        process = Process(mesh_command("registry", "run", "--workspace", str(self.workspace), "--port",
                                       str(self.port), "--trust-local-keys"), self.logs / "registry.log", env)
        self.processes["registry"] = process
        process.wait_http(f"{self.url}/healthz")

    def agent(self, name: str) -> dict:
        try:
            token = issue_token("echo", KeyRing.open(self.workspace / ".mesh" / "keys" / "echo").active())
        except Exception:  # the agent has not made its key yet
            return {"status": None}
        response = httpx.get(f"{self.url}/v1/agents/{name}", headers={"authorization": f"Bearer {token}"})
        return response.json() if response.status_code == 200 else {"status": None}


@contextmanager
def database() -> Iterator[str | None]:
    """A fresh PostgreSQL schema when ``MESH_TEST_DATABASE_URL`` names a server, else None (SQLite)."""
    server = os.environ.get("MESH_TEST_DATABASE_URL")
    if not server:
        yield None
        return
    with postgres_schema(server, "mesh_signin") as url:
        yield url


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignInMesh]:
    require_provider()
    logs = tmp_path_factory.mktemp("signin-logs")
    network = SignInMesh(copy_repo_workspace(tmp_path_factory.mktemp("signin") / "ws"), logs)
    clients = [cli_client(redirect_uris=["http://127.0.0.1/callback", f"{network.url}/v1/auth/callback"]),
               cli_client("mcpmesh-short")]
    with running_provider(logs / "provider.log", resource=network.url, clients=clients) as provider:
        config = network.workspace / "registry" / "registry.toml"
        text = config.read_text().replace("allow_local_user = true", "allow_local_user = false")
        text = text.replace("[registry]\n", "[registry]\ntoken_clock_skew = 1\n", 1)
        config.write_text(text + OIDC_SETTINGS.format(issuer=provider.issuer))
        (network.workspace / "agents" / "echo.py").write_text(ECHO)
        network.provider = provider
        with database() as network.database_url:
            try:
                network.start_registry()
                network.start_agent("echo")
                yield network
            finally:
                network.close()


def access_token(mesh: SignInMesh, login: str, *, resource: str | None = None, client_id: str = "mcpmesh") -> str:
    """Sign ``login`` in at the provider as a browser would (code + PKCE) and return the access token."""
    metadata = mesh.provider.metadata()
    redirect_uri = "http://127.0.0.1:9/callback"
    with OAuth2Client(client_id, redirect_uri=redirect_uri, scope="openid email profile",
                      code_challenge_method="S256", token_endpoint_auth_method="none") as client:
        verifier = generate_token(48)
        url, _ = client.create_authorization_url(metadata["authorization_endpoint"], code_verifier=verifier,
                                                 resource=resource or mesh.url)
        with httpx.Client() as browser:
            back = browse(browser, url, login=login, until=redirect_uri)
        token = client.fetch_token(metadata["token_endpoint"], authorization_response=back, code_verifier=verifier,
                                   resource=resource or mesh.url)
    return token["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def test_the_registry_names_its_issuer_and_every_401_points_there(mesh: SignInMesh):
    metadata = httpx.get(f"{mesh.url}/.well-known/oauth-protected-resource").json()
    assert metadata["resource"] == mesh.url and metadata["authorization_servers"] == [mesh.provider.issuer]
    assert httpx.get(f"{mesh.url}/.well-known/oauth-protected-resource/mcp").json() == metadata
    challenge = f'resource_metadata="{mesh.url}/.well-known/oauth-protected-resource"'
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    for method, path in [("POST", "/mcp"), ("POST", "/agents/echo/mcp"), ("GET", "/v1/agents"), ("GET", "/v1/runs")]:
        answer = httpx.request(method, mesh.url + path, json=rpc if method == "POST" else None,
                               headers={"accept": "application/json, text/event-stream"})
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer ") and challenge in answer.headers[
            "www-authenticate"], path


def test_a_first_sign_in_creates_the_person_with_roles_from_groups(mesh: SignInMesh):
    token = access_token(mesh, "ada")
    me = httpx.get(f"{mesh.url}/v1/users/me", headers=bearer(token)).json()
    assert me["user"]["email"] == "ada@example.com" and me["user"]["issuer"] == mesh.provider.issuer
    assert (me["via"], me["org"], me["role"]) == ("oidc", "default", "admin")
    assert me["orgs"] == {"acme": "member", "default": "admin"}
    again = httpx.get(f"{mesh.url}/v1/users/me", headers=bearer(access_token(mesh, "ada"))).json()
    assert again["user"]["id"] == me["user"]["id"]  # the same person, not a second one
    if mesh.database_url:  # the person is a row of the PostgreSQL database the registry runs on
        engine = store.connect(mesh.database_url)
        try:
            with engine.connect() as connection:
                assert connection.execute(text("SELECT email FROM users WHERE subject = 'ada'")).scalar() == \
                    "ada@example.com"
        finally:
            engine.dispose()
    call = {"agent": "echo", "tool": "echo", "arguments": {"text": "signed in"}}
    answer = httpx.post(f"{mesh.url}/v1/invoke", json=call, headers=bearer(token), timeout=30)
    assert answer.status_code == 200, answer.text
    run = httpx.get(f"{mesh.url}/v1/runs/{answer.json()['run_id']}", headers=bearer(token)).json()
    assert run["caller"] == me["id"]

    viewer = access_token(mesh, "bob")
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(viewer)).status_code == 200
    refused = httpx.post(f"{mesh.url}/v1/invoke", json=call, headers=bearer(viewer))
    assert refused.status_code == 403 and "role viewer in default" in refused.json()["detail"]
    nobody = httpx.get(f"{mesh.url}/v1/agents", headers=bearer(access_token(mesh, "eve")))
    assert nobody.status_code == 403 and "no role" in nobody.json()["detail"]


def test_tokens_not_for_this_registry_are_refused_with_the_reason(mesh: SignInMesh):
    def refused(token: str, reason: str) -> None:
        answer = httpx.get(f"{mesh.url}/v1/agents", headers=bearer(token))
        assert answer.status_code == 401 and reason in answer.json()["detail"], answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]

    refused(access_token(mesh, "ada", resource="https://elsewhere.example"), "not for this registry")
    good = access_token(mesh, "ada")
    claims = claims_of(good)
    # The same claims signed by a key the issuer never published, under the issuer's kid.
    forger = RSAKey.import_key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    header = {"alg": "RS256", "kid": "test-rs256", "typ": "at+jwt"}
    refused(jwt.encode(header, claims, forger), "does not verify")
    refused(jwt.encode({**header, "kid": "not-published"}, claims, forger), "No key for kid")  # keys re-read first
    refused(good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"), "does not verify")
    short = access_token(mesh, "ada", client_id="mcpmesh-short")
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(short)).status_code == 200
    time.sleep(max(0.0, claims_of(short)["exp"] + 1.5 - time.time()))
    refused(short, "expired")


async def test_the_official_mcp_client_carries_a_persons_token(mesh: SignInMesh):
    admin, viewer = access_token(mesh, "ada"), access_token(mesh, "bob")

    def transport(token: str):
        return streamable_http_client(f"{mesh.url}/mcp", http_client=httpx2.AsyncClient(headers=bearer(token)))

    async with Client(transport(admin)) as client:
        assert "echo__echo" in [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("echo__echo", {"text": "over mcp"})
        assert not result.is_error and result.structured_content["result"] == "over mcp"
    async with Client(transport(viewer)) as client:
        assert "echo__echo" in [tool.name for tool in (await client.list_tools()).tools]
        with pytest.raises(MCPError, match=r"role viewer in default\) may not invoke: it needs role owner, admin or"):
            await client.call_tool("echo__echo", {"text": "not for viewers"})
    answer = httpx.post(f"{mesh.url}/agents/echo/mcp", headers={**bearer("not.a.token"),
                                                              "accept": "application/json, text/event-stream"},
                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert answer.status_code == 401 and "resource_metadata=" in answer.headers["www-authenticate"]


def test_a_browser_signs_in_with_code_and_pkce(mesh: SignInMesh):
    with httpx.Client() as browser:
        start = browser.get(f"{mesh.url}/v1/auth/login", params={"return_to": "/v1/users/me"})
        assert start.status_code == 302 and start.headers["location"].startswith(mesh.provider.issuer)
        assert "code_challenge=" in start.headers["location"] and "code_challenge_method=S256" in start.headers[
            "location"]
        back = browse(browser, start.headers["location"], login="ada", until=f"{mesh.url}/v1/auth/callback")
        landed = browser.get(back)
        assert landed.status_code == 303 and landed.headers["location"] == "/v1/users/me"
        cookie = landed.headers["set-cookie"]
        assert "mesh_session=mesh_pat_" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        me = browser.get(f"{mesh.url}/v1/users/me").json()  # the cookie stands for the sign-in
        assert me["user"]["email"] == "ada@example.com" and me["role"] == "admin" and me["via"] == "api-token"
        # The code cannot be used twice, and a state this registry never gave out is refused.
        assert browser.get(back).status_code == 401
    with httpx.Client() as browser:  # a person of no organisation signs in too, and may do nothing yet
        start = browser.get(f"{mesh.url}/v1/auth/login").headers["location"]
        browser.get(browse(browser, start, login="eve", until=f"{mesh.url}/v1/auth/callback"))
        me = browser.get(f"{mesh.url}/v1/users/me").json()
        assert me["user"]["email"] == "eve@example.com" and (me["role"], me["orgs"]) == (None, {})
        assert browser.get(f"{mesh.url}/v1/agents").status_code == 403
    forged = httpx.get(f"{mesh.url}/v1/auth/callback", params={"code": "x", "state": "made-up"})
    assert forged.status_code == 401 and "start again" in forged.json()["detail"]
    assert httpx.get(f"{mesh.url}/v1/auth/login", params={"return_to": "https://evil.example"}).status_code == 400


def run_login(mesh: SignInMesh, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start `mesh login` and return it with the address it asks the person to open."""
    process = subprocess.Popen(mesh_command("login", "--registry", mesh.url, "--workspace", str(tmp_path), *extra),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for _ in range(20):
        line = process.stderr.readline()
        if "open " in line:
            return process, line.split("open ", 1)[1].strip()
    process.kill()
    raise AssertionError(f"mesh login asked nothing: {process.communicate()}")


def check_saved(mesh: SignInMesh, tmp_path: Path, process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "as ada@example.com" in err and "admin in default" in err
    saved = tmp_path / ".mesh" / "login.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    token = json.loads(saved.read_text())[mesh.url]["access_token"]
    assert token not in out and token not in err  # never printed
    return token


def test_mesh_login_with_a_device_code_then_whoami_and_tokens(mesh: SignInMesh, tmp_path: Path):
    process, where = run_login(mesh, tmp_path)
    assert "/device" in where and "user_code=" in where
    with httpx.Client() as browser:
        browse(browser, where, login="ada", until="never")
    token = check_saved(mesh, tmp_path, process)
    assert httpx.get(f"{mesh.url}/v1/users/me", headers=bearer(token)).status_code == 200

    env = {**os.environ}
    env.pop("MESH_TOKEN", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(mesh_command(*args, "--registry", mesh.url, "--workspace", str(tmp_path)),
                              capture_output=True, text=True, timeout=60, env=env)

    saved = tmp_path / ".mesh" / "login.json"
    logins = json.loads(saved.read_text())
    assert logins[mesh.url]["refresh_token"]
    logins[mesh.url]["expires_at"] = 0  # run out: the next command renews it with the refresh token
    saved.write_text(json.dumps(logins))
    listed = subprocess.run(mesh_command("ls", "--registry", mesh.url), cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env=env)  # in the workspace folder: its saved sign-in
    assert listed.returncode == 0 and "echo" in listed.stdout, listed.stderr
    whoami = cli("whoami")
    assert whoami.returncode == 0 and "ada@example.com" in whoami.stdout and "admin" in whoami.stdout, whoami.stderr
    renewed = json.loads(saved.read_text())[mesh.url]
    assert renewed["access_token"] != token and renewed["expires_at"] > time.time()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    made = cli("tokens", "create", "nightly", "--scope", "registry:read", "--days", "7")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("mesh_pat_") and "shown this once" in made.stderr
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(secret)).status_code == 200
    listed = cli("tokens", "ls")
    assert "nightly" in listed.stdout and secret not in listed.stdout
    token_id = listed.stdout.split()[0]
    assert cli("tokens", "revoke", token_id).returncode == 0
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(secret)).status_code == 401
    env["MESH_TOKEN"] = secret  # a script's token wins over the saved sign-in, and this one is revoked
    assert "revoked" in cli("whoami").stderr


def test_mesh_login_with_a_loopback_redirect(mesh: SignInMesh, tmp_path: Path):
    process, where = run_login(mesh, tmp_path, "--no-device", "--no-browser")
    assert where.startswith(mesh.provider.issuer) and "code_challenge_method=S256" in where
    redirect_uri = parse_qs(urlsplit(where).query)["redirect_uri"][0]
    assert redirect_uri.startswith("http://127.0.0.1:") and redirect_uri.endswith("/callback")
    with httpx.Client() as browser:
        back = browse(browser, where, login="ada", until=redirect_uri)
        assert "code=" in back
        assert browser.get(back).status_code == 200  # the browser lands on `mesh login`'s own port
    check_saved(mesh, tmp_path, process)


def test_agents_tokens_work_as_before_beside_sign_in(mesh: SignInMesh):
    token = issue_token("echo", KeyRing.open(mesh.workspace / ".mesh" / "keys" / "echo").active())
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(token)).status_code == 200
    call = {"agent": "echo", "tool": "echo", "arguments": {"text": "agent to agent"}}
    assert httpx.post(f"{mesh.url}/v1/invoke", json=call, headers=bearer(token), timeout=30).status_code == 200
    forged = issue_token("echo", KeyRing.open(mesh.workspace / ".mesh" / "keys" / "thief", create=True).active())
    assert httpx.get(f"{mesh.url}/v1/agents", headers=bearer(forged)).status_code == 401


class MemoryStorage:
    """Where the MCP SDK keeps its registered client and tokens, for one test."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def test_the_mcp_sdks_own_auth_flow_starts_from_the_401(mesh: SignInMesh):
    """No token at all: the SDK reads the challenge, the registry's metadata and the provider's, registers
    itself, sends the person to sign in (code + PKCE, resource indicator), and then lists and calls."""
    redirect_uri = "http://127.0.0.1:9/sdk-callback"
    answer: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:  # what a browser would do with the address
        def sign_in() -> str:
            with httpx.Client() as browser:
                return browse(browser, url, login="ada", until=redirect_uri)

        answer.update({key: values[0] for key, values in parse_qs(urlsplit(await anyio.to_thread.run_sync(
            sign_in)).query).items()})

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=answer["code"], state=answer.get("state"), iss=answer.get("iss"))

    storage = MemoryStorage()
    metadata = OAuthClientMetadata(redirect_uris=[redirect_uri], grant_types=["authorization_code", "refresh_token"],
                                   response_types=["code"], token_endpoint_auth_method="none",
                                   client_name="mcpmesh sdk test")
    auth = OAuthClientProvider(f"{mesh.url}/mcp", metadata, storage, redirect_handler, callback_handler)
    async with Client(streamable_http_client(f"{mesh.url}/mcp", http_client=httpx2.AsyncClient(auth=auth))) as client:
        assert "echo__echo" in [tool.name for tool in (await client.list_tools()).tools]
        result = await client.call_tool("echo__echo", {"text": "after the sdk signed in"})
        assert not result.is_error and result.structured_content["result"] == "after the sdk signed in"
    assert storage.tokens is not None and claims_of(storage.tokens.access_token)["aud"] == mesh.url
