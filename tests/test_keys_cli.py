"""`mesh keys` on a signed workspace: rotation re-signs with both keys, revocation ends a key at once."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mesh.keys import TrustStore
from mesh.manifest import Manifest

from .conftest import free_port, run_mesh


def published(workspace: Path) -> tuple[Manifest, dict]:
    manifests = workspace / "manifests"
    return Manifest.load(manifests / "hello.manifest.json"), json.loads((manifests / "hello.jwks.json").read_text())


def test_rotate_then_revoke_through_the_cli(hello_workspace: Path):
    keys = hello_workspace / ".mesh" / "keys" / "hello"
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in keys.iterdir())
    assert ".mesh/" in hello_workspace.joinpath(".gitignore").read_text().split()  # keys never reach git
    before, _ = published(hello_workspace)
    (old_kid,) = before.kids()

    rotated = run_mesh("keys", "rotate", "hello", "--overlap", "2", "--workspace", str(hello_workspace))
    assert rotated.returncode == 0, rotated.stderr
    manifest, jwks = published(hello_workspace)
    new_kid = next(k for k in manifest.kids() if k != old_kid)
    assert sorted(manifest.kids()) == sorted([old_kid, new_kid])
    old_key = next(k for k in jwks["keys"] if k["kid"] == old_kid)
    assert "exp" in old_key and len(jwks["rotations"]) == 1
    assert sorted(manifest.verify(TrustStore.from_jwks(jwks))) == sorted([old_kid, new_kid])
    # A verifier that pinned only the old key learns the new one from the rotation statement.
    pinned = TrustStore.from_jwks({"keys": [k for k in jwks["keys"] if k["kid"] == old_kid]})
    assert pinned.follow_rotations(jwks["rotations"]) == [new_kid]
    assert run_mesh("verify", "--workspace", str(hello_workspace)).returncode == 0

    listed = run_mesh("keys", "list", "hello", "--workspace", str(hello_workspace)).stdout
    assert "retiring" in listed and "active" in listed

    nobody = f"http://127.0.0.1:{free_port()}"
    revoked = run_mesh("keys", "revoke", "hello", old_kid, "--workspace", str(hello_workspace), "--registry", nobody)
    assert revoked.returncode == 0, revoked.stderr
    assert f"no registry at {nobody}; it learns of the revocation when hello next registers" in revoked.stdout
    manifest, jwks = published(hello_workspace)
    assert manifest.kids() == [new_kid] and old_kid in jwks["revoked"]
    assert old_kid not in {k["kid"] for k in jwks["keys"]}
    assert run_mesh("verify", "--workspace", str(hello_workspace)).returncode == 0

    # The old manifest, signed by the revoked key only, is refused by name.
    (hello_workspace / "manifests" / "hello.manifest.json").write_text(json.dumps(before.to_json()))
    refused = run_mesh("verify", "hello", "--workspace", str(hello_workspace))
    assert refused.returncode == 1 and f"key {old_kid} was revoked" in refused.stderr


# -- telling a registry ----------------------------------------------------------------------------------


class FakeRegistry:
    """A loopback HTTP server that records each POST and answers with ``status`` and ``answer``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.status, self.answer = 200, {"status": "revoked"}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.posts.append((self.path, json.loads(body)))
                data = json.dumps(fake.answer).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/problem+json" if fake.status >= 400
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_revoking_a_key_hands_its_self_signed_statement_to_the_registry(hello_workspace: Path,
                                                                        fake_registry: FakeRegistry):
    _, jwks_before = published(hello_workspace)
    (kid,) = [key["kid"] for key in jwks_before["keys"]]
    result = run_mesh("keys", "revoke", "hello", kid, "--workspace", str(hello_workspace),
                      "--registry", fake_registry.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"registry at {fake_registry.url}: key {kid} of hello revoked"
    ((path, body),) = fake_registry.posts
    assert path == "/v1/agents/hello/revocations" and set(body) == {"statement"}
    # What a registry that trusted the key receives verifies against what it already held.
    assert TrustStore.from_jwks(jwks_before).verify_revocation(body["statement"], "hello") == kid
    _, jwks_after = published(hello_workspace)
    assert jwks_after["revocations"] == [body["statement"]]


def test_a_registry_refusing_the_revocation_is_one_line_and_exit_1(hello_workspace: Path,
                                                                   fake_registry: FakeRegistry):
    fake_registry.status = 401
    fake_registry.answer = {"type": "https://mcpmesh.dev/problems/unauthenticated", "title": "Unauthenticated",
                            "status": 401, "detail": "revocation statement refused:\nkey is not trusted"}
    _, jwks = published(hello_workspace)
    result = run_mesh("keys", "revoke", "hello", jwks["keys"][0]["kid"], "--workspace", str(hello_workspace),
                      "--registry", fake_registry.url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "mesh: the registry refused: Unauthenticated: revocation statement refused: key is not trusted"]


def test_operator_revocation_goes_to_the_running_registry(hello_workspace: Path, fake_registry: FakeRegistry):
    kid = "A" * 43
    result = run_mesh("registry", "revoke", "hello", kid, "--reason", "laptop stolen",
                      "--workspace", str(hello_workspace), "--registry", fake_registry.url)
    assert result.returncode == 0, result.stderr
    assert fake_registry.posts == [(f"/v1/agents/hello/keys/{kid}/revoke", {"reason": "laptop stolen"})]
    assert result.stdout.strip() == f"registry at {fake_registry.url}: key {kid} of hello revoked"


def test_operator_revocation_without_a_registry_goes_into_its_database(hello_workspace: Path):
    kid = "B" * 43
    argv = ("registry", "revoke", "hello", kid, "--workspace", str(hello_workspace),
            "--registry", f"http://127.0.0.1:{free_port()}")
    first = run_mesh(*argv)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(f"key {kid} of hello is now revoked")
    again = run_mesh(*argv)  # the database remembers it
    assert again.returncode == 0 and again.stdout.strip().endswith("was already revoked"), again.stderr


@pytest.mark.parametrize("argv", [
    ("registry", "revoke", "hello", "../../v1/agents"),
    ("registry", "revoke", "../x", "A" * 43),
    ("keys", "revoke", "hello", "not/a/kid"),
])
def test_revocations_refuse_names_and_kids_that_could_leave_their_url_path(hello_workspace: Path,
                                                                          argv: tuple[str, ...]):
    result = run_mesh(*argv, "--workspace", str(hello_workspace), "--registry", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


# -- junk files ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One signed workspace for tests that only read it (each works on a copy)."""
    workspace = tmp_path_factory.mktemp("signed") / "ws"
    assert run_mesh("init", str(workspace)).returncode == 0
    assert run_mesh("sign", "--workspace", str(workspace)).returncode == 0
    return workspace


@pytest.mark.parametrize(("manifest", "jwks"), [
    ("[1, 2]", None),
    ('{"payload": "e30", "signatures": [{"protected": "e30", "signature": ""}]}', None),
    ("\x00\xff binary", None),
    (None, "[]"),
    (None, '{"keys": "abc"}'),
    (None, '{"keys": [{"kty": "EC", "crv": "P-256"}]}'),
    (None, '{"keys": [], "rotations": ["a.b"]}'),
    (None, '{"keys": [], "revoked": [["x"]]}'),
])
def test_verify_on_a_junk_manifest_or_jwks_is_one_line_and_exit_1(signed_once: Path, tmp_path: Path,
                                                                  manifest: str | None, jwks: str | None):
    hello_workspace = Path(shutil.copytree(signed_once, tmp_path / "ws"))
    assert run_mesh("verify", "hello", "--workspace", str(hello_workspace)).returncode == 0
    folder = hello_workspace / "manifests"
    if manifest is not None:
        (folder / "hello.manifest.json").write_text(manifest)
    if jwks is not None:
        (folder / "hello.jwks.json").write_text(jwks)
    result = run_mesh("verify", "hello", "--workspace", str(hello_workspace))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mesh: ") and "hello." in line


def test_a_kid_that_begins_with_a_dash_is_still_a_kid():
    from mesh.cli import _kids_as_values, parser

    kid = "-" + "A" * 42
    argv = _kids_as_values(["keys", "revoke", "echo", kid, "--registry", "http://x"])
    assert argv == ["keys", "revoke", "echo", "--registry", "http://x", "--", kid]
    args = parser().parse_args(argv)
    assert (args.name, args.kid, args.registry) == ("echo", kid, "http://x")
    assert _kids_as_values(["keys", "revoke", "echo", "A" * 43]) == ["keys", "revoke", "echo", "A" * 43]
