"""The registry node's state: trust, pinned tools, policy, reputation, discovery and the run log.

``Registry`` owns the parts; admission (``admission.py``) and the call path (``proxy.py``) work on it.
What must survive a restart is in the database; what is needed on every call (pinned tools with their
compiled validators, reputations) is also kept in memory and reloaded from the database at start.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from jose import jwt
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator
from sqlalchemy.orm import Session, sessionmaker

from mesh.keys import KeyRing, SigningKey, TrustStore
from mesh.manifest import canonical
from mesh.registry import store
from mesh.registry.auth import AuthProblem, Caller, claimed_agent, verify_token
from mesh.registry.config import RegistryConfig
from mesh.registry.discovery import DiscoveryIndex
from mesh.registry.forward import Forwarder
from mesh.registry.policy import PolicyEngine
from mesh.registry.problems import Problem
from mesh.registry.reputation import Outcome, Reputation
from mesh.signing import read_jwks

log = logging.getLogger(__name__)
PROVENANCE_TYP = "mcpmesh-provenance+jws"
REGISTRY_KEYS = "_registry"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


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

    @classmethod
    def from_record(cls, record: store.ToolRecord) -> PinnedTool:
        return cls(record.agent, record.name, record.wire, list(record.scopes), record.pinned_digest,
                   record.status, record.blocked_reason, Draft202012Validator(record.input_schema),
                   Draft202012Validator(record.output_schema) if record.output_schema else None)

    @property
    def annotations(self) -> dict[str, Any]:
        return self.wire.get("annotations") or {}


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
        self.endpoints: dict[str, str] = {}
        self.reputations: dict[tuple[str, str], Reputation] = {}
        self.admitted_here: set[str] = set()  # agents admitted by this process (not just loaded)
        self.forwarder: Forwarder | None = None  # set while the app runs
        self.engine = sessions.kw["bind"]
        self.embedded_database = self.engine.dialect.name == "sqlite"
        self._trust_cache: dict[str, TrustStore] = {}
        self._tokens: dict[str, tuple[Caller, float]] = {}
        self._unsaved: set[tuple[str, str]] = set()
        self.last_forwarded: dict[str, float] = {}  # agent -> monotonic time a call last reached it
        self.manifest_digests: dict[str, str] = {}  # agent -> digest of the manifest it was admitted on
        self.in_flight: dict[str, str] = {}  # target-side run id of a call being carried -> its target agent

    @classmethod
    def open(cls, config: RegistryConfig) -> Registry:
        ws = config.workspace
        engine = store.connect(store.database_url(ws.root, config.database_url))
        store.migrate(engine)
        policy = PolicyEngine(ws.root / "registry" / "policies", data=config.policy)
        ring = KeyRing.open(ws.keys_dir(REGISTRY_KEYS), create=True)
        registry = cls(config, store.session_factory(engine), policy, ring.active(), ring.public_jwks())
        registry.load()
        return registry

    # -- state from the database ---------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the in-memory view (pinned tools, endpoints, reputations, discovery) after a start."""
        with self.sessions.begin() as session:
            for agent in store.list_agents(session):
                self.endpoints[agent.name] = agent.endpoint
                if agent.manifest_digest:
                    self.manifest_digests[agent.name] = agent.manifest_digest
            records = store.list_tools(session)
            for record in records:
                self.tools[(record.agent, record.name)] = PinnedTool.from_record(record)
            for saved in store.list_reputation(session):
                self.reputations[(saved.agent, saved.tool)] = Reputation.from_state(saved.state)
        self.discovery.upsert_many({agent: self.verified_wire(agent) for agent in self.endpoints})

    def verified_wire(self, agent: str) -> list[dict[str, Any]]:
        return [t.wire for (a, _), t in self.tools.items() if a == agent and t.status == "verified"]

    async def index_agent(self, agent: str) -> None:
        """Make discovery show exactly ``agent``'s verified tools; embedding and Faiss run off the loop."""
        await anyio.to_thread.run_sync(self.discovery.upsert, agent, self.verified_wire(agent))

    # -- trust ------------------------------------------------------------------------------------------

    def trust_for(self, agent: str, offered_jwks: dict[str, Any] | None = None) -> TrustStore:
        """Keys trusted for ``agent``: the committed JWKS, keys learned by rotation (kept in the
        database), this workspace's local keys when allowed, then rotations the agent offers now."""
        ws = self.config.workspace
        trust = TrustStore()
        published = read_jwks(ws.jwks_path(agent))
        if published:
            trust.add_jwks(published)
        with self.sessions.begin() as session:
            trust.revoked |= store.revoked_kids(session, agent)
            for key in store.trusted_keys(session, agent):
                if key.kid not in trust.keys:
                    exp = int(key.exp.timestamp()) if key.exp else None
                    trust.trust({**key.jwk, **({"exp": exp} if exp else {})})
        if self.config.trust_local_keys and not self.config.strict:
            local = read_jwks(ws.jwks_path(agent, local=True))
            if local:
                trust.add_jwks(local)
        if offered_jwks:
            trust.revoked.update(offered_jwks.get("revoked", []))
            learned = trust.follow_rotations(offered_jwks.get("rotations", []))
            if learned:
                self.remember_keys(agent, trust, learned)
        return trust

    def remember_keys(self, agent: str, trust: TrustStore, kids: list[str]) -> None:
        with self.sessions.begin() as session:
            for kid in kids:
                key = trust.keys[kid]
                exp = datetime.fromtimestamp(key.exp, UTC) if key.exp else None
                store.trust_key(session, kid, agent=agent, jwk=key.jwk, source="rotation", exp=exp)

    def caller_scopes(self, agent: str) -> list[str]:
        return list(self.config.grants.get(agent, []))

    def cached_trust(self, agent: str) -> TrustStore:
        """``trust_for`` without offered rotations, cached: tokens are checked on every call."""
        trust = self._trust_cache.get(agent)
        if trust is None:
            trust = self._trust_cache[agent] = self.trust_for(agent)
        return trust

    def identify(self, authorization: str | None, host: str | None) -> Caller:
        """The caller of a request: an agent by its bearer token, else the local user or anonymous."""
        if authorization:
            token = authorization.removeprefix("Bearer ").strip()
            cached = self._tokens.get(token)
            if cached and cached[1] > time.time():
                return cached[0]
            agent = claimed_agent(token)
            caller = verify_token(token, self.cached_trust(agent), self.caller_scopes(agent))
            if len(self._tokens) > 10_000:
                self._tokens.clear()
            self._tokens[token] = (caller, float(jwt.get_unverified_claims(token)["exp"]))
            return caller
        if host in LOOPBACK and self.config.allow_local_user:
            return Caller("user:local", "user", list(self.config.local_user_scopes))
        return Caller("anonymous", "anonymous", [])

    def authenticate_registration(self, name: str, token: str, jwks: dict[str, Any] | None) -> TrustStore:
        """Only the agent itself may register under its name: its token must verify under its keys.
        Returns the keys trusted for it (including any it just introduced by rotation), for admission."""
        if not token:
            raise Problem("unauthenticated", f"registering {name!r} needs a bearer token signed by its key")
        try:
            if claimed_agent(token) != name:
                raise AuthProblem(f"the token is not {name!r}'s")
            self._trust_cache[name] = trust = self.trust_for(name, jwks)
            verify_token(token, trust, [])
        except AuthProblem as exc:
            raise Problem("registration-refused", str(exc)) from exc
        return trust

    def discover(self, query: str, *, k: int = 10, agent: str | None = None,
                 read_only: bool | None = None) -> list[dict[str, Any]]:
        if not 1 <= k <= 100:
            raise Problem("bad-request", f"k must be between 1 and 100, not {k}")
        hits = self.discovery.search(query, k=k, agent=agent, read_only=read_only, reputation=self.known_score)
        return [hit.to_json() for hit in hits]

    # -- reputation ---------------------------------------------------------------------------------------

    def reputation(self, agent: str, tool: str = "") -> Reputation:
        key = (agent, tool)
        if key not in self.reputations:
            self.reputations[key] = Reputation()
        return self.reputations[key]

    def learn(self, agent: str, tool: str, outcome: Outcome) -> None:
        """Teach both the agent's and the tool's reputation; ``save_reputations`` persists them."""
        for key in ((agent, ""), (agent, tool)):
            self.reputation(*key).learn_one(outcome)
            self._unsaved.add(key)

    def save_reputations(self) -> None:
        """Write the reputations that changed since the last save (every second, and at shutdown)."""
        changed, self._unsaved = self._unsaved, set()
        if not changed:
            return
        with self.sessions.begin() as session:
            for agent, tool in sorted(changed):
                reputation = self.reputations[(agent, tool)]
                store.save_reputation(session, agent, tool, state=reputation.to_state(), score=reputation.score())

    def probe_due(self, agent: str) -> bool:
        """Has no call reached ``agent`` for a probe interval? Then the policy may let one through even
        if its reputation is low: without new evidence a shunned agent could never recover."""
        last = self.last_forwarded.get(agent)
        return last is None or time.monotonic() - last >= self.config.probe_interval

    def known_score(self, agent: str, tool: str = "") -> float | None:
        """The score learned for ``agent`` (or one tool), None when nothing is known yet."""
        reputation = self.reputations.get((agent, tool)) or self.reputations.get((agent, ""))
        return reputation.score() if reputation else None

    def reputation_json(self, agent: str, tool: str = "") -> dict[str, Any]:
        reputation = self.reputation(agent, tool)
        return {"score": round(reputation.score(), 4), **reputation.components()}

    # -- provenance -----------------------------------------------------------------------------------------

    def sign_provenance(self, claims: dict[str, Any]) -> str:
        return self.provenance_key.sign(canonical(claims), PROVENANCE_TYP)

    # -- views --------------------------------------------------------------------------------------------------

    def agent_tools(self, agent: str) -> list[PinnedTool]:
        return sorted((t for (a, _), t in self.tools.items() if a == agent), key=lambda t: t.name)

    def agent_json(self, record: store.AgentRecord, *, detail: bool = False) -> dict[str, Any]:
        tools = [
            {"name": t.name, "status": t.status, "description": t.wire.get("description", ""),
             "annotations": t.annotations, "scopes": t.scopes,
             **({"pinned_digest": t.digest, "blocked_reason": t.blocked_reason} if detail else {})}
            for t in self.agent_tools(record.name)
        ]
        document: dict[str, Any] = {
            "name": record.name, "status": record.status, "endpoint": record.endpoint, "version": record.version,
            "description": record.description, "reputation": self.reputation_json(record.name),
            "last_seen": record.last_seen.isoformat(), "flags": record.flags, "tools": tools,
        }
        if detail:
            document["manifest"] = json.loads(record.manifest) if record.manifest else None
            document["manifest_digest"] = record.manifest_digest
            document["keys"] = record.jwks
            document["tool_reputation"] = {t.name: self.reputation_json(record.name, t.name)
                                           for t in self.agent_tools(record.name)}
        return document


def run_json(run: store.RunRecord) -> dict[str, Any]:
    return {
        "id": run.id, "parent_run_id": run.parent_run_id, "log": run.log, "caller": run.caller,
        "agent": run.agent, "tool": run.tool, "arguments_digest": run.arguments_digest, "status": run.status,
        "error": run.error, "latency_ms": run.latency_ms, "policy_decision": run.policy_decision,
        "policy_rule": run.policy_rule, "trace_id": run.trace_id, "started_at": run.started_at.isoformat(),
        "provenance": run.provenance,
    }


def now_ms() -> float:
    return time.perf_counter() * 1000
