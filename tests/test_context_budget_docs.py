"""docs/knowledge.md's examples run and print what the page says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from mesh.knowledge import records

PAGE = Path(__file__).resolve().parent.parent / "docs" / "knowledge.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_first_example_prints_what_the_page_shows(tmp_path, monkeypatch):
    example = python_blocks()[0]
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, str(PAGE), "exec"), {})
    expected = [line[2:] for line in example.splitlines() if line.startswith("# ")]
    assert out.getvalue().splitlines() == expected
    assert (tmp_path / ".mesh" / "records.sqlite3").is_file()


def test_the_upgrade_example_registers_an_upgrade(monkeypatch):
    monkeypatch.setattr(records, "_UPGRADES", {})
    namespace: dict = {}
    exec(compile(python_blocks()[1], str(PAGE), "exec"), namespace)
    step = records._UPGRADES[("learning_session", 1)]
    assert step({"agent": "a", "tags": ["sandbox", "api"]}) == {"agent": "a", "tags": ["api"], "environment": "sandbox"}
