"""Admitting an agent: verify its manifest, check what it lists one by one, pin their digests.

A registration is refused unless the manifest's signature verifies under a key the registry trusts for
that agent, every tool, resource, resource template and prompt the agent really lists carries a valid
signature (of its kind) over exactly the descriptor the manifest pins, everything the manifest pins is
listed, and its A2A agent card verifies under the same keys and lists exactly those tools. Later,
``recheck`` lists them again: one whose live form no longer matches its pinned digest is blocked
("changed after approval") until a newly signed manifest is admitted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx2

from mesh import card
from mesh.keys import TrustStore
from mesh.manifest import KINDS, SIGNATURE_META, Manifest, ManifestProblem, descriptor_digest, verify_descriptor
from mesh.names import NAME_RULE, is_valid_name
from mesh.registry import audit, store, tenancy
from mesh.registry.forward import AgentError
from mesh.registry.node import PinnedDescriptor, PinnedTool, Registry
from mesh.registry.problems import Problem

log = logging.getLogger(__name__)
CHANGED = "changed after approval: the live schema no longer matches its pinned, signed digest"


async def live_tools(registry: Registry, endpoint: str) -> list[dict[str, Any]]:
    """The agent's ``tools/list`` as wire dicts."""
    return (await live_descriptors(registry, endpoint, ("tool",)))["tool"]


async def live_descriptors(registry: Registry, endpoint: str,
                           kinds: tuple[str, ...] = tuple(KINDS)) -> dict[str, list[dict[str, Any]]]:
    """What the agent lists of each kind (a ``KINDS`` key), as wire dicts, every page."""
    assert registry.forwarder is not None
    listed = {}
    for kind in kinds:
        try:
            listed[kind] = await registry.forwarder.list_descriptors(endpoint, kind)
        except (httpx2.HTTPError, AgentError) as exc:
            raise Problem("target-unavailable", f"cannot list the {KINDS[kind].field} at {endpoint}: {exc}") from exc
    return listed


async def admit(registry: Registry, name: str, endpoint: str, manifest_json: dict[str, Any],
                jwks: dict[str, Any] | None, trust: TrustStore) -> dict[str, Any]:
    """Admit (or re-admit) ``name`` under the keys ``trust`` holds for it; returns what changed.

    The caller has authenticated the agent already. Raises a ``registration-refused`` Problem; a refusal
    is audited and leaves the agent's earlier admission, pins and trust as they were. The agent and its
    pins belong to the project the registry assigns it (``tenancy.Tenancy.of``), never one it asks for."""
    with tenancy.acting_as(registry.tenancy.of(name)):
        return await _admit(registry, name, endpoint, manifest_json, jwks, trust)


async def _admit(registry: Registry, name: str, endpoint: str, manifest_json: dict[str, Any],
                 jwks: dict[str, Any] | None, trust: TrustStore) -> dict[str, Any]:
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

    listed = await live_descriptors(registry, endpoint)
    tools, signed = listed["tool"], manifest.tools
    problems, signers = [], {}
    for kind, items in listed.items():
        found, by = _check_live(kind, items, manifest.descriptors(kind), manifest.digest, trust)
        problems += found
        signers[kind] = by
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
            status="verified", blocked_reason=None, wire=wire, signed_by=signers["tool"][tool["name"]],
            cost=entry.get("cost")))
    described = [
        store.DescriptorRecord(agent=name, kind=kind, name=item["name"], wire=_signed_wire(item),
                               scopes=manifest.descriptors(kind)[item["name"]]["scopes"],
                               pinned_digest=manifest.descriptors(kind)[item["name"]]["digest"], status="verified",
                               blocked_reason=None, signed_by=signers[kind][item["name"]])
        for kind, items in listed.items() if kind != "tool" for item in items]
    body = manifest.body
    with registry.sessions.begin() as session:
        store.upsert_agent(session, name, endpoint=endpoint, manifest=json.dumps(manifest.to_json()),
                           manifest_digest=manifest.digest, jwks=jwks, version=body.get("version", ""),
                           description=body.get("description", ""), status="active", flags=[])
        records = store.replace_tools(session, name, pinned)
        fresh = {(r.agent, r.name): PinnedTool.from_record(r) for r in records}
        others = {(r.agent, r.kind, r.name): PinnedDescriptor.from_record(r)
                  for r in store.replace_descriptors(session, name, described)}
        audit.append(session, org=registry.tenancy.of(name).org, actor=f"agent:{name}", action="register",
                     subject=name, outcome="admitted",
                     detail=f"endpoint {endpoint}",
                     data={"manifest_digest": manifest.digest, "tools": sorted(t.name for t in pinned)})
    for key in [key for key in registry.tools if key[0] == name]:
        del registry.tools[key]
    registry.tools.update(fresh)
    for key in [key for key in registry.descriptors if key[0] == name]:
        del registry.descriptors[key]
    registry.descriptors.update(others)
    registry.endpoints[name] = endpoint
    registry.tenancy.admitted(name)  # callable from now on, like its pins, by callers of its project
    registry.manifest_digests[name] = manifest.digest
    registry.admitted_here.add(name)
    await registry.index_agent(name)
    log.info("admitted %s at %s with %d tools and %d other descriptors", name, endpoint, len(pinned),
             len(described))
    answer = {"agent": name, "status": "admitted", "tools": sorted(t.name for t in pinned),
              "manifest_digest": manifest.digest}
    for kind in ("resource", "resource_template", "prompt"):
        if listed[kind]:
            answer[KINDS[kind].field] = sorted(item["name"] for item in listed[kind])
    return answer


def _signed_wire(item: dict[str, Any]) -> dict[str, Any]:
    """A listed descriptor as pinned: its wire form with only the agent's signature kept in ``_meta``,
    so the registry can list it as signed."""
    return {k: v for k, v in item.items() if k != "_meta"} | {"_meta": {SIGNATURE_META: item["_meta"][SIGNATURE_META]}}


def _check_live(kind: str, items: list[dict[str, Any]], signed: dict[str, dict[str, Any]], manifest_digest: str,
                trust: TrustStore) -> tuple[list[str], dict[str, str]]:
    """What is wrong with the live descriptors of ``kind``, and the kid each good one's signature was made with."""
    what = KINDS[kind].name
    problems, signers = [], {}
    live_names = {item.get("name") for item in items}
    for item in items:
        name = item.get("name")
        if not is_valid_name(name):
            problems.append(f"{what} {str(name)[:80]!r} has no valid name ({NAME_RULE})")
            continue
        if name not in signed:
            problems.append(f"{what} {name!r} is served but not in the signed manifest")
            continue
        try:
            block = verify_descriptor(kind, item, trust)
        except ManifestProblem as exc:
            problems.append(str(exc))
            continue
        if block.get("manifest") != manifest_digest:
            problems.append(f"{what} {name!r} is signed for another manifest than the one registered")
        elif block["digest"] != signed[name]["digest"]:
            problems.append(f"{what} {name!r}: its live form differs from the one the manifest pins")
        else:
            signers[name] = block["kid"]
    for name in sorted(set(signed) - live_names):
        problems.append(f"{what} {name!r} is in the manifest but the agent does not serve it")
    return problems, signers


def _record_refusal(registry: Registry, name: str, endpoint: str, reason: str) -> None:
    """A refused registration is an audit event; the agent's earlier admission (if any) stands untouched."""
    log.warning("refused registration of %s: %s", name, reason)
    registry.audit(f"agent:{name}", "register", name, "refused", f"{reason} (endpoint {endpoint})",
                   org=registry.tenancy.of(name).org)


async def recheck(registry: Registry, name: str) -> list[str] | None:
    """List ``name``'s tools, resources, templates and prompts again; block every one whose live form no
    longer matches its pin. Returns what is blocked now (tools by name, the other kinds as ``KIND:NAME``),
    or None when the agent could not be reached (it is then marked down)."""
    endpoint = registry.endpoints.get(name)
    if endpoint is None:
        raise Problem("unknown-agent", f"no agent {name!r} is registered")
    with tenancy.acting_as(registry.tenancy.of(name)):
        return await _recheck(registry, name, endpoint)


async def _recheck(registry: Registry, name: str, endpoint: str) -> list[str] | None:
    try:
        listed = {kind: {item["name"]: item for item in items}
                  for kind, items in (await live_descriptors(registry, endpoint)).items()}
    except Problem:
        with registry.sessions.begin() as session:
            store.set_agent_status(session, name, "down")
        return None
    blocked = []
    with registry.sessions.begin() as session:
        for pinned in registry.agent_tools(name):
            if pinned.status != "blocked" and _changed(listed["tool"].get(pinned.name), pinned.digest):
                record = store.block_tool(session, name, pinned.name, CHANGED)
                registry.tools[(name, pinned.name)] = PinnedTool.from_record(record)
                blocked.append(pinned.name)
        for described in registry.agent_descriptors(name):
            if described.verified and _changed(listed[described.kind].get(described.name), described.digest):
                record = store.block_descriptor(session, name, described.kind, described.name, CHANGED)
                registry.descriptors[(name, described.kind, described.name)] = PinnedDescriptor.from_record(record)
                blocked.append(f"{described.kind}:{described.name}")
        if store.get_agent(session, name).status == "down":
            store.set_agent_status(session, name, "active")
    if blocked:
        flag = f"changed after approval: {', '.join(blocked)}"
        log.warning("%s: %s", name, flag)
        with registry.sessions.begin() as session:
            store.get_agent(session, name).flags = [flag]
        await registry.index_agent(name)
    return blocked


def _changed(live: dict[str, Any] | None, digest: str) -> bool:
    """Is a pinned descriptor gone, changed, or listed without its signature?"""
    return live is None or descriptor_digest(live) != digest or SIGNATURE_META not in (live.get("_meta") or {})


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
