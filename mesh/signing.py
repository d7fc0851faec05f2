"""Signing a workspace's agents and choosing what an agent serves.

Two places hold manifests. ``manifests/`` is committed: manifests signed by the maintainers' keys and the
JWKS that publishes those keys. ``.mesh/manifests/`` is private: a checkout that does not hold the
published private keys (every fresh clone) signs its own *local* manifests there with local keys, so the
mesh still runs without touching a tracked file. Strict mode refuses that fallback.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.agent import Agent
from mesh.keys import KeyProblem, KeyRing, SigningKey, TrustStore
from mesh.manifest import KINDS, Manifest, ManifestProblem
from mesh.workspace import Workspace


class SigningProblem(Exception):
    """Signing or serving cannot go on; the message says why and what to do."""


@dataclass
class Identity:
    """What an agent serves with: its manifest, the JWKS that verifies it, and the keys that sign."""

    agent: str
    mode: str  # "published" (keys behind manifests/) or "local" (keys made in this checkout)
    manifest: Manifest
    jwks: dict[str, Any]
    keys: list[SigningKey]  # active first
    note: str | None = None

    @property
    def active(self) -> SigningKey:
        return self.keys[0]


def read_jwks(path: Path) -> dict[str, Any] | None:
    """The JWKS document at ``path`` (None if there is none); a file that is not a JSON object is refused."""
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:
        raise SigningProblem(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise SigningProblem(f"{path}: a JWKS must be a JSON object, not {type(document).__name__}")
    return document


def write_jwks(path: Path, jwks: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jwks, indent=2) + "\n")


def holds_published_key(ws: Workspace, name: str) -> bool:
    """Does this checkout hold an active private key that ``manifests/NAME.jwks.json`` publishes?"""
    published = read_jwks(ws.jwks_path(name))
    if not published or not KeyRing.exists(ws.keys_dir(name)):
        return False
    ring = KeyRing.open(ws.keys_dir(name))
    keys = published.get("keys")
    published_kids = {key.get("kid") for key in keys if isinstance(key, dict)} if isinstance(keys, list) else set()
    try:
        return ring.active().kid in published_kids
    except KeyProblem:
        return False


async def manifest_payload(agent: Agent) -> dict[str, Any]:
    """What the agent serves, as the manifest signs it: every listed descriptor with its scopes."""
    listed = await agent.descriptors()
    scopes = agent.all_scopes()
    pairs = {kind: [(item, scopes[kind].get(item["name"], [])) for item in items] for kind, items in listed.items()}
    return Manifest.payload(
        agent.name, agent.version, agent.description, pairs["tool"],
        resources=pairs["resource"], resource_templates=pairs["resource_template"], prompts=pairs["prompt"],
        costs=agent.costs(),
    )


def _unchanged(path: Path, payload: dict[str, Any], keys: list[SigningKey]) -> bool:
    """True when the manifest on disk already says ``payload``, signed by exactly ``keys``."""
    if not path.is_file():
        return False
    try:
        existing = Manifest.load(path)
    except ManifestProblem:
        return False
    return existing.body == payload and existing.kids() == [key.kid for key in keys]


def publish(ws: Workspace, agent: Agent, payload: dict[str, Any], ring: KeyRing, *, local: bool) -> bool:
    """Sign ``payload`` with every valid key of ``ring`` and write manifest + JWKS; False if nothing changed."""
    keys = ring.signing_keys()
    manifest_path = ws.manifest_path(agent.name, local=local)
    jwks_path = ws.jwks_path(agent.name, local=local)
    jwks = ring.public_jwks()
    if _unchanged(manifest_path, payload, keys) and read_jwks(jwks_path) == jwks:
        return False
    Manifest.sign(payload, keys).save(manifest_path)
    write_jwks(jwks_path, jwks)
    return True


async def sign_agent(ws: Workspace, name: str, *, replace_keys: bool = False) -> bool:
    """``mesh sign NAME``: write ``manifests/NAME.manifest.json`` and ``NAME.jwks.json``."""
    agent = ws.agent(name)
    published = read_jwks(ws.jwks_path(name))
    if published and published.get("keys") and not holds_published_key(ws, name) and not replace_keys:
        raise SigningProblem(
            f"manifests/{name}.jwks.json publishes keys this checkout does not hold; signing would replace "
            f"the agent's published identity. Pass --replace-keys if that is what you mean."
        )
    ring = KeyRing.open(ws.keys_dir(name), create=True)
    return publish(ws, agent, await manifest_payload(agent), ring, local=False)


async def resign_after_key_change(ws: Workspace, name: str) -> None:
    """After a rotation or revocation: re-sign with the ring's valid keys wherever this ring publishes."""
    ring = KeyRing.open(ws.keys_dir(name))
    agent = ws.agent(name)
    local = not holds_published_key(ws, name) and ws.manifest_path(name, local=True).exists()
    publish(ws, agent, await manifest_payload(agent), ring, local=local)


async def identity_for_serving(ws: Workspace, name: str, *, strict: bool = False, dev: bool = False) -> Identity:
    """Choose and check the manifest an agent serves. Never serves a manifest that differs from its tools."""
    agent = ws.agent(name)
    payload = await manifest_payload(agent)
    committed_path = ws.manifest_path(name)

    if holds_published_key(ws, name):
        ring = KeyRing.open(ws.keys_dir(name))
        note = None
        if dev and publish(ws, agent, payload, ring, local=False):
            tracked = [path.relative_to(ws.root) for path in (committed_path, ws.jwks_path(name))]
            note = (f"{name}: --dev re-signed the tracked {tracked[0]} and {tracked[1]} with the published key; "
                    "review and commit them, or restore them with git")
        manifest = _load_matching(ws, agent, committed_path, payload)
        jwks = read_jwks(ws.jwks_path(name)) or {}
        _verify(manifest, jwks, committed_path)
        return Identity(name, "published", manifest, jwks, ring.signing_keys(), note)

    if strict:
        raise SigningProblem(
            f"strict mode: this checkout holds no private key published in manifests/{name}.jwks.json, "
            f"so it cannot serve the published manifest of {name!r}"
        )
    if committed_path.is_file() and not dev:
        _load_matching(ws, agent, committed_path, payload)  # the code must still be what was reviewed
    ring = KeyRing.open(ws.keys_dir(name), create=True)
    publish(ws, agent, payload, ring, local=True)
    local_path = ws.manifest_path(name, local=True)
    manifest = Manifest.load(local_path)
    jwks = read_jwks(ws.jwks_path(name, local=True)) or {}
    note = (
        f"{name}: no private key for the published manifest here; serving a local manifest signed by "
        f"local key {ring.active().kid[:12]}… ({local_path.relative_to(ws.root)})"
    )
    return Identity(name, "local", manifest, jwks, ring.signing_keys(), note)


async def code_differences(ws: Workspace, manifest: Manifest) -> list[str]:
    """What the agent's code serves now that its signed manifest does not say (empty when they agree)."""
    return _payload_differences(manifest.body, await manifest_payload(ws.agent(manifest.agent)))


def _load_matching(ws: Workspace, agent: Agent, path: Path, payload: dict[str, Any]) -> Manifest:
    manifest = Manifest.load(path)
    differences = _payload_differences(manifest.body, payload)
    if differences:
        raise SigningProblem(
            f"{agent.name}: the live tools, resources or prompts differ from the signed manifest "
            f"{path.relative_to(ws.root)}:\n  "
            + "\n  ".join(differences)
            + f"\nRun `mesh sign {agent.name}` to sign what changed (or `mesh agent run --dev` while iterating)."
        )
    return manifest


def _payload_differences(signed: dict[str, Any], live: dict[str, Any]) -> list[str]:
    lines = []
    for field in ("agent", "version", "description"):
        if signed.get(field) != live.get(field):
            lines.append(f"{field} changed: {signed.get(field)!r} -> {live.get(field)!r}")
    for kind in KINDS.values():
        signed_entries = {e["name"]: e for e in signed.get(kind.field, [])}  # Manifest.from_json checked the shape
        live_entries = {e["name"]: e for e in live.get(kind.field, [])}
        for name in sorted(set(signed_entries) | set(live_entries)):
            if name not in live_entries:
                lines.append(f"{kind.name} {name!r} is signed but no longer served")
            elif name not in signed_entries:
                lines.append(f"{kind.name} {name!r} is served but not signed")
            elif signed_entries[name].get("digest") != live_entries[name]["digest"]:
                lines.append(f"{kind.name} {name!r} changed ({_what_changes(kind.field)})")
            elif signed_entries[name].get("scopes") != live_entries[name]["scopes"]:
                lines.append(f"{kind.name} {name!r}: required scopes changed")
    return lines


def _what_changes(field: str) -> str:
    return {
        "tools": "schema, description or annotations",
        "prompts": "arguments, title or description",
    }.get(field, "URI, name, description, MIME type or annotations")


def _verify(manifest: Manifest, jwks: dict[str, Any], source: Path) -> list[str]:
    try:
        trust = TrustStore.from_jwks(jwks)
        return manifest.verify(trust, source=str(source))
    except KeyProblem as exc:
        raise SigningProblem(f"{source}: {exc}") from exc
    except ManifestProblem as exc:
        raise SigningProblem(str(exc)) from exc


def verify_manifest_file(path: Path, jwks_path: Path, *, now: float | None = None) -> Manifest:
    """``mesh verify``: check one committed manifest against its published JWKS alone."""
    now = time.time() if now is None else now
    manifest = Manifest.load(path)
    jwks = read_jwks(jwks_path)
    if jwks is None:
        raise SigningProblem(f"{path}: no published keys at {jwks_path}")
    try:
        trust = TrustStore.from_jwks(jwks, now=now)
    except KeyProblem as exc:
        raise SigningProblem(f"{jwks_path}: {exc}") from exc
    manifest.verify(trust, source=str(path), now=now)
    expected = path.name.removesuffix(".manifest.json")
    if manifest.agent != expected:
        raise SigningProblem(f"{path}: signed for agent {manifest.agent!r}, but the file is named for {expected!r}")
    return manifest
