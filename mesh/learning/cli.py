"""``mesh learn AGENT SERVICE`` and ``mesh prompts list|show|diff|rollback AGENT``: the learning routes."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any, common: argparse.ArgumentParser, client: argparse.ArgumentParser,
                 commands: dict[str, Any]) -> None:
    pass
