"""The one rule for names in the mesh: agents, tools, resources and prompts.

A name is 1 to 64 characters: ASCII letters, digits, ``_``, ``-`` and ``.``, starting and ending with a
letter or digit, with no ``__`` anywhere. That keeps every name safe as one file-name component (no
``/``, no ``..`` on its own, no leading dot, nothing a shell or a URL path must escape) and keeps the
registry's ``AGENT__TOOL`` names unambiguous (the first ``__`` is always the separator).

Every entry checks it: the ``Agent`` and ``ToolKit`` constructors and decorators, signing, the
workspace's paths, the registry's routes and registrations, and a token's ``sub``.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^(?!.*__)[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = ("1-64 ASCII letters, digits, '_', '-' or '.', starting and ending with a letter or digit, "
             "without '__'")


class NameProblem(ValueError):
    """A name that breaks the rule; the message quotes it and states the rule."""


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it follows the rule, else raise ``NameProblem`` naming ``what`` it is."""
    if not is_valid_name(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80] + "...")
        raise NameProblem(f"{what} {shown} is not a valid name: {NAME_RULE}")
    return name  # type: ignore[return-value]
