"""Capability manifests and tool signatures.

A *manifest* states what an agent offers: its name, version, description and every tool as it appears
on the wire in ``tools/list`` (plus the scopes a caller needs and the tool's digest). It is signed as a
JWS in General JSON serialization over the RFC 8785 canonical JSON of that payload, one signature per
key that is still valid, so verifiers keep working through a key rotation.

Each listed tool also carries its own detached signature in ``_meta["io.mcpmesh/signature"]``: the
payload is the canonical JSON of the tool exactly as listed, with ``_meta`` removed. A client needs only
the tool list and the agent's JWKS to check it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from jose import jws

from mesh.keys import ALG, KeyProblem, SigningKey, TrustStore, b64url, b64url_decode, detach
from mesh.names import check_name, is_valid_name

SIGNATURE_META = "io.mcpmesh/signature"
SCOPES_META = "io.mcpmesh/scopes"
MANIFEST_META = "io.mcpmesh/manifest"  # in each answer's _meta: the digest of the manifest the agent serves
MANIFEST_TYP = "mcpmesh-manifest+jws"
TOOL_TYP = "mcpmesh-tool+jws"
FORMAT = "mcpmesh.manifest/v1"


class ManifestProblem(Exception):
    """A manifest or tool signature that must not be trusted; the message names file, tool or key."""


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON: the only bytes the mesh ever signs or digests."""
    return rfc8785.dumps(value)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def json_digest(value: Any) -> str:
    """``sha256:<hex>`` of a JSON value's canonical bytes: how the mesh names tools, inputs and arguments."""
    return sha256(canonical(value))


def wire_tool(tool: Any) -> dict[str, Any]:
    """A tool as ``tools/list`` puts it on the wire, without ``_meta``: the thing that is signed."""
    if hasattr(tool, "model_dump"):
        tool = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {key: value for key, value in tool.items() if key != "_meta"}


def tool_digest(tool: Any) -> str:
    return json_digest(wire_tool(tool))


@dataclass(frozen=True)
class Manifest:
    """A signed manifest: the exact payload bytes and the JWS signatures over them."""

    payload_bytes: bytes
    signatures: tuple[dict[str, str], ...]

    # -- building -----------------------------------------------------------------------------------

    @staticmethod
    def payload(
        agent: str, version: str, description: str, tools: list[tuple[dict[str, Any], list[str]]]
    ) -> dict[str, Any]:
        """The manifest body for ``tools``, given as (wire tool, required scopes) pairs.

        Names are checked here too: whatever built the tools, nothing with a bad name gets signed.
        """
        check_name(agent, "agent name")
        for tool, _ in tools:
            check_name(wire_tool(tool).get("name"), "tool name")
        entries = [
            {**wire_tool(tool), "scopes": sorted(scopes), "digest": tool_digest(tool)}
            for tool, scopes in sorted(tools, key=lambda pair: wire_tool(pair[0])["name"])
        ]
        return {"format": FORMAT, "agent": agent, "version": version, "description": description, "tools": entries}

    @classmethod
    def sign(cls, payload: dict[str, Any], keys: list[SigningKey]) -> Manifest:
        if not keys:
            raise ManifestProblem("no valid key to sign with")
        body = canonical(payload)
        signatures = []
        for key in keys:
            protected, _, signature = key.sign(body, MANIFEST_TYP).split(".")
            signatures.append({"protected": protected, "signature": signature})
        return cls(body, tuple(signatures))

    # -- reading and writing ------------------------------------------------------------------------

    @classmethod
    def from_json(cls, document: dict[str, Any], source: str = "manifest") -> Manifest:
        """Read a manifest document, refusing any shape that code reading it later would trip over."""
        if not (isinstance(document, dict) and isinstance(document.get("payload"), str)
                and isinstance(document.get("signatures"), list)):
            raise ManifestProblem(f"{source}: not a JWS in General JSON serialization "
                                  "(an object with a payload string and a signatures list)")
        signatures = tuple(document["signatures"])
        if not signatures:
            raise ManifestProblem(f"{source}: carries no signature")
        if not all(isinstance(s, dict) and isinstance(s.get("protected"), str) and isinstance(s.get("signature"), str)
                   for s in signatures):
            raise ManifestProblem(f"{source}: each signature must be an object with protected and signature strings")
        signatures = tuple({"protected": s["protected"], "signature": s["signature"]} for s in signatures)
        try:
            payload_bytes = b64url_decode(document["payload"])
            body = json.loads(payload_bytes)
            headers = [json.loads(b64url_decode(s["protected"])) for s in signatures]
        except (ValueError, RecursionError) as exc:
            raise ManifestProblem(f"{source}: not a JWS in General JSON serialization ({exc})") from exc
        if not all(isinstance(header, dict) for header in headers):
            raise ManifestProblem(f"{source}: a signature's protected header is not a JSON object")
        problem = _body_problem(body)
        if problem:
            raise ManifestProblem(f"{source}: {problem}")
        return cls(payload_bytes, signatures)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ManifestProblem(f"{path}: no such manifest (run `mesh sign`)") from exc
        except ValueError as exc:
            raise ManifestProblem(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_json(document, str(path))

    def to_json(self) -> dict[str, Any]:
        return {"payload": b64url(self.payload_bytes), "signatures": [dict(s) for s in self.signatures]}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    # -- what it says ---------------------------------------------------------------------------------

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.payload_bytes)

    @property
    def digest(self) -> str:
        """``sha256:`` of the payload bytes; each tool signature names the manifest it belongs to by this."""
        return sha256(self.payload_bytes)

    @property
    def agent(self) -> str:
        return self.body["agent"]

    @property
    def tools(self) -> dict[str, dict[str, Any]]:
        return {tool["name"]: tool for tool in self.body["tools"]}

    def kids(self) -> list[str]:
        return [json.loads(b64url_decode(s["protected"])).get("kid") for s in self.signatures]

    # -- verifying --------------------------------------------------------------------------------

    def verify(self, trust: TrustStore, *, source: str = "manifest", now: float | None = None) -> list[str]:
        """Check the signatures; return the kids that verified.

        Every signature by a usable trusted key must verify (one that does not means the payload was
        changed). At least one must come from a usable key; signatures by revoked, expired or unknown
        keys are tolerated beside a good one, since rotation leaves old signatures behind.
        """
        try:
            verified = trust.verify_signatures(self.payload_bytes, self.signatures, typ=MANIFEST_TYP, now=now)
        except KeyProblem as exc:
            raise ManifestProblem(f"{source}: {exc}") from exc
        body = self.body
        if body.get("format") != FORMAT:
            raise ManifestProblem(f"{source}: unknown manifest format {body.get('format')!r}")
        for tool in body.get("tools", []):
            if tool_digest(_without_manifest_fields(tool)) != tool.get("digest"):
                raise ManifestProblem(f"{source}: tool {tool.get('name')!r}: digest does not match its schema")
        return verified


def _body_problem(body: Any) -> str | None:
    """What is wrong with a manifest payload's shape (None if nothing): an object naming a valid agent,
    and a list of tool objects with valid names."""
    if not isinstance(body, dict):
        return "the payload is not a JSON object"
    if not is_valid_name(body.get("agent")):
        return f"the payload's agent {body.get('agent')!r} is not a valid agent name"
    tools = body.get("tools")
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        return "the payload's tools are not a list of objects"
    for tool in tools:
        if not is_valid_name(tool.get("name")):
            return f"the payload names a tool {tool.get('name')!r}, which is not a valid tool name"
    return None


def _without_manifest_fields(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in ("scopes", "digest")}


def tool_signature(tool: Any, key: SigningKey, manifest_digest: str) -> dict[str, str]:
    """The ``_meta["io.mcpmesh/signature"]`` value for one listed tool."""
    body = canonical(wire_tool(tool))
    return {
        "alg": ALG,
        "kid": key.kid,
        "digest": sha256(body),
        "jws": detach(key.sign(body, TOOL_TYP)),
        "manifest": manifest_digest,
    }


def verify_tool(tool: Any, trust: TrustStore, *, now: float | None = None) -> dict[str, str]:
    """Check a listed tool's own signature against ``trust``; return the signature block.

    ``tool`` is the tool as received (model or wire dict, with its ``_meta``).
    """
    if hasattr(tool, "model_dump"):
        tool = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
    name = tool.get("name")
    block = (tool.get("_meta") or {}).get(SIGNATURE_META)
    if not isinstance(block, dict) or "jws" not in block:
        raise ManifestProblem(f"tool {name!r} carries no {SIGNATURE_META} in _meta")
    body = canonical(wire_tool(tool))
    if sha256(body) != block.get("digest"):
        raise ManifestProblem(f"tool {name!r}: its schema does not match the signed digest")
    try:
        header = trust.verify_detached(block["jws"], body, now=now)
    except KeyProblem as exc:
        raise ManifestProblem(f"tool {name!r}: {exc}") from exc
    except (ValueError, jws.JWSError) as exc:
        raise ManifestProblem(f"tool {name!r}: malformed signature ({exc})") from exc
    if header.get("kid") != block.get("kid") or header.get("typ") != TOOL_TYP:
        raise ManifestProblem(f"tool {name!r}: signature header does not match its kid/typ")
    return block
