"""Credentials by reference: stored encrypted (or in Vault), scoped, rotated with a cutover, resolved only
when scope and policy allow, and never seen anywhere else.

The planted-secret test runs every path (store, rotate, resolve, a refused resolve, errors) and then
searches every captured log line, every command's output, every error message and every table of the
database (and, on SQLite, the database's files byte for byte) for the value.

Vault: no Vault server can be installed here (it is in no package registry this project reaches), so the
Vault adapter is tested through hvac's real client against a small double of Vault's KV v2 HTTP API
(mounted as a requests transport adapter). Set ``MESH_TEST_VAULT_ADDR`` and ``VAULT_TOKEN`` to run the
same test against a real Vault dev server (``vault server -dev``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from mesh.registry import audit, store, tenancy
from mesh.registry.config import RegistryConfig
from mesh.registry.credentials import (
    CredentialProblem,
    CredentialRefused,
    Credentials,
    LocalBackend,
    UnknownCredential,
    VaultBackend,
)
from mesh.registry.node import Registry
from mesh.registry.policy import PolicyEngine
from mesh.workspace import Workspace

from .conftest import REPO, copy_repo_workspace

POLICIES = REPO / "registry" / "policies"


@pytest.fixture
def local(tmp_path: Path, sessions: sessionmaker[Session]) -> Credentials:
    return Credentials(sessions, LocalBackend(tmp_path / ".mesh" / "secrets.key"))


def test_a_credential_is_stored_encrypted_under_a_private_key_and_resolved_for_its_scope(
        local: Credentials, tmp_path: Path, sessions: sessionmaker[Session]):
    info = local.set("gh-token", "ghp_first", agent="builder", system="github", by="user:ada", description="CI")
    assert (info.version, info.previous_version, info.org, info.backend) == (1, None, "default", "local")
    key = tmp_path / ".mesh" / "secrets.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = local.resolve("gh-token", agent="builder", system="github")
    assert secret.reveal() == "ghp_first" and secret.version == 1
    assert "ghp_first" not in f"{secret} {secret!r} {[secret]}"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)
    with sessions() as session:
        row = session.scalars(select(store.CredentialVersionRecord)).one()
        assert row.ciphertext.startswith("v1.") and "ghp_first" not in row.ciphertext
    with pytest.raises(CredentialProblem, match="exists"):
        local.set("gh-token", "other", agent="builder", system="github", by="user:ada")
    assert [c.ref for c in local.list()] == ["gh-token"]


def test_rotation_keeps_the_previous_version_until_the_cutover(local: Credentials):
    local.set("db", "pw-1", agent="*", system="warehouse", by="user:ada")
    info = local.rotate("db", "pw-2", by="user:ada")
    assert (info.version, info.previous_version) == (2, 1)
    assert local.resolve("db", agent="anyone", system="warehouse").reveal() == "pw-2"
    assert local.resolve("db", agent="anyone", system="warehouse", previous=True).reveal() == "pw-1"
    local.rotate("db", "pw-3", by="user:ada")  # rotating again: the version two back goes
    assert local.resolve("db", agent="a", system="warehouse", previous=True).reveal() == "pw-2"
    info = local.cutover("db", by="user:ada")
    assert (info.version, info.previous_version) == (3, None)
    with pytest.raises(CredentialProblem, match="keeps no previous version"):
        local.resolve("db", agent="a", system="warehouse", previous=True)
    assert local.rotate("db", "pw-4", by="user:ada", cutover=True).previous_version is None
    local.remove("db", by="user:ada")
    with pytest.raises(UnknownCredential):
        local.resolve("db", agent="a", system="warehouse")


def test_a_credential_goes_only_to_its_agent_and_system_and_every_attempt_is_audited(
        local: Credentials, sessions: sessionmaker[Session]):
    local.set("gh-token", "ghp_x", agent="builder", system="github", by="user:ada")
    with pytest.raises(CredentialRefused, match="not for agent 'thief'"):
        local.resolve("gh-token", agent="thief", system="github")
    with pytest.raises(CredentialRefused, match="on system 'gitlab'"):
        local.resolve("gh-token", agent="builder", system="gitlab")
    with pytest.raises(UnknownCredential):
        local.resolve("nope", agent="builder", system="github")
    with pytest.raises(CredentialProblem, match="not valid"):
        local.resolve("../etc/passwd", agent="builder", system="github")
    with sessions() as session:
        outcomes = [(e.action, e.actor, e.outcome) for e in store.list_audit(session, oldest_first=True)]
    assert outcomes == [("credential-set", "user:ada", "done"),
                        ("credential-resolve", "agent:thief", "deny"), ("credential-resolve", "agent:builder", "deny"),
                        ("credential-resolve", "agent:builder", "unknown"),
                        ("credential-resolve", "agent:builder", "unknown")]


def test_a_ciphertext_moved_to_another_credential_or_a_wrong_key_does_not_decrypt(
        local: Credentials, sessions: sessionmaker[Session], tmp_path: Path):
    local.set("a", "value-a", agent="*", system="s", by="user:ada")
    local.set("b", "value-b", agent="*", system="s", by="user:ada")
    table = store.CredentialVersionRecord.__table__
    with sessions.begin() as session:
        stolen = session.scalar(select(table.c.ciphertext).where(table.c.ref == "a"))
        session.execute(update(table).where(table.c.ref == "b").values(ciphertext=stolen))
    with pytest.raises(CredentialProblem, match="does not decrypt") as refused:
        local.resolve("b", agent="x", system="s")
    assert "value-a" not in str(refused.value)
    other = Credentials(sessions, LocalBackend(tmp_path / "other" / "secrets.key"))
    with pytest.raises(CredentialProblem, match="does not decrypt"):
        other.resolve("a", agent="x", system="s")


def test_a_key_file_others_can_read_is_refused(tmp_path: Path, sessions: sessionmaker[Session]):
    key = tmp_path / ".mesh" / "secrets.key"
    credentials = Credentials(sessions, LocalBackend(key))
    credentials.set("a", "v", agent="*", system="s", by="user:ada")
    key.chmod(0o644)
    with pytest.raises(CredentialProblem, match="open to others"):
        Credentials(sessions, LocalBackend(key)).resolve("a", agent="x", system="s")


def test_the_policy_decides_whether_a_credential_is_attached(tmp_path: Path, sessions: sessionmaker[Session]):
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    listed = PolicyEngine(folder, data={"allow_credentials": ["builder.github"]})
    credentials = Credentials(sessions, LocalBackend(tmp_path / "secrets.key"), policy=listed)
    credentials.set("gh", "ghp_1", agent="*", system="github", by="user:ada")
    credentials.set("aws", "AKIA_1", agent="*", system="aws", by="user:ada")
    assert credentials.resolve("gh", agent="builder", system="github").reveal() == "ghp_1"
    with pytest.raises(CredentialRefused, match=r"credential_not_allowed: credential aws for builder\.aws is not in"):
        credentials.resolve("aws", agent="builder", system="aws")
    shunned = Credentials(sessions, credentials.backend, policy=PolicyEngine(folder), reputation=lambda agent: 0.1)
    with pytest.raises(CredentialRefused, match="low_reputation"):
        shunned.resolve("gh", agent="builder", system="github")
    # On a tool call: the call's own input, with the credential added as input.credentials.
    call = credentials.policy_input(credentials.info("gh"), "builder") | {"arguments": {"repo": "x"}}
    call["target"] = {**call["target"], "agent": "deployer"}
    with pytest.raises(CredentialRefused, match=r"credential gh for deployer\.github is not in allow_credentials"):
        credentials.resolve("gh", agent="deployer", system="github", policy_input=call)
    with sessions() as session:
        denied = [e for e in store.list_audit(session, action="credential-resolve") if e.outcome == "deny"]
    assert {e.data["rule"] for e in denied} == {"credential_not_allowed", "low_reputation"}


# -- Vault ---------------------------------------------------------------------------------------------


class VaultDouble:
    """Vault's KV v2 HTTP API for one mount, as a requests transport adapter (what hvac talks to)."""

    def __init__(self, mount: str = "secret"):
        self.mount = mount
        self.versions: dict[str, dict[int, dict[str, Any] | None]] = {}  # path -> version -> data (None: destroyed)
        self.requests: list[tuple[str, str]] = []

    def send(self, request: Any, **kwargs: Any) -> Any:
        from urllib.parse import parse_qs, urlsplit

        import requests

        url = urlsplit(request.url)
        self.requests.append((request.method, url.path))
        match = re.fullmatch(rf"/v1/{self.mount}/(data|destroy|metadata)/(.+)", url.path)
        body = json.loads(request.body) if request.body else {}
        status, answer = 404, {"errors": []}
        if match:
            kind, path = match.groups()
            versions = self.versions.setdefault(path, {})
            if kind == "data" and request.method in ("POST", "PUT"):
                versions[len(versions) + 1] = body["data"]
                status, answer = 200, {"data": {"version": len(versions), "destroyed": False, "deletion_time": ""}}
            elif kind == "data" and request.method == "GET":
                number = int(parse_qs(url.query).get("version", [len(versions)])[0])
                if versions.get(number) is not None:
                    status, answer = 200, {"data": {"data": versions[number], "metadata": {
                        "version": number, "destroyed": False, "deletion_time": ""}}}
            elif kind == "destroy" and request.method in ("POST", "PUT"):
                for number in body["versions"]:
                    versions[number] = None
                status, answer = 204, None
            elif kind == "metadata" and request.method == "DELETE":
                del self.versions[path]
                status, answer = 204, None
        response = requests.Response()
        response.status_code, response.url, response.request = status, request.url, request
        response._content = json.dumps(answer).encode() if answer is not None else b""
        response.headers["content-type"] = "application/json"
        return response

    def close(self) -> None:
        pass


@pytest.fixture
def vault() -> Any:
    """hvac's client: on a real Vault when MESH_TEST_VAULT_ADDR is set, else on ``VaultDouble``."""
    hvac = pytest.importorskip("hvac")
    import requests

    address = os.environ.get("MESH_TEST_VAULT_ADDR")
    if address:
        return hvac.Client(url=address, token=os.environ.get("VAULT_TOKEN")), None
    double = VaultDouble()
    session = requests.Session()
    session.mount("http://vault.test", double)
    return hvac.Client(url="http://vault.test:8200", token="t", session=session), double


def test_the_vault_backend_keeps_values_in_vault_and_versions_in_the_database(
        vault: Any, sessions: sessionmaker[Session]):
    client, double = vault
    prefix = f"mcpmesh-test-{uuid.uuid4().hex[:8]}"
    credentials = Credentials(sessions, VaultBackend(client, prefix=prefix))
    credentials.set("gh", "ghp_v1", agent="*", system="github", by="user:ada")
    credentials.rotate("gh", "ghp_v2", by="user:ada")
    assert credentials.resolve("gh", agent="a", system="github").reveal() == "ghp_v2"
    assert credentials.resolve("gh", agent="a", system="github", previous=True).reveal() == "ghp_v1"
    with sessions() as session:
        rows = session.scalars(select(store.CredentialVersionRecord).order_by(store.CredentialVersionRecord.version))
        assert [(r.version, r.vault_version, r.ciphertext) for r in rows] == [(1, 1, None), (2, 2, None)]
    credentials.cutover("gh", by="user:ada")
    if double is not None:
        assert double.versions[f"{prefix}/default/gh"] == {1: None, 2: {"value": "ghp_v2"}}
        assert ("POST", f"/v1/secret/destroy/{prefix}/default/gh") in double.requests
    credentials.remove("gh", by="user:ada")
    if double is not None:
        assert double.versions == {}
        client.session.mount("http://vault.test", _Broken())
        with pytest.raises(CredentialProblem, match="vault refused to store credential 'gh2'") as refused:
            credentials.set("gh2", "ghp_never", agent="*", system="github", by="user:ada")
        assert "ghp_never" not in str(refused.value)
        assert credentials.list() == []  # nothing half-stored


class _Broken:
    def send(self, request: Any, **kwargs: Any) -> Any:
        import requests

        raise requests.ConnectionError(f"cannot reach {request.url} with body {request.body!r}")

    def close(self) -> None:
        pass


# -- the planted secret ---------------------------------------------------------------------------------


def mesh_cli(workspace: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.cli", *args, "--workspace", str(workspace)], input=stdin,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def every_stored_value(engine: Any) -> str:
    """Every row of every table, as text."""
    lines = []
    with engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                lines.append(f"{table}: {tuple(row)!r}")
    return "\n".join(lines)


def test_a_planted_secret_is_never_in_a_log_a_table_an_audit_entry_or_an_error(
        database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    planted = "PLANTED-" + secrets.token_urlsafe(24)
    rotated = "ROTATED-" + secrets.token_urlsafe(24)
    workspace = copy_repo_workspace(tmp_path / "ws")
    env = {"MESH_DATABASE_URL": database_url}
    os.environ["MESH_DATABASE_URL"] = database_url
    seen: list[str] = []
    caplog.set_level(logging.DEBUG)
    try:
        registry = Registry.open(RegistryConfig.from_workspace(Workspace(workspace)))
        # Store and rotate through the command line, the value on standard input and in an environment variable.
        for args, stdin, extra in (
                (("secrets", "set", "warehouse", "--agent", "librarian", "--system", "warehouse-db"), planted, {}),
                (("secrets", "set", "warehouse", "--agent", "librarian", "--system", "warehouse-db"), planted, {}),
                (("secrets", "rotate", "warehouse", "--from-env", "NEW_VALUE"), None, {"NEW_VALUE": rotated}),
                (("secrets", "ls"), None, {}),
                (("secrets", "rotate", "missing", "--from-env", "NEW_VALUE"), None, {"NEW_VALUE": rotated})):
            done = mesh_cli(workspace, *args, stdin=stdin, env={**env, **extra})
            seen += [done.stdout, done.stderr]
        assert "previous v1 kept until cutover" in seen[6], seen
        assert "exists" in seen[3] and "no credential 'missing'" in seen[9], seen
        # Resolve: allowed, refused by scope, refused by policy, unknown, and an error (a corrupted ciphertext).
        # As the registry resolves them for a call of librarian's project (row-level security on PostgreSQL).
        with tenancy.acting_as(tenancy.DEFAULT):
            credentials = registry.credentials
            assert credentials.resolve("warehouse", agent="librarian", system="warehouse-db").reveal() == rotated
            assert credentials.resolve("warehouse", agent="librarian", system="warehouse-db",
                                       previous=True).reveal() == planted
            low = Credentials(registry.sessions, credentials.backend, policy=registry.policy, reputation=lambda a: 0.0)
            attempts = [lambda: credentials.resolve("warehouse", agent="researcher", system="warehouse-db"),
                        lambda: low.resolve("warehouse", agent="librarian", system="warehouse-db"),
                        lambda: credentials.resolve("nothing", agent="librarian", system="warehouse-db")]
            table = store.CredentialVersionRecord.__table__
            with registry.sessions.begin() as session:
                session.execute(update(table).where(table.c.version == 1).values(ciphertext="v1.AAAA" + "B" * 60))
            attempts.append(lambda: credentials.resolve("warehouse", agent="librarian", system="warehouse-db",
                                                        previous=True))
            for attempt in attempts:
                with pytest.raises(CredentialProblem) as refused:
                    attempt()
                seen += [str(refused.value), repr(refused.value), str(refused.value.__cause__ or "")]
        done = mesh_cli(workspace, "secrets", "cutover", "warehouse", env=env)
        seen += [done.stdout, done.stderr]
        audit.checkpoint(registry.sessions, registry.provenance_key)
        done = mesh_cli(workspace, "audit", "export", env=env)
        seen += [done.stdout, done.stderr]
        verified = mesh_cli(workspace, "audit", "verify", env=env)
        assert verified.returncode == 0, verified.stderr
        seen += [verified.stdout, verified.stderr]
        actions = [json.loads(line)["action"] for line in done.stdout.splitlines() if '"type": "entry"' in line]
        assert actions.count("credential-resolve") == 6 and "credential-rotate" in actions, actions
        with tenancy.as_registry():  # every row of every project: nothing hidden from the search
            stored = every_stored_value(registry.engine)
        assert "warehouse" in stored and "credential-resolve" in stored  # the search below looks at real rows
        files = b""
        if database_url.startswith("sqlite"):
            registry.engine.dispose()
            database = Path(make_url(database_url).database)
            for path in database.parent.glob(database.name + "*"):  # the database, its WAL and shared memory
                files += path.read_bytes()
            assert files
    finally:
        os.environ.pop("MESH_DATABASE_URL", None)
    logged = "\n".join(record.getMessage() + " " + str(record.exc_info or "") for record in caplog.records)
    assert logged  # the registry did log things
    for value in (planted, rotated):
        assert value not in logged
        assert value not in "\n".join(seen)
        assert value not in stored
        assert value.encode() not in files


def test_the_backend_is_chosen_by_registry_toml_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("hvac")
    from mesh.registry.credentials import CredentialUnavailable, backend_for

    workspace = Workspace(copy_repo_workspace(tmp_path / "ws"))
    assert isinstance(backend_for(workspace), LocalBackend)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.setenv("MESH_SECRETS_BACKEND", "vault")
    with pytest.raises(CredentialUnavailable, match="needs \\[secrets\\] url"):
        backend_for(workspace)
    config = workspace.root / "registry" / "registry.toml"
    config.write_text(config.read_text() + '\n[secrets]\nurl = "http://vault.test:8200"\nmount = "kv"\n')
    chosen = backend_for(workspace)
    assert isinstance(chosen, VaultBackend) and chosen.mount == "kv" and chosen.prefix == "mcpmesh"
    monkeypatch.setenv("MESH_SECRETS_BACKEND", "s3")
    with pytest.raises(CredentialUnavailable, match="must be 'local' or 'vault'"):
        backend_for(workspace)
