"""People: users, organisations, memberships with roles, and personal API tokens.

A person is known by the issuer and subject that signed them in (``oidc.py``); the first sign-in creates
the user. The local user (issuer ``local``) is the tokenless person on loopback of a single-person
workspace, owner of the default organisation. Memberships give a role per organisation (owner, admin,
member, viewer; what each may do is ``auth.PERMISSIONS``); those the identity provider's groups decide
are re-synced at every sign-in, those a person set are left alone.

A personal API token is ``mesh_pat_`` and 256 random bits, shown once: the registry keeps only its SHA-256,
so neither the database nor a backup can give it away. Each is scoped (``auth.SCOPE_IMPLIES``), bound to
one organisation, expires, and can be revoked; scripts and MCP clients send it as a bearer token.

Store functions take a ``Session`` first and leave the transaction to the caller, as in ``store.py``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mesh.registry.auth import PERMISSIONS, ROLES, AuthProblem, Caller
from mesh.registry.config import RegistryConfig
from mesh.registry.problems import Problem, problem_json
from mesh.registry.store import ApiTokenRecord, MembershipRecord, OrgRecord, UserRecord, utcnow

TOKEN_PREFIX = "mesh_pat_"
LOCAL = "local"  # the local user's id and issuer
ORG_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
USER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
if TYPE_CHECKING:
    from mesh.registry.node import Registry

SESSION_COOKIE = "mesh_session"  # a browser's sign-in (``oidc.py``): a personal API token in a cookie


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_api_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


# -- organisations and users --------------------------------------------------------------------------


def ensure_org(session: Session, org_id: str, name: str | None = None) -> OrgRecord:
    if session.get(OrgRecord, org_id) is None:
        _insert_once(session, OrgRecord(id=org_id, name=name or org_id, created_at=utcnow()))
    return session.get(OrgRecord, org_id)


def ensure_local_user(session: Session, org_id: str) -> UserRecord:
    """The tokenless local user, owner of ``org_id`` (created with it when missing)."""
    ensure_org(session, org_id)
    if session.get(UserRecord, LOCAL) is None:
        _insert_once(session, UserRecord(id=LOCAL, issuer=LOCAL, subject=LOCAL, name="local user",
                                         created_at=utcnow(), last_seen_at=utcnow()))
    if session.get(MembershipRecord, (LOCAL, org_id)) is None:
        _insert_once(session, MembershipRecord(user_id=LOCAL, org_id=org_id, role="owner", source="manual",
                                               created_at=utcnow()))
    return session.get(UserRecord, LOCAL)


def sign_in(session: Session, *, issuer: str, subject: str, email: str | None = None, name: str | None = None,
            roles: dict[str, str] | None = None) -> UserRecord:
    """The user ``issuer`` knows as ``subject`` (created at their first sign-in), with the memberships
    their groups give (``roles``: org -> role) brought up to date. Memberships a person set stay."""
    query = select(UserRecord).where(UserRecord.issuer == issuer, UserRecord.subject == subject)
    user = session.scalar(query)
    now = utcnow()
    if user is None:  # two first requests at once: one creates, both find it
        _insert_once(session, UserRecord(id=uuid.uuid4().hex, issuer=issuer, subject=subject, created_at=now,
                                         last_seen_at=now))
        user = session.scalars(query).one()
    user.email, user.name, user.last_seen_at = email or user.email, name or user.name, now
    session.flush()
    wanted = dict(roles or {})
    held = {m.org_id: m for m in session.scalars(select(MembershipRecord).where(MembershipRecord.user_id == user.id))}
    for org_id, membership in held.items():
        if membership.source == "groups" and org_id not in wanted:
            session.delete(membership)
    for org_id, role in wanted.items():
        ensure_org(session, org_id)
        membership = held.get(org_id)
        if membership is None:
            _insert_once(session, MembershipRecord(user_id=user.id, org_id=org_id, role=role, source="groups",
                                                   created_at=now))
        elif membership.source == "groups":
            membership.role = role
    session.flush()
    return user


def get_user(session: Session, user_id: str) -> UserRecord | None:
    return session.get(UserRecord, user_id)


def memberships(session: Session, user_id: str) -> dict[str, str]:
    """org -> role for every organisation the user belongs to."""
    rows = session.scalars(select(MembershipRecord).where(MembershipRecord.user_id == user_id)
                           .order_by(MembershipRecord.org_id))
    return {m.org_id: m.role for m in rows}


def role_in(session: Session, user_id: str, org_id: str) -> str | None:
    membership = session.get(MembershipRecord, (user_id, org_id))
    return membership.role if membership else None


def list_members(session: Session, org_id: str) -> list[tuple[MembershipRecord, UserRecord]]:
    query = (select(MembershipRecord, UserRecord).join(UserRecord, UserRecord.id == MembershipRecord.user_id)
             .where(MembershipRecord.org_id == org_id).order_by(MembershipRecord.user_id))
    return [(m, u) for m, u in session.execute(query)]


def set_role(session: Session, org_id: str, user_id: str, role: str) -> MembershipRecord:
    """Give ``user_id`` ``role`` in ``org_id`` by hand (a groups sync leaves it alone from then on)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    membership = session.get(MembershipRecord, (user_id, org_id))
    if membership is None:
        membership = MembershipRecord(user_id=user_id, org_id=org_id, role=role, source="manual", created_at=utcnow())
        session.add(membership)
    membership.role, membership.source = role, "manual"
    session.flush()
    return membership


def remove_member(session: Session, org_id: str, user_id: str) -> bool:
    return session.execute(delete(MembershipRecord).where(MembershipRecord.org_id == org_id,
                                                          MembershipRecord.user_id == user_id)).rowcount > 0


def owners(session: Session, org_id: str) -> list[str]:
    return list(session.scalars(select(MembershipRecord.user_id).where(MembershipRecord.org_id == org_id,
                                                                       MembershipRecord.role == "owner")))


# -- personal API tokens ------------------------------------------------------------------------------


def create_token(session: Session, *, user_id: str, org_id: str, name: str, scopes: list[str],
                 expires_at: datetime) -> tuple[ApiTokenRecord, str]:
    """A new token and its secret: the only time the secret exists outside the caller's hands."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiTokenRecord(id=uuid.uuid4().hex[:16], secret_sha256=secret_digest(secret), user_id=user_id,
                            org_id=org_id, name=name, scopes=list(scopes), created_at=utcnow(),
                            expires_at=expires_at)
    session.add(record)
    session.flush()
    return record, secret


def token_by_secret(session: Session, secret: str) -> ApiTokenRecord | None:
    return session.scalar(select(ApiTokenRecord).where(ApiTokenRecord.secret_sha256 == secret_digest(secret)))


def list_tokens(session: Session, user_id: str) -> list[ApiTokenRecord]:
    return list(session.scalars(select(ApiTokenRecord).where(ApiTokenRecord.user_id == user_id)
                                .order_by(ApiTokenRecord.created_at.desc(), ApiTokenRecord.id)))


def get_token(session: Session, token_id: str) -> ApiTokenRecord | None:
    return session.get(ApiTokenRecord, token_id)


def revoke_token(session: Session, record: ApiTokenRecord) -> bool:
    """Revoke a token from now on; False when it already was."""
    if record.revoked_at is not None:
        return False
    record.revoked_at = utcnow()
    session.flush()
    return True


def token_json(record: ApiTokenRecord) -> dict[str, Any]:
    """What the API shows of a token: never its secret, nor its hash."""
    return {"id": record.id, "name": record.name, "org": record.org_id, "scopes": record.scopes,
            "created_at": record.created_at.isoformat(), "expires_at": record.expires_at.isoformat(),
            "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
            "last_used_at": record.last_used_at.isoformat() if record.last_used_at else None}


def user_json(user: UserRecord) -> dict[str, Any]:
    return {"id": user.id, "issuer": user.issuer, "subject": user.subject, "email": user.email, "name": user.name,
            "created_at": user.created_at.isoformat()}


# -- callers ------------------------------------------------------------------------------------------


def caller_for(user_id: str, roles: dict[str, str], *, org: str | None, default_org: str, scopes: list[str],
               via: str, token_id: str | None = None) -> Caller:
    """A person as the registry sees them on one request: acting in ``org`` (given by their token), else in
    the default organisation if they belong to it, else in the first they belong to."""
    acting = org or (default_org if default_org in roles else next(iter(sorted(roles)), None))
    return Caller(f"user:{user_id}", "user", scopes, org=acting, role=roles.get(acting) if acting else None,
                  via=via, token_id=token_id)


def _insert_once(session: Session, record: Any) -> None:
    """Add a row that registry processes starting together may all try to add: the first one wins."""
    try:
        with session.begin_nested():
            session.add(record)
    except IntegrityError:
        pass


class People:
    """What one registry process needs of people on every request: the caller a token stands for, kept a
    few seconds (``trust_ttl``) so a call costs no database read, and forgotten at once on a revocation here."""

    def __init__(self, config: RegistryConfig, sessions: sessionmaker[Session]):
        from mesh.registry.oidc import Issuer  # oidc needs people; people builds the issuer

        self.config = config
        self.sessions = sessions
        self.default_org = config.auth.default_org
        self.issuer = Issuer(config.oidc, config.resource, skew=config.token_clock_skew) if config.oidc else None
        self._callers: dict[str, tuple[Caller, float]] = {}  # digest of a token -> caller, until when
        with sessions.begin() as session:
            ensure_local_user(session, self.default_org)
            self._local_roles = memberships(session, LOCAL)

    def local_caller(self) -> Caller:
        return caller_for(LOCAL, self._local_roles, org=self.default_org, default_org=self.default_org,
                          scopes=list(self.config.local_user_scopes), via="loopback")

    def identify(self, token: str) -> Caller:
        """The person a bearer token stands for: a personal API token, or an access token of the configured
        OpenID provider. ``AuthProblem`` for one that is neither, or no longer good."""
        key = secret_digest(token)
        now = time.time()
        cached = self._callers.get(key)
        if cached and cached[1] > now:
            return cached[0]
        if is_api_token(token):
            caller, until = self._api_token_caller(token, now)
        elif self.issuer is None:
            raise AuthProblem("the bearer token is neither an agent's token nor a personal API token "
                              "(no OpenID provider is configured: [oidc] in registry.toml)")
        else:
            claims = self.issuer.verify(token, now)
            caller, until = self._signed_in_caller(claims), float(claims["exp"])
        if len(self._callers) > 10_000:
            self._callers.clear()
        self._callers[key] = (caller, min(until, now + self.config.trust_ttl))
        return caller

    def _api_token_caller(self, token: str, now: float) -> tuple[Caller, float]:
        with self.sessions.begin() as session:
            record = token_by_secret(session, token)
            if record is None:
                raise AuthProblem("the personal API token is not one this registry issued")
            if record.revoked_at is not None:
                raise AuthProblem(f"the personal API token {record.id} has been revoked")
            expires = record.expires_at.timestamp()
            if expires <= now:
                raise AuthProblem(f"the personal API token {record.id} has expired")
            if record.last_used_at is None or now - record.last_used_at.timestamp() > 60:
                record.last_used_at = datetime.fromtimestamp(now, UTC)
            roles = memberships(session, record.user_id)
            caller = caller_for(record.user_id, roles, org=record.org_id, default_org=self.default_org,
                                scopes=list(record.scopes), via="api-token", token_id=record.id)
        return caller, expires

    def _signed_in_caller(self, claims: dict[str, Any]) -> Caller:
        assert self.issuer is not None
        with self.sessions.begin() as session:
            user = sign_in(session, issuer=self.issuer.issuer, subject=str(claims["sub"]),
                           email=_text(claims.get("email")), name=_text(claims.get("name")),
                           roles=self.issuer.roles(claims, self.default_org))
            roles = memberships(session, user.id)
            return caller_for(user.id, roles, org=None, default_org=self.default_org, scopes=["*"], via="oidc")

    def forget(self) -> None:
        """Drop every cached caller: a token was revoked or a role changed in this process."""
        self._callers.clear()
        with self.sessions.begin() as session:
            self._local_roles = memberships(session, LOCAL)

    def token_expiry(self, days: float | None) -> datetime:
        """When a token asked to live ``days`` (default ``[auth] token_days``) ends; refuses past the maximum."""
        auth = self.config.auth
        days = auth.token_days if days is None else days
        if not 0 < days <= auth.max_token_days:
            raise ValueError(f"a token lives more than 0 and at most {auth.max_token_days} days "
                             "([auth] max_token_days)")
        return utcnow() + timedelta(days=days)


def _text(value: Any) -> str | None:
    return value[:320] if isinstance(value, str) else None


# -- the HTTP API: /v1/users/me, /v1/tokens, /v1/orgs ---------------------------------------------------


def routes(registry: Registry) -> list[Route]:
    """People's routes, each checked by ``auth.authorize`` against the caller's role in the organisation
    it is about."""
    from mesh.registry.app import read_json
    from mesh.registry.gate import allowed, caller_of

    def person(request: Request, action: str, org: str | None = None) -> tuple[Caller, str]:
        """The caller, a person, allowed ``action`` in ``org`` (default: the one they act in)."""
        caller = caller_of(registry, request)
        if caller.kind != "user" or caller.user is None:
            raise Problem("forbidden", f"{caller.id} is not a person: these routes are about people")
        if org is not None and org != caller.org:
            if not ORG_ID.fullmatch(org):
                raise Problem("unknown-org", f"no organisation {org[:80]!r}")
            with registry.sessions.begin() as session:
                role = role_in(session, caller.user, org)
            # One they do not belong to is not theirs to see: 404, as an object of another tenant will be.
            if role is None or (caller.via == "api-token"):
                raise Problem("unknown-org", f"no organisation {org!r} that {caller.id} belongs to")
            caller = replace(caller, org=org, role=role)
        allowed(registry, None, action, caller=caller)
        return caller, caller.user

    async def me(request: Request) -> JSONResponse:
        """Who the caller is: the person, the organisation and role they act in, all their memberships."""
        caller = caller_of(registry, request)
        document: dict[str, Any] = {"id": caller.id, "kind": caller.kind, "org": caller.org,
                                    "project": registry.tenancy.of_caller(caller).key, "role": caller.role,
                                    "via": caller.via, "scopes": caller.scopes, "token_id": caller.token_id}
        if caller.user is not None:
            with registry.sessions.begin() as session:
                user = get_user(session, caller.user)
                document["user"] = user_json(user) if user else None
                document["orgs"] = memberships(session, caller.user)
        return JSONResponse(document)

    async def tokens(request: Request) -> JSONResponse:
        """The caller's own personal API tokens (never their secrets)."""
        _, user_id = person(request, "tokens")
        with registry.sessions.begin() as session:
            return JSONResponse({"tokens": [token_json(t) for t in list_tokens(session, user_id)]})

    async def create(request: Request) -> JSONResponse:
        """A new personal API token: its secret is in this answer and nowhere else, ever."""
        body = await read_json(registry, request)
        org = body.get("org")
        if org is not None and not isinstance(org, str):
            raise Problem("bad-request", "org must be a string")
        caller, user_id = person(request, "tokens", org)
        name, scopes, days = body.get("name"), body.get("scopes", ["*"]), body.get("days")
        if not isinstance(name, str) or not 0 < len(name) <= 100:
            raise Problem("bad-request", "a token needs a name (1 to 100 characters)")
        if not (isinstance(scopes, list) and scopes and all(isinstance(s, str) and 0 < len(s) <= 100 for s in scopes)
                and len(scopes) <= 50):
            raise Problem("bad-request", "scopes must be a non-empty list of strings, e.g. [\"registry:read\"]")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)):
            raise Problem("bad-request", "days must be a number")
        if caller.via == "api-token" and "*" not in caller.scopes and not set(scopes) <= set(caller.scopes):
            raise Problem("forbidden", "a token cannot make a token with scopes it does not hold itself")
        try:
            expires_at = registry.people.token_expiry(days)
        except ValueError as exc:
            raise Problem("bad-request", str(exc)) from exc
        with registry.sessions.begin() as session:
            record, secret = create_token(session, user_id=user_id, org_id=caller.org or registry.people.default_org,
                                          name=name, scopes=scopes, expires_at=expires_at)
            document = {**token_json(record), "token": secret}
        registry.audit(caller.id, "create-token", record.id, "done", f"scopes {' '.join(scopes)}", _remote(request),
                       org=record.org_id)
        return JSONResponse(document, status_code=201)

    async def tokens_or_create(request: Request) -> JSONResponse:
        return await (create(request) if request.method == "POST" else tokens(request))

    async def revoke(request: Request) -> JSONResponse:
        """Revoke a token: one's own, or any of an organisation one administers."""
        caller, user_id = person(request, "tokens")
        token_id = request.path_params["token_id"]
        with registry.sessions.begin() as session:
            record = get_token(session, token_id)
            if record is not None and record.user_id != user_id:
                role = role_in(session, user_id, record.org_id)
                administers = role in PERMISSIONS["members"][0] and caller.via != "api-token"
                record = record if administers else None
            if record is None:
                raise Problem("unknown-token", f"no token {token_id[:40]!r} of yours")
            changed = revoke_token(session, record)
            document = token_json(record)
        registry.people.forget()
        registry.audit(caller.id, "revoke-token", token_id, "done" if changed else "already revoked", None,
                       _remote(request), org=document["org"])
        return JSONResponse(document)

    async def orgs(request: Request) -> JSONResponse:
        """The organisations the caller belongs to, with their role in each."""
        _, user_id = person(request, "read")
        with registry.sessions.begin() as session:
            return JSONResponse({"orgs": [{"id": org, "role": role}
                                          for org, role in memberships(session, user_id).items()]})

    async def members(request: Request) -> JSONResponse:
        """An organisation's members and their roles."""
        org = request.path_params["org"]
        person(request, "read", org)
        with registry.sessions.begin() as session:
            return JSONResponse({"org": org, "members": [
                {**user_json(user), "role": m.role, "source": m.source} for m, user in list_members(session, org)]})

    async def member(request: Request) -> JSONResponse:
        """Give a person a role in an organisation (PUT), or take them out of it (DELETE)."""
        org, target = request.path_params["org"], request.path_params["user_id"]
        caller, _ = person(request, "members", org)
        role = None
        if request.method == "PUT":
            role = (await read_json(registry, request)).get("role")
            if role not in ROLES:
                raise Problem("bad-request", f"role must be one of {', '.join(ROLES)}")
        with registry.sessions.begin() as session:
            if not USER_ID.fullmatch(target) or get_user(session, target) is None:
                raise Problem("unknown-user", f"no user {target[:80]!r} (a person exists once they signed in)")
            current = role_in(session, target, org)
            if "owner" in (role, current):
                allowed(registry, None, "appoint-owners", caller=caller)
            if current == "owner" and role != "owner" and owners(session, org) == [target]:
                raise Problem("bad-request", f"{target} is the last owner of {org}; make another owner first")
            if role is None:
                if not remove_member(session, org, target):
                    raise Problem("unknown-user", f"{target} is not a member of {org}")
                document: dict[str, Any] = {"org": org, "user": target, "role": None}
            else:
                set_role(session, org, target, role)
                document = {"org": org, "user": target, "role": role}
        registry.people.forget()
        registry.audit(caller.id, "set-role", f"{org}/{target}", "done", f"role {role}", _remote(request), org=org)
        return JSONResponse(document)

    return [
        Route("/v1/users/me", problem_json(me), methods=["GET"]),
        Route("/v1/tokens", problem_json(tokens_or_create), methods=["GET", "POST"]),
        Route("/v1/tokens/{token_id}", problem_json(revoke), methods=["DELETE"]),
        Route("/v1/orgs", problem_json(orgs), methods=["GET"]),
        Route("/v1/orgs/{org}/members", problem_json(members), methods=["GET"]),
        Route("/v1/orgs/{org}/members/{user_id}", problem_json(member), methods=["PUT", "DELETE"]),
    ]


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None
