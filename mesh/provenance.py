"""Checking a run's provenance: what the registry signed about a call, verified with its public keys alone.

A run record (``GET /v1/runs/{id}``) carries ``provenance`` in one of two forms:

- **One call, one signature:** a compact JWS (``typ`` ``mcpmesh-provenance+jws``) whose payload is the
  call's claims (caller, agent, tool, arguments digest, status, policy decision...).
- **A batch:** calls that committed together (``registry/runlog.py``) share one compact JWS
  (``typ`` ``mcpmesh-provenance-batch+jws``) over the root of a Merkle tree (RFC 9162, ``mesh.merkle``)
  whose leaves are their canonical claims; the run's ``provenance_proof`` holds its claims, its leaf
  index, the tree's size and the audit path (hex). The claims are proved when the path leads from their
  leaf to the signed root.

Either way ``verified_claims`` returns the claims, or raises ``ProvenanceProblem`` saying what failed;
comparing them with the record is the caller's part (``mesh runs verify`` does it).
"""

from __future__ import annotations

import json
from typing import Any

from mesh import merkle
from mesh.keys import KeyProblem, TrustStore
from mesh.manifest import canonical

PROVENANCE_TYP = "mcpmesh-provenance+jws"
BATCH_TYP = "mcpmesh-provenance-batch+jws"


class ProvenanceProblem(Exception):
    """A run's provenance that does not prove its claims; the message says why."""


def batch_statement(leaves: list[bytes], signed_at: str) -> dict[str, Any]:
    """What the registry signs for a batch of calls: the Merkle root of their leaves, and the tree's size."""
    return {"merkle_root": merkle.root(leaves).hex(), "size": len(leaves), "signed_at": signed_at,
            "leaf": "SHA-256(0x00 || RFC 8785 canonical JSON of the call's claims)"}


def leaf_of(claims: dict[str, Any]) -> bytes:
    return merkle.leaf_hash(canonical(claims))


def verified_claims(run: dict[str, Any], trust: TrustStore) -> dict[str, Any]:
    """The claims ``run``'s provenance proves, checked against ``trust`` (the registry's JWKS)."""
    token = run.get("provenance") or ""
    proof = run.get("provenance_proof")
    try:
        if proof is None:
            return json.loads(trust.verify_compact(token, expected_typ=PROVENANCE_TYP))
        statement = json.loads(trust.verify_compact(token, expected_typ=BATCH_TYP))
    except (KeyProblem, ValueError) as exc:
        raise ProvenanceProblem(f"its signature does not verify: {exc}") from exc
    try:
        claims, index, size = proof["claims"], int(proof["index"]), int(proof["size"])
        path = [bytes.fromhex(step) for step in proof["path"]]
        if size != statement["size"]:
            raise ValueError(f"the proof is for a batch of {size}, the signature for one of {statement['size']}")
        reached = merkle.root_from_path(leaf_of(claims), index, size, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProvenanceProblem(f"its inclusion proof is malformed: {exc}") from exc
    if reached.hex() != statement["merkle_root"]:
        raise ProvenanceProblem("its claims are not in the signed batch: the inclusion proof leads to another root")
    return claims
