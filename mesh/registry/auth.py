"""Who is calling, and what they may do.

Agents prove themselves with short-lived JWTs signed by their own keys: an agent mints a token
(``issue_token``) with its active signing key; the registry checks it against the keys it trusts *for
that agent* (``verify_token``), so one agent's key never vouches for another. A caller on loopback
without a token is the local user, if ``registry.toml`` allows it; people sign in through an OpenID
provider (``oidc.py``) or use personal API tokens (``people.py``).

``authorize`` says what a caller may do with the registry itself, by one permissions matrix
(``PERMISSIONS``): an action, the roles that may do it, and the scope a personal API token must hold for
it. What a caller may call is then the policy's business.
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


class AuthProblem(Exception):
    """A token that does not prove who the caller is; the message says why."""


@dataclass(frozen=True)
class Caller:
    """An authenticated caller as the policy sees it."""

    id: str  # "agent:NAME", "user:local", "user:ID" or "anonymous"
    kind: str  # "agent", "user" or "anonymous"
    scopes: list[str] = field(default_factory=list)
    kid: str | None = None  # the key an agent's token was signed with
    org: str | None = None  # the organisation a person acts in (until tenancy: whose registry this is)
    role: str | None = None  # a person's role in ``org``: owner, admin, member, viewer (None: no membership)
    via: str | None = None  # how a person proved it: "loopback", "oidc" or "api-token"
    token_id: str | None = None  # the personal API token used, when ``via`` is "api-token"

    @property
    def agent(self) -> str | None:
        return self.id.removeprefix("agent:") if self.kind == "agent" else None

    @property
    def is_admin(self) -> bool:
        return not ADMIN_SCOPES.isdisjoint(self.scopes)

    @property
    def user(self) -> str | None:
        return self.id.removeprefix("user:") if self.kind == "user" else None

    @property
    def acting_role(self) -> str | None:
        """The role the matrix checks: a person's membership role; an agent is ``admin`` with scope
        registry:admin, else ``agent``."""
        if self.kind == "agent":
            return "admin" if self.is_admin else "agent"
        return self.role


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


ROLES = ("owner", "admin", "member", "viewer")  # most to least; "agent" is an agent without registry:admin


def _roles(names: str) -> frozenset[str]:
    return frozenset(names.split())


# The permissions matrix, the one place that says who may do what with the registry: each action, the
# roles that may do it, and the registry scope a personal API token must hold for it (a token is never
# more than its owner's role). Routes and MCP operations name one of these actions in ``authorize``.
PERMISSIONS: dict[str, tuple[frozenset[str], str]] = {
    # list agents, tools, runs and members; discover; metrics; MCP lists
    "read": (_roles("owner admin member viewer agent"), "registry:read"),
    # call a tool, read a resource, get a prompt, complete: through /v1/invoke, MCP or A2A
    "invoke": (_roles("owner admin member agent"), "registry:invoke"),
    # re-list an agent's tools now (an agent may always recheck itself)
    "recheck": (_roles("owner admin"), "registry:admin"),
    # revoke an agent's key as the operator
    "admin": (_roles("owner admin"), "registry:admin"),
    # make, list and revoke one's own personal API tokens
    "tokens": (_roles("owner admin member viewer"), "registry:tokens"),
    # add, change or remove members of an organisation
    "members": (_roles("owner admin"), "registry:admin"),
    # make someone an owner, or make an owner something else (one of the members changes)
    "appoint-owners": (_roles("owner"), "registry:admin"),
    # create, change, reset or delete an agent's sandboxes (an agent may always manage its own)
    "sandbox": (_roles("owner admin"), "registry:admin"),
    # let an agent's connected sandboxes reach a real service, or take that back
    "approve": (_roles("owner admin"), "registry:admin"),
    # approve or deny a call the policy holds for approval (``approvals.py``); the rule may narrow the roles
    "approve-calls": (_roles("owner admin"), "registry:approve"),
    # read and export the audit log (an agent granted scope audit:read may too)
    "audit:read": (_roles("owner admin"), "audit:read"),
    # store, rotate and remove credentials, never read their values (an agent granted secrets:admin may too)
    "secrets:admin": (_roles("owner admin"), "secrets:admin"),
}
# Actions an agent may do for itself, whatever its role: ``agent`` names it.
OWN_ACTIONS = frozenset({"recheck", "sandbox"})
# A token scope that grants more grants the lesser ones too.
SCOPE_IMPLIES = {"*": {"registry:read", "registry:invoke", "registry:tokens", "registry:admin", "audit:read",
                       "secrets:admin", "registry:approve"},
                 "registry:admin": {"registry:read", "registry:invoke", "registry:tokens", "audit:read",
                                    "secrets:admin", "registry:approve"},
                 "registry:invoke": {"registry:read"}, "registry:approve": {"registry:read"}}


def token_allows(scopes: list[str], needed: str) -> bool:
    """Do a personal API token's scopes grant the registry scope ``needed``?"""
    return any(scope == needed or needed in SCOPE_IMPLIES.get(scope, ()) for scope in scopes)


def outranks(role: str, other: str) -> bool:
    """Is ``role`` at least ``other`` in owner > admin > member > viewer?"""
    return ROLES.index(role) <= ROLES.index(other)


def authorize(caller: Caller, action: str, agent: str | None = None) -> None:
    """May ``caller`` do ``action`` (a key of ``PERMISSIONS``)? Raises AuthProblem for a caller nobody
    vouched for, Forbidden for one whose role or token scopes do not allow it."""
    if caller.kind == "anonymous":
        raise AuthProblem("this route needs a caller: a bearer token (an agent's, a signed-in person's or a "
                          "personal API token), or the local user on loopback")
    roles, scope = PERMISSIONS[action]
    if action in OWN_ACTIONS and agent is not None and caller.agent == agent:
        return
    own_scope = not scope.startswith("registry:")  # audit:read, secrets:admin: grantable to an agent in [grants]
    if caller.kind == "agent" and own_scope and scope in caller.scopes:
        return
    role = caller.acting_role
    what = f"{action}{f' {agent}' if agent else ''}"
    if role not in roles:
        if caller.kind == "agent":
            needed = f"'{scope}' or 'registry:admin'" if own_scope else "'registry:admin'"
            raise Forbidden(f"{caller.id} may not {what}: it needs scope {needed}")
        held = f"role {role} in {caller.org}" if role else f"no role in {caller.org or 'any organisation'}"
        *more, least = [r for r in ROLES if r in roles]
        needs = f"{', '.join(more)} or {least}" if more else least
        raise Forbidden(f"{caller.id} ({held}) may not {what}: it needs role {needs}")
    if caller.via == "api-token" and not token_allows(caller.scopes, scope):
        raise Forbidden(f"{caller.id}: this API token may not {what}: it needs scope {scope!r}")
