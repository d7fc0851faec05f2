"""``mesh lm check``: does the configured model answer?"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mesh.lm.settings import NoModelConfigured
from mesh.workspace import Workspace


def add_commands(sub: Any, common: argparse.ArgumentParser, commands: dict[str, Any]) -> None:
    lm = sub.add_parser("lm", help="the language model of the mesh's LM features")
    lm_sub = lm.add_subparsers(dest="lm_command", required=True)
    lm_sub.add_parser("check", parents=[common], help="ask the configured model one question: does it answer?")
    commands["lm"] = cmd_lm


def cmd_lm(args: argparse.Namespace) -> int:
    from mesh.lm.model import check
    from mesh.registry.config import lm_settings

    settings = lm_settings(Workspace(args.workspace).config())
    try:
        result = check(settings)
    except NoModelConfigured as exc:
        print(f"mesh: {exc}", file=sys.stderr, flush=True)
        return 1
    if result.ok:
        print(f"{result.model}: answers ({result.seconds:.2f} s): {result.detail!r}")
        return 0
    print(f"{result.model}: does not answer ({result.seconds:.2f} s): {result.detail}")
    return 1
