"""Capability manifests and descriptor signatures.

A *manifest* states everything an agent puts in front of a model: its name, version, description and
every tool, resource, resource template and prompt exactly as it appears on the wire in ``tools/list``,
``resources/list``, ``resources/templates/list`` and ``prompts/list`` (without ``_meta``), each with the
scopes a caller needs and its digest. It is signed as a JWS in General JSON serialization (typ
``mcpmesh-manifest+jws``) over the RFC 8785 canonical JSON of that payload, one signature per key that
is still valid, so verifiers keep working through a key rotation.

The payload (format ``mcpmesh.manifest/v1``)::

    {"format": "mcpmesh.manifest/v1", "agent": NAME, "version": ..., "description": ...,
     "tools":             [{...tool as listed..., "scopes": [...], "digest": "sha256:...",
                            "cost": 2.5}],                                                 # cost: only if declared
     "resources":         [{...resource as listed..., "scopes": [...], "digest": ...}],   # only if any
     "resourceTemplates": [{...template as listed..., "scopes": [...], "digest": ...}],   # only if any
     "prompts":           [{...prompt as listed..., "scopes": [...], "digest": ...}]}     # only if any

Each list is sorted by ``name``; names follow ``mesh.names`` and are unique within their list (a
resource and a template may not share a name either). ``resources``, ``resourceTemplates`` and
``prompts`` are left out when empty, so a tools-only agent signs exactly the payload it signed before
they existed, and manifests written then still verify unchanged.

Each listed descriptor also carries its own detached signature in ``_meta["io.mcpmesh/signature"]``: the
payload is the canonical JSON of the descriptor exactly as listed, with ``_meta`` removed, and the JWS
typ names its kind (``KINDS``), so a signed prompt cannot pass for a tool. A client needs only the list
and the agent's JWKS to check it (``verify_descriptor``; ``verify_tool`` for tools).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
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


@dataclass(frozen=True)
class Kind:
    """One kind of listed descriptor: where the manifest keeps it and how its signature is typed."""

    name: str  # how messages name it: "tool 'x'", "prompt 'x'"
    field: str  # its list in the manifest payload, as in the MCP list result
    typ: str  # the ``typ`` of its detached JWS


KINDS: dict[str, Kind] = {
    "tool": Kind("tool", "tools", TOOL_TYP),
    "resource": Kind("resource", "resources", "mcpmesh-resource+jws"),
    "resource_template": Kind("resource template", "resourceTemplates", "mcpmesh-resource-template+jws"),
    "prompt": Kind("prompt", "prompts", "mcpmesh-prompt+jws"),
}


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


def wire_descriptor(descriptor: Any) -> dict[str, Any]:
    """A descriptor (tool, resource, template, prompt) as its list puts it on the wire, without ``_meta``:
    the thing that is signed."""
    if hasattr(descriptor, "model_dump"):
        descriptor = descriptor.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {key: value for key, value in descriptor.items() if key != "_meta"}


def descriptor_digest(descriptor: Any) -> str:
    return json_digest(wire_descriptor(descriptor))


wire_tool = wire_descriptor
tool_digest = descriptor_digest


@dataclass(frozen=True)
class Manifest:
    """A signed manifest: the exact payload bytes and the JWS signatures over them."""

    payload_bytes: bytes
    signatures: tuple[dict[str, str], ...]

    # -- building -----------------------------------------------------------------------------------

    @staticmethod
    def payload(
        agent: str,
        version: str,
        description: str,
        tools: list[tuple[dict[str, Any], list[str]]],
        *,
        resources: Iterable[tuple[dict[str, Any], list[str]]] = (),
        resource_templates: Iterable[tuple[dict[str, Any], list[str]]] = (),
        prompts: Iterable[tuple[dict[str, Any], list[str]]] = (),
        costs: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """The manifest body; each kind is given as (wire descriptor, required scopes) pairs. ``costs``: tool
        name -> the cost units a call of it spends from budgets, for tools that declare one (default 1).

        Names are checked here too: whatever built the descriptors, nothing with a bad or repeated name
        gets signed. Empty non-tool lists are left out (see the module docstring).
        """
        check_name(agent, "agent name")
        body: dict[str, Any] = {"format": FORMAT, "agent": agent, "version": version, "description": description}
        given = {"tool": tools, "resource": resources, "resource_template": resource_templates, "prompt": prompts}
        for kind, pairs in given.items():
            entries = _entries(KINDS[kind], list(pairs))
            if kind == "tool" and costs:
                entries = [{**entry, "cost": costs[entry["name"]]} if entry["name"] in costs else entry
                           for entry in entries]
            if entries or kind == "tool":
                body[KINDS[kind].field] = entries
        resource_names = [e["name"] for field in ("resources", "resourceTemplates") for e in body.get(field, [])]
        _refuse_repeats(resource_names, "resource or resource template")
        return body

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
        return self.descriptors("tool")

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.descriptors("resource")

    @property
    def resource_templates(self) -> dict[str, dict[str, Any]]:
        return self.descriptors("resource_template")

    @property
    def prompts(self) -> dict[str, dict[str, Any]]:
        return self.descriptors("prompt")

    def descriptors(self, kind: str) -> dict[str, dict[str, Any]]:
        """The signed entries of one kind (a ``KINDS`` key) by name; empty for a manifest that has none."""
        return {entry["name"]: entry for entry in self.body.get(KINDS[kind].field, [])}

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
        for kind in KINDS.values():
            for entry in body.get(kind.field, []):
                if descriptor_digest(_without_manifest_fields(entry)) != entry.get("digest"):
                    raise ManifestProblem(
                        f"{source}: {kind.name} {entry.get('name')!r}: digest does not match its descriptor")
        return verified


def _entries(kind: Kind, pairs: list[tuple[dict[str, Any], list[str]]]) -> list[dict[str, Any]]:
    """Manifest entries of one kind, sorted by name, each name checked and unique."""
    names = [check_name(wire_descriptor(descriptor).get("name"), f"{kind.name} name") for descriptor, _ in pairs]
    _refuse_repeats(names, kind.name)
    return [
        {**wire_descriptor(descriptor), "scopes": sorted(scopes), "digest": descriptor_digest(descriptor)}
        for descriptor, scopes in sorted(pairs, key=lambda pair: wire_descriptor(pair[0])["name"])
    ]


def _refuse_repeats(names: list[str], what: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ManifestProblem(f"{what} names used more than once: {', '.join(repeated)}")


def _body_problem(body: Any) -> str | None:
    """What is wrong with a manifest payload's shape (None if nothing): an object naming a valid agent,
    and a list of tool objects with valid names."""
    if not isinstance(body, dict):
        return "the payload is not a JSON object"
    if not is_valid_name(body.get("agent")):
        return f"the payload's agent {body.get('agent')!r} is not a valid agent name"
    for kind in KINDS.values():
        if kind.field not in body and kind.field != "tools":
            continue  # only tools are required: manifests from before resources and prompts have none
        entries = body.get(kind.field)
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            return f"the payload's {kind.field} are not a list of objects"
        for entry in entries:
            if not is_valid_name(entry.get("name")):
                return f"the payload names a {kind.name} {entry.get('name')!r}, which is not a valid {kind.name} name"
            cost = entry.get("cost", 0)
            if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 <= cost < math.inf:
                return f"the payload's {kind.name} {entry.get('name')!r} declares a cost that is not a number >= 0"
    return None


def _without_manifest_fields(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in ("scopes", "digest", "cost")}


def descriptor_signature(kind: str, descriptor: Any, key: SigningKey, manifest_digest: str) -> dict[str, str]:
    """The ``_meta["io.mcpmesh/signature"]`` value for one listed descriptor of ``kind`` (a ``KINDS`` key)."""
    body = canonical(wire_descriptor(descriptor))
    return {
        "alg": ALG,
        "kid": key.kid,
        "digest": sha256(body),
        "jws": detach(key.sign(body, KINDS[kind].typ)),
        "manifest": manifest_digest,
    }


def tool_signature(tool: Any, key: SigningKey, manifest_digest: str) -> dict[str, str]:
    """The ``_meta["io.mcpmesh/signature"]`` value for one listed tool."""
    return descriptor_signature("tool", tool, key, manifest_digest)


def verify_descriptor(kind: str, descriptor: Any, trust: TrustStore, *, now: float | None = None) -> dict[str, str]:
    """Check a listed descriptor's own signature against ``trust``; return the signature block.

    ``descriptor`` is the tool, resource, resource template or prompt as received (model or wire dict,
    with its ``_meta``); ``kind`` is what the caller listed (a ``KINDS`` key), and the signature's typ
    must say the same.
    """
    what = KINDS[kind]
    if hasattr(descriptor, "model_dump"):
        descriptor = descriptor.model_dump(by_alias=True, mode="json", exclude_none=True)
    name = descriptor.get("name")
    block = (descriptor.get("_meta") or {}).get(SIGNATURE_META)
    if not isinstance(block, dict) or not isinstance(block.get("jws"), str):
        raise ManifestProblem(f"{what.name} {name!r} carries no {SIGNATURE_META} in _meta")
    body = canonical(wire_descriptor(descriptor))
    if sha256(body) != block.get("digest"):
        raise ManifestProblem(f"{what.name} {name!r}: its schema does not match the signed digest")
    try:
        header = trust.verify_detached(block["jws"], body, now=now)
    except KeyProblem as exc:
        raise ManifestProblem(f"{what.name} {name!r}: {exc}") from exc
    except (ValueError, jws.JWSError) as exc:
        raise ManifestProblem(f"{what.name} {name!r}: malformed signature ({exc})") from exc
    if header.get("kid") != block.get("kid") or header.get("typ") != what.typ:
        raise ManifestProblem(f"{what.name} {name!r}: signature header does not match its kid/typ")
    return block


def verify_tool(tool: Any, trust: TrustStore, *, now: float | None = None) -> dict[str, str]:
    """Check a listed tool's own signature against ``trust``; return the signature block."""
    return verify_descriptor("tool", tool, trust, now=now)
