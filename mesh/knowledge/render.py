"""Projecting a record onto the fields a task needs, and rendering it compactly for a prompt.

A field path names a field (``lessons``) or a field inside one (``blueprint.role``); through a list of
objects it selects that field of every item (``attempts.error``). Projection keeps the structure, so
``["attempts.action", "attempts.outcome"]`` gives each attempt with just those two fields, and it
reports the paths it dropped, so a caller can say what the model did not see.

Rendering is plain ``field: value`` lines: no quotes, braces or indentation beyond a dash per list
item, and empty values (null, ``""``, ``[]``, ``{}``) are skipped. That is what spends tokens on
content rather than on syntax; JSON of the same data costs about a third more (see the bench).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

PathTree = dict[str, "PathTree | None"]
"""Selected paths as a tree; ``None`` means "the whole value"."""


def path_tree(paths: Iterable[str]) -> PathTree:
    tree: PathTree = {}
    for path in sorted(set(paths), key=lambda p: p.count(".")):  # a whole parent before its children
        parts = path.split(".")
        if not all(parts):
            raise ValueError(f"bad field path {path!r}")
        node = tree
        for part in parts[:-1]:
            if part in node and node[part] is None:
                break  # the parent is already selected whole
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = None
    return tree


def project(data: dict[str, Any], paths: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``(projected, dropped)``: ``data`` restricted to ``paths``, and the paths of non-empty values dropped."""
    dropped: list[str] = []
    projected = _project(data, path_tree(paths), "", dropped)
    return projected, list(dict.fromkeys(dropped))


def _project(value: Any, tree: PathTree | None, prefix: str, dropped: list[str]) -> Any:
    if tree is None:
        return value
    if isinstance(value, list):  # a path through a list applies to every item
        return [_project(item, tree, prefix, dropped) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key in tree:
            out[key] = _project(item, tree[key], f"{prefix}{key}.", dropped)
        elif _present(item):
            dropped.append(prefix + key)
    return out


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def render(title: str, data: dict[str, Any]) -> str:
    """A record as compact lines: a title line, then ``field: value`` for every non-empty field."""
    lines = [title]
    for key, value in data.items():
        _render_field(lines, key, value, "")
    return "\n".join(lines)


def _render_field(lines: list[str], key: str, value: Any, indent: str) -> None:
    if not _present(value):
        return
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        lines.append(f"{indent}{key}:")
        for item in value:
            lines.append(f"{indent}- {_inline(item)}")
    elif isinstance(value, list):
        if sum(len(_scalar(item)) for item in value) <= 80:
            lines.append(f"{indent}{key}: {'; '.join(_scalar(item) for item in value)}")
        else:
            lines.append(f"{indent}{key}:")
            lines.extend(f"{indent}- {_scalar(item)}" for item in value)
    elif isinstance(value, dict):
        lines.append(f"{indent}{key}: {_inline(value)}")
    else:
        lines.append(f"{indent}{key}: {_scalar(value)}")


def _inline(value: Any) -> str:
    """A nested value on one line: ``k=v, k=v`` for objects, ``[a; b]`` for lists."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_inline(v)}" for k, v in value.items() if _present(v))
    if isinstance(value, list):
        return "[" + "; ".join(_inline(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
