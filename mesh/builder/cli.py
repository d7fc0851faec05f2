"""``mesh build``: an agent from a brief, through the registry's builder (``POST /v1/builder``).

    mesh build "Become a UX designer specialising in mobile apps"     # show the blueprint and kit
    mesh build --blueprint .mesh/builder/ux-designer.json --write --up    # build, sign, start, validate

Without ``--write`` nothing is written but the draft, saved for review under ``.mesh/builder/NAME.json``
(or ``--save FILE``): review or edit it, then build from it with ``--blueprint FILE --write`` (``--write``
takes only a reviewed draft). Questions about a vague brief (exit code 3) are answered with
``--answer "QUESTION=ANSWER"`` (or by editing the draft). ``--up`` starts the agent (``mesh agent run NAME
--registry URL``, in the background, its output in ``.mesh/logs/NAME.log``; in a running ``mesh up`` of the
workspace, ``mesh up`` starts it), waits until the registry admits it, then validates it against a generic
agent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mesh.builder.blueprint import BlueprintProblem, Draft
from mesh.tables import RegistryProblem, _command, _request, render, terminal_width
from mesh.workspace import Workspace

BUILD_SECONDS = 900.0  # a build asks the model many times (tasks, bootstrapping, judging)
ADMISSION_SECONDS = 90.0


def add_commands(sub: Any, common: argparse.ArgumentParser, client: argparse.ArgumentParser,
                 commands: dict[str, Any]) -> None:
    p = sub.add_parser("build", parents=[client, common], help="build an agent from a brief: blueprint, kit, "
                       "instructions, agents/NAME.py (signed), validation")
    p.add_argument("brief", nargs="?", help="what the agent should be, in words")
    p.add_argument("--blueprint", metavar="FILE", help="build from a reviewed (maybe edited) draft instead")
    p.add_argument("--name", help="the agent's name (default: the model's suggestion)")
    p.add_argument("--answer", action="append", default=[], metavar="QUESTION=ANSWER",
                   help="answer a question the builder asked (repeat)")
    p.add_argument("--save", metavar="FILE",
                   help="where to save the draft for review (default .mesh/builder/NAME.json)")
    p.add_argument("--write", action="store_true", help="write, sign and version the agent (after review)")
    p.add_argument("--force", action="store_true", help="overwrite an existing agents/NAME.py")
    p.add_argument("--up", action="store_true", help="with --write: start the agent, get it admitted, validate it")
    p.add_argument("--validate", action="store_true", help="validate the (running) agent NAME against a generic one")
    commands["build"] = lambda args: cmd_build(args.registry.rstrip("/"), args)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.blueprint:
        body: dict[str, Any] = {"blueprint": Draft.load(Path(args.blueprint)).to_json()}
    elif args.brief:
        answers = {}
        for pair in args.answer:
            question, separator, answer = pair.rpartition("=")
            if not separator or not question.strip():
                raise BlueprintProblem(f"--answer {pair!r}: write it as QUESTION=ANSWER")
            answers[question.strip()] = answer.strip()
        body = {"brief": args.brief, "answers": answers}
    else:
        raise BlueprintProblem("give a brief (mesh build \"...\") or --blueprint FILE")
    if args.name:
        body["name"] = args.name
    return body


@_command
def cmd_build(client: httpx.Client, args: argparse.Namespace) -> int:
    ws = Workspace(args.workspace)
    try:
        if args.validate and not args.write:
            if not args.name:
                raise BlueprintProblem("--validate needs --name NAME (the agent to validate)")
            return print_validation(_request(client, "POST", f"/v1/builder/{args.name}/validation", json={},
                                             timeout=BUILD_SECONDS))
        body = request_body(args)
    except BlueprintProblem as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return 2
    if args.up and not args.write:
        print("mesh: --up starts the agent the build writes: add --write (after reviewing the blueprint)",
              file=sys.stderr)
        return 2
    if args.write and not args.blueprint:
        print("mesh: --write builds from a reviewed draft: run `mesh build \"BRIEF\"` first, then "
              "`mesh build --blueprint FILE --write`", file=sys.stderr)
        return 2
    answer = _request(client, "POST", "/v1/builder", json={**body, "write": args.write, "force": args.force},
                      timeout=BUILD_SECONDS)
    draft = answer["draft"]
    if answer["stage"] == "questions":
        path = save_draft(ws, draft, args.save)
        print("The brief leaves questions open; answer them and run again:")
        for question in answer["questions"]:
            print(f"  ? {question}")
        print(f"\n  mesh build {json.dumps(draft['brief'])} --answer \"QUESTION=ANSWER\" ...\n"
              f"  (or edit {path} and run: mesh build --blueprint {path})")
        return 3
    print_draft(draft)
    print_kit(answer["kit"])
    if answer["stage"] == "review":
        path = save_draft(ws, draft, args.save)
        exists = f" (agents/{draft['name']}.py exists: add --force to overwrite it)" if answer["exists"] else ""
        print(f"\nNothing written yet. Review (or edit) {path}, then:\n  mesh build --blueprint {path} --write "
              f"[--up]{exists}")
        return 0
    print(f"\nwrote {', '.join(answer['files'].values())}; signed {answer['manifest']}; prompt version "
          f"{answer['prompt_version'][:12]} ({answer['pack']['demos']} worked examples; "
          f"{answer['tasks']['training']} training tasks, {answer['tasks']['held_out']} held out; "
          f"{spent(answer['lm'])})")
    missing = [s for s in answer["grants"]["needed"] if s not in answer["grants"]["granted"]]
    if missing:
        print(f"its kit calls need scopes it is not granted: add to registry/registry.toml\n  [grants]\n  "
              f"{answer['name']} = {json.dumps(answer['grants']['needed'])}")
    if not args.up:
        print(f"start it: mesh agent run {answer['name']} --registry {client.base_url}")
        return 0
    from mesh.supervisor import running_up

    up = running_up(ws)
    if up is not None and up["registry"].rstrip("/") == str(client.base_url).rstrip("/"):
        print(f"{answer['name']}: the running `mesh up` (pid {up['pid']}) starts it")
    else:
        start_agent(ws, answer["name"], str(client.base_url))
    wait_admitted(client, answer["name"])
    print(f"{answer['name']}: admitted by the registry at {client.base_url}")
    return print_validation(_request(client, "POST", f"/v1/builder/{answer['name']}/validation", json={},
                                     timeout=BUILD_SECONDS))


def save_draft(ws: Workspace, draft: dict[str, Any], where: str | None) -> Path:
    path = Path(where) if where else ws.state_dir / "builder" / f"{draft['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(draft, indent=2) + "\n")
    return path


def print_draft(draft: dict[str, Any]) -> None:
    blueprint = draft["blueprint"]
    print(f"agent {draft['name']}: {blueprint['role']}" + (f" ({blueprint['domain']})" if blueprint["domain"] else ""))
    if blueprint.get("audience"):
        print(f"  for: {blueprint['audience']}")
    for heading, key in (("objectives", "objectives"), ("constraints", "constraints")):
        for index, item in enumerate(blueprint.get(key) or []):
            print(f"  {heading if index == 0 else '':12} - {item}")
    for index, need in enumerate(blueprint.get("capabilities") or []):
        print(f"  {'needs' if index == 0 else '':12} - {need['name']}" + (f": {need['why']}" if need["why"] else ""))


def print_kit(kit: dict[str, Any]) -> None:
    rows = [["taken", f"{t['owner']}.{t['tool']}", t["why"]] for t in kit["taken"]] + \
           [["left", f"{t['owner']}.{t['tool']}", t["why"]] for t in kit["left"]]
    if kit.get("read_only"):
        print("  read-only role: tools that may change state or reach an open world are left out")
    if rows:
        print()
        print(render(["KIT", "TOOL", "WHY"], rows, width=terminal_width()))


def print_validation(report: dict[str, Any]) -> int:
    print(f"\nvalidation on {report['held_out']} held-out tasks ({report['model']}; {spent(report['lm'])}): "
          f"built {report['built']:.2f}, generic {report['generic']:.2f}, difference {report['difference']:+.2f}")
    print(render(["CRITERION", "BUILT", "GENERIC", "DIFFERENCE"],
                 [[name, c["built"], c["generic"], f"{c['difference']:+.2f}"]
                  for name, c in report["criteria"].items()],
                 width=terminal_width()))
    return 0


def spent(usage: dict[str, int]) -> str:
    return f"{usage['calls']} model calls, {usage['prompt_tokens'] + usage['completion_tokens']} tokens"


def start_agent(ws: Workspace, name: str, registry: str) -> subprocess.Popen[bytes]:
    """``mesh agent run NAME --registry URL`` in the background (its own session), output to a log file."""
    logs = ws.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen([sys.executable, "-m", "mesh.cli", "agent", "run", name, "--workspace", str(ws.root),
                                "--registry", registry], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, env=os.environ.copy())
    print(f"{name}: started (pid {process.pid}; output in {logs / (name + '.log')})")
    return process


def wait_admitted(client: httpx.Client, name: str, timeout: float = ADMISSION_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/agents/{name}")
        if response.status_code == 200 and response.json().get("status") == "active":
            return
        time.sleep(0.3)
    raise RegistryProblem(f"{name} was not admitted within {timeout:.0f} s (see .mesh/logs/{name}.log)")
