"""Key rings: each agent's P-256 signing keys, their rotation and revocation, and the JWKS it publishes.

A ring lives in one folder (``.mesh/keys/NAME/``, git-ignored): ``ring.json`` says which keys exist and
until when each is valid; ``<kid>.jwk.json`` holds each private key (mode 0600). Exactly one key is
*active* (it signs); a rotated-out key keeps verifying until its overlap window ends, and is introduced
to verifiers by a *rotation statement*: a JWS signed by the old key that names the new one. A revoked
key ends at once. What verifiers see is the JWKS (``public_jwks()``): the valid public keys, each with
its end (``exp``), the revoked kids, and the rotation statements.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jws
from jose.backends.cryptography_backend import CryptographyECKey

ALG = "ES256"
DEFAULT_OVERLAP_SECONDS = 7 * 24 * 3600
ROTATION_TYP = "mcpmesh-rotation+jws"


class KeyProblem(Exception):
    """A key problem worth telling the user about (unknown kid, revoked key, empty ring...)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) of an EC key: the kid every mesh key goes by."""
    required = {name: public_jwk[name] for name in ("crv", "kty", "x", "y")}
    return b64url(hashlib.sha256(rfc8785.dumps(required)).digest())


def public_part(key: dict[str, Any]) -> dict[str, Any]:
    """The public members of an EC JWK (drops ``d``), with kid, alg and use."""
    return {
        "kty": "EC",
        "crv": key["crv"],
        "x": key["x"],
        "y": key["y"],
        "kid": thumbprint(key),
        "alg": ALG,
        "use": "sig",
    }


@dataclass
class KeyRecord:
    """What ``ring.json`` says about one key. Times are Unix seconds."""

    kid: str
    created: int
    not_after: int | None = None  # end of the overlap window once rotated out; None while active
    revoked: int | None = None

    def status(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.not_after is None:
            return "active"
        return "retiring" if now < self.not_after else "expired"


@dataclass(frozen=True)
class SigningKey:
    """A private key ready to sign: its kid and the python-jose key object (built once)."""

    kid: str
    private_jwk: dict[str, Any]

    def sign(self, payload: bytes, typ: str, extra_headers: dict[str, Any] | None = None) -> str:
        """Compact JWS over ``payload`` with ``alg``, ``kid`` and ``typ`` in the protected header."""
        headers = {"kid": self.kid, "typ": typ, **(extra_headers or {})}
        return jws.sign(payload, self._key, algorithm=ALG, headers=headers)

    @functools.cached_property
    def _key(self) -> Any:
        """The python-jose key, built once: parsing the JWK on every signature doubles its cost."""
        return _construct(self.private_jwk)


def _construct(key: dict[str, Any]) -> Any:
    return jwk.construct(key, ALG)


def generate_private_jwk() -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP256R1())
    key = CryptographyECKey(private, ALG).to_dict()
    return {"kty": "EC", "crv": "P-256", "x": key["x"], "y": key["y"], "d": key["d"]}


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write a file readable by its owner only, never briefly world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.chmod(path, 0o600)


class KeyRing:
    """One agent's keys on disk. Load with ``KeyRing.open(folder)``; ``create=True`` makes the first key."""

    def __init__(self, folder: Path, records: list[KeyRecord], rotations: list[str]):
        self.folder = folder
        self.records = records
        self.rotations = rotations

    # -- loading and saving -------------------------------------------------------------------------

    @classmethod
    def exists(cls, folder: Path) -> bool:
        return (folder / "ring.json").is_file()

    @classmethod
    def open(cls, folder: Path, *, create: bool = False) -> KeyRing:
        ring_file = folder / "ring.json"
        if not ring_file.is_file():
            if not create:
                raise KeyProblem(f"no key ring at {folder} (run `mesh sign` to create one)")
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            ring = cls(folder, [], [])
            ring._add_key()
            ring.save()
            return ring
        data = json.loads(ring_file.read_text())
        records = [KeyRecord(**record) for record in data["keys"]]
        return cls(folder, records, list(data.get("rotations", [])))

    def save(self) -> None:
        _write_private(
            self.folder / "ring.json",
            {"keys": [asdict(record) for record in self.records], "rotations": self.rotations},
        )

    def _add_key(self) -> KeyRecord:
        private = generate_private_jwk()
        kid = thumbprint(private)
        _write_private(self.folder / f"{kid}.jwk.json", {**private, "kid": kid, "alg": ALG})
        record = KeyRecord(kid=kid, created=int(time.time()))
        self.records.append(record)
        return record

    def _private(self, kid: str) -> dict[str, Any]:
        path = self.folder / f"{kid}.jwk.json"
        if not path.is_file():
            raise KeyProblem(f"private key {kid} is missing from {self.folder}")
        return json.loads(path.read_text())

    # -- what the ring holds ------------------------------------------------------------------------

    def record(self, kid: str) -> KeyRecord:
        for record in self.records:
            if record.kid == kid:
                return record
        raise KeyProblem(f"no key {kid} in {self.folder}")

    def active(self) -> SigningKey:
        for record in self.records:
            if record.status(time.time()) == "active":
                return SigningKey(record.kid, self._private(record.kid))
        raise KeyProblem(f"no active key in {self.folder} (run `mesh keys rotate`)")

    def signing_keys(self, now: float | None = None) -> list[SigningKey]:
        """Every key that still verifies (active first): a manifest carries one signature per key."""
        now = time.time() if now is None else now
        valid = [r for r in self.records if r.status(now) in ("active", "retiring")]
        valid.sort(key=lambda r: r.status(now) != "active")
        return [SigningKey(r.kid, self._private(r.kid)) for r in valid]

    # -- rotation and revocation ----------------------------------------------------------------

    def rotate(self, overlap_seconds: int = DEFAULT_OVERLAP_SECONDS, now: float | None = None) -> KeyRecord:
        """Make a new active key; the old one verifies for ``overlap_seconds`` more and vouches for the new."""
        now = time.time() if now is None else now
        old = self.active()
        self.record(old.kid).not_after = int(now + overlap_seconds)
        new = self._add_key()
        self._introduce(new, by=old, now=now)
        self.save()
        return new

    def revoke(self, kid: str, now: float | None = None) -> KeyRecord | None:
        """End ``kid`` at once. Revoking the active key makes a new one; returns it if so."""
        now = time.time() if now is None else now
        record = self.record(kid)
        was_active = record.status(now) == "active"
        record.revoked = int(now)
        replacement = None
        if was_active:
            replacement = self._add_key()
            # The new key is vouched for by another key that still verifies, if one does;
            # never by the revoked one. Otherwise verifiers must re-read the published JWKS.
            others = [k for k in self.signing_keys(now) if k.kid != replacement.kid]
            if others:
                self._introduce(replacement, by=others[0], now=now)
        self.save()
        return replacement

    def _introduce(self, new: KeyRecord, *, by: SigningKey, now: float) -> None:
        """Append a rotation statement in which ``by`` vouches for ``new`` (and states its own end)."""
        statement = {
            "old_kid": by.kid,
            "new_kid": new.kid,
            "new_jwk": public_part(self._private(new.kid)),
            "iat": int(now),
            "old_not_after": self.record(by.kid).not_after,
        }
        self.rotations.append(by.sign(rfc8785.dumps(statement), ROTATION_TYP))

    def public_jwks(self, now: float | None = None) -> dict[str, Any]:
        """The JWKS verifiers need: valid public keys (with ``exp`` once rotated out), revoked kids, rotations."""
        now = time.time() if now is None else now
        keys = []
        for record in self.records:
            if record.status(now) not in ("active", "retiring"):
                continue
            public = public_part(self._private(record.kid))
            if record.not_after is not None:
                public["exp"] = record.not_after
            keys.append(public)
        revoked = sorted(r.kid for r in self.records if r.revoked is not None)
        rotations = [
            s for s in self.rotations if _statement_claims(s)["old_kid"] not in revoked
        ]
        return {"keys": keys, "revoked": revoked, "rotations": rotations}


def _statement_claims(statement: str) -> dict[str, Any]:
    return json.loads(b64url_decode(statement.split(".")[1]))


@dataclass(frozen=True)
class TrustedKey:
    """A public key a verifier trusts, and until when."""

    kid: str
    jwk: dict[str, Any]
    exp: int | None = None

    def usable(self, now: float) -> bool:
        return self.exp is None or now < self.exp


class TrustStore:
    """The public keys a verifier trusts: read from JWKS documents, grown by rotation statements.

    ``problem(kid, now)`` explains why a kid cannot be used (unknown, revoked, past its window);
    ``key(kid, now)`` returns it or raises that explanation.
    """

    def __init__(self) -> None:
        self.keys: dict[str, TrustedKey] = {}
        self.revoked: set[str] = set()
        self._constructed: dict[str, Any] = {}

    @classmethod
    def from_jwks(cls, *documents: dict[str, Any], now: float | None = None) -> TrustStore:
        store = cls()
        for document in documents:
            store.add_jwks(document, now=now)
        return store

    def add_jwks(self, document: dict[str, Any], *, now: float | None = None) -> None:
        """Trust the document's keys, then follow its rotation statements from keys already trusted."""
        self.revoked.update(document.get("revoked", []))
        for key in document.get("keys", []):
            self.trust(key)
        self.follow_rotations(document.get("rotations", []), now=now)

    def trust(self, key: dict[str, Any]) -> None:
        kid = thumbprint(key)
        if key.get("kid", kid) != kid:
            raise KeyProblem(f"JWKS key {key.get('kid')} does not match its RFC 7638 thumbprint {kid}")
        if kid in self.revoked:
            return
        self.keys[kid] = TrustedKey(kid, public_part(key), key.get("exp"))

    def follow_rotations(self, statements: list[str], *, now: float | None = None) -> list[str]:
        """Trust each new key whose rotation statement verifies under a key already trusted."""
        now = time.time() if now is None else now
        learned = []
        progress = True
        pending = list(statements)
        while progress and pending:  # statements may chain (k1 -> k2 -> k3) in any order
            progress = False
            for statement in list(pending):
                claims = _statement_claims(statement)
                old_kid = claims["old_kid"]
                if old_kid not in self.keys or self.problem(old_kid, now):
                    continue
                self.verify_compact(statement, expected_typ=ROTATION_TYP, now=now)
                new_jwk = claims["new_jwk"]
                if thumbprint(new_jwk) != claims["new_kid"]:
                    raise KeyProblem(f"rotation statement from {old_kid} names a key that is not {claims['new_kid']}")
                if claims["new_kid"] not in self.keys:
                    self.trust({**new_jwk, "kid": claims["new_kid"]})
                    learned.append(claims["new_kid"])
                old = self.keys[old_kid]
                if old.exp is None and claims.get("old_not_after"):
                    self.keys[old_kid] = TrustedKey(old.kid, old.jwk, claims["old_not_after"])
                pending.remove(statement)
                progress = True
        return learned

    def problem(self, kid: str, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        if kid in self.revoked:
            return f"key {kid} was revoked"
        key = self.keys.get(kid)
        if key is None:
            return f"key {kid} is not trusted (no trusted JWKS holds it)"
        if not key.usable(now):
            ended = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(key.exp))
            return f"key {kid} is past its overlap window (it ended {ended})"
        return None

    def key(self, kid: str, now: float | None = None) -> Any:
        reason = self.problem(kid, now)
        if reason:
            raise KeyProblem(reason)
        if kid not in self._constructed:
            self._constructed[kid] = _construct(self.keys[kid].jwk)
        return self._constructed[kid]

    def verify_compact(self, token: str, *, expected_typ: str | None = None, now: float | None = None) -> bytes:
        """Verify a compact JWS (attached payload) and return its payload bytes."""
        header = jws.get_unverified_header(token)
        kid = header.get("kid")
        if header.get("alg") != ALG:
            raise KeyProblem(f"signature uses alg {header.get('alg')!r}, only {ALG} is accepted")
        if expected_typ and header.get("typ") != expected_typ:
            raise KeyProblem(f"signature has typ {header.get('typ')!r}, expected {expected_typ!r}")
        try:
            return jws.verify(token, self.key(kid, now), algorithms=[ALG])
        except jws.JWSError as exc:
            raise KeyProblem(f"signature by key {kid} does not verify (it was changed after signing)") from exc

    def verify_signatures(
        self, payload: bytes, signatures: Any, *, typ: str, now: float | None = None
    ) -> list[str]:
        """Check a JWS's signatures (``[{protected, signature}]``) over ``payload``; return the kids that verified.

        Every signature by a usable trusted key must verify (one that does not means the payload was
        changed). At least one must come from a usable key; signatures by revoked, expired or unknown keys
        are tolerated beside a good one, since a rotation leaves old signatures behind.
        """
        now = time.time() if now is None else now
        if not signatures:
            raise KeyProblem("it carries no signature")
        verified: list[str] = []
        problems: list[str] = []
        for entry in signatures:
            try:
                header = json.loads(b64url_decode(entry["protected"]))
                token = f"{entry['protected']}.{b64url(payload)}.{entry['signature']}"
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyProblem(f"a signature is malformed ({exc!r})") from exc
            kid = header.get("kid")
            if header.get("alg") != ALG or header.get("typ") != typ:
                raise KeyProblem(f"signature by {kid} has alg {header.get('alg')!r} and typ {header.get('typ')!r},"
                                 f" expected {ALG!r} and {typ!r}")
            reason = self.problem(kid, now)
            if reason:
                problems.append(reason)
                continue
            self.verify_compact(token, now=now)
            verified.append(kid)
        if not verified:
            raise KeyProblem(f"no valid signature: {'; '.join(problems)}")
        return verified

    def verify_detached(self, token: str, payload: bytes, *, now: float | None = None) -> dict[str, Any]:
        """Verify a detached compact JWS (``protected..signature``) over ``payload``; return its header."""
        protected, middle, signature = token.split(".")
        if middle:
            raise KeyProblem("expected a detached JWS (empty payload part)")
        attached = f"{protected}.{b64url(payload)}.{signature}"
        self.verify_compact(attached, now=now)
        return json.loads(b64url_decode(protected))


def detach(token: str) -> str:
    """Turn a compact JWS into its detached form by dropping the payload part (RFC 7515 appendix F)."""
    protected, _, signature = token.split(".")
    return f"{protected}..{signature}"
