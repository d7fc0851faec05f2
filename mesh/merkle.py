"""Merkle trees as RFC 9162 (Certificate Transparency 2.0) defines them: one signature over many records.

The registry signs the provenance of calls that commit together once, over the root of a tree whose
leaves are those calls' claims, and gives each run its *inclusion proof* (the audit path): with the
signed root, anyone can check that one run's claims were in the batch without seeing the others.

Leaves are hashed as ``SHA-256(0x00 || data)`` and inner nodes as ``SHA-256(0x01 || left || right)``; a
tree of n leaves splits at the largest power of two below n (RFC 9162, section 2.1.1). Inclusion proofs
are verified by the algorithm of section 2.1.3.2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of leaf hashes ``leaves`` (at least one)."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root and every leaf's audit path (sibling hashes from the leaf up), each subtree hashed once."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    if len(leaves) == 1:
        return leaves[0], [[]]
    k = _split(len(leaves))
    left, left_paths = inclusion_paths(leaves[:k])
    right, right_paths = inclusion_paths(leaves[k:])
    return node_hash(left, right), [*([*p, right] for p in left_paths), *([*p, left] for p in right_paths)]


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root that leaf hash ``leaf`` at ``index`` of a tree of ``size`` leads to along ``path``.

    Compare it with the signed root; ``ValueError`` when the path cannot belong to such a tree."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    fn, sn, result = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            raise ValueError("the path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            result = node_hash(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("the path is shorter than the tree is deep")
    return result
