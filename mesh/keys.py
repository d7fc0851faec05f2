"""Key rings: each agent's P-256 signing keys, their rotation and revocation, and the JWKS it publishes.

A ring lives in one folder (``.mesh/keys/NAME/``, git-ignored): ``ring.json`` says which keys exist and
until when each is valid; ``<kid>.jwk.json`` holds each private key (mode 0600). Exactly one key is
*active* (it signs); a rotated-out key keeps verifying until its overlap window ends, and is introduced
to verifiers by a *rotation statement*: a JWS signed by the old key that names the new one. A revoked
key ends at once, and the ring keeps a *revocation statement* for it: a JWS signed by the revoked key
itself (a thief gains nothing by it; every verifier that ever trusted the key can check it). What
verifiers see is the JWKS (``public_jwks()``): the valid public keys, each with its end (``exp``), the
revoked kids, and the rotation and revocation statements.

A ``TrustStore`` reads JWKS documents and statements that may come from anyone; whatever junk it is
given, its public methods raise only ``KeyProblem``, with a message naming what is wrong.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from jose import jwk, jws
from jose.backends.cryptography_backend import CryptographyECKey

from mesh.names import check_name

ALG = "ES256"
DEFAULT_OVERLAP_SECONDS = 7 * 24 * 3600
ROTATION_TYP = "mcpmesh-rotation+jws"
REVOCATION_TYP = "mcpmesh-revocation+jws"
KID_PATTERN = r"^[A-Za-z0-9_-]{43}$"  # an RFC 7638 SHA-256 thumbprint in base64url
_KID = re.compile(KID_PATTERN)


class KeyProblem(Exception):
    """A key problem worth telling the user about (unknown kid, revoked key, empty ring...)."""


def check_kid(kid: object) -> str:
    """Return ``kid`` if it has the shape of a mesh key id (it may go into a URL path), else KeyProblem."""
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise KeyProblem(f"{kid!r} is not a key id (43 base64url characters, an RFC 7638 thumbprint)")
    return kid


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

    def __init__(self, folder: Path, records: list[KeyRecord], rotations: list[str],
                 revocations: list[str] | None = None):
        self.folder = folder
        self.records = records
        self.rotations = rotations
        self.revocations = revocations if revocations is not None else []

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
        # Rings written before revocation statements existed have no "revocations".
        return cls(folder, records, list(data.get("rotations", [])), list(data.get("revocations", [])))

    def save(self) -> None:
        _write_private(
            self.folder / "ring.json",
            {
                "keys": [asdict(record) for record in self.records],
                "rotations": self.rotations,
                "revocations": self.revocations,
            },
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

    def revoke(self, kid: str, agent: str, now: float | None = None) -> KeyRecord | None:
        """End ``kid`` at once and keep a revocation statement for ``agent``'s verifiers (see
        ``revocation_for``). Revoking the active key makes a new one; returns it if so. Revoking a key
        again changes nothing, so it is safe to repeat (say, to notify a registry again)."""
        now = time.time() if now is None else now
        check_name(agent, "agent name")
        record = self.record(kid)
        if record.revoked is not None and self._revocation_of(kid) is not None:
            return None
        was_active = record.status(now) == "active"
        self._record_revocation(kid, agent, now)
        if record.revoked is None:
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

    def _record_revocation(self, kid: str, agent: str, now: float) -> None:
        """Append the statement in which ``kid`` revokes itself: only its holder can make it."""
        revoked = SigningKey(kid, self._private(kid))
        claims = {"agent": agent, "kid": kid, "iat": int(now)}
        self.revocations.append(revoked.sign(rfc8785.dumps(claims), REVOCATION_TYP))

    def _revocation_of(self, kid: str) -> str | None:
        for statement in self.revocations:
            if _statement_claims(statement).get("kid") == kid:
                return statement
        return None

    def revocation_for(self, kid: str) -> str:
        """The revocation statement of ``kid`` (a compact JWS), to hand to a registry."""
        statement = self._revocation_of(kid)
        if statement is None:
            raise KeyProblem(f"key {kid} has no revocation statement in {self.folder} (revoke it first)")
        return statement

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
        """The JWKS verifiers need: valid public keys (with ``exp`` once rotated out), revoked kids, and the
        rotation and revocation statements."""
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
        return {"keys": keys, "revoked": revoked, "rotations": rotations, "revocations": list(self.revocations)}


def unverified_jws(token: Any) -> tuple[dict[str, Any], bytes]:
    """The protected header and payload bytes of a compact JWS, unverified (to pick the key that checks it,
    or to read a claim that changes nothing); KeyProblem if malformed."""
    if not isinstance(token, str):
        raise KeyProblem(f"a compact JWS must be a string, not {type(token).__name__}")
    parts = token.split(".")
    if len(parts) != 3:
        raise KeyProblem(f"a compact JWS has 3 dot-separated parts, this one has {len(parts)}")
    try:
        header, payload, _ = (b64url_decode(part) for part in parts)
    except ValueError as exc:
        raise KeyProblem(f"a compact JWS part is not base64url ({exc})") from exc
    return _json_object(header, "its protected header"), payload


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KeyProblem(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise KeyProblem(f"{what} is not a JSON object")
    return value


def _statement_claims(statement: Any) -> dict[str, Any]:
    """A statement's claims, unverified (KeyProblem if it has none)."""
    return _json_object(unverified_jws(statement)[1], "its payload")


def _is_time(value: Any) -> bool:
    """Unix seconds as the mesh writes them: a non-negative integer (``True`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _public_key_problem(key: Any) -> str | None:
    """Why ``key`` is not an EC P-256 public JWK the mesh can use (None if it is one)."""
    if not isinstance(key, dict):
        return f"a key must be a JSON object, not {type(key).__name__}"
    if key.get("kty") != "EC" or key.get("crv") != "P-256":
        return f"not an EC P-256 key (kty {key.get('kty')!r}, crv {key.get('crv')!r})"
    coordinates = [key.get("x"), key.get("y")]
    if not all(isinstance(c, str) for c in coordinates):
        return "its x and y must be strings"
    try:
        raw = [b64url_decode(c) for c in coordinates]
    except ValueError:
        return "its x or y is not base64url"
    if any(len(r) != 32 or b64url(r) != c for r, c in zip(raw, coordinates, strict=True)):
        return "its x and y must each be 32 bytes in unpadded base64url"
    try:
        ec.EllipticCurvePublicNumbers(*(int.from_bytes(r, "big") for r in raw), ec.SECP256R1()).public_key()
    except ValueError:
        return "its x and y are not a point on P-256"
    if not isinstance(key.get("kid", ""), str):
        return "its kid must be a string"
    if key.get("exp") is not None and not _is_time(key["exp"]):
        return "its exp must be Unix seconds"
    return None


@dataclass(frozen=True)
class TrustedKey:
    """A public key a verifier trusts, and until when."""

    kid: str
    jwk: dict[str, Any]
    exp: int | None = None

    def usable(self, now: float) -> bool:
        return self.exp is None or now < self.exp


@dataclass(frozen=True)
class _Rotation:
    """A well-formed rotation statement, not yet verified."""

    where: str
    statement: str
    old_kid: str
    new_kid: str
    new_jwk: dict[str, Any]
    old_not_after: int | None


def _rotation(statement: Any, where: str) -> _Rotation:
    """Read a rotation statement's shape; KeyProblem naming ``where`` it is if anything is off."""
    try:
        header, payload = unverified_jws(statement)
        claims = _json_object(payload, "its payload")
    except KeyProblem as exc:
        raise KeyProblem(f"{where} is malformed: {exc}") from exc
    problem = _rotation_problem(header, claims)
    if problem:
        raise KeyProblem(f"{where} is malformed: {problem}")
    return _Rotation(where, statement, claims["old_kid"], claims["new_kid"], claims["new_jwk"],
                     claims.get("old_not_after"))


def _rotation_problem(header: dict[str, Any], claims: dict[str, Any]) -> str | None:
    if header.get("alg") != ALG or header.get("typ") != ROTATION_TYP:
        return f"its header has alg {header.get('alg')!r} and typ {header.get('typ')!r}, not {ALG} and {ROTATION_TYP}"
    if not isinstance(claims.get("old_kid"), str) or not isinstance(claims.get("new_kid"), str):
        return "its old_kid and new_kid must be strings"
    if header.get("kid") != claims["old_kid"]:
        return "it is not signed by the key it names as old_kid"
    key_problem = _public_key_problem(claims.get("new_jwk"))
    if key_problem:
        return f"its new_jwk is unusable: {key_problem}"
    if not _is_time(claims.get("iat")):
        return "its iat must be Unix seconds"
    if claims.get("old_not_after") is not None and not _is_time(claims["old_not_after"]):
        return "its old_not_after must be Unix seconds or null"
    return None


class TrustStore:
    """The public keys a verifier trusts: read from JWKS documents, grown by rotation statements.

    ``problem(kid, now)`` explains why a kid cannot be used (unknown, revoked, past its window);
    ``key(kid, now)`` returns it or raises that explanation. Every public method raises only
    ``KeyProblem`` on bad input; after one, a store may hold part of what it was given, so discard it.
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
        """Trust the document's keys, then follow its rotation statements from keys already trusted.

        Its ``revocations`` are left alone: whoever holds the store decides which to apply
        (``verify_revocation``)."""
        if not isinstance(document, dict):
            raise KeyProblem(f"a JWKS must be a JSON object, not {type(document).__name__}")
        revoked, keys = document.get("revoked", []), document.get("keys", [])
        if not isinstance(revoked, list) or not all(isinstance(kid, str) for kid in revoked):
            raise KeyProblem("the JWKS's revoked must be a list of key ids")
        if not isinstance(keys, list):
            raise KeyProblem("the JWKS's keys must be a list")
        for key in keys:
            self._check_key(key)
        self.revoked.update(revoked)
        for key in keys:
            self.trust(key)
        self.follow_rotations(document.get("rotations", []), now=now)

    def _check_key(self, key: Any) -> str:
        """The kid of a JWKS key, or KeyProblem if the key is unusable or its kid is not its thumbprint."""
        problem = _public_key_problem(key)
        if problem:
            shown = key.get("kid") if isinstance(key, dict) and isinstance(key.get("kid"), str) else "without kid"
            raise KeyProblem(f"JWKS key {shown}: {problem}")
        kid = thumbprint(key)
        if key.get("kid", kid) != kid:
            raise KeyProblem(f"JWKS key {key.get('kid')} does not match its RFC 7638 thumbprint {kid}")
        return kid

    def trust(self, key: dict[str, Any]) -> None:
        kid = self._check_key(key)
        if kid in self.revoked:
            return
        self.keys[kid] = TrustedKey(kid, public_part(key), key.get("exp"))

    def follow_rotations(self, statements: list[str], *, now: float | None = None) -> list[str]:
        """Trust each new key whose rotation statement verifies under a key already trusted.

        A malformed statement is refused (KeyProblem naming it) before any is followed; a well-formed one
        by a key this store does not trust, or no longer trusts, is skipped: it is not for this verifier.
        """
        now = time.time() if now is None else now
        if not isinstance(statements, list):
            raise KeyProblem("rotation statements must be a list of compact JWS")
        pending = [_rotation(s, f"rotation statement {i + 1}") for i, s in enumerate(statements)]
        learned = []
        progress = True
        while progress and pending:  # statements may chain (k1 -> k2 -> k3) in any order
            progress = False
            for rotation in list(pending):
                if rotation.old_kid not in self.keys or self.problem(rotation.old_kid, now):
                    continue
                self._follow(rotation, now, learned)
                pending.remove(rotation)
                progress = True
        return learned

    def _follow(self, rotation: _Rotation, now: float, learned: list[str]) -> None:
        """Apply one rotation statement by a usable trusted key, once its signature verifies."""
        try:
            self.verify_compact(rotation.statement, expected_typ=ROTATION_TYP, now=now)
        except KeyProblem as exc:
            raise KeyProblem(f"{rotation.where}: {exc}") from exc
        if thumbprint(rotation.new_jwk) != rotation.new_kid:
            raise KeyProblem(f"{rotation.where} from {rotation.old_kid} names a key that is not {rotation.new_kid}")
        if rotation.new_kid not in self.keys:
            self.trust({**rotation.new_jwk, "kid": rotation.new_kid})
            learned.append(rotation.new_kid)
        old = self.keys[rotation.old_kid]
        if old.exp is None and rotation.old_not_after:
            self.keys[rotation.old_kid] = TrustedKey(old.kid, old.jwk, rotation.old_not_after)

    def problem(self, kid: str, now: float | None = None) -> str | None:
        now = time.time() if now is None else now
        if not isinstance(kid, str):
            return f"a key id must be a string, not {type(kid).__name__}"
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
        return self._constructed_key(kid)

    def _constructed_key(self, kid: str) -> Any:
        """The python-jose key for a held kid, whatever its state (callers decide whether it may sign)."""
        if kid not in self._constructed:
            self._constructed[kid] = _construct(self.keys[kid].jwk)
        return self._constructed[kid]

    def verify_compact(self, token: str, *, expected_typ: str | None = None, now: float | None = None) -> bytes:
        """Verify a compact JWS (attached payload) and return its payload bytes."""
        header, _ = unverified_jws(token)
        kid = header.get("kid")
        if header.get("alg") != ALG:
            raise KeyProblem(f"signature uses alg {header.get('alg')!r}, only {ALG} is accepted")
        if expected_typ and header.get("typ") != expected_typ:
            raise KeyProblem(f"signature has typ {header.get('typ')!r}, expected {expected_typ!r}")
        return _verified_payload(token, self.key(kid, now), kid)

    def verify_signatures(
        self, payload: bytes, signatures: Any, *, typ: str, now: float | None = None
    ) -> list[str]:
        """Check a JWS's signatures (``[{protected, signature}]``) over ``payload``; return the kids that verified.

        Every signature by a usable trusted key must verify (one that does not means the payload was
        changed). At least one must come from a usable key; signatures by revoked, expired or unknown keys
        are tolerated beside a good one, since a rotation leaves old signatures behind.
        """
        now = time.time() if now is None else now
        if not isinstance(payload, bytes):
            raise KeyProblem(f"the signed payload must be bytes, not {type(payload).__name__}")
        if not signatures:
            raise KeyProblem("it carries no signature")
        if not isinstance(signatures, list | tuple):
            raise KeyProblem(f"signatures must be a list, not {type(signatures).__name__}")
        verified: list[str] = []
        problems: list[str] = []
        for entry in signatures:
            token, header = _general_entry(entry, payload)
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
        if not isinstance(token, str) or token.count(".") != 2:
            raise KeyProblem("expected a detached JWS (protected..signature)")
        if not isinstance(payload, bytes):
            raise KeyProblem(f"the signed payload must be bytes, not {type(payload).__name__}")
        protected, middle, signature = token.split(".")
        if middle:
            raise KeyProblem("expected a detached JWS (empty payload part)")
        attached = f"{protected}.{b64url(payload)}.{signature}"
        self.verify_compact(attached, now=now)
        return unverified_jws(attached)[0]

    def verify_revocation(self, statement: str, agent: str, now: float | None = None) -> str:
        """Check a revocation statement for ``agent``; return the kid it revokes.

        The signer must be a key of this store: either the revoked key itself (even if already revoked
        or expired: revoking only takes power away) or another key usable now.
        """
        now = time.time() if now is None else now
        try:
            header, payload = unverified_jws(statement)
            claims = _json_object(payload, "its payload")
        except KeyProblem as exc:
            raise KeyProblem(f"revocation statement is malformed: {exc}") from exc
        if header.get("alg") != ALG or header.get("typ") != REVOCATION_TYP:
            raise KeyProblem(f"not a revocation statement: alg {header.get('alg')!r} and typ {header.get('typ')!r},"
                             f" expected {ALG} and {REVOCATION_TYP}")
        signer = header.get("kid")
        if not isinstance(signer, str) or signer not in self.keys:
            raise KeyProblem(f"revocation statement is signed by key {signer!r}, which is not trusted")
        _verified_payload(statement, self._constructed_key(signer), signer)
        if claims.get("agent") != agent:
            raise KeyProblem(f"revocation statement is for agent {claims.get('agent')!r}, not {agent!r}")
        revoked = claims.get("kid")
        if not isinstance(revoked, str) or not _is_time(claims.get("iat")):
            raise KeyProblem("revocation statement must name the revoked kid (a string) and iat (Unix seconds)")
        if signer != revoked:
            reason = self.problem(signer, now)
            if reason:
                raise KeyProblem(f"revocation of {revoked} is signed by another key that cannot sign now: {reason}")
        return revoked


def _general_entry(entry: Any, payload: bytes) -> tuple[str, dict[str, Any]]:
    """One signature of a General JSON JWS as a compact token over ``payload``, and its header."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(m), str) for m in ("protected", "signature")):
        raise KeyProblem("a signature is malformed (not an object with protected and signature strings)")
    token = f"{entry['protected']}.{b64url(payload)}.{entry['signature']}"
    try:
        header, _ = unverified_jws(token)
    except KeyProblem as exc:
        raise KeyProblem(f"a signature is malformed: {exc}") from exc
    return token, header


def _verified_payload(token: str, key: Any, kid: str) -> bytes:
    try:
        return jws.verify(token, key, algorithms=[ALG])
    except jws.JWSError as exc:
        raise KeyProblem(f"signature by key {kid} does not verify (it was changed after signing)") from exc


def detach(token: str) -> str:
    """Turn a compact JWS into its detached form by dropping the payload part (RFC 7515 appendix F)."""
    protected, _, signature = token.split(".")
    return f"{protected}..{signature}"
