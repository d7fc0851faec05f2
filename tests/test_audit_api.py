"""The audit log of a running registry: what calls leave in it, ``GET /v1/audit``, its export, and
``mesh audit verify`` against the registry's published JWKS, by real processes on loopback. Then, in
process on SQLite and PostgreSQL, and on the running registry: each organisation reads, exports and
verifies its own entries of the one chain, and nothing of another's."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.testclient import TestClient

from mesh.keys import KeyRing
from mesh.registry import audit, store
from mesh.registry.app import build_app
from mesh.registry.auth import issue_token
from mesh.registry.node import Registry
from mesh.registry.problems import Problem
from mesh.workspace import Workspace

from .conftest import run_mesh
from .test_people import a_person, bearer, registry  # noqa: F401 (registry: a fixture, on both backends)
from .test_registry_e2e import Mesh, running_mesh

KEEPER = '''
from mesh import Agent

agent = Agent("keeper", description="Signs people in, and wipes accounts.")


@agent.tool(read_only=True, idempotent=True, open_world=False)
def login(user: str, password: str) -> str:
    """Check a user's password."""
    return f"welcome {user}"


@agent.tool(destructive=True, open_world=False)
def wipe(user: str) -> str:
    """Delete an account (the shipped policy refuses it)."""
    return "wiped"
'''
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory, "audit", ("keeper",), sources={"keeper": KEEPER}) as network:
        yield network


def entries(mesh: Mesh, **params: str) -> dict:
    answer = httpx.get(f"{mesh.url}/v1/audit", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_calls_leave_their_policy_decisions_with_their_input_minus_secrets(mesh: Mesh):
    assert mesh.invoke("keeper", "login", {"user": "ada", "password": PASSWORD}).status_code == 200
    assert mesh.invoke("keeper", "wipe", {"user": "ada"}).status_code == 403
    decisions = entries(mesh, action="policy-decision", limit="2")["entries"]
    wiped, login = decisions
    assert (wiped["subject"], wiped["outcome"], wiped["data"]["rule"]) == ("keeper.wipe", "deny",
                                                                           "destructive_not_allowed")
    assert (login["subject"], login["outcome"], login["actor"]) == ("keeper.login", "allow", "user:local")
    assert login["data"]["input"]["arguments"] == {"user": "ada", "password": "[redacted]"}
    assert login["data"]["input"]["target"]["annotations"]["readOnlyHint"] is True
    assert login["data"]["input_digest"].startswith("sha256:") and login["data"]["run_id"]
    registered = entries(mesh, action="register", subject="keeper")["entries"]
    assert registered and registered[-1]["outcome"] == "admitted"
    assert registered[-1]["data"]["tools"] == ["login", "wipe"]
    export = httpx.get(f"{mesh.url}/v1/audit/export")
    assert export.headers["content-type"].startswith("application/jsonl")
    assert PASSWORD not in export.text and '"password": "[redacted]"' in export.text


def test_the_audit_log_pages_and_filters(mesh: Mesh):
    for number in range(3):
        mesh.invoke("keeper", "login", {"user": f"u{number}", "password": "x"})
    first = entries(mesh, action="policy-decision", limit="2")
    assert len(first["entries"]) == 2 and first["next_cursor"]
    second = entries(mesh, action="policy-decision", limit="2", cursor=first["next_cursor"])
    assert second["entries"][0]["seq"] < first["entries"][-1]["seq"]
    later = entries(mesh, since=first["entries"][0]["at"])["entries"]
    assert [e["seq"] for e in later] == [first["entries"][0]["seq"]]
    assert entries(mesh, until="2000-01-01T00:00:00Z")["entries"] == []
    assert {e["actor"] for e in entries(mesh, actor="user:local")["entries"]} == {"user:local"}
    lines = httpx.get(f"{mesh.url}/v1/audit", params={"format": "jsonl", "subject": "keeper.login"}).text.splitlines()
    seqs = [json.loads(line)["seq"] for line in lines]
    assert len(seqs) >= 4 and seqs == sorted(seqs)


@pytest.mark.parametrize("params, problem", [
    ({"since": "yesterday"}, "since must be an ISO 8601 time"),
    ({"since": "2026-01-01T00:00:00"}, "since must carry its offset"),
    ({"limit": "0"}, "limit must be a whole number of at least 1 and at most 1000"),
    ({"cursor": "²"}, "cursor must be a whole number"),
    ({"format": "xml"}, "format must be json or jsonl"),
    ({"who": "me"}, "unknown query parameter 'who'"),
])
def test_bad_queries_are_problems_that_name_what_is_wrong(mesh: Mesh, params: dict, problem: str):
    answer = httpx.get(f"{mesh.url}/v1/audit", params=params)
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/problem+json"
    assert problem in answer.json()["detail"]


def test_reading_the_audit_log_takes_its_own_scope(mesh: Mesh):
    token = issue_token("keeper", KeyRing.open(mesh.workspace / ".mesh" / "keys" / "keeper").active())
    for path in ("/v1/audit", "/v1/audit/export", "/v1/audit/checkpoints"):
        refused = httpx.get(f"{mesh.url}{path}", headers={"authorization": f"Bearer {token}"})
        assert refused.status_code == 403, refused.text
        assert "needs scope 'audit:read' or 'registry:admin'" in refused.json()["detail"]


def test_an_export_verifies_against_the_published_jwks_and_an_edit_does_not(mesh: Mesh, tmp_path: Path):
    mesh.invoke("keeper", "login", {"user": "grace", "password": "x"})
    mesh.stop("registry")  # its shutdown signs a last checkpoint
    mesh.start_registry()
    checkpoints = httpx.get(f"{mesh.url}/v1/audit/checkpoints").json()["checkpoints"]
    assert checkpoints, "the registry signs a checkpoint when it stops"
    live = run_mesh("audit", "verify", "--registry", mesh.url)
    assert live.returncode == 0, live.stderr
    assert "audit log verifies" in live.stdout
    export = tmp_path / "audit.jsonl"
    done = run_mesh("audit", "export", "--registry", mesh.url, "-o", str(export))
    assert done.returncode == 0, done.stderr
    jwks = f"{mesh.url}/.well-known/jwks.json"
    assert run_mesh("audit", "verify", "--file", str(export), "--jwks", jwks).returncode == 0
    database = run_mesh("audit", "verify", "--workspace", str(mesh.workspace))
    assert database.returncode == 0 and "audit log verifies" in database.stdout, database.stderr
    lines = export.read_text().splitlines()
    edited = [line.replace('"outcome": "deny"', '"outcome": "allow"', 1) for line in lines]
    assert edited != lines
    export.write_text("\n".join(edited) + "\n")
    caught = run_mesh("audit", "verify", "--file", str(export), "--jwks", jwks)
    assert caught.returncode == 1 and "its content does not match its hash (edited)" in caught.stderr
    missing = run_mesh("audit", "verify", "--file", str(export))
    assert missing.returncode == 1 and "needs the registry's JWKS" in missing.stderr


def test_credentials_are_administered_over_http_and_their_values_never_come_back(mesh: Mesh):
    planted, rotated = "PLANTED-" + secrets.token_urlsafe(20), "ROTATED-" + secrets.token_urlsafe(20)
    url = f"{mesh.url}/v1/secrets"
    answers = []

    def send(method: str, path: str, **kwargs: object) -> httpx.Response:
        answer = httpx.request(method, f"{url}{path}", **kwargs)
        answers.append(answer.text)
        return answer

    stored = send("PUT", "/warehouse", json={"value": planted, "agent": "keeper", "system": "warehouse-db"})
    assert stored.status_code == 201, stored.text
    assert stored.json()["version"] == 1 and "value" not in stored.json()
    again = send("PUT", "/warehouse", json={"value": planted, "agent": "keeper", "system": "warehouse-db"})
    assert again.status_code == 409 and "exists" in again.json()["detail"]
    assert send("POST", "/warehouse/rotate", json={"value": rotated}).json()["previous_version"] == 1
    listed = send("GET", "").json()["secrets"]
    assert [(s["ref"], s["version"], s["previous_version"]) for s in listed] == [("warehouse", 2, 1)]
    assert send("POST", "/warehouse/cutover", json={}).json()["previous_version"] is None
    for method, path, body, status in (("POST", "/nothing/rotate", {"value": "x"}, 404),
                                       ("PUT", "/bad..ref!", {"value": "x", "agent": "a", "system": "s"}, 400),
                                       ("PUT", "/other", {"value": "", "agent": "a", "system": "s"}, 400),
                                       ("PUT", "/other", {"value": planted, "agent": "no such/agent", "system": "s"},
                                        400)):
        refused = send(method, path, json=body)
        assert refused.status_code == status and refused.headers["content-type"] == "application/problem+json"
    token = issue_token("keeper", KeyRing.open(mesh.workspace / ".mesh" / "keys" / "keeper").active())
    forbidden = send("GET", "", headers={"authorization": f"Bearer {token}"})
    assert forbidden.status_code == 403 and "secrets:admin" in forbidden.json()["detail"]
    assert send("DELETE", "/warehouse").status_code == 204
    assert send("GET", "").json()["secrets"] == []
    resolutions = entries(mesh, subject="warehouse")["entries"]
    assert [e["action"] for e in resolutions][::-1] == ["credential-set", "credential-rotate", "credential-cutover",
                                                          "credential-remove"]
    database = mesh.workspace / ".mesh" / "registry.db"
    files = b"".join(path.read_bytes() for path in database.parent.glob("registry.db*"))
    logs = "".join(process.output() for process in mesh.processes.values())
    for value in (planted, rotated):
        assert value not in "".join(answers) and value not in logs
        assert value.encode() not in files


# -- organisations: each reads its own entries of the one chain ---------------------------------------------


def act(client: TestClient, secret: str | None = None) -> str:
    """Make a personal API token (an audited act of the caller's organisation); returns its id."""
    answer = client.post("/v1/tokens", json={"name": "ci", "scopes": ["registry:read"]},
                         headers=bearer(secret) if secret else {})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_each_organisation_sees_exports_and_verifies_only_its_own_entries(registry: Registry):  # noqa: F811
    _, acme = a_person(registry, "ann", "owner", org="acme")
    _, beta = a_person(registry, "bob", "admin", org="beta")
    with pytest.raises(Problem):  # unauthenticated: the registry's own, of no organisation
        registry.authenticate_registration("ghost", "", None)
    with TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("10.1.2.3", 5000)) as remote, \
            TestClient(build_app(registry), base_url="http://127.0.0.1:7300", client=("127.0.0.1", 5000)) as local:
        made = {"acme": act(remote, acme), "beta": act(remote, beta), "default": act(local)}

        def listed(client: TestClient, secret: str | None = None, **params: str) -> list[dict]:
            answer = client.get("/v1/audit", params=params, headers=bearer(secret) if secret else {})
            assert answer.status_code == 200, answer.text
            if params.get("format") == "jsonl":
                return [json.loads(line) for line in answer.text.splitlines()]
            return answer.json()["entries"]

        for org, secret in (("acme", acme), ("beta", beta)):
            for shown in (listed(remote, secret), listed(remote, secret, format="jsonl")):
                assert [(e["org"], e["action"], e["subject"]) for e in shown] == [(org, "create-token", made[org])]
        operator = listed(local)
        assert {e["org"] for e in operator} == {"default", None}
        assert ("unauthenticated", "register", "ghost") in [(e["actor"], e["action"], e["subject"]) for e in operator]
        assert made["acme"] not in json.dumps(operator) and made["beta"] not in json.dumps(operator)

        audit.checkpoint(registry.sessions, registry.provenance_key)
        exported = remote.get("/v1/audit/export", headers=bearer(acme))
        assert exported.status_code == 200, exported.text
    lines = [json.loads(line) for line in exported.text.splitlines()]
    own = [line for line in lines if line["type"] == "entry"]
    assert [(e["org"], e["subject"]) for e in own] == [("acme", made["acme"])]
    assert made["beta"] not in exported.text and made["default"] not in exported.text and "ghost" not in exported.text
    report = audit.verify_lines(exported.text.splitlines(), registry.provenance_jwks)
    assert report.ok and report.witnesses == report.entries - 1 >= 2, report.problems
    own[0]["org"] = "beta"  # an edit of the organisation an entry names is an edit
    edited = audit.verify_lines([json.dumps(line) for line in lines], registry.provenance_jwks)
    assert edited.problems == [f"entry {own[0]['seq']}: its content does not match its hash (edited)"]
    whole = audit.verify_database(registry.sessions, registry.provenance_jwks)  # the operator's: all of it
    assert whole.ok and whole.entries == report.entries and whole.witnesses == 0, whole.problems
    with registry.sessions() as session:
        assert {e.org_id for e in store.list_audit(session, limit=None)} == {"acme", "beta", "default", None}


def test_another_organisation_verifies_its_view_of_a_running_registry(mesh: Mesh, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    database = SimpleNamespace(sessions=audit.workspace_sessions(Workspace(mesh.workspace)))  # as a tool opens it
    _, acme = a_person(database, "ann", "owner", org="acme")
    made = httpx.post(f"{mesh.url}/v1/tokens", json={"name": "ci", "scopes": ["registry:read"]}, headers=bearer(acme))
    assert made.status_code == 201, made.text
    mesh.invoke("keeper", "login", {"user": "ada", "password": PASSWORD})  # the default organisation's
    shown = httpx.get(f"{mesh.url}/v1/audit", headers=bearer(acme)).json()["entries"]
    assert [(e["org"], e["action"], e["subject"]) for e in shown] == [("acme", "create-token", made.json()["id"])]
    assert made.json()["id"] not in json.dumps(entries(mesh)["entries"])  # nor does the operator see acme's
    monkeypatch.setenv("MESH_TOKEN", acme)
    live = run_mesh("audit", "verify", "--registry", mesh.url, cwd=tmp_path)
    assert live.returncode == 0, live.stderr
    assert "audit log verifies" in live.stdout and "seen as witnesses" in live.stdout
    export = tmp_path / "acme.jsonl"
    assert run_mesh("audit", "export", "--registry", mesh.url, "-o", str(export), cwd=tmp_path).returncode == 0
    assert "keeper.login" not in export.read_text() and PASSWORD not in export.read_text()
