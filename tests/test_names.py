"""One rule for names, checked at every entry: agents, tool kits, tools, workspace paths, signing, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.agent import Agent, ToolKit
from mesh.manifest import Manifest, ManifestProblem
from mesh.names import NameProblem, check_name, is_valid_name
from mesh.workspace import Workspace

from .conftest import run_mesh

VALID = ["hello", "a", "A1", "a-b.c_d", "x" * 64, "librarian2"]
INVALID = ["../../x", "a/b", "a__b", ".hidden", "", "x" * 65, "a\x00b", "a b", "-a", "a.", "..", 5, None, b"hello"]
TOOL = {"name": "greet", "inputSchema": {"type": "object", "properties": {}}}


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass_unchanged(name: str):
    assert is_valid_name(name)
    assert check_name(name, "agent name") == name
    assert Agent(name).name == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_refused_with_what_they_name(name: object):
    assert not is_valid_name(name)
    with pytest.raises(NameProblem, match=r"agent name .* is not a valid name"):
        check_name(name, "agent name")


@pytest.mark.parametrize("name", INVALID)
def test_an_agent_or_tool_kit_with_a_bad_name_cannot_be_built(name: object):
    with pytest.raises(NameProblem, match="agent name"):
        Agent(name)  # type: ignore[arg-type]
    with pytest.raises(NameProblem, match="tool kit name"):
        ToolKit(name)  # type: ignore[arg-type]


def test_tool_names_given_or_taken_from_the_function_follow_the_rule():
    kit = ToolKit("text")
    with pytest.raises(NameProblem, match="tool name 'a__b'"):
        kit.tool(name="a__b")(lambda: None)
    with pytest.raises(NameProblem, match="tool name '_private'"):

        @kit.tool
        def _private() -> None: ...

    with pytest.raises(NameProblem, match="tool name ''"):
        kit.tool(name="")(lambda: None)
    assert kit.specs == []  # nothing refused was registered


@pytest.mark.parametrize("name", ["../../evil", "a/b", ".hidden", "a__b"])
def test_workspace_paths_never_take_a_bad_name(tmp_path: Path, name: str):
    ws = Workspace(tmp_path)
    for path_of in (ws.jwks_path, ws.manifest_path, ws.keys_dir, ws.agent_state_dir):
        with pytest.raises(NameProblem):
            path_of(name)
    with pytest.raises(NameProblem):
        ws.jwks_path(name, local=True)
    assert not (tmp_path / ".mesh").exists()  # agent_state_dir created nothing before refusing


def test_workspace_does_not_import_an_agent_outside_agents(tmp_path: Path):
    (tmp_path / "agents").mkdir()
    (tmp_path / "evil.py").write_text("from mesh import Agent\nagent = Agent('evil')\n")
    ws = Workspace(tmp_path)
    with pytest.raises(NameProblem, match=r"agent name '\.\./evil'"):
        ws.agent("../evil")
    with pytest.raises(NameProblem, match=r"tool kit name '\.\./evil'"):
        ws.toolkit("../evil")


def test_signing_refuses_bad_agent_and_tool_names():
    with pytest.raises(NameProblem, match="agent name"):
        Manifest.payload("../x", "0.1.0", "", [(TOOL, [])])
    with pytest.raises(NameProblem, match="tool name 'a/b'"):
        Manifest.payload("hello", "0.1.0", "", [({**TOOL, "name": "a/b"}, [])])
    assert Manifest.payload("hello", "0.1.0", "", [(TOOL, [])])["agent"] == "hello"


def test_a_manifest_naming_a_bad_agent_is_refused_on_reading(tmp_path: Path):
    from mesh.keys import KeyRing

    ring = KeyRing.open(tmp_path / "keys", create=True)
    good = Manifest.sign(Manifest.payload("hello", "0.1.0", "", [(TOOL, [])]), ring.signing_keys())
    body = {**good.body, "agent": "../../x"}
    forged = Manifest.sign(body, ring.signing_keys())  # signed, yet it names no valid agent
    with pytest.raises(ManifestProblem, match="not a valid agent name"):
        Manifest.from_json(forged.to_json())
    assert Manifest.from_json(good.to_json()).agent == "hello"


@pytest.mark.parametrize("argv", [
    ("keys", "list", "../x"),
    ("keys", "revoke", "a/b", "k"),
    ("sign", "a__b"),
    ("verify", ".hidden"),
    ("agent", "run", "../x"),
])
def test_the_cli_refuses_a_bad_agent_name_in_one_line(tmp_path: Path, argv: tuple[str, ...]):
    result = run_mesh(*argv, "--workspace", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a valid name" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was written on the way to refusing
