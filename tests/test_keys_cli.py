"""`mesh keys` on a signed workspace: rotation re-signs with both keys, revocation ends a key at once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from mesh.keys import TrustStore
from mesh.manifest import Manifest

from .conftest import run_mesh


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

    revoked = run_mesh("keys", "revoke", "hello", old_kid, "--workspace", str(hello_workspace))
    assert revoked.returncode == 0, revoked.stderr
    manifest, jwks = published(hello_workspace)
    assert manifest.kids() == [new_kid] and old_kid in jwks["revoked"]
    assert old_kid not in {k["kid"] for k in jwks["keys"]}
    assert run_mesh("verify", "--workspace", str(hello_workspace)).returncode == 0

    # The old manifest, signed by the revoked key only, is refused by name.
    (hello_workspace / "manifests" / "hello.manifest.json").write_text(json.dumps(before.to_json()))
    refused = run_mesh("verify", "hello", "--workspace", str(hello_workspace))
    assert refused.returncode == 1 and f"key {old_kid} was revoked" in refused.stderr
