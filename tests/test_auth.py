"""Caller tokens checked claim by claim, and trust that only an authenticated registration can change."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jose import jws

from mesh.keys import KeyRing, TrustStore
from mesh.registry import store
from mesh.registry.auth import AuthProblem, issue_token, verify_token
from mesh.registry.config import RegistryConfig
from mesh.registry.node import Registry
from mesh.registry.problems import Problem
from mesh.workspace import Workspace

from .conftest import copy_repo_workspace

NOW = 1_800_000_000


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.open(tmp_path / "keys" / "echo", create=True)


def token(ring: KeyRing, claims: dict, header: dict | None = None) -> str:
    key = ring.active()
    return jws.sign(json.dumps(claims).encode(), key.private_jwk, algorithm="ES256",
                    headers={"kid": key.kid, **(header or {})})


def good_claims(**changes: object) -> dict:
    claims = {"iss": "agent:echo", "sub": "agent:echo", "aud": "mcpmesh-registry", "iat": NOW, "exp": NOW + 60}
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


def test_a_good_token_names_its_agent_and_key(ring: KeyRing):
    trust = TrustStore.from_jwks(ring.public_jwks())
    caller = verify_token(token(ring, good_claims()), trust, ["docs:read"], now=NOW + 1)
    assert (caller.id, caller.kind, caller.scopes, caller.kid) == ("agent:echo", "agent", ["docs:read"],
                                                                   ring.active().kid)


@pytest.mark.parametrize(("claims", "header", "reason"), [
    (good_claims(iss=None), None, "iss must equal sub"),
    (good_claims(iss="agent:other"), None, "iss must equal sub"),
    (good_claims(aud=None), None, "not for this registry"),
    (good_claims(aud="elsewhere"), None, "not for this registry"),
    (good_claims(iat=NOW + 365 * 86400, exp=NOW + 365 * 86400 + 60), None, "issued in the future"),
    (good_claims(exp="soon"), None, "claim 'exp' must be"),
    (good_claims(exp=True), None, "claim 'exp' must be"),
    (good_claims(iat=None), None, "claim 'iat' must be"),
    (good_claims(exp=NOW - 1), None, "has expired"),
    (good_claims(exp=NOW + 3600), None, "lives longer than 300 s"),
    (good_claims(sub="agent:../../etc"), None, "no valid agent"),
    (good_claims(sub="user:local", iss="user:local"), None, "names no agent"),
    (good_claims(), {"kid": ["a", "b"]}, "names no key"),
    (good_claims(), {"kid": "unknown-kid"}, "is not trusted"),
])
def test_every_claim_is_checked(ring: KeyRing, claims: dict, header: dict | None, reason: str):
    trust = TrustStore.from_jwks(ring.public_jwks())
    with pytest.raises(AuthProblem, match=reason):
        verify_token(token(ring, claims, header), trust, [], now=NOW + 1)


def test_a_token_by_another_agents_key_or_alg_is_refused(ring: KeyRing, tmp_path: Path):
    other = KeyRing.open(tmp_path / "keys" / "other", create=True)
    with pytest.raises(AuthProblem, match="is not trusted"):
        verify_token(token(other, good_claims()), TrustStore.from_jwks(ring.public_jwks()), [], now=NOW + 1)
    hs256 = jws.sign(json.dumps(good_claims()).encode(), "secret", algorithm="HS256",
                     headers={"kid": ring.active().kid})
    with pytest.raises(AuthProblem, match="only ES256"):
        verify_token(hs256, TrustStore.from_jwks(ring.public_jwks()), [], now=NOW + 1)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(copy_repo_workspace(tmp_path / "ws"))


def open_registry(workspace: Workspace) -> Registry:
    return Registry.open(RegistryConfig.from_workspace(workspace))


def test_a_key_end_learnt_from_a_rotation_outlives_the_registry(workspace: Workspace):
    ring = KeyRing.open(workspace.state_dir / "keys" / "echo", create=True)
    old = ring.active()
    (workspace.manifests_dir / "echo.jwks.json").write_text(json.dumps(ring.public_jwks()))  # no end for `old`
    ring.rotate(overlap_seconds=4)
    new = ring.active()
    registry = open_registry(workspace)
    trust = registry.authenticate_registration("echo", issue_token("echo", new), ring.public_jwks())
    assert new.kid in trust.keys and trust.keys[old.kid].exp is not None
    assert registry.identify(f"Bearer {issue_token('echo', old)}", None).kid == old.kid  # still in its overlap

    time.sleep(max(0.0, trust.keys[old.kid].exp - time.time()) + 0.2)
    restarted = open_registry(workspace)  # the committed JWKS still lists `old` with no end
    with pytest.raises(AuthProblem, match="past its overlap window"):
        restarted.identify(f"Bearer {issue_token('echo', old)}", None)
    assert restarted.identify(f"Bearer {issue_token('echo', new)}", None).kid == new.kid


def test_a_refused_registration_changes_no_trust(workspace: Workspace, tmp_path: Path):
    ring = KeyRing.open(workspace.state_dir / "keys" / "echo", create=True)
    (workspace.manifests_dir / "echo.jwks.json").write_text(json.dumps(ring.public_jwks()))
    first = ring.active()
    ring.rotate()  # a genuine rotation statement, offered with a thief's token
    thief = KeyRing.open(tmp_path / "thief", create=True)
    registry = open_registry(workspace)
    offered = {**ring.public_jwks(), "revoked": [first.kid]}
    with pytest.raises(Problem) as refused:
        registry.authenticate_registration("echo", issue_token("echo", thief.active()), offered)
    assert refused.value.kind == "unauthenticated"
    with registry.sessions() as session:
        assert store.trusted_keys(session, "echo") == [] and store.revoked_kids(session, "echo") == set()
        assert [(e.actor, e.outcome) for e in store.list_audit(session, subject="echo")] == [
            ("unauthenticated", "refused")]
    # The real first key still works: the offered "revoked" list was not believed.
    assert registry.identify(f"Bearer {issue_token('echo', first)}", None).kid == first.kid
