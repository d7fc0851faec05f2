"""People, roles and personal API tokens, on SQLite and (with ``MESH_TEST_DATABASE_URL``) PostgreSQL.

The store: the local user owns the default organisation, a first sign-in creates a user once, groups keep
their memberships in step and leave hand-set ones alone, a token's secret is nowhere in the database. The
API, in process: one permissions matrix decides every route; a token is scoped, expires, and is revoked
at once; people manage members within their role; another organisation is 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from mesh.registry import people, store
from mesh.registry.app import build_app
from mesh.registry.auth import PERMISSIONS, ROLES, Caller, Forbidden, authorize
from mesh.registry.config import RegistryConfig
from mesh.registry.node import Registry
from mesh.workspace import Workspace

from .conftest import copy_repo_workspace

# -- the matrix ----------------------------------------------------------------------------------------


def person(role: str | None, *, via: str = "oidc", scopes: list[str] | None = None) -> Caller:
    return Caller("user:abc", "user", scopes or ["*"], org="default", role=role, via=via)


@pytest.mark.parametrize("action", sorted(PERMISSIONS))
@pytest.mark.parametrize("role", [*ROLES, None])
def test_the_matrix_decides_every_action_for_every_role(action: str, role: str | None):
    roles, _ = PERMISSIONS[action]
    if role in roles:
        authorize(person(role), action)
    else:
        with pytest.raises(Forbidden, match="it needs role"):
            authorize(person(role), action)


def test_a_token_is_never_more_than_its_scopes_and_agents_keep_their_rights():
    reader = person("owner", via="api-token", scopes=["registry:read", "docs:read"])
    authorize(reader, "read")
    with pytest.raises(Forbidden, match="needs scope 'registry:invoke'"):
        authorize(reader, "invoke")
    authorize(person("member", via="api-token", scopes=["registry:invoke"]), "read")  # invoke implies read
    with pytest.raises(Forbidden, match="needs role"):  # a scope never lifts a role
        authorize(person("viewer", via="api-token", scopes=["registry:admin"]), "invoke")
    agent = Caller("agent:echo", "agent", ["docs:read"])
    authorize(agent, "read")
    authorize(agent, "invoke")
    authorize(agent, "recheck", "echo")
    with pytest.raises(Forbidden, match="registry:admin"):
        authorize(agent, "recheck", "other")
    authorize(Caller("agent:ops", "agent", ["registry:admin"]), "admin")


# -- the store ------------------------------------------------------------------------------------------


def test_the_local_user_owns_the_default_org_and_a_first_sign_in_creates_a_user(sessions: sessionmaker[Session]):
    with sessions.begin() as session:
        people.ensure_local_user(session, "default")
        people.ensure_local_user(session, "default")  # every start: nothing doubles
        assert people.memberships(session, people.LOCAL) == {"default": "owner"}
        first = people.sign_in(session, issuer="https://id.example", subject="ada", email="ada@example.com",
                               roles={"default": "admin", "acme": "member"})
    with sessions.begin() as session:
        again = people.sign_in(session, issuer="https://id.example", subject="ada", roles={"default": "viewer"})
        assert again.id == first.id and again.email == "ada@example.com"
        # The groups now say viewer in default and nothing in acme: the groups' memberships follow.
        assert people.memberships(session, first.id) == {"default": "viewer"}
        people.set_role(session, "acme", first.id, "admin")  # set by a person: groups leave it alone
    with sessions.begin() as session:
        people.sign_in(session, issuer="https://id.example", subject="ada", roles={})
        assert people.memberships(session, first.id) == {"acme": "admin"}
        other = people.sign_in(session, issuer="https://other.example", subject="ada")
        assert other.id != first.id  # a subject is only unique per issuer
        assert sorted(session.scalars(select(store.OrgRecord.id))) == ["acme", "default"]


def test_a_token_secret_is_kept_only_as_its_hash(sessions: sessionmaker[Session], engine: Engine):
    with sessions.begin() as session:
        people.ensure_local_user(session, "default")
        record, secret = people.create_token(session, user_id=people.LOCAL, org_id="default", name="ci",
                                             scopes=["registry:read"], expires_at=store.utcnow() + timedelta(days=1))
    assert secret.startswith("mesh_pat_") and len(secret) > 40
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            for row in connection.execute(text(f"SELECT * FROM {table}")):
                assert not any(secret in str(value) for value in row), f"the secret is in {table}"
    with sessions.begin() as session:
        found = people.token_by_secret(session, secret)
        assert found is not None and found.id == record.id and people.token_by_secret(session, secret + "x") is None
        assert "token" not in people.token_json(found) and "secret_sha256" not in people.token_json(found)
        assert people.revoke_token(session, found) and not people.revoke_token(session, found)


# -- the API, in process ---------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path, database_url: str) -> Registry:
    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    return Registry.open(RegistryConfig.from_workspace(workspace, database_url=database_url))


@pytest.fixture
def local(registry: Registry) -> Iterator[TestClient]:
    """The local user: a client on loopback without a token."""
    with TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("127.0.0.1", 5000)) as client:
        yield client


@pytest.fixture
def remote(registry: Registry) -> Iterator[TestClient]:
    """A client elsewhere: without a token it is nobody."""
    with TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("10.1.2.3", 5000)) as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def make_token(client: TestClient, headers: dict[str, str] | None = None, **body: object) -> dict:
    answer = client.post("/v1/tokens", json={"name": "test", **body}, headers=headers or {})
    assert answer.status_code == 201, answer.text
    return answer.json()


def a_person(registry: Registry, subject: str, role: str | None, org: str = "default") -> tuple[str, str]:
    """A signed-in person with ``role`` in ``org``, and a personal token of theirs (every scope)."""
    with registry.sessions.begin() as session:
        user = people.sign_in(session, issuer="https://id.example", subject=subject, email=f"{subject}@example.com")
        people.ensure_org(session, org)
        if role:
            people.set_role(session, org, user.id, role)
        _, secret = people.create_token(session, user_id=user.id, org_id=org, name="t", scopes=["*"],
                                        expires_at=store.utcnow() + timedelta(days=1))
    return user.id, secret


def test_the_local_user_is_owner_and_makes_scoped_tokens_shown_once(local: TestClient, remote: TestClient):
    me = local.get("/v1/users/me").json()
    assert (me["id"], me["org"], me["role"], me["via"], me["orgs"]) == (
        "user:local", "default", "owner", "loopback", {"default": "owner"})
    made = make_token(local, scopes=["registry:read"], days=1)
    assert made["token"].startswith("mesh_pat_") and made["scopes"] == ["registry:read"]
    listed = local.get("/v1/tokens").json()["tokens"]
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]

    # Elsewhere, no token is no caller; the 401 says where to learn how to get one.
    refused = remote.get("/v1/agents")
    assert refused.status_code == 401
    assert 'resource_metadata="http://127.0.0.1:7300/.well-known/oauth-protected-resource"' in \
        refused.headers["www-authenticate"]
    # The read token reads, and is refused what its scope does not cover, with a 403 problem.
    assert remote.get("/v1/agents", headers=bearer(made["token"])).status_code == 200
    me = remote.get("/v1/users/me", headers=bearer(made["token"])).json()
    assert (me["id"], me["via"], me["token_id"]) == ("user:local", "api-token", made["id"])
    invoke = remote.post("/v1/invoke", json={"agent": "echo", "tool": "echo", "arguments": {}},
                         headers=bearer(made["token"]))
    assert invoke.status_code == 403 and invoke.headers["content-type"] == "application/problem+json"
    assert "needs scope 'registry:invoke'" in invoke.json()["detail"]
    # A token cannot mint a broader one.
    broader = remote.post("/v1/tokens", json={"name": "x", "scopes": ["*"]}, headers=bearer(made["token"]))
    assert broader.status_code == 403


def test_revoked_and_expired_tokens_are_refused_at_once(registry: Registry, local: TestClient, remote: TestClient):
    made = make_token(local, scopes=["registry:read"])
    assert remote.get("/v1/runs", headers=bearer(made["token"])).status_code == 200  # now cached
    revoked = local.delete(f"/v1/tokens/{made['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    answer = remote.get("/v1/runs", headers=bearer(made["token"]))
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]

    other = make_token(local, scopes=["registry:read"])
    with registry.sessions.begin() as session:
        people.get_token(session, other["id"]).expires_at = store.utcnow() - timedelta(seconds=1)
    answer = remote.get("/v1/runs", headers=bearer(other["token"]))
    assert answer.status_code == 401 and "expired" in answer.json()["detail"]
    unknown = remote.get("/v1/runs", headers=bearer("mesh_pat_" + "x" * 43))
    assert unknown.status_code == 401 and "not one this registry issued" in unknown.json()["detail"]
    for days in (0, -1, 10_000):
        assert local.post("/v1/tokens", json={"name": "x", "days": days}).status_code == 400


def test_roles_decide_routes(registry: Registry, remote: TestClient):
    _, viewer = a_person(registry, "vera", "viewer")
    _, member = a_person(registry, "mo", "member")
    _, nobody = a_person(registry, "nia", None)
    call = {"agent": "echo", "tool": "echo", "arguments": {"text": "x"}}
    assert remote.get("/v1/agents", headers=bearer(viewer)).status_code == 200
    refused = remote.post("/v1/invoke", json=call, headers=bearer(viewer))
    assert refused.status_code == 403 and "role viewer in default" in refused.json()["detail"]
    assert remote.post("/v1/invoke", json=call, headers=bearer(member)).status_code == 404  # allowed; no echo here
    assert remote.post("/v1/agents/echo/recheck", json={}, headers=bearer(member)).status_code == 403
    assert remote.post("/v1/agents/echo/keys/abc/revoke", json={}, headers=bearer(member)).status_code == 403
    no_role = remote.get("/v1/agents", headers=bearer(nobody))
    assert no_role.status_code == 403 and "no role" in no_role.json()["detail"]
    assert remote.get("/v1/users/me", headers=bearer(nobody)).json()["orgs"] == {}


def test_members_are_managed_within_ones_role(registry: Registry, local: TestClient, remote: TestClient):
    ada, admin = a_person(registry, "ada", "admin")
    bob, _ = a_person(registry, "bob", "member")
    _, outsider = a_person(registry, "out", "owner", org="acme")
    members = remote.get("/v1/orgs/default/members", headers=bearer(admin)).json()["members"]
    assert {m["id"]: m["role"] for m in members} == {"local": "owner", ada: "admin", bob: "member"}
    assert remote.put(f"/v1/orgs/default/members/{bob}", json={"role": "viewer"},
                      headers=bearer(admin)).json()["role"] == "viewer"
    promote = remote.put(f"/v1/orgs/default/members/{bob}", json={"role": "owner"}, headers=bearer(admin))
    assert promote.status_code == 403 and "needs role owner" in promote.json()["detail"]
    assert local.put(f"/v1/orgs/default/members/{bob}", json={"role": "owner"}).status_code == 200
    assert local.put(f"/v1/orgs/default/members/{bob}", json={"role": "boss"}).status_code == 400
    assert local.delete(f"/v1/orgs/default/members/{bob}").status_code == 200
    last = local.put("/v1/orgs/default/members/local", json={"role": "admin"})
    assert last.status_code == 400 and "last owner" in last.json()["detail"]
    # Another organisation's members are not there for those outside it.
    assert remote.get("/v1/orgs/default/members", headers=bearer(outsider)).status_code == 404
    assert remote.get("/v1/orgs/acme/members", headers=bearer(admin)).status_code == 404
    assert remote.get("/v1/orgs", headers=bearer(outsider)).json()["orgs"] == [{"id": "acme", "role": "owner"}]
    # Someone else's token is not yours to revoke, unless you administer its organisation.
    theirs = make_token(remote, bearer(outsider))
    assert remote.delete(f"/v1/tokens/{theirs['id']}", headers=bearer(admin)).status_code == 404
    mine = make_token(remote, bearer(admin), scopes=["registry:read"])
    assert local.delete(f"/v1/tokens/{mine['id']}").status_code == 200  # the owner of default
    with registry.sessions.begin() as session:
        actions = [(e.actor, e.action) for e in store.list_audit(session, limit=20)]
    assert (f"user:{ada}", "set-role") in actions and ("user:local", "revoke-token") in actions


def test_registries_starting_together_and_first_sign_ins_at_once_make_each_row_once(engine: Engine):
    """Several registry processes share one database: what each makes at start, and a person's first
    requests arriving together, end as one row each, with no error."""
    from concurrent.futures import ThreadPoolExecutor

    sessions = store.session_factory(engine)

    def start_and_sign_in(_: int) -> str:
        with sessions.begin() as session:
            people.ensure_local_user(session, "default")
        with sessions.begin() as session:
            return people.sign_in(session, issuer="https://id.example", subject="ada", roles={"acme": "member"}).id

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(start_and_sign_in, range(8)))
    assert len(ids) == 1
    with sessions.begin() as session:
        assert people.memberships(session, ids.pop()) == {"acme": "member"}
        assert people.memberships(session, people.LOCAL) == {"default": "owner"}
