"""The CLI side of signing in: ``mesh login``, ``mesh whoami``, ``mesh tokens``.

``mesh login`` asks the registry which OpenID provider it trusts (its RFC 9728 metadata), then signs in
with the device authorization grant when the provider offers it (a code to enter in any browser), else
with a redirect to a loopback port and PKCE. The tokens go to the workspace's ``.mesh/login.json``, mode
0600, keyed by registry URL, and are never printed. Later commands send, in order: ``$MESH_TOKEN`` (a
personal API token, for scripts), the saved sign-in (refreshed when it has run out), or nothing (the local
user on loopback).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client

from mesh import projects
from mesh.workspace import Workspace

LOGIN_FILE = "login.json"
TOKEN_VARIABLE = "MESH_TOKEN"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
METADATA_PATH = "/.well-known/oauth-protected-resource"


class LoginProblem(Exception):
    """Signing in did not work; the message says why and what to do."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the saved sign-in ---------------------------------------------------------------------------------


def login_path(workspace: Workspace) -> Path:
    return workspace.state_dir / LOGIN_FILE


def read_logins(workspace: Workspace) -> dict[str, Any]:
    path = login_path(workspace)
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise LoginProblem(f"{path} cannot be read ({exc}); delete it and run `mesh login` again") from exc


def save_login(workspace: Workspace, registry: str, entry: dict[str, Any]) -> Path:
    """Keep a sign-in for ``registry``: written to a new file of mode 0600, then moved over the old one."""
    logins = read_logins(workspace)
    logins[registry] = entry
    path = login_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_suffix(".tmp")
    descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(logins, out, indent=2)
    os.chmod(fresh, 0o600)
    os.replace(fresh, path)
    return path


def bearer(workspace: Workspace, registry: str) -> str | None:
    """The token to send to ``registry``: ``$MESH_TOKEN``, else the saved sign-in (refreshed if it ran out)."""
    if os.environ.get(TOKEN_VARIABLE):
        return os.environ[TOKEN_VARIABLE]
    entry = read_logins(workspace).get(registry)
    if entry is None:
        return None
    if entry.get("expires_at", 0) - time.time() < 30 and entry.get("refresh_token"):
        with OAuth2Client(entry["client_id"], token_endpoint_auth_method="none") as client:
            try:
                token = client.refresh_token(entry["token_endpoint"], refresh_token=entry["refresh_token"],
                                             resource=entry.get("resource"))
            except Exception as exc:  # Authlib's OAuthError, httpx's errors
                raise LoginProblem(f"the sign-in to {registry} ran out and cannot be renewed ({exc}); "
                                   "run `mesh login` again") from exc
        entry = _entry(token, entry)
        save_login(workspace, registry, entry)
    return entry["access_token"]


def _entry(token: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    expires_at = token.get("expires_at") or time.time() + float(token.get("expires_in", 300))
    return {**base, "access_token": token["access_token"], "expires_at": float(expires_at),
            "refresh_token": token.get("refresh_token") or base.get("refresh_token")}


def headers(workspace: Workspace, registry: str) -> dict[str, str]:
    """The token (as ``bearer``) and the current project (``mesh project use``, as ``X-Project-Id``)."""
    token = bearer(workspace, registry)
    return ({"authorization": f"Bearer {token}"} if token else {}) | projects.header(workspace)


def cli_headers(registry: str) -> dict[str, str]:
    """What `mesh ls`, `discover`, `call` and `runs` send: ``$MESH_TOKEN``, else the sign-in saved in the
    current folder's ``.mesh/``, else nothing; and the current project, if one is set."""
    return headers(Workspace(), registry.rstrip("/"))


# -- mesh login ----------------------------------------------------------------------------------------


def _get_json(url: str) -> dict[str, Any]:
    try:
        answer = httpx.get(url, timeout=10)
    except httpx.HTTPError as exc:
        raise LoginProblem(f"{url} cannot be reached: {exc!r}") from exc
    if answer.status_code != 200:
        raise LoginProblem(f"{url} answered {answer.status_code}")
    return answer.json()


def provider_of(registry: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The registry's protected-resource metadata and its provider's discovery document."""
    resource = _get_json(registry + METADATA_PATH)
    servers = resource.get("authorization_servers") or []
    if not servers:
        raise LoginProblem(f"{registry} names no OpenID provider ([oidc] issuer in its registry.toml): on "
                           "loopback you are its local user, elsewhere use a personal API token ($MESH_TOKEN)")
    issuer = servers[0].rstrip("/")
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        try:
            return resource, _get_json(issuer + path)
        except LoginProblem:
            continue
    raise LoginProblem(f"the provider {issuer} publishes no discovery document")


def login(workspace: Workspace, registry: str, *, client_id: str | None = None, device: bool = True,
          open_browser: bool = True, timeout: float = 600) -> dict[str, Any]:
    """Sign in to ``registry``; keep the tokens; return who the registry says we are."""
    resource, provider = provider_of(registry)
    client_id = client_id or resource.get("mcpmesh_client_id") or "mcpmesh"
    scopes = " ".join(dict.fromkeys([*resource.get("scopes_supported", []), "openid", "offline_access"]))
    common = {"client_id": client_id, "token_endpoint": provider["token_endpoint"], "resource": resource["resource"],
              "issuer": provider["issuer"]}
    if device and provider.get("device_authorization_endpoint"):
        token = _device_flow(provider, client_id, scopes, resource["resource"], timeout)
    else:
        token = _loopback_flow(provider, client_id, scopes, resource["resource"], open_browser, timeout)
    path = save_login(workspace, registry, _entry(token, common))
    me = httpx.get(f"{registry}/v1/users/me", headers={"authorization": f"Bearer {token['access_token']}"},
                   timeout=10)
    if me.status_code != 200:
        raise LoginProblem(f"signed in with {provider['issuer']}, but {registry} refuses the token: "
                           f"{me.json().get('detail', me.text) if me.content else me.status_code}")
    return {**me.json(), "saved_to": str(path)}


def _device_flow(provider: dict[str, Any], client_id: str, scopes: str, resource: str,
                 timeout: float) -> dict[str, Any]:
    """RFC 8628: show a code and where to enter it; poll until the person has signed in."""
    started = httpx.post(provider["device_authorization_endpoint"],
                         data={"client_id": client_id, "scope": scopes, "resource": resource}, timeout=10)
    if started.status_code != 200:
        raise LoginProblem(f"the provider refused to start a device sign-in: {started.text[:300]}")
    grant = started.json()
    where = grant.get("verification_uri_complete") or grant["verification_uri"]
    say(f"To sign in, open {where}\nand check that it shows the code {grant['user_code']}.")
    interval = float(grant.get("interval", 5))
    deadline = time.monotonic() + min(timeout, float(grant.get("expires_in", timeout)))
    while time.monotonic() < deadline:
        time.sleep(interval)
        answer = httpx.post(provider["token_endpoint"], timeout=10, data={
            "grant_type": DEVICE_GRANT, "device_code": grant["device_code"], "client_id": client_id})
        body = answer.json()
        if answer.status_code == 200:
            return body
        error = body.get("error")
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            raise LoginProblem(f"the sign-in did not complete: {error}: {body.get('error_description', '')}")
    raise LoginProblem("the sign-in was not completed in time; run `mesh login` again")


def _loopback_flow(provider: dict[str, Any], client_id: str, scopes: str, resource: str, open_browser: bool,
                   timeout: float) -> dict[str, Any]:
    """RFC 8252: the provider sends the browser back to a port on this machine; PKCE binds the code to us."""
    answers: dict[str, str] = {}
    arrived = threading.Event()

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            if urlsplit(self.path).path == "/callback" and not arrived.is_set():
                answers.update({key: values[0] for key, values in query.items()})
                arrived.set()
            self.send_response(200)
            self.send_header("content-type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"Signed in: you may close this window and return to the terminal.\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Callback)
    redirect_uri = f"http://127.0.0.1:{server.server_port}/callback"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with OAuth2Client(client_id, scope=scopes, redirect_uri=redirect_uri, code_challenge_method="S256",
                          token_endpoint_auth_method="none") as client:
            verifier = generate_token(64)
            url, state = client.create_authorization_url(provider["authorization_endpoint"], code_verifier=verifier,
                                                         resource=resource)
            say(f"To sign in, open {url}")
            if open_browser:
                webbrowser.open(url)
            if not arrived.wait(timeout):
                raise LoginProblem("the sign-in was not completed in time; run `mesh login` again")
            if answers.get("state") != state:
                raise LoginProblem("the provider's answer does not carry this sign-in's state; run `mesh login` again")
            if "error" in answers:
                raise LoginProblem(f"the provider refused: {answers['error']}: {answers.get('error_description', '')}")
            return client.fetch_token(provider["token_endpoint"], code=answers.get("code"), code_verifier=verifier,
                                      resource=resource)
    finally:
        server.shutdown()
        server.server_close()


# -- mesh whoami, mesh tokens ------------------------------------------------------------------------


def _call(workspace: Workspace, registry: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        answer = httpx.request(method, registry + path, headers=headers(workspace, registry), timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise LoginProblem(f"{registry} cannot be reached: {exc!r}") from exc
    body = answer.json() if answer.content else {}
    if answer.status_code >= 400:
        raise LoginProblem(f"{registry}: {body.get('detail') or body.get('title') or answer.status_code}")
    return body


def whoami(workspace: Workspace, registry: str) -> int:
    me = _call(workspace, registry, "GET", "/v1/users/me")
    user = me.get("user") or {}
    who = user.get("email") or user.get("name") or me["id"]
    print(f"{who} ({me['id']}) via {me.get('via') or me['kind']}")
    for org, role in (me.get("orgs") or {}).items():
        print(f"  {role:<7} {org}{'  (acting)' if org == me.get('org') else ''}")
    return 0


def tokens_create(workspace: Workspace, registry: str, name: str, scopes: list[str] | None, days: float | None,
                  org: str | None) -> int:
    body: dict[str, Any] = {"name": name, **({"scopes": scopes} if scopes else {}),
                            **({"days": days} if days is not None else {}), **({"org": org} if org else {})}
    made = _call(workspace, registry, "POST", "/v1/tokens", json=body)
    say(f"token {made['id']} ({' '.join(made['scopes'])}) in {made['org']}, expires {made['expires_at']}; "
        "it is shown this once:")
    print(made["token"])
    return 0


def tokens_list(workspace: Workspace, registry: str) -> int:
    for token in _call(workspace, registry, "GET", "/v1/tokens")["tokens"]:
        state = "revoked" if token["revoked_at"] else f"expires {token['expires_at'][:19]}"
        print(f"{token['id']}  {token['name']:<20} {token['org']:<12} {' '.join(token['scopes']):<30} {state}")
    return 0


def tokens_revoke(workspace: Workspace, registry: str, token_id: str) -> int:
    done = _call(workspace, registry, "DELETE", f"/v1/tokens/{token_id}")
    print(f"token {done['id']} revoked")
    return 0
