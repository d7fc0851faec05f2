"""Who is calling: agents prove themselves with short-lived JWTs signed by their own keys.

An agent mints a token (``issue_token``) with its active signing key; the registry checks it against
the keys it trusts *for that agent* (``verify_token``), so one agent's key never vouches for another.
A caller on loopback without a token is the local user, if ``registry.toml`` allows it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from jose import jwt
from jose.exceptions import JOSEError

from mesh.keys import ALG, KeyProblem, SigningKey, TrustStore

AUDIENCE = "mcpmesh-registry"
MAX_LIFETIME = 300  # seconds; longer-lived tokens are refused


class AuthProblem(Exception):
    """A token that does not prove who the caller is; the message says why."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller as the policy sees it."""

    id: str  # "agent:NAME", "user:local" or "anonymous"
    kind: str  # "agent", "user" or "anonymous"
    scopes: list[str] = field(default_factory=list)

    @property
    def agent(self) -> str | None:
        return self.id.removeprefix("agent:") if self.kind == "agent" else None


def issue_token(agent: str, key: SigningKey, lifetime: int = 120, now: float | None = None) -> str:
    """A bearer token for ``agent``, signed by its key, valid ``lifetime`` seconds."""
    now = int(time.time() if now is None else now)
    claims = {"iss": f"agent:{agent}", "sub": f"agent:{agent}", "aud": AUDIENCE, "iat": now,
              "exp": now + lifetime, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key.private_jwk, algorithm=ALG, headers={"kid": key.kid})


def claimed_agent(token: str) -> str:
    """The agent a token claims to be, before checking it (to pick which keys to check it with)."""
    try:
        subject = jwt.get_unverified_claims(token).get("sub", "")
    except JOSEError as exc:
        raise AuthProblem("the bearer token is not a JWT") from exc
    if not isinstance(subject, str) or not subject.startswith("agent:"):
        raise AuthProblem("the bearer token names no agent (sub must be 'agent:NAME')")
    return subject.removeprefix("agent:")


def verify_token(token: str, trust: TrustStore, scopes: list[str], now: float | None = None) -> Caller:
    """Check signature, audience, expiry and lifetime; return the agent caller with its granted scopes."""
    agent = claimed_agent(token)
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = trust.key(kid, now)
        claims = jwt.decode(token, key, algorithms=[ALG], audience=AUDIENCE,
                            options={"verify_exp": now is None})
    except KeyProblem as exc:
        raise AuthProblem(f"token of agent {agent!r}: {exc}") from exc
    except JOSEError as exc:
        raise AuthProblem(f"token of agent {agent!r} does not verify: {exc}") from exc
    current = time.time() if now is None else now
    if claims.get("exp", 0) <= current:
        raise AuthProblem(f"token of agent {agent!r} has expired")
    if claims.get("exp", 0) - claims.get("iat", 0) > MAX_LIFETIME:
        raise AuthProblem(f"token of agent {agent!r} lives longer than {MAX_LIFETIME} s")
    return Caller(f"agent:{agent}", "agent", list(scopes))
