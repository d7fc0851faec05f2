"""A TrustStore reads JWKS documents and statements from anyone: junk must end in KeyProblem, never in
another exception, and no forged statement may make a key trusted.

Cases are generated from genuine documents by deterministic random mutations (a fixed seed), so a
failure names a case that reproduces.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from jose import jws

from mesh.keys import (
    REVOCATION_TYP,
    ROTATION_TYP,
    KeyProblem,
    KeyRing,
    SigningKey,
    TrustStore,
    b64url,
    b64url_decode,
    public_part,
)
from mesh.manifest import MANIFEST_TYP

SEED = 7
JUNK: list[Any] = [
    None, True, False, 0, -1, 2**70, -(2**70), 1.5, "", "x", "a.b.c", "..", "é", "\x00", "-" * 43,
    [], {}, [None], ["kid"], {"kid": []}, {"kty": "EC"}, [[[[[]]]]], "e30.e30.e30",
]


@pytest.fixture(scope="module")
def mesh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A ring that rotated twice and revoked its first key, its JWKS, and an attacker's own ring."""
    folder: Path = tmp_path_factory.mktemp("fuzz")
    ring = KeyRing.open(folder / "hello", create=True)
    first = ring.active().kid
    pinned_jwks = copy.deepcopy(ring.public_jwks())  # what a verifier saw before any rotation
    ring.rotate()
    ring.rotate()
    before_revocation = copy.deepcopy(ring.public_jwks())
    ring.revoke(first, "hello")
    attacker = KeyRing.open(folder / "attacker", create=True)
    return {
        "ring": ring,
        "first": first,
        "kids": {record.kid for record in ring.records},
        "pinned_jwks": pinned_jwks,
        "jwks": before_revocation,
        "revocation": ring.revocation_for(first),
        "attacker": attacker.active(),
    }


def only_key_problems(case: Any, call: Callable[[], Any]) -> tuple[bool, Any]:
    """Run ``call``: (True, result) or (False, the KeyProblem); anything else fails, naming the case."""
    try:
        return True, call()
    except KeyProblem as exc:
        return False, exc
    except Exception as exc:  # the point of the test: report whatever else escaped
        pytest.fail(f"{type(exc).__name__}: {exc} escaped on case {case!r:.300}")


# -- mutations ------------------------------------------------------------------------------------------


def mutate(value: Any, rng: random.Random) -> Any:
    """One random change somewhere inside a JSON value (or the value replaced by junk)."""
    if isinstance(value, dict) and value and rng.random() < 0.85:
        changed, key = dict(value), rng.choice(sorted(value))
        roll = rng.random()
        if roll < 0.2:
            del changed[key]
        elif roll < 0.35:
            changed[rng.choice(["kid", "exp", "x", "y", "crv", "keys", "rotations", "old_kid"])] = rng.choice(JUNK)
        else:
            changed[key] = mutate(value[key], rng)
        return changed
    if isinstance(value, list) and value and rng.random() < 0.85:
        changed, index = list(value), rng.randrange(len(value))
        roll = rng.random()
        if roll < 0.2:
            del changed[index]
        elif roll < 0.35:
            changed.append(rng.choice(JUNK))
        else:
            changed[index] = mutate(value[index], rng)
        return changed
    if isinstance(value, str) and value and rng.random() < 0.7:
        return mutate_text(value, rng)
    return rng.choice(JUNK)


def mutate_text(text: str, rng: random.Random) -> str:
    index = rng.randrange(len(text))
    roll = rng.randrange(6)
    if roll == 0:
        return text[:index]
    if roll == 1:
        return text[:index] + rng.choice("A_-.=+/é\x00 ") + text[index + 1:]
    if roll == 2:
        return text[:index] + "." + text[index:]
    if roll == 3:
        return text.replace(".", "", 1)
    if roll == 4 and text.count(".") == 2:
        return mutate_jws_part(text, rng)
    return text[::-1]


def mutate_jws_part(token: str, rng: random.Random) -> str:
    """Decode a compact JWS's header or payload, change one thing in it, encode it again (signature kept)."""
    parts = token.split(".")
    index = rng.randrange(2)
    try:
        value = json.loads(b64url_decode(parts[index]))
    except ValueError:
        return token
    parts[index] = b64url(json.dumps(mutate(value, rng)).encode())
    return ".".join(parts)


def compact(header: dict[str, Any], claims: Any, key: SigningKey) -> str:
    """A statement with any header and claims, signed by ``key`` (what an attacker can make)."""
    headers = {k: v for k, v in header.items() if k != "alg"}
    return jws.sign(rfc8785.dumps(claims), key._key, algorithm="ES256", headers=headers)


# -- junk JWKS documents -----------------------------------------------------------------------------


def test_junk_jwks_documents_raise_only_key_problem(mesh_keys: dict[str, Any]):
    rng = random.Random(SEED)
    outcomes = {True: 0, False: 0}
    for _ in range(1500):
        document = mutate(mesh_keys["jwks"], rng)
        for _ in range(rng.randrange(3)):
            document = mutate(document, rng)
        ok, _ = only_key_problems(document, lambda d=document: TrustStore.from_jwks(d))
        outcomes[ok] += 1
        pinned = TrustStore.from_jwks(mesh_keys["pinned_jwks"])
        ok, _ = only_key_problems(document, lambda d=document, p=pinned: p.add_jwks(d))
        assert set(pinned.keys) <= mesh_keys["kids"], document  # junk never adds a key of its own
        for key in document.get("keys", []) if isinstance(document, dict) and isinstance(
                document.get("keys"), list) else []:
            only_key_problems(key, lambda k=key: TrustStore().trust(k))
    assert outcomes[True] > 100 and outcomes[False] > 100  # both paths were exercised


# -- rotation statements ---------------------------------------------------------------------------


def test_junk_rotation_statements_raise_only_key_problem_and_teach_only_genuine_keys(mesh_keys: dict[str, Any]):
    rng = random.Random(SEED + 1)
    genuine = mesh_keys["jwks"]["rotations"]
    refused = 0
    for _ in range(1500):
        statements = mutate(genuine, rng)
        pinned = TrustStore.from_jwks(mesh_keys["pinned_jwks"])
        ok, result = only_key_problems(statements, lambda s=statements, p=pinned: p.follow_rotations(s))
        refused += not ok
        if ok:
            assert set(result) <= mesh_keys["kids"]
        assert set(pinned.keys) <= mesh_keys["kids"], statements
    assert refused > 500
    # The unmutated statements still teach both new keys.
    pinned = TrustStore.from_jwks(mesh_keys["pinned_jwks"])
    assert set(pinned.follow_rotations(genuine)) == mesh_keys["kids"] - {mesh_keys["first"]}


def forged_rotations(mesh_keys: dict[str, Any]) -> list[Any]:
    """Statements an attacker can make to slip their key in under the trusted first key."""
    first, attacker = mesh_keys["first"], mesh_keys["attacker"]
    attacker_jwk = public_part(attacker.private_jwk)
    claims = {"old_kid": first, "new_kid": attacker.kid, "new_jwk": attacker_jwk, "iat": 1, "old_not_after": None}
    as_first = {"alg": "ES256", "kid": first, "typ": ROTATION_TYP}
    genuine = mesh_keys["jwks"]["rotations"][0]
    protected, _, signature = genuine.split(".")
    first_public = json.dumps(mesh_keys["pinned_jwks"]["keys"][0])
    return [
        compact(as_first, claims, attacker),  # claims the trusted kid, signed by the attacker
        compact({**as_first, "kid": attacker.kid}, claims, attacker),  # header names the signer honestly
        compact({**as_first, "typ": "JWT"}, claims, attacker),
        f"{protected}.{b64url(rfc8785.dumps(claims))}.{signature}",  # genuine signature, forged claims
        f"{b64url(json.dumps({**as_first, 'alg': 'none'}).encode())}.{b64url(rfc8785.dumps(claims))}.",
        jws.sign(rfc8785.dumps(claims), first_public, algorithm="HS256", headers={"kid": first, "typ": ROTATION_TYP}),
        compact(as_first, {**claims, "new_kid": [attacker.kid]}, attacker),
        compact(as_first, {**claims, "new_jwk": {**attacker_jwk, "kty": "oct"}}, attacker),
        compact(as_first, [claims], attacker),
        compact({**as_first, "kid": [first]}, claims, attacker),
    ]


@pytest.mark.parametrize("index", range(10))
def test_no_forged_rotation_statement_makes_the_attacker_key_trusted(mesh_keys: dict[str, Any], index: int):
    statement = forged_rotations(mesh_keys)[index]
    attacker = mesh_keys["attacker"].kid
    for statements in ([statement], [*mesh_keys["jwks"]["rotations"], statement]):
        pinned = TrustStore.from_jwks(mesh_keys["pinned_jwks"])
        only_key_problems(statements, lambda s=statements, p=pinned: p.follow_rotations(s))
        assert attacker not in pinned.keys and pinned.problem(attacker) is not None
        document = {**mesh_keys["pinned_jwks"], "rotations": statements}
        ok, store = only_key_problems(document, lambda d=document: TrustStore.from_jwks(d))
        assert not ok or attacker not in store.keys


# -- signatures and revocations ------------------------------------------------------------------------


def test_junk_tokens_and_kids_raise_only_key_problem(mesh_keys: dict[str, Any]):
    rng = random.Random(SEED + 2)
    store = TrustStore.from_jwks(mesh_keys["jwks"])
    active = mesh_keys["ring"].active()
    payload = b'{"hello":"world"}'
    token = active.sign(payload, MANIFEST_TYP)
    protected, _, signature = token.split(".")
    general = [{"protected": protected, "signature": signature}]
    assert store.verify_signatures(payload, general, typ=MANIFEST_TYP) == [active.kid]
    refused = 0
    for _ in range(1500):
        bad_token, bad_general, junk = mutate(token, rng), mutate(general, rng), rng.choice(JUNK)
        ok, result = only_key_problems(
            bad_token, lambda t=bad_token: store.verify_compact(t, expected_typ=MANIFEST_TYP))
        refused += not ok
        assert not ok or result == payload  # an equivalent encoding at most, never other bytes
        checks: list[tuple[Any, Callable[..., Any]]] = [
            (bad_token, lambda t: store.verify_detached(t, payload)),
            (junk, lambda j: store.verify_detached(f"{protected}..{signature}", j)),
            (bad_general, lambda g: store.verify_signatures(payload, g, typ=MANIFEST_TYP)),
            (junk, lambda j: store.verify_signatures(j, general, typ=MANIFEST_TYP)),
            (junk, store.key),
            (junk, store.problem),
        ]
        for case, check in checks:
            only_key_problems(case, lambda c=case, f=check: f(c))
    assert refused > 1000


def test_junk_revocation_statements_raise_only_key_problem_and_revoke_only_what_was_signed(mesh_keys: dict[str, Any]):
    rng = random.Random(SEED + 3)
    statement, first = mesh_keys["revocation"], mesh_keys["first"]
    store = TrustStore.from_jwks(mesh_keys["jwks"])
    assert store.verify_revocation(statement, "hello") == first
    refused = 0
    for _ in range(1500):
        mutated = mutate(statement, rng)
        ok, kid = only_key_problems(mutated, lambda m=mutated: store.verify_revocation(m, "hello"))
        refused += not ok
        assert not ok or kid == first  # an equivalent encoding at most, never another kid
        only_key_problems(mutated, lambda m=mutated: store.verify_revocation(m, rng.choice(JUNK)))
    assert refused > 1000
    attacker = mesh_keys["attacker"]
    claims = {"agent": "hello", "kid": first, "iat": 1}
    for forged in (
        compact({"kid": attacker.kid, "typ": REVOCATION_TYP}, claims, attacker),
        compact({"kid": first, "typ": REVOCATION_TYP}, {**claims, "kid": mesh_keys["ring"].active().kid}, attacker),
    ):
        with pytest.raises(KeyProblem):
            store.verify_revocation(forged, "hello")
