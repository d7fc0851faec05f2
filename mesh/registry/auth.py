"""Who is calling, and what they may do.

Agents prove themselves with short-lived JWTs signed by their own keys: an agent mints a token
(``issue_token``) with its active signing key; the registry checks it against the keys it trusts *for
that agent* (``verify_token``), so one agent's key never vouches for another. A caller on loopback
without a token is the local user, if ``registry.toml`` allows it. ``authorize`` says what a caller may
do with the registry itself (reading, administering); what it may call is the policy's business.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from jose import jws, jwt
from jose.exceptions import JOSEError

from mesh.keys import ALG, KeyProblem, SigningKey, TrustStore, b64url_decode
from mesh.names import is_valid_name

AUDIENCE = "mcpmesh-registry"
MAX_LIFETIME = 300  # seconds; longer-lived tokens are refused
CLOCK_SKEW = 30  # seconds a token's iat may lie ahead of the registry's clock
ADMIN_SCOPES = frozenset({"*", "registry:admin"})
# Actions on the registry that a scope of their own grants (besides the admin scopes).
ACTION_SCOPES = {
    "audit:read": "audit:read",  # read and export the audit log
    "secrets:admin": "secrets:admin",  # store, rotate and remove credentials (never read their values)
}


class AuthProblem(Exception):
    """A token that does not prove who the caller is; the message says why."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller as the policy sees it."""

    id: str  # "agent:NAME", "user:local" or "anonymous"
    kind: str  # "agent", "user" or "anonymous"
    scopes: list[str] = field(default_factory=list)
    kid: str | None = None  # the key an agent's token was signed with

    @property
    def agent(self) -> str | None:
        return self.id.removeprefix("agent:") if self.kind == "agent" else None

    @property
    def is_admin(self) -> bool:
        return not ADMIN_SCOPES.isdisjoint(self.scopes)


ANONYMOUS = Caller("anonymous", "anonymous", [])


def issue_token(agent: str, key: SigningKey, lifetime: int = 120, now: float | None = None,
                audience: str = AUDIENCE) -> str:
    """A bearer token for ``agent``, signed by its key, valid ``lifetime`` seconds."""
    now = int(time.time() if now is None else now)
    claims = {"iss": f"agent:{agent}", "sub": f"agent:{agent}", "aud": audience, "iat": now,
              "exp": now + lifetime, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key.private_jwk, algorithm=ALG, headers={"kid": key.kid})


def _segment(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(part))
    except (ValueError, TypeError) as exc:
        raise AuthProblem(f"the bearer token's {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise AuthProblem(f"the bearer token's {what} is not a JSON object")
    return value


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A token's header and claims before any check: only to pick the keys to check it with."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise AuthProblem("the bearer token is not a compact JWS (header.claims.signature)")
    return _segment(parts[0], "header"), _segment(parts[1], "claims")


def claimed_agent(token: str) -> str:
    """The agent a token claims to be, before checking it (to pick which keys to check it with)."""
    _, claims = unverified_parts(token)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.startswith("agent:"):
        raise AuthProblem("the bearer token names no agent (sub must be 'agent:NAME')")
    agent = subject.removeprefix("agent:")
    if not is_valid_name(agent):
        raise AuthProblem("the bearer token's sub names no valid agent")
    return agent


def _number(claims: dict[str, Any], name: str, agent: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthProblem(f"token of agent {agent!r}: claim {name!r} must be present and a number of seconds")
    return float(value)


def verify_token(token: str, trust: TrustStore, scopes: list[str], *, audience: str = AUDIENCE,
                 max_lifetime: int = MAX_LIFETIME, skew: int = CLOCK_SKEW, now: float | None = None) -> Caller:
    """Check a caller token completely; return the agent caller with its granted scopes.

    The signature must come from a trusted, unrevoked, unexpired key of exactly the agent in ``sub``
    (``trust`` holds that agent's keys); ``iss`` must equal ``sub``; ``aud`` must name this registry;
    ``exp`` and ``iat`` must be numbers, ``iat`` not ahead of the clock by more than ``skew``, the token
    unexpired and living at most ``max_lifetime`` seconds."""
    current = time.time() if now is None else now
    header, claims = unverified_parts(token)
    agent = claimed_agent(token)
    kid = header.get("kid")
    if header.get("alg") != ALG:
        raise AuthProblem(f"token of agent {agent!r} uses alg {header.get('alg')!r}; only {ALG} is accepted")
    if not isinstance(kid, str) or not kid:
        raise AuthProblem(f"token of agent {agent!r} names no key (header kid must be a string)")
    try:
        jws.verify(token, trust.key(kid, current), algorithms=[ALG])
    except KeyProblem as exc:
        raise AuthProblem(f"token of agent {agent!r}: {exc}") from exc
    except JOSEError as exc:
        raise AuthProblem(f"token of agent {agent!r} does not verify: {exc}") from exc
    if claims.get("iss") != claims["sub"]:
        raise AuthProblem(f"token of agent {agent!r}: iss must equal sub ({claims['sub']!r})")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise AuthProblem(f"token of agent {agent!r} is not for this registry (aud must be {audience!r})")
    expires, issued = _number(claims, "exp", agent), _number(claims, "iat", agent)
    if issued > current + skew:
        raise AuthProblem(f"token of agent {agent!r} is issued in the future (iat is {issued - current:.0f} s ahead)")
    if expires <= current:
        raise AuthProblem(f"token of agent {agent!r} has expired")
    if expires - issued > max_lifetime:
        raise AuthProblem(f"token of agent {agent!r} lives longer than {max_lifetime} s")
    return Caller(f"agent:{agent}", "agent", list(scopes), kid)


def token_expiry(token: str) -> float:
    """``exp`` of a token that ``verify_token`` accepted."""
    return float(unverified_parts(token)[1]["exp"])


class Forbidden(Exception):
    """An authenticated caller asked for something it may not do; the message says what it lacks."""


def authorize(caller: Caller, action: str, agent: str | None = None) -> None:
    """May ``caller`` do ``action`` (``read``, ``invoke``, ``recheck``, ``admin``, ``sandbox`` — create, change,
    reset or delete ``agent``'s sandboxes —, ``approve``, or one of ``ACTION_SCOPES``)? Raises AuthProblem
    for a caller nobody vouched for, Forbidden for one that lacks the right. Roles per tenant slot in here."""
    if caller.kind == "anonymous":
        raise AuthProblem("this route needs a caller: an agent's bearer token, or the local user on loopback")
    if action in ("read", "invoke"):
        return
    if action == "recheck" and (caller.is_admin or (agent is not None and caller.agent == agent)):
        return
    if action == "admin" and caller.is_admin:
        return
    if action == "sandbox" and (caller.is_admin or (agent is not None and caller.agent == agent)):
        return  # an agent manages its own sandboxes; an operator anyone's
    if action == "approve" and caller.is_admin:
        return
    if action in ACTION_SCOPES and (caller.is_admin or ACTION_SCOPES[action] in caller.scopes):
        return
    needed = f"'{ACTION_SCOPES[action]}' or 'registry:admin'" if action in ACTION_SCOPES else "'registry:admin'"
    raise Forbidden(f"{caller.id} may not {action}{f' {agent}' if agent else ''}: it needs scope {needed}")
