"""Connected mode: a sandbox's call sent to the service's real endpoint, with the named credential.

The only part of the sandbox that leaves the machine. The registry lets a call get here only for a
sandbox that names its credential (``secret_ref``) and whose services an operator approved (``mesh
approve``); the shipped policy also refuses the tool that does it (it is destructive and open-world)
unless ``[policy] allow_destructive`` names it. The arguments are checked against the spec before
anything is sent. The credential is read from the sandbox agent's environment at call time, sent as
``Authorization: Bearer``, and never logged or returned.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx

from mesh.sandbox.config import SECRET_REF
from mesh.sandbox.emulator import Service, error_answer
from mesh.sandbox.openapi_mock import MockResponse, OpenAPIError, _fill

TIMEOUT = 30.0
KEPT_HEADERS = ("content-type", "retry-after", "x-total-count", "location", "x-request-id")


class ConnectedProblem(ValueError):
    """A connected call that cannot be made (no credential, no endpoint); the message says which."""


def credential(secret_ref: str | None) -> str:
    """The secret a ``secret_ref`` names, from this process's environment."""
    match = SECRET_REF.fullmatch(secret_ref or "")
    if match is None:
        raise ConnectedProblem("a connected sandbox must name its credential: secret_ref env:MESH_SECRET_NAME")
    value = os.environ.get(match.group(1))
    if not value:
        raise ConnectedProblem(f"the sandbox agent has no {match.group(1)} in its environment")
    return value


def endpoint(service: Service) -> str:
    """Where the real service is: the sandbox's ``base_url``, else the spec's first server."""
    if service.config.base_url:
        return service.config.base_url.rstrip("/")
    servers = service.api.doc.data.get("servers") or []
    url = servers[0].get("url") if servers and isinstance(servers[0], dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConnectedProblem(f"{service.api.name}: no base_url configured and the spec names no http(s) server")
    return url.rstrip("/")


async def send(service: Service, secret_ref: str | None, operation_id: str, path_params: dict[str, Any] | None,
               query: dict[str, Any] | None, body: Any, headers: dict[str, str] | None) -> MockResponse:
    """Check the call against the spec, then make it for real; the answer as ``{status, headers, body}``."""
    api = service.api
    op = api.operation(operation_id)
    try:
        checked_path = api._check_params(op, "path", dict(path_params or {}))
        checked_query = api._check_params(op, "query", dict(query or {}))
        api._check_body(op, body)
    except OpenAPIError as exc:  # refused here: nothing was sent
        return error_answer(api, op, 422 if "422" in op.responses else 400, str(exc))
    url = endpoint(service) + _fill(op.path, {k: quote(str(v), safe="") for k, v in checked_path.items()})
    sent_headers = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
    sent_headers["authorization"] = f"Bearer {credential(secret_ref)}"
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        response = await client.request(op.method, url, params=checked_query, headers=sent_headers,
                                        json=body if body is not None else None)
    try:
        answer: Any = response.json() if response.content else None
    except ValueError:
        answer = response.text[:10_000]
    kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return MockResponse(response.status_code, answer, kept)
