"""A real OpenID provider for the tests (node's ``oidc-provider``, ``provider.mjs``) and a stand-in browser.

The package is installed by ``.ci/run`` into the git-ignored ``.mesh/npm/`` of the repository; without it
the tests that need a provider skip, saying so.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

HERE = Path(__file__).resolve().parent
MODULES = HERE.parent.parent / ".mesh" / "npm" / "node_modules"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
ACCOUNTS = {
    "ada": {"email": "ada@example.com", "name": "Ada", "groups": ["mesh-admins", "acme-devs"]},
    "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["mesh-viewers"]},
    "eve": {"email": "eve@example.com", "name": "Eve", "groups": []},
}


def cli_client(client_id: str = "mcpmesh", redirect_uris: list[str] | None = None) -> dict[str, Any]:
    """A public client using PKCE: the CLI (device code, loopback redirect) and the browser sign-in."""
    return {"client_id": client_id, "token_endpoint_auth_method": "none", "application_type": "native",
            "redirect_uris": redirect_uris or ["http://127.0.0.1/callback"], "response_types": ["code"],
            "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT]}


def require_provider() -> None:
    if shutil.which("node") is None or not (MODULES / "oidc-provider").is_dir():
        pytest.skip("the OpenID provider for these tests is not installed: npm install --prefix .mesh/npm "
                    "oidc-provider@9 (what .ci/run does)")


@dataclass
class OpenIdProvider:
    issuer: str
    process: subprocess.Popen[str]

    def metadata(self) -> dict[str, Any]:
        return httpx.get(f"{self.issuer}/.well-known/openid-configuration").json()


@contextmanager
def running_provider(log: Path, *, resource: str, clients: list[dict[str, Any]], device_flow: bool = True,
                     accounts: dict[str, Any] | None = None) -> Iterator[OpenIdProvider]:
    """``provider.mjs`` on a free loopback port, stopped (by its pid) when the block ends."""
    require_provider()
    config = {"resource": resource, "clients": clients, "accounts": accounts or ACCOUNTS, "deviceFlow": device_flow}
    out = open(log, "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(["node", str(HERE / "provider.mjs"), json.dumps(config)], stdout=out,
                               stderr=subprocess.STDOUT, text=True, env={"MESH_NPM_MODULES": str(MODULES),
                                                                         "PATH": "/usr/bin:/bin:/usr/local/bin"})
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"listening (http://\S+)", log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the OpenID provider did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield OpenIdProvider(found[1], process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()


_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.S | re.I)
_INPUT = re.compile(r"<input\b([^>]*)>", re.I)
_ATTR = re.compile(r'([a-zA-Z_:-]+)="([^"]*)"')


def _form(page: str) -> tuple[str, dict[str, str]]:
    found = _FORM.search(page)
    if found is None:
        raise AssertionError(f"expected a form on the page:\n{page[:2000]}")
    action = dict(_ATTR.findall(found[1])).get("action", "")
    fields = {}
    for attributes in _INPUT.findall(found[2]):
        attrs = dict(_ATTR.findall(attributes))
        if "name" in attrs:
            fields[attrs["name"]] = html.unescape(attrs.get("value", ""))
    return html.unescape(action), fields


def browse(browser: httpx.Client, url: str, *, login: str, until: str, user_code: str | None = None) -> str:
    """Do what a person does in a browser from ``url``: follow redirects, sign in as ``login`` on the
    provider's page, confirm a device code. Returns the first redirect that starts with ``until`` (not
    fetched), or the URL of the first page without a form (the device flow's "you may close this" page)."""
    if url.startswith(until):
        return url
    response = browser.get(url)
    for _ in range(30):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(until):
                return location
            response = browser.get(location)
            continue
        assert response.status_code == 200, f"{response.url}: {response.status_code} {response.text[:1000]}"
        if "<form" not in response.text.lower():
            return str(response.url)
        action, fields = _form(response.text)
        if "login" in fields:
            fields["login"] = login
        if "user_code" in fields and not fields["user_code"] and user_code:
            fields["user_code"] = user_code
        response = browser.post(urljoin(str(response.url), action), data=fields)
    raise AssertionError(f"the sign-in did not reach {until}; last page:\n{response.text[:2000]}")
