"""``mesh approve`` and ``mesh sandbox ...``: the sandbox routes of a running registry, from a shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from mesh.names import check_name


class CommandProblem(Exception):
    """The registry refused, or could not be reached; the message says which, in one line."""


def request(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    try:
        response = httpx.request(method, url, json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise CommandProblem(f"no answer from {url} ({type(exc).__name__}: {exc})") from exc
    if response.is_error:
        try:
            problem = response.json()
            detail = f"{problem.get('title')}: {problem.get('detail')}"
        except (ValueError, AttributeError):
            detail = f"HTTP {response.status_code}"
        raise CommandProblem(f"the registry refused: {detail}")
    return response.json()


def approve(registry: str, agent: str, service: str, note: str | None, base_url: str | None = None) -> int:
    """An operator approves ``agent``'s connected sandboxes for ``service`` (at ``base_url``, else the spec's
    server); prints the approval."""
    body = {"agent": check_name(agent, "agent name"), "service": service, **({"note": note} if note else {}),
            **({"base_url": base_url} if base_url else {})}
    print(json.dumps(request("POST", f"{registry}/v1/approvals", body), indent=2))
    return 0


def create(registry: str, agent: str, services: list[str], mode: str, ttl: int, config: str | None) -> int:
    """Create a sandbox; ``config``: a JSON file with more of the body (services, secret_ref, description)."""
    body: dict[str, Any] = json.loads(Path(config).read_text()) if config else {}
    body |= {"required_services": services, "mode": mode, "ttl_seconds": ttl}
    print(json.dumps(request("POST", f"{registry}/v1/agents/{check_name(agent, 'agent name')}/sandboxes", body),
                     indent=2))
    return 0


def show(registry: str, method: str, agent: str, sandbox_id: str, action: str = "") -> int:
    url = f"{registry}/v1/agents/{check_name(agent, 'agent name')}/sandboxes/{sandbox_id}{action}"
    print(json.dumps(request(method, url, {} if method == "POST" else None), indent=2))
    return 0


def listing(registry: str, agent: str | None, removed: bool) -> int:
    url = f"{registry}/v1/agents/{check_name(agent, 'agent name')}/sandboxes" if agent else f"{registry}/v1/sandboxes"
    found = request("GET", url + ("?removed=true" if removed else ""))["sandboxes"]
    if not found:
        print("no sandboxes")
        return 0
    print(f"{'ID':36}  {'AGENT':14}  {'MODE':9}  {'STATUS':8}  {'REV':>3}  {'EXPIRES':25}  SERVICES")
    for sandbox in found:
        print(f"{sandbox['id']:36}  {sandbox['agent']:14}  {sandbox['mode']:9}  {sandbox['status']:8}  "
              f"{sandbox['revision']:>3}  {sandbox['expires_at']:25}  {', '.join(sandbox['required_services'])}")
    return 0
