"""Admitting an agent: verify its manifest, check its live tools one by one, pin their digests.

A registration is refused unless the manifest's signature verifies under a key the registry trusts for
that agent, every tool the agent really lists carries a valid signature over exactly the schema the
manifest pins, and its A2A agent card verifies under the same keys and lists exactly those tools.
Later, ``recheck`` re-lists the tools: one whose live schema no longer matches its pinned digest is
blocked ("changed after approval") until a newly signed manifest is admitted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx2

from mesh import card
from mesh.keys import TrustStore
from mesh.manifest import SIGNATURE_META, Manifest, ManifestProblem, tool_digest, verify_tool
from mesh.names import NAME_RULE, is_valid_name
from mesh.registry import store
from mesh.registry.forward import AgentError
from mesh.registry.node import PinnedTool, Registry
from mesh.registry.problems import Problem

log = logging.getLogger(__name__)
CHANGED = "changed after approval: the live schema no longer matches its pinned, signed digest"


async def live_tools(registry: Registry, endpoint: str) -> list[dict[str, Any]]:
    """The agent's ``tools/list`` as wire dicts."""
    assert registry.forwarder is not None
    try:
        return await registry.forwarder.list_tools(endpoint)
    except (httpx2.HTTPError, AgentError) as exc:
        raise Problem("target-unavailable", f"cannot list the tools at {endpoint}: {exc}") from exc


async def admit(registry: Registry, name: str, endpoint: str, manifest_json: dict[str, Any],
                jwks: dict[str, Any] | None, trust: TrustStore) -> dict[str, Any]:
    """Admit (or re-admit) ``name`` under the keys ``trust`` holds for it; returns what changed.

    The caller has authenticated the agent already. Raises a ``registration-refused`` Problem; a refusal
    is audited and leaves the agent's earlier admission, pins and trust as they were."""
    if not (endpoint.startswith(("http://", "https://")) and len(endpoint) <= 2048):
        raise Problem("bad-request", "endpoint must be an http(s) URL of at most 2048 characters")
    try:
        manifest = Manifest.from_json(manifest_json, f"manifest of {name!r}")
        manifest.verify(trust, source=f"manifest of {name!r}")
        if manifest.agent != name:
            raise ManifestProblem(f"the manifest is signed for agent {manifest.agent!r}, not {name!r}")
    except ManifestProblem as exc:
        _record_refusal(registry, name, endpoint, str(exc))
        raise Problem("registration-refused", str(exc)) from exc
    with registry.sessions.begin() as session:
        known = store.get_agent(session, name)
        unchanged = (known is not None and known.manifest_digest == manifest.digest and known.endpoint == endpoint
                     and known.status == "active" and name in registry.admitted_here)
        if unchanged:
            store.upsert_agent(session, name, endpoint=endpoint, manifest=known.manifest,
                               manifest_digest=known.manifest_digest, jwks=known.jwks, version=known.version,
                               description=known.description, status="active", flags=known.flags)
    if unchanged:
        return {"agent": name, "status": "unchanged"}

    tools = await live_tools(registry, endpoint)
    signed = manifest.tools
    problems, signers = _check_live_tools(tools, signed, manifest.digest, trust)
    if problems:
        _record_refusal(registry, name, endpoint, "; ".join(problems))
        raise Problem("registration-refused", "; ".join(problems))
    try:  # its A2A card too: signed by a key trusted for it, naming it, its skills the signed tools
        await card.fetch_verified_card(endpoint, trust, agent=name, tools=signed.values())
    except card.CardProblem as exc:
        _record_refusal(registry, name, endpoint, str(exc))
        raise Problem("registration-refused", str(exc)) from exc

    pinned = []
    for tool in tools:
        # The signature block is kept with the pinned form, so the registry can list the tool as signed.
        signature = {SIGNATURE_META: tool["_meta"][SIGNATURE_META]}
        wire = {k: v for k, v in tool.items() if k != "_meta"} | {"_meta": signature}
        entry = signed[tool["name"]]
        pinned.append(store.ToolRecord(
            agent=name, name=tool["name"], title=wire.get("title"), description=wire.get("description", ""),
            input_schema=wire.get("inputSchema", {}), output_schema=wire.get("outputSchema"),
            annotations=wire.get("annotations"), scopes=entry["scopes"], pinned_digest=entry["digest"],
            status="verified", blocked_reason=None, wire=wire, signed_by=signers[tool["name"]]))
    body = manifest.body
    with registry.sessions.begin() as session:
        store.upsert_agent(session, name, endpoint=endpoint, manifest=json.dumps(manifest.to_json()),
                           manifest_digest=manifest.digest, jwks=jwks, version=body.get("version", ""),
                           description=body.get("description", ""), status="active", flags=[])
        records = store.replace_tools(session, name, pinned)
        fresh = {(r.agent, r.name): PinnedTool.from_record(r) for r in records}
    for key in [key for key in registry.tools if key[0] == name]:
        del registry.tools[key]
    registry.tools.update(fresh)
    registry.endpoints[name] = endpoint
    registry.manifest_digests[name] = manifest.digest
    registry.admitted_here.add(name)
    await registry.index_agent(name)
    log.info("admitted %s at %s with %d tools", name, endpoint, len(pinned))
    return {"agent": name, "status": "admitted", "tools": sorted(t.name for t in pinned),
            "manifest_digest": manifest.digest}


def _check_live_tools(tools: list[dict[str, Any]], signed: dict[str, dict[str, Any]], manifest_digest: str,
                      trust: TrustStore) -> tuple[list[str], dict[str, str]]:
    """What is wrong with the live tools, and the kid each good tool's signature was made with."""
    problems, signers = [], {}
    live_names = {tool["name"] for tool in tools}
    for tool in tools:
        name = tool["name"]
        if not is_valid_name(name):
            problems.append(f"tool {name[:80]!r} has no valid name ({NAME_RULE})")
            continue
        if name not in signed:
            problems.append(f"tool {name!r} is served but not in the signed manifest")
            continue
        try:
            block = verify_tool(tool, trust)
        except ManifestProblem as exc:
            problems.append(str(exc))
            continue
        if block.get("manifest") != manifest_digest:
            problems.append(f"tool {name!r} is signed for another manifest than the one registered")
        elif block["digest"] != signed[name]["digest"]:
            problems.append(f"tool {name!r}: its live schema differs from the one the manifest pins")
        else:
            signers[name] = block["kid"]
    for name in sorted(set(signed) - live_names):
        problems.append(f"tool {name!r} is in the manifest but the agent does not serve it")
    return problems, signers


def _record_refusal(registry: Registry, name: str, endpoint: str, reason: str) -> None:
    """A refused registration is an audit event; the agent's earlier admission (if any) stands untouched."""
    log.warning("refused registration of %s: %s", name, reason)
    registry.audit(f"agent:{name}", "register", name, "refused", f"{reason} (endpoint {endpoint})")


async def recheck(registry: Registry, name: str) -> list[str] | None:
    """Re-list ``name``'s tools; block every tool whose live form no longer matches its pin. Returns the
    tools blocked now, or None when the agent could not be reached (it is then marked down)."""
    endpoint = registry.endpoints.get(name)
    if endpoint is None:
        raise Problem("unknown-agent", f"no agent {name!r} is registered")
    try:
        tools = {t["name"]: t for t in await live_tools(registry, endpoint)}
    except Problem:
        with registry.sessions.begin() as session:
            store.set_agent_status(session, name, "down")
        return None
    blocked = []
    with registry.sessions.begin() as session:
        for pinned in registry.agent_tools(name):
            live = tools.get(pinned.name)
            if pinned.status == "blocked":
                continue
            if live is None or tool_digest(live) != pinned.digest or SIGNATURE_META not in (live.get("_meta") or {}):
                record = store.block_tool(session, name, pinned.name, CHANGED)
                registry.tools[(name, pinned.name)] = PinnedTool.from_record(record)
                blocked.append(pinned.name)
        if store.get_agent(session, name).status == "down":
            store.set_agent_status(session, name, "active")
    if blocked:
        flag = f"tools changed after approval: {', '.join(blocked)}"
        log.warning("%s: %s", name, flag)
        with registry.sessions.begin() as session:
            store.get_agent(session, name).flags = [flag]
        await registry.index_agent(name)
    return blocked


async def recheck_forever(registry: Registry) -> None:
    """Every ``recheck_interval`` seconds, recheck every agent this registry knows: its signing keys
    (one may have reached the end of its overlap, or been revoked by another registry process) and
    its live tools."""
    while True:
        await anyio.sleep(registry.config.recheck_interval)
        for name in list(registry.endpoints):
            try:
                if await anyio.to_thread.run_sync(registry.block_unvouched, name):
                    await registry.index_agent(name)
                await recheck(registry, name)
            except Exception:
                log.exception("recheck of %s failed", name)
