"""The configured language model (``mesh.lm``): one place, a key that never shows, a clear refusal without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.lm.settings import HOW_TO_CONFIGURE, LMSettings, NoModelConfigured
from mesh.registry.config import ConfigProblem, RegistryConfig
from mesh.workspace import Workspace

from .conftest import mesh_command
from .lm_double import ModelDouble, pong

SECRET = "sk-test-0123456789-secret"


def workspace(tmp_path: Path, toml: str = "") -> Path:
    (tmp_path / "agents").mkdir(exist_ok=True)
    (tmp_path / "registry").mkdir(exist_ok=True)
    (tmp_path / "registry" / "registry.toml").write_text(toml)
    return tmp_path


def lm_env(**variables: str) -> dict[str, str]:
    """The test process's environment without any MESH_LM_* of the machine, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_LM_")}
    return {**env, **variables}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mesh_command(*args), capture_output=True, text=True, timeout=120, env=env)


def test_without_a_model_lm_features_refuse_with_one_line_saying_how(tmp_path: Path):
    ws = workspace(tmp_path)
    done = run(["lm", "check", "--workspace", str(ws)], lm_env())
    assert done.returncode == 1
    assert done.stderr.strip() == f"mesh: {HOW_TO_CONFIGURE}"
    assert "MESH_LM_MODEL" in done.stderr and "[lm]" in done.stderr
    with pytest.raises(NoModelConfigured, match="MESH_LM_MODEL"):
        LMSettings().require()


@pytest.mark.parametrize("engine", ["litellm", "auto"])
def test_lm_check_reaches_an_openai_compatible_server_and_never_shows_the_key(tmp_path: Path, engine: str):
    ws = workspace(tmp_path)
    with ModelDouble(pong) as double:
        done = run(["lm", "check", "--workspace", str(ws)], lm_env(**double.env(key=SECRET, engine=engine)))
        assert done.returncode == 0, done.stderr
        assert "answers" in done.stdout and "'pong'" in done.stdout
        assert SECRET not in done.stdout + done.stderr
        assert double.headers[0]["authorization"] == f"Bearer {SECRET}"  # the key did reach the server
        assert double.requests[0]["model"] == "double"


def test_lm_check_says_when_the_model_does_not_answer(tmp_path: Path):
    ws = workspace(tmp_path, '[lm]\nmodel = "openai/nothing"\nbase_url = "http://127.0.0.1:9/v1"\nnum_retries = 0\n'
                             "timeout = 5\n")
    done = run(["lm", "check", "--workspace", str(ws)], lm_env(MESH_LM_API_KEY=SECRET, MESH_LM_ENGINE="litellm"))
    assert done.returncode == 1
    assert "does not answer" in done.stdout
    assert SECRET not in done.stdout + done.stderr


def test_lm_settings_come_from_registry_toml_then_the_environment(tmp_path: Path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("MESH_LM_")]:
        monkeypatch.delenv(name)
    ws = Workspace(workspace(tmp_path, '[lm]\nmodel = "ollama_chat/llama3.2"\nbase_url = "http://127.0.0.1:11434"\n'
                                       'api_key_env = "MY_KEY"\n'))
    config = RegistryConfig.from_workspace(ws)
    assert config.lm.model == "ollama_chat/llama3.2" and config.lm.api_key is None
    monkeypatch.setenv("MY_KEY", SECRET)
    monkeypatch.setenv("MESH_LM_MODEL", "openai/other")
    settings = RegistryConfig.from_workspace(ws).lm
    assert settings.model == "openai/other" and settings.base_url == "http://127.0.0.1:11434"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == SECRET
    for shown in (repr(settings), str(settings), settings.describe(), settings.model_dump_json(), repr(config)):
        assert SECRET not in shown


def test_a_key_written_into_registry_toml_is_refused(tmp_path: Path):
    ws = Workspace(workspace(tmp_path, f'[lm]\nmodel = "openai/x"\napi_key = "{SECRET}"\n'))
    with pytest.raises(ConfigProblem) as problem:
        RegistryConfig.from_workspace(ws)
    assert "MESH_LM_API_KEY" in str(problem.value) and SECRET not in str(problem.value)


def test_a_misspelt_lm_setting_is_one_line(tmp_path: Path):
    ws = Workspace(workspace(tmp_path, '[lm]\nmodle = "openai/x"\n'))
    with pytest.raises(ConfigProblem, match=r"\[lm\] modle: unknown setting \(did you mean model\?\)"):
        RegistryConfig.from_workspace(ws)


def test_nothing_else_imports_dspy_or_litellm():
    code = ("import sys, mesh.cli, mesh.registry.app, mesh.lm, mesh.learning.loop; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dspy', 'litellm')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
