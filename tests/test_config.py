"""registry/registry.toml: a mistake in it is one line naming the file, the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.registry.config import ConfigProblem, RegistryConfig
from mesh.workspace import Workspace

from .conftest import run_mesh


def workspace_with(tmp_path: Path, toml: str) -> Workspace:
    (tmp_path / "agents").mkdir()
    (tmp_path / "registry").mkdir()
    (tmp_path / "registry" / "registry.toml").write_text(toml)
    return Workspace(tmp_path)


@pytest.mark.parametrize(("toml", "expected"), [
    ("[registry]\ncall_timout = 3.0", "[registry] call_timout: unknown setting (did you mean call_timeout?)"),
    ("[registry]\nport = 'seven'", "[registry] port: Input should be a valid integer"),
    ("[registry]\nmax_body_bytes = 0", "[registry] max_body_bytes: Input should be greater than 0"),
    ("[grants]\nresearcher = 'docs:read'", "grants.researcher: Input should be a valid list"),
    ("registry = 3", "[registry] must be a table"),
    ("[breaker]\nprobe_call = 2", "breaker.probe_call: unknown setting"),
    ("[breaker]\ntrip_below = 1.5", "breaker.trip_below: Input should be less than or equal to 1"),
])
def test_a_mistake_is_one_line_naming_the_key(tmp_path: Path, toml: str, expected: str):
    with pytest.raises(ConfigProblem) as problem:
        RegistryConfig.from_workspace(workspace_with(tmp_path, toml))
    assert str(problem.value).startswith("registry/registry.toml: ") and expected in str(problem.value)
    assert "\n" not in str(problem.value)


def test_settings_and_overrides(tmp_path: Path):
    config = RegistryConfig.from_workspace(workspace_with(tmp_path, "[registry]\nport = 7400\n[policy]\nx = 1"),
                                           port=7500, strict=None)
    assert (config.port, config.strict, config.policy["x"], config.policy["min_reputation"]) == (7500, False, 1, 0.3)


@pytest.mark.parametrize("command", [["registry", "run"], ["up"]])
def test_the_cli_says_it_in_one_line_without_a_traceback(tmp_path: Path, command: list[str]):
    workspace_with(tmp_path, "[registry]\ncall_timout = 3.0\n")
    answer = run_mesh(*command, "--workspace", str(tmp_path), timeout=60)
    assert answer.returncode == 1
    assert answer.stderr.strip() == ("mesh: registry/registry.toml: [registry] call_timout: unknown setting "
                                     "(did you mean call_timeout?)")



def test_breaker_thresholds_default_to_the_policy_and_the_probe_interval(tmp_path: Path):
    from mesh.registry.breaker import Thresholds

    toml = "[registry]\nprobe_interval = 7.0\n[policy]\nmin_reputation = 0.4\n[breaker]\nconsecutive_failures = 2"
    limits = Thresholds.of(RegistryConfig.from_workspace(workspace_with(tmp_path, toml)))
    assert (limits.consecutive_failures, limits.trip_below, limits.open_seconds, limits.probe_calls) == (2, 0.4, 7.0, 1)
    toml += "\ntrip_below = 0.2\nopen_seconds = 1.5"
    (tmp_path / "registry" / "registry.toml").write_text(toml)
    limits = Thresholds.of(RegistryConfig.from_workspace(Workspace(tmp_path)))
    assert (limits.trip_below, limits.open_seconds) == (0.2, 1.5)
