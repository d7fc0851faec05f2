"""The registry node's state: trust, pinned tools, policy, reputation, discovery and the run log.

``Registry`` owns the parts; admission (``admission.py``) and the call path (``proxy.py``) work on it.
What must survive a restart is in the database; what is needed on every call (pinned tools with their
compiled validators, reputations) is also kept in memory and reloaded from the database at start.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mesh.keys import KeyProblem, KeyRing, SigningKey, TrustedKey, TrustStore, check_kid, unverified_jws
from mesh.manifest import Manifest, ManifestProblem
from mesh.names import NameProblem, check_name
from mesh.registry import audit, replicas, store, tenancy
from mesh.registry.auth import (
    ANONYMOUS,
    PERMISSIONS,
    ROLES,
    AuthProblem,
    Caller,
    claimed_agent,
    token_expiry,
    unverified_parts,
    verify_token,
)
from mesh.registry.breaker import HALF_OPEN, Breakers, Thresholds
from mesh.registry.budgets import Budgets
from mesh.registry.config import ConfigProblem, RegistryConfig
from mesh.registry.credentials import Credentials
from mesh.registry.discovery import DiscoveryIndex
from mesh.registry.forward import Forwarder
from mesh.registry.people import People, is_api_token
from mesh.registry.policy import PolicyEngine
from mesh.registry.problems import Problem
from mesh.registry.reputation import Outcome, Reputation
from mesh.registry.runlog import RunLog
from mesh.signing import read_jwks

log = logging.getLogger(__name__)
REGISTRY_KEYS = "_registry"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def is_kid(value: str) -> bool:
    try:
        check_kid(value)
    except KeyProblem:
        return False
    return True


def check_registration_name(name: Any) -> str:
    try:
        return check_name(name, "agent name")
    except NameProblem as exc:
        raise Problem("bad-request", str(exc)) from exc


@dataclass(frozen=True)
class _KnownToken:
    """A token this process verified, kept until it expires unless its key stops being trusted."""

    caller: Caller
    agent: str
    kid: str
    expires: float


@dataclass
class Offer:
    """What a registration's JWKS offers, checked against the keys already trusted, kept in memory only.

    ``trust``: the trusted keys plus those introduced by verified rotation statements, minus keys
    revoked by verified revocation statements. ``learned``: new kids; ``ends``: known kids whose end a
    statement set; ``revocations``: kid -> (signer kid, statement)."""

    trust: TrustStore
    learned: list[str]
    ends: list[str]
    revocations: dict[str, tuple[str, str]]

    @classmethod
    def read(cls, agent: str, trusted: TrustStore, jwks: dict[str, Any]) -> Offer:
        rotations, statements = jwks.get("rotations") or [], jwks.get("revocations") or []
        if not (isinstance(rotations, list) and isinstance(statements, list)):
            raise AuthProblem("jwks rotations and revocations must be lists of compact JWS")
        trust = TrustStore()
        trust.keys, trust.revoked = dict(trusted.keys), set(trusted.revoked)
        revocations: dict[str, tuple[str, str]] = {}

        def apply_revocations() -> None:
            for statement in statements:
                try:
                    kid = trust.verify_revocation(statement, agent)
                except KeyProblem:
                    continue  # by a key this registry does not trust (yet): it changes nothing here
                revocations[kid] = (_signer(statement), statement)
                trust.revoked.add(kid)

        # Revocations first, so a revoked key's rotation statements introduce nobody; then again, for
        # statements signed by keys the rotations just introduced.
        apply_revocations()
        try:
            learned = trust.follow_rotations(rotations)
        except KeyProblem as exc:
            raise AuthProblem(f"the offered JWKS holds a bad rotation statement: {exc}") from exc
        apply_revocations()
        learned = [kid for kid in learned if kid not in trust.revoked]
        ends = [kid for kid, key in trusted.keys.items()
                if kid in trust.keys and trust.keys[kid].exp != key.exp]
        return cls(trust, learned, ends, revocations)


def _signer(statement: str) -> str:
    """The kid that signed a statement already verified."""
    return unverified_jws(statement)[0]["kid"]


@dataclass
class PinnedTool:
    """A tool as admitted: its signed wire form, pinned digest, and compiled validators for what goes in and out."""

    agent: str
    name: str
    wire: dict[str, Any]
    scopes: list[str]
    digest: str
    status: str
    blocked_reason: str | None
    validator: Validator
    output_validator: Validator | None
    signed_by: str | None = None  # kid of the key whose tool signature it was admitted on
    cost: float | None = None  # cost units a call spends, as its signed manifest declares (None: the default)

    @classmethod
    def from_record(cls, record: store.ToolRecord) -> PinnedTool:
        return cls(record.agent, record.name, record.wire, list(record.scopes), record.pinned_digest,
                   record.status, record.blocked_reason, Draft202012Validator(record.input_schema),
                   Draft202012Validator(record.output_schema) if record.output_schema else None,
                   record.signed_by, record.cost)

    @property
    def annotations(self) -> dict[str, Any]:
        return self.wire.get("annotations") or {}


@dataclass
class PinnedDescriptor:
    """A resource, resource template or prompt as admitted: its signed wire form and the digest it is pinned to.

    Kept in memory like tools, so listing and serving them reads no database."""

    agent: str
    kind: str  # "resource", "resource_template" or "prompt" (``mesh.manifest.KINDS``)
    name: str
    wire: dict[str, Any]
    scopes: list[str]
    digest: str
    status: str
    blocked_reason: str | None
    signed_by: str | None = None

    @classmethod
    def from_record(cls, record: store.DescriptorRecord) -> PinnedDescriptor:
        return cls(record.agent, record.kind, record.name, record.wire, list(record.scopes), record.pinned_digest,
                   record.status, record.blocked_reason, record.signed_by)

    @property
    def verified(self) -> bool:
        return self.status == "verified"


class Registry:
    """Everything a registry process knows; built by ``Registry.open(config)``."""

    def __init__(self, config: RegistryConfig, sessions: sessionmaker[Session], policy: PolicyEngine,
                 provenance_key: SigningKey, provenance_jwks: dict[str, Any]):
        self.config = config
        self.sessions = sessions
        self.policy = policy
        self.provenance_key = provenance_key
        self.provenance_jwks = provenance_jwks
        self.discovery = DiscoveryIndex()
        self.tools: dict[tuple[str, str], PinnedTool] = {}
        self.descriptors: dict[tuple[str, str, str], PinnedDescriptor] = {}  # (agent, kind, name) -> pin
        self.endpoints: dict[str, str] = {}
        self.change_listeners: list[Callable[[str], Awaitable[None]]] = []  # told each agent whose pins changed
        self.reputations: dict[tuple[str, str], Reputation] = {}
        self.admitted_here: set[str] = set()  # agents admitted by this process (not just loaded)
        self.forwarder: Forwarder | None = None  # set while the app runs
        self.engine = sessions.kw["bind"]
        self.embedded_database = self.engine.dialect.name == "sqlite"
        self._trust_cache: dict[str, tuple[TrustStore, float]] = {}
        self._tokens: dict[str, _KnownToken] = {}
        self._unsaved: dict[tuple[str, str], list[Outcome]] = {}  # outcomes learnt here, not saved yet
        self._unsaved_lock = threading.Lock()  # learnt on the event loop, saved from a worker thread
        self.last_forwarded: dict[str, float] = {}  # agent -> monotonic time a call last reached it
        self.manifest_digests: dict[str, str] = {}  # agent -> digest of the manifest it was admitted on
        # What the call path (``proxy.py``) remembers between calls, all of it bounded:
        self.in_flight: dict[str, str] = {}  # target-side run id of a call being carried -> its target agent
        self.inner_failures: dict[str, str] = {}  # such a run id -> the first call it made that failed
        self.rechecked: dict[str, tuple[str | None, set[str | None]]] = {}  # agent -> (admitted digest, seen)
        self.recheck_locks: dict[str, anyio.Lock] = {}  # one recheck of an agent at a time
        # agent -> target system -> latest assessed score (``mesh.learning``), for discovery and the policy
        self.proficiencies: dict[str, dict[str, float]] = {}
        self.people = People(config, sessions)  # signed-in people, personal API tokens, the local user
        # Which project each agent belongs to, and where each caller acts (``tenancy.py``).
        self.tenancy = tenancy.Tenancy(sessions, tenancy.assigned_projects(config), config.auth.default_org)
        self.runlog = RunLog(self)  # writes run records, grouping calls that finish together
        # limits per organisation or agent and period, their running spend in memory (``budgets.py``)
        self.budgets = Budgets(config.budgets, sessions, default_org=config.auth.default_org)
        self.breakers = Breakers(Thresholds.of(config))  # per agent circuit breakers (``breaker.py``)
        # Other registry processes on the same PostgreSQL database hear of this one's changes (``replicas.py``).
        self.replica_id = replicas.new_replica_id()
        self.channel: str | None = None
        if not self.embedded_database:
            self.channel = replicas.channel(self.engine)
            replicas.watch(sessions, self.replica_id, self.channel)

    @classmethod
    def open(cls, config: RegistryConfig) -> Registry:
        ws = config.workspace
        url = store.database_url(ws.root, config.database_url)
        engine = store.connect(url)
        try:
            store.migrate(engine)
        except DBAPIError as exc:  # e.g. a user that may not create the least-privilege role
            refused = store.refused_privilege(exc)
            if refused is None:
                raise
            raise ConfigProblem(f"cannot migrate the registry's database: {refused}") from None
        engine = cls._serving_engine(config, url, engine)
        policy = PolicyEngine(ws.root / "registry" / "policies", data=config.policy)
        ring = KeyRing.open(ws.state_dir / "keys" / REGISTRY_KEYS, create=True)  # not an agent's: no agent name
        registry = cls(config, store.session_factory(engine), policy, ring.active(), ring.public_jwks())
        registry.load()
        registry.budgets.load()
        return registry

    @staticmethod
    def _serving_engine(config: RegistryConfig, url: Any, owner: Engine) -> Engine:
        """After migrating as the tables' owner, on PostgreSQL serve as the least-privilege role, under
        row-level security (``tenancy.enforce_rls``), unless ``[registry] database_role = ""`` opts out."""
        role = config.serving_role(owner.dialect.name)
        if owner.dialect.name != "postgresql":
            return owner
        user = owner.url.username or "(the URL's user)"
        if role is None:
            if store.bypasses_rls(owner):
                log.warning('[registry] database_role = "": serving as database user %r, which row-level security '
                            "does not bind; tenant isolation rests on the store layer alone", user)
            # Otherwise the forced policies bind the login user too: isolation holds as it does for the role.
        elif not store.may_act_as(owner, role):
            raise ConfigProblem(f"database user {user!r} cannot act as role {role!r}, which the registry serves as "
                                f"(row-level security): have an administrator run GRANT {role} TO {user} (or "
                                f'CREATE ROLE {role} NOLOGIN first), or set [registry] database_role = "" '
                                "in registry/registry.toml to serve as that user instead")
        owner.dispose()
        return store.connect_as(url, role)

    # -- state from the database ---------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the in-memory view (pinned tools, endpoints, reputations, discovery) after a start."""
        descriptions: dict[str, str] = {}
        self.tenancy.load()
        with tenancy.as_registry(), self.sessions.begin() as session:  # every tenant's pins, for every call
            # auth.PERMISSIONS is the one source of truth: tables that drifted from it are rewritten.
            if store.sync_permissions(session, PERMISSIONS, (*ROLES, "agent")):
                log.warning("the roles and permissions tables differed from auth.PERMISSIONS: rewritten")
            for agent in store.list_agents(session):
                self.endpoints[agent.name] = agent.endpoint
                descriptions[agent.name] = agent.description or ""
                if agent.manifest_digest:
                    self.manifest_digests[agent.name] = agent.manifest_digest
            records = store.list_tools(session)
            for record in records:
                self.tools[(record.agent, record.name)] = PinnedTool.from_record(record)
            for described in store.list_descriptors(session):
                self.descriptors[(described.agent, described.kind, described.name)] = \
                    PinnedDescriptor.from_record(described)
            for saved in store.list_reputation(session):
                self.reputations[(saved.agent, saved.tool)] = Reputation.from_state(saved.state)
            self.proficiencies = store.proficiencies(session)
        self.discovery.upsert_many({agent: self.verified_wire(agent) for agent in self.endpoints},
                                   descriptions=descriptions,
                                   scopes={agent: self.tenancy.of(agent).key for agent in self.endpoints})

    async def reload_agent(self, agent: str) -> None:
        """Re-read what the database says of ``agent`` (another replica changed it): endpoint, pins and
        manifest digest; forget its cached keys and tokens so a revocation holds at once; re-index it."""
        with tenancy.as_registry(), self.sessions.begin() as session:  # whichever project it is in
            record = store.get_agent(session, agent)
            tools = store.list_tools(session, agent)
            described = store.list_descriptors(session, agent)
        before = (self.endpoints.get(agent), self.agent_tools(agent), self.agent_descriptors(agent))
        for key in [key for key in self.tools if key[0] == agent]:
            del self.tools[key]
        for key in [key for key in self.descriptors if key[0] == agent]:
            del self.descriptors[key]
        self.tools.update({(agent, t.name): PinnedTool.from_record(t) for t in tools})
        self.descriptors.update({(agent, d.kind, d.name): PinnedDescriptor.from_record(d) for d in described})
        if record is None:
            self.endpoints.pop(agent, None)
            self.manifest_digests.pop(agent, None)
            self.tenancy.agents.pop(agent, None)
        else:
            self.endpoints[agent] = record.endpoint
            self.tenancy.agents[agent] = tenancy.Tenant(record.org_id, record.project_id)  # where it was admitted
            if record.manifest_digest:
                self.manifest_digests[agent] = record.manifest_digest
        self.admitted_here.discard(agent)  # admitted elsewhere: its next registration here is checked in full
        self.forget_trust(agent)
        if (self.endpoints.get(agent), self.agent_tools(agent), self.agent_descriptors(agent)) != before:
            await self.index_agent(agent)  # only what changed is embedded again and told to MCP clients

    def verified_wire(self, agent: str) -> list[dict[str, Any]]:
        return [t.wire for (a, _), t in self.tools.items() if a == agent and t.status == "verified"]

    async def index_agent(self, agent: str) -> None:
        """Make discovery show exactly ``agent``'s verified tools (embedding and Faiss run off the loop),
        then tell whoever listens for changes (the MCP faces, which tell their clients)."""
        with tenancy.acting_as(self.tenancy.of(agent)), self.sessions.begin() as session:
            record = store.get_agent(session, agent)
            description = (record.description or "") if record is not None else ""
        upsert = functools.partial(self.discovery.upsert, agent, self.verified_wire(agent), description=description,
                                   scope=self.tenancy.of(agent).key)
        await anyio.to_thread.run_sync(upsert)
        for listener in list(self.change_listeners):
            await listener(agent)

    # -- trust ------------------------------------------------------------------------------------------

    def trust_for(self, agent: str) -> TrustStore:
        """Keys trusted for ``agent``, from what the registry itself keeps: the committed JWKS, keys learnt
        by rotation (in the database), this workspace's local keys when allowed — minus every revocation
        on record, with every key end on record applied. Nothing a request offers is in it."""
        ws = self.config.workspace
        with self.sessions.begin() as session:
            revoked = store.revoked_kids(session, agent)
            recorded = store.trusted_keys(session, agent)
        trust = TrustStore()
        trust.revoked |= revoked
        documents = [read_jwks(ws.jwks_path(agent))]
        if self.config.trust_local_keys and not self.config.strict:
            documents.append(read_jwks(ws.jwks_path(agent, local=True)))
        for document in filter(None, documents):
            trust.add_jwks(document)
        if trust.revoked - revoked:  # the agent's own published JWKS revokes a key: keep that as a fact too
            with self.sessions.begin() as session:
                for kid in sorted(trust.revoked - revoked):
                    if is_kid(kid):
                        store.revoke_key(session, agent, kid, by="published-jwks")
        for key in recorded:
            end = int(key.exp.timestamp()) if key.exp else None
            held = trust.keys.get(key.kid)
            if held is None and key.kid not in trust.revoked:
                trust.trust({**key.jwk, **({"exp": end} if end else {})})
            elif held is not None and end is not None and (held.exp is None or end < held.exp):
                trust.keys[key.kid] = TrustedKey(held.kid, held.jwk, end)  # an end on record only moves earlier
        return trust

    def cached_trust(self, agent: str) -> TrustStore:
        """``trust_for``, kept ``trust_ttl`` seconds: tokens are checked on every call, and a revocation made
        by another registry process sharing the database reaches this one within that time."""
        cached = self._trust_cache.get(agent)
        if cached is None or time.monotonic() - cached[1] > self.config.trust_ttl:
            cached = self._trust_cache[agent] = (self.trust_for(agent), time.monotonic())
        return cached[0]

    def forget_trust(self, agent: str) -> None:
        """Drop what this process caches about ``agent``'s keys and tokens (after its keys changed)."""
        self._trust_cache.pop(agent, None)
        for token in [t for t, entry in self._tokens.items() if entry.caller.agent == agent]:
            del self._tokens[token]

    def caller_scopes(self, agent: str) -> list[str]:
        return list(self.config.grants.get(agent, []))

    def identify(self, authorization: str | None, client_host: str | None) -> Caller:
        """The caller of a request: an agent by its bearer token, a person by theirs (``people.py``), else the
        local user (loopback only, when allowed) or anonymous. A token that does not verify is an
        ``AuthProblem``, never anonymous."""
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise AuthProblem("the Authorization header must be 'Bearer <token>'")
            now = time.time()
            cached = self._tokens.get(token)
            if cached and cached.expires > now and not self.cached_trust(cached.agent).problem(cached.kid, now):
                return cached.caller
            if is_api_token(token) or (self.people.issuer is not None and not
                                       str(unverified_parts(token)[1].get("sub", "")).startswith("agent:")):
                return self.people.identify(token)
            agent = claimed_agent(token)
            config = self.config
            caller = verify_token(token, self.cached_trust(agent), self.caller_scopes(agent), audience=config.audience,
                                  max_lifetime=config.max_token_lifetime, skew=config.token_clock_skew, now=now)
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[token] = _KnownToken(caller, agent, caller.kid or "", token_expiry(token))
            return caller
        if client_host in LOOPBACK and self.config.allow_local_user:
            return self.people.local_caller()
        return ANONYMOUS

    def authenticate_registration(self, name: str, token: str, jwks: Any) -> TrustStore:
        """Only the agent itself may register under its name: its token must verify under the keys the
        registry trusts for it, plus keys its offered JWKS introduces by verified rotation statements.
        Until the token verifies nothing offered is kept; after, the new keys, key ends and verified
        revocation statements are stored. Returns the keys to admit it under."""
        check_registration_name(name)
        if jwks is not None and not isinstance(jwks, dict):
            raise Problem("bad-request", "jwks must be a JSON object (keys, revoked, rotations, revocations)")
        try:
            if not token:
                raise AuthProblem(f"registering {name!r} needs a bearer token signed by its key")
            if claimed_agent(token) != name:
                raise AuthProblem(f"the token is not {name!r}'s")
            trusted = self.trust_for(name)
            offer = Offer.read(name, trusted, jwks or {})
            config = self.config
            verify_token(token, offer.trust, [], audience=config.audience, max_lifetime=config.max_token_lifetime,
                         skew=config.token_clock_skew)
        except AuthProblem as exc:
            self.audit("unauthenticated", "register", name, "refused", str(exc), org=None)  # unproven: registry-wide
            raise Problem("unauthenticated", f"registration of {name!r} refused: {exc}") from exc
        self._trust_cache[name] = (trusted, time.monotonic())  # just read: fresher than what the cache held
        self.keep_offer(name, offer)
        return offer.trust

    def keep_offer(self, agent: str, offer: Offer) -> None:
        """Store what an authenticated registration taught: keys, key ends, revocations."""
        if not (offer.learned or offer.ends or offer.revocations):
            return
        with self.sessions.begin() as session:
            for kid in offer.learned + offer.ends:
                key = offer.trust.keys[kid]
                exp = datetime.fromtimestamp(key.exp, UTC) if key.exp else None
                store.trust_key(session, kid, agent=agent, jwk=key.jwk,
                                source="rotation" if kid in offer.learned else "workspace", exp=exp)
                audit.append(session, org=self.tenancy.of(agent).org, actor=f"agent:{agent}", action="trust-key",
                             subject=agent,
                             outcome="learned" if kid in offer.learned else "end-set",
                             data={"kid": kid, "exp": key.exp})
        for kid, (signer, statement) in offer.revocations.items():
            self.revoke(agent, kid, by=f"key:{signer}", statement=statement)
        self.forget_trust(agent)

    def accept_revocation(self, agent: str, statement: str) -> tuple[str, bool]:
        """A revocation statement, from anyone: it is its own proof. Returns the kid and whether it is newly
        revoked. A statement about a key already refused proves nothing new and needs no check."""
        trust = self.trust_for(agent)  # fresh: the agent's published JWKS may have revoked the key already
        try:
            claimed = json.loads(unverified_jws(statement)[1]).get("kid")
        except (KeyProblem, ValueError, AttributeError):
            claimed = None
        if isinstance(claimed, str) and claimed in trust.revoked:
            return claimed, False
        kid = trust.verify_revocation(statement, agent)
        return kid, self.revoke(agent, kid, by=f"key:{_signer(statement)}", statement=statement)

    def revoke(self, agent: str, kid: str, *, by: str, statement: str | None = None,
               reason: str | None = None) -> bool:
        """Refuse ``kid`` for ``agent`` from now on: stored, audited, its cached tokens dropped, and every
        tool admitted on its signature (or on a manifest no other key vouches for) blocked until the
        agent registers again with what a valid key signed. Returns False when it was already revoked."""
        check_registration_name(agent)
        try:
            check_kid(kid)
        except KeyProblem as exc:
            raise Problem("bad-request", str(exc)) from exc
        with self.sessions.begin() as session:
            _, created = store.revoke_key(session, agent, kid, by=by, statement=statement, reason=reason)
            if created:
                audit.append(session, org=self.tenancy.of(agent).org, actor=by, action="revoke-key", subject=agent,
                             outcome="done",
                             detail=f"kid {kid}" + (f": {reason}" if reason else ""), data={"kid": kid})
        self.forget_trust(agent)
        self.block_unvouched(agent)
        return created

    def block_unvouched(self, agent: str) -> list[str]:
        """Block ``agent``'s tools (resources, templates, prompts) whose signature, or whose manifest's every
        signature, rests on keys the registry no longer trusts. The next registration is then checked in full.
        Returns the tools' names, and the other kinds' as ``KIND:NAME``."""
        trust = self.cached_trust(agent)
        with tenancy.acting_as(self.tenancy.of(agent)), self.sessions.begin() as session:
            record = store.get_agent(session, agent)
            manifest_problem = None
            if record is not None and record.manifest:
                try:
                    Manifest.from_json(json.loads(record.manifest)).verify(trust)
                except (ManifestProblem, ValueError) as exc:
                    manifest_problem = str(exc)
            blocked = []
            for pinned in self.agent_tools(agent):
                if pinned.status != "verified":
                    continue
                reason = manifest_problem or (trust.problem(pinned.signed_by) if pinned.signed_by else None)
                if reason:
                    tool = store.block_tool(session, agent, pinned.name, f"its signature no longer holds: {reason}")
                    self.tools[(agent, pinned.name)] = PinnedTool.from_record(tool)
                    blocked.append(pinned.name)
            for described in self.agent_descriptors(agent):
                reason = manifest_problem or (trust.problem(described.signed_by) if described.signed_by else None)
                if described.verified and reason:
                    record = store.block_descriptor(session, agent, described.kind, described.name,
                                                    f"its signature no longer holds: {reason}")
                    self.descriptors[(agent, described.kind, described.name)] = PinnedDescriptor.from_record(record)
                    blocked.append(f"{described.kind}:{described.name}")
        if blocked:  # the caller re-indexes discovery (``index_agent``)
            self.admitted_here.discard(agent)
            log.warning("%s: blocked %s (signing key no longer trusted)", agent, ", ".join(blocked))
        return blocked

    def audit(self, actor: str, action: str, subject: str, outcome: str, detail: str | None = None,
              remote: str | None = None, data: dict[str, Any] | None = None, *, org: str | None) -> None:
        """Append to the hash-chained audit log (``audit.py``) in a transaction of its own; ``org``: the
        organisation it happened in (None: registry-wide)."""
        with self.sessions.begin() as session:
            audit.append(session, org=org, actor=actor, action=action, subject=subject[:200], outcome=outcome,
                         detail=detail, remote=remote, data=data)

    def discover(self, query: str, *, k: int = 10, agent: str | None = None, read_only: bool | None = None,
                 caller: Caller | None = None) -> list[dict[str, Any]]:
        """The best verified tools for ``query``; for a ``caller``, only those of the project it acts in."""
        if not 1 <= k <= 100:
            raise Problem("bad-request", f"k must be between 1 and 100, not {k}")
        mine = None if caller is None else self.tenancy.of_caller(caller)
        # Scoped inside the index (each ranker keeps the project's tools), unless no other project has any.
        everyone_here = mine is None or set(self.tenancy.agents.values()) <= {mine}
        hits = self.discovery.search(query, k=k, agent=agent, read_only=read_only,
                                     scope=None if everyone_here else mine.key, reputation=self.known_score,
                                     proficiency=lambda name: self.proficiencies.get(name, {}))
        return [hit.to_json() for hit in hits]

    # -- reputation ---------------------------------------------------------------------------------------

    def reputation(self, agent: str, tool: str = "") -> Reputation:
        """What has been learnt about ``agent`` (or one tool); a fresh prior, kept nowhere, when nobody has
        called it yet. Reading never creates an entry, so reading cannot change any score or ranking."""
        return self.reputations.get((agent, tool)) or Reputation()

    def learn(self, agent: str, tool: str, outcome: Outcome) -> None:
        """Teach both the agent's and the tool's reputation; ``save_reputations`` persists them."""
        for key in ((agent, ""), (agent, tool)):
            if key not in self.reputations:
                self.reputations[key] = Reputation()
            self.reputations[key].learn_one(outcome)
            with self._unsaved_lock:
                self._unsaved.setdefault(key, []).append(outcome)

    def save_reputations(self) -> None:
        """Add the outcomes learnt since the last save (every second, and at shutdown) to the stored reputations.

        Several registries may share the database, each learning from the calls it carries. Each applies its
        own outcomes to the stored state under a row lock, so no replica's save overwrites another's; the
        state then held in memory is the stored one (every replica's outcomes) plus what was learnt here since.
        """
        with self._unsaved_lock:
            changed, self._unsaved = self._unsaved, {}
        if not changed:
            return
        for attempt in range(3):
            try:
                merged = self._add_outcomes(changed)
                break
            except IntegrityError:  # another replica stored a first reputation for the same key just now
                if attempt < 2:
                    continue
                self._keep_unsaved(changed)
                raise
            except Exception:
                self._keep_unsaved(changed)
                raise
        self._adopt(merged)

    def _add_outcomes(self, changed: dict[tuple[str, str], list[Outcome]]) -> dict[tuple[str, str], dict[str, Any]]:
        merged = {}
        with tenancy.as_registry(), self.sessions.begin() as session:  # every project's reputations
            for agent, tool in sorted(changed):  # always in one order: two replicas cannot deadlock
                record = store.load_reputation(session, agent, tool, for_update=True)
                reputation = Reputation.from_state(record.state) if record is not None else Reputation()
                for outcome in changed[(agent, tool)]:
                    reputation.learn_one(outcome)
                merged[(agent, tool)] = state = reputation.to_state()
                store.save_reputation(session, agent, tool, state=state, score=reputation.score(),
                                      tenant=self.tenancy.of(agent))
        return merged

    def _keep_unsaved(self, changed: dict[tuple[str, str], list[Outcome]]) -> None:
        """Put back outcomes a save could not store, in front of those learnt since: the next save has them."""
        with self._unsaved_lock:
            for key, outcomes in changed.items():
                self._unsaved[key] = outcomes + self._unsaved.get(key, [])

    def reload_reputations(self, keys: list[tuple[str, str]]) -> None:
        """Take the stored reputations of ``keys`` (another replica saved them) as the base of what is known."""
        with tenancy.as_registry(), self.sessions.begin() as session:
            stored = {(agent, tool): record.state for agent, tool in keys
                      if (record := store.load_reputation(session, agent, tool)) is not None}
        self._adopt(stored)

    def _adopt(self, states: dict[tuple[str, str], dict[str, Any]]) -> None:
        """Hold stored states in memory, each with the outcomes learnt here and not saved yet replayed on it."""
        for key, state in states.items():
            reputation = Reputation.from_state(state)
            with self._unsaved_lock:
                unsaved = list(self._unsaved.get(key, []))
            for outcome in unsaved:
                reputation.learn_one(outcome)
            self.reputations[key] = reputation

    def proficiency(self, agent: str, system: str) -> float | None:
        """``agent``'s latest assessed score (0..1) on a target ``system``, None when never assessed.

        From memory (loaded at start, updated by each assessment this process makes), so discovery can rank
        by it and the policy read it on every call."""
        return self.proficiencies.get(agent, {}).get(system)

    def probe_due(self, agent: str) -> bool:
        """Is a call to ``agent`` now a probe (its circuit breaker is half-open and let it through)? Then the
        policy lets it pass even if its reputation is low: without new evidence a shunned agent could never
        recover."""
        return self.breakers.get(agent).state == HALF_OPEN

    def known_score(self, agent: str, tool: str = "") -> float | None:
        """The score learned for ``agent`` (or one tool, else its agent), None when nobody has called it.

        Discovery reads None as ``UNKNOWN_SCORE``, the prior's score, which is also what
        ``reputation_json`` shows for such an agent: an uncalled agent reads the same everywhere."""
        reputation = self.reputations.get((agent, tool)) or self.reputations.get((agent, ""))
        return reputation.score() if reputation else None

    def agent_scores(self) -> list[tuple[str, float]]:
        """Each registered agent's score (the gauge ``/metrics`` shows)."""
        return [(agent, self.reputation(agent).score()) for agent in sorted(self.endpoints)]

    def reputation_json(self, agent: str, tool: str = "") -> dict[str, Any]:
        reputation = self.reputation(agent, tool)
        return {"score": round(reputation.score(), 4), **reputation.components()}

    # -- credentials ----------------------------------------------------------------------------------------

    @functools.cached_property
    def credentials(self) -> Credentials:
        """Credentials by reference (``credentials.py``): ``registry.credentials.resolve(ref, agent=..., system=...)``
        hands a value to a sandbox or a call when the credential's scope and the policy allow it."""
        return Credentials.open(self.config.workspace, self.sessions, policy=self.policy,
                                reputation=lambda agent: self.reputation(agent).score(), scopes=self.caller_scopes)

    @functools.cached_property
    def approvals(self) -> Any:
        """Calls held for a person's approval (``approvals.py``): ``hold`` one, ``decide`` one."""
        from mesh.registry.approvals import Approvals  # it builds on this module

        return Approvals(self)

    # -- views --------------------------------------------------------------------------------------------------

    def agent_tools(self, agent: str) -> list[PinnedTool]:
        return sorted((t for (a, _), t in self.tools.items() if a == agent), key=lambda t: t.name)

    def agent_descriptors(self, agent: str, kind: str | None = None) -> list[PinnedDescriptor]:
        """``agent``'s pinned resources, templates and prompts (of one ``kind``, if given), by kind and name."""
        return [d for (a, k, _), d in sorted(self.descriptors.items()) if a == agent and kind in (None, k)]

    def agent_json(self, record: store.AgentRecord, *, detail: bool = False) -> dict[str, Any]:
        tools = [
            {"name": t.name, "status": t.status, "description": t.wire.get("description", ""),
             "annotations": t.annotations, "scopes": t.scopes, "inputSchema": t.wire.get("inputSchema", {}),
             **({"pinned_digest": t.digest, "blocked_reason": t.blocked_reason} if detail else {})}
            for t in self.agent_tools(record.name)
        ]
        document: dict[str, Any] = {
            "name": record.name, "status": record.status, "endpoint": record.endpoint, "version": record.version,
            "description": record.description, "reputation": self.reputation_json(record.name),
            "breaker": self.breakers.to_json(record.name),
            "last_seen": record.last_seen.isoformat(), "flags": record.flags, "tools": tools,
        }
        if detail:
            document["manifest"] = json.loads(record.manifest) if record.manifest else None
            document["manifest_digest"] = record.manifest_digest
            document["keys"] = record.jwks
            document["tool_reputation"] = {t.name: self.reputation_json(record.name, t.name)
                                           for t in self.agent_tools(record.name)}
            document["descriptors"] = [  # its resources, resource templates and prompts, as pinned
                {"kind": d.kind, "name": d.name, "status": d.status, "description": d.wire.get("description", ""),
                 "scopes": d.scopes, "pinned_digest": d.digest, "blocked_reason": d.blocked_reason,
                 **({"uri": d.wire["uri"]} if "uri" in d.wire else {}),
                 **({"uriTemplate": d.wire["uriTemplate"]} if "uriTemplate" in d.wire else {})}
                for d in self.agent_descriptors(record.name)]
        return document


def run_json(run: store.RunRecord) -> dict[str, Any]:
    return {
        "id": run.id, "parent_run_id": run.parent_run_id, "log": run.log, "caller": run.caller,
        "agent": run.agent, "tool": run.tool, "arguments_digest": run.arguments_digest, "status": run.status,
        "error": run.error, "latency_ms": run.latency_ms, "policy_decision": run.policy_decision,
        "policy_rule": run.policy_rule, "trace_id": run.trace_id, "started_at": run.started_at.isoformat(),
        "provenance": run.provenance, "provenance_proof": run.provenance_proof, "cost": run.cost,
        "project": f"{run.org_id}/{run.project_id}",
    }


def now_ms() -> float:
    return time.perf_counter() * 1000
