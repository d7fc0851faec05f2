"""The shipped Rego policy and the engine that compiles, evaluates and reloads it (real regopy)."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from mesh.registry.policy import Decision, PolicyEngine, PolicyError

SHIPPED = Path(__file__).resolve().parents[1] / "registry" / "policies" / "mesh.rego"
SETTINGS = {"min_reputation": 0.3, "allow_destructive": ["archivist.purge", "janitor.*"], "allow_anonymous": False}


def call(**changes: Any) -> dict[str, Any]:
    """A call the shipped policy allows; ``changes`` maps dotted paths to new values (None deletes)."""
    value: dict[str, Any] = {
        "caller": {"id": "agent:librarian", "kind": "agent", "scopes": ["notes:read"], "reputation": 0.8},
        "target": {
            "agent": "search",
            "tool": "find",
            "annotations": {"readOnlyHint": True},
            "scopes": ["notes:read"],
            "reputation": 0.9,
        },
        "arguments": {"query": "rego"},
    }
    for path, new in changes.items():
        *parents, leaf = path.split(".")
        node = value
        for key in parents:
            node = node[key]
        if new is None:
            del node[leaf]
        else:
            node[leaf] = new
    return value


def write(path: Path, text: str) -> None:
    """Write, then move the mtime on by a second so two edits in one clock tick still differ."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    stamp = max(path.stat().st_mtime_ns, previous + 1_000_000_000)
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(SHIPPED, tmp_path / "mesh.rego")
    return tmp_path


@pytest.fixture
def engine(folder: Path) -> PolicyEngine:
    return PolicyEngine(folder, data=SETTINGS, check_interval=None)


def test_allows_a_well_formed_read_only_call(engine: PolicyEngine) -> None:
    decision = engine.evaluate(call())
    assert decision == Decision(True, "allow", [], decision.input_digest)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"target.scopes": ["notes:read", "notes:write"]}, "missing_scope"),
        ({"target.annotations": {"readOnlyHint": False, "destructiveHint": True}}, "destructive_not_allowed"),
        ({"target.annotations": {}}, "destructive_not_allowed"),  # MCP default: destructive
        ({"target.annotations": None}, "destructive_not_allowed"),
        ({"target.annotations": {"readOnlyHint": False}}, "destructive_not_allowed"),
        ({"target.reputation": 0.29}, "low_reputation"),
        ({"caller.kind": "anonymous", "caller.id": "anonymous"}, "anonymous_caller"),
        ({"target.scopes": None}, "malformed_input"),
        ({"target.reputation": None}, "malformed_input"),
        ({"caller.id": None}, "malformed_input"),
    ],
)
def test_each_deny_rule_fires_alone_and_names_itself(engine: PolicyEngine, changes: dict[str, Any], rule: str) -> None:
    decision = engine.evaluate(call(**changes))
    assert not decision.allow
    assert decision.rule == rule
    assert decision.reasons
    assert all(reason.startswith(f"{rule}: ") for reason in decision.reasons), decision.reasons


def test_missing_scope_names_each_missing_scope(engine: PolicyEngine) -> None:
    decision = engine.evaluate(call(**{"target.scopes": ["notes:read", "notes:write", "admin"]}))
    assert decision.reasons == [
        "missing_scope: agent:librarian lacks scope 'admin' required by search.find",
        "missing_scope: agent:librarian lacks scope 'notes:write' required by search.find",
    ]


def test_star_scope_covers_everything_for_users_only(engine: PolicyEngine) -> None:
    needs_admin = {"target.scopes": ["admin"]}
    as_user = {"caller.kind": "user", "caller.id": "user:local", "caller.scopes": ["*"]}
    user = engine.evaluate(call(**needs_admin, **as_user))
    agent = engine.evaluate(call(**needs_admin, **{"caller.scopes": ["*"]}))
    assert user.allow
    assert (agent.allow, agent.rule) == (False, "missing_scope")


@pytest.mark.parametrize(
    ("agent", "tool", "annotations", "allow"),
    [
        ("search", "find", {"readOnlyHint": False, "destructiveHint": False}, True),
        ("archivist", "purge", {"destructiveHint": True}, True),  # listed as agent.tool
        ("archivist", "shred", {"destructiveHint": True}, False),  # only purge is listed
        ("janitor", "sweep", {}, True),  # agent.* wildcard
        ("janitorial", "sweep", {}, False),  # the wildcard is per agent, not a prefix
    ],
)
def test_destructive_tools_need_an_allow_list_entry(
    engine: PolicyEngine, agent: str, tool: str, annotations: dict[str, bool], allow: bool
) -> None:
    decision = engine.evaluate(call(**{"target.agent": agent, "target.tool": tool, "target.annotations": annotations}))
    assert decision.allow is allow
    assert decision.rule == ("allow" if allow else "destructive_not_allowed")


def test_settings_arrive_as_data(folder: Path) -> None:
    strict = PolicyEngine(folder, data={"min_reputation": 0.95, "allow_anonymous": True}, check_interval=None)
    default = PolicyEngine(folder, check_interval=None)  # min_reputation defaults to 0.3
    assert strict.evaluate(call()).rule == "low_reputation"
    assert strict.evaluate(call(**{"caller.kind": "anonymous", "target.reputation": 0.99})).allow
    assert default.evaluate(call(**{"target.reputation": 0.31})).allow
    assert default.evaluate(call(**{"target.reputation": 0.29})).rule == "low_reputation"


def test_a_probe_call_passes_low_reputation_and_only_that_rule(engine: PolicyEngine) -> None:
    shunned = {"target.reputation": 0.1}
    assert engine.evaluate(call(**shunned, **{"target.probe": False})).rule == "low_reputation"
    assert engine.evaluate(call(**shunned, **{"target.probe": True})).allow
    assert engine.evaluate(call(**shunned, **{"target.probe": True, "target.scopes": ["x"]})).rule == "missing_scope"


def test_several_violations_sort_deterministically(engine: PolicyEngine) -> None:
    decision = engine.evaluate(
        call(**{"target.scopes": ["notes:write"], "target.annotations": {}, "target.reputation": 0.1})
    )
    assert decision.rule == "destructive_not_allowed"
    assert [reason.split(":")[0] for reason in decision.reasons] == [
        "destructive_not_allowed",
        "low_reputation",
        "missing_scope",
    ]


def test_input_digest_is_sha256_of_rfc8785(engine: PolicyEngine) -> None:
    value = call()
    shuffled = dict(reversed(list(copy.deepcopy(value).items())))
    expected = "sha256:" + hashlib.sha256(rfc8785.dumps(value)).hexdigest()
    assert engine.evaluate(value).input_digest == expected
    assert engine.evaluate(shuffled).input_digest == expected
    assert engine.evaluate(call(**{"arguments.query": "other"})).input_digest != expected


def test_input_that_is_not_json_is_denied_not_raised(engine: PolicyEngine) -> None:
    decision = engine.evaluate(call(**{"arguments.query": float("nan")}))
    assert (decision.allow, decision.rule) == (False, "malformed_input")


def test_more_files_add_rules(folder: Path) -> None:
    write(
        folder / "hours.rego",
        'package mesh.authz\n\ndeny contains {"rule": "after_hours", "reason": "closed"} if input.arguments.late\n',
    )
    engine = PolicyEngine(folder, check_interval=None)
    assert engine.evaluate(call()).allow
    assert engine.evaluate(call(**{"arguments.late": True})).reasons == ["after_hours: closed"]


def test_reload_after_editing_changes_decisions(folder: Path) -> None:
    engine = PolicyEngine(folder, check_interval=0)  # check on every evaluate
    assert engine.evaluate(call(**{"target.reputation": 0.5})).allow
    before = engine.version
    policy = folder / "mesh.rego"
    write(policy, policy.read_text().replace("default min_reputation := 0.3", "default min_reputation := 0.6"))
    assert engine.evaluate(call(**{"target.reputation": 0.5})).rule == "low_reputation"
    assert engine.version != before


def test_reload_only_when_asked_if_interval_is_none(folder: Path, engine: PolicyEngine) -> None:
    write(folder / "closed.rego", 'package mesh.authz\n\ndeny contains {"rule": "closed", "reason": "x"} if true\n')
    assert engine.evaluate(call()).allow
    assert engine.reload_if_changed() is True
    assert engine.evaluate(call()).rule == "closed"
    assert engine.reload_if_changed() is False
    (folder / "closed.rego").unlink()
    assert engine.reload_if_changed() is True
    assert engine.evaluate(call()).allow


def test_broken_file_keeps_last_good_bundle_and_names_the_file(
    folder: Path, engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    good = engine.version
    write(folder / "broken.rego", 'package mesh.authz\n\ndeny contains {"rule": "x" if true\n')
    assert engine.reload_if_changed() is False
    assert "broken.rego:3:" in caplog.text
    assert engine.error is not None
    assert f"{folder / 'broken.rego'}:3:" in str(engine.error)
    assert engine.error.files == [folder / "broken.rego"]
    assert engine.version == good
    assert engine.evaluate(call()).allow  # still the last good policy
    assert engine.evaluate(call(**{"target.reputation": 0.1})).rule == "low_reputation"

    write(folder / "broken.rego", 'package mesh.authz\n\ndeny contains {"rule": "fixed", "reason": "y"} if true\n')
    assert engine.reload_if_changed() is True
    assert engine.error is None
    assert engine.evaluate(call()).rule == "fixed"


def test_startup_refuses_a_broken_file(folder: Path) -> None:
    write(folder / "zz.rego", "package mesh.authz\n\nallow_it if {\n  input.a ==\n}\n")
    with pytest.raises(PolicyError, match=r"zz\.rego:4:\d+: Invalid boolean operator") as caught:
        PolicyEngine(folder)
    assert caught.value.files == [folder / "zz.rego"]


def test_startup_refuses_conflicting_rules_across_files(folder: Path) -> None:
    write(folder / "stricter.rego", "package mesh.authz\n\ndefault min_reputation := 0.5\n")
    with pytest.raises(PolicyError, match=r"\.rego:\d+:\d+: Multiple default rules"):
        PolicyEngine(folder)


def test_startup_refuses_a_folder_without_a_decision(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no \*\.rego"):
        PolicyEngine(tmp_path)
    write(tmp_path / "other.rego", 'package other\n\ndecision := {"allow": true}\n')
    with pytest.raises(PolicyError, match="undefined"):
        PolicyEngine(tmp_path)


def test_compile_errors_do_not_reach_stdout(folder: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """regopy prints errors on stdout by default: that would corrupt an MCP stdio stream."""
    write(folder / "broken.rego", "package mesh.authz\n\nx := {\n")
    with pytest.raises(PolicyError):
        PolicyEngine(folder)
    assert capfd.readouterr().out == ""
