"""``mesh learn AGENT SERVICE`` and ``mesh prompts list|show|diff|rollback AGENT``, over the registry's routes.

``mesh learn`` finds (or derives) the agent's plan for the service, starts the loop, draws its progress
until it ends (Ctrl-C cancels the run), prints the metrics of every iteration, then assesses the agent on
the plan's held-out tasks.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from typing import Any

import httpx

from mesh.tables import _command, _request, render, terminal_width

POLL_SECONDS = 0.3
BAR = 24


def add_commands(sub: Any, common: argparse.ArgumentParser, client: argparse.ArgumentParser,
                 commands: dict[str, Any]) -> None:
    p = sub.add_parser("learn", parents=[client], help="let an agent learn a sandbox API until it is proficient")
    p.add_argument("agent", help="the agent that learns")
    p.add_argument("service", help="the sandbox API to learn (e.g. petstore)")
    p.add_argument("--iterations", type=int, help="budget: iterations at most")
    p.add_argument("--calls", type=int, help="budget: model and tool calls at most")
    p.add_argument("--tokens", type=int, help="budget: tokens at most")
    p.add_argument("--new-plan", action="store_true", help="derive a new plan even if the agent has one")
    p.add_argument("--sandbox", metavar="ID", help="practise in this sandbox of the agent (default: a new one)")
    p.add_argument("--mode", choices=("emulated", "mock", "connected"),
                   help="the new sandbox's mode (default emulated; connected needs secret_ref and mesh approve)")
    p.add_argument("--no-assess", action="store_true", help="skip the assessment on held-out tasks")
    commands["learn"] = lambda args: cmd_learn(args.registry.rstrip("/"), args)

    prompts = sub.add_parser("prompts", help="an agent's prompt versions: list, show, diff, roll back")
    prompts_sub = prompts.add_subparsers(dest="prompts_command", required=True)
    p = prompts_sub.add_parser("list", parents=[client], help="every version, the active one marked")
    p.add_argument("agent")
    p.add_argument("--system", help="only versions for this system")
    p = prompts_sub.add_parser("show", parents=[client], help="one version: metrics, lessons, demos")
    p.add_argument("agent")
    p.add_argument("version", help="a version id or its first 8 characters or more; 'active' with --system")
    p.add_argument("--system", help="with 'active': which system")
    p.add_argument("--program", action="store_true", help="print the saved program (JSON) itself")
    p = prompts_sub.add_parser("diff", parents=[client], help="what changed between two versions")
    p.add_argument("agent")
    p.add_argument("old")
    p.add_argument("new", nargs="?", help="default: the active version of the old one's system")
    p = prompts_sub.add_parser("rollback", parents=[client], help="serve an earlier version again")
    p.add_argument("agent")
    p.add_argument("version", nargs="?", help="default: the parent of the active version")
    p.add_argument("--system", help="which system's active version (needed when the agent learned several)")
    commands["prompts"] = lambda args: cmd_prompts(args.registry.rstrip("/"), args)


# -- mesh learn -------------------------------------------------------------------------------------------


@_command
def cmd_learn(client: httpx.Client, args: argparse.Namespace) -> int:
    if not _request(client, "GET", "/v1/lm")["configured"]:
        from mesh.lm.settings import HOW_TO_CONFIGURE

        print(f"mesh: the registry at {client.base_url}: {HOW_TO_CONFIGURE}", file=sys.stderr)
        return 1
    plans = _request(client, "GET", f"/v1/agents/{args.agent}/learning-plans")["plans"]
    plan = next((p for p in plans if p["system"] == args.service), None)
    if plan is None or args.new_plan:
        plan = _request(client, "POST", f"/v1/agents/{args.agent}/learning-plans", json={"system": args.service})
        training = sum(not t["held_out"] for t in plan["tasks"])
        print(f"plan {plan['id']}: {training} training tasks, {len(plan['tasks']) - training} held out, "
              f"{len(plan['objectives'])} objectives", file=sys.stderr)
    budget = {key: value for key in ("iterations", "calls", "tokens") if (value := getattr(args, key))}
    sandbox = args.sandbox or ({"mode": args.mode} if args.mode else None)
    run = _request(client, "POST", f"/v1/learning-plans/{plan['id']}/run",
                   json={"budget": budget, **({"sandbox": sandbox} if sandbox else {})})
    print(f"practising in sandbox {run['sandbox']} (mesh sandbox show {args.agent} {run['sandbox']})", file=sys.stderr)
    try:
        run = follow(client, run["id"])
    except KeyboardInterrupt:
        _request(client, "POST", f"/v1/learning-runs/{run['id']}/cancel", json={})
        print("\ncancelling…", file=sys.stderr)
        run = follow(client, run["id"])
    print_iterations(run)
    spent = run.get("spent") or {}
    print(f"\n{run['status']}: {run.get('reason') or ''} — {spent.get('lm_calls', 0)} model calls, "
          f"{spent.get('tool_calls', 0)} tool calls, {spent.get('tokens', 0)} tokens, {spent.get('seconds', 0)} s; "
          f"serving {str(run.get('final_version') or '-')[:12]}")
    if not args.no_assess and run["status"] != "cancelled":
        assessed = _request(client, "POST", f"/v1/learning-plans/{plan['id']}/assess",
                            json={"sandbox": run["result"]["sandbox"]} if (run.get("result") or {}).get("sandbox")
                            else {})
        criteria = ", ".join(f"{c['id']} {c['passed']}/{c['attempted']}" for c in assessed["criteria"])
        print(f"assessment on held-out tasks: {assessed['level']} (score {assessed['score']:.2f}; {criteria})")
    return 0 if run["status"] == "proficient" else 2


def follow(client: httpx.Client, run_id: str) -> dict[str, Any]:
    """Poll the run until it ends, drawing a progress bar on stderr."""
    while True:
        run = _request(client, "GET", f"/v1/learning-runs/{run_id}")
        if run["status"] != "running":
            if sys.stderr.isatty():
                print(file=sys.stderr)
            return run
        draw(run.get("progress") or {}, run.get("budget") or {})
        time.sleep(POLL_SECONDS)


def draw(progress: dict[str, Any], budget: dict[str, Any]) -> None:
    done, total = progress.get("done", 0), progress.get("of") or 1
    filled = int(BAR * done / total)
    line = (f"\riteration {progress.get('iteration', '-')}/{budget.get('iterations', '?')} "
            f"[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total} {progress.get('phase', '')} "
            f"{progress.get('task', '')}")
    if sys.stderr.isatty():
        print(line.ljust(100)[:120], end="", file=sys.stderr, flush=True)


def print_iterations(run: dict[str, Any]) -> None:
    rows = [[i["number"], i["success_rate"], f"{i['passed']}/{i['attempted']}", i["retries"], i["lm_calls"],
             i["tool_calls"], i["tokens"], i["seconds"], (i["prompt_version"] or "")[:12], len(i["lessons"])]
            for i in run.get("iterations", [])]
    if rows:
        print(render(["ITERATION", "SUCCESS", "PASSED", "RETRIES", "LM CALLS", "TOOL CALLS", "TOKENS", "SECONDS",
                      "VERSION", "LESSONS"], rows, width=terminal_width()))


# -- mesh prompts -------------------------------------------------------------------------------------------


@_command
def cmd_prompts(client: httpx.Client, args: argparse.Namespace) -> int:
    base = f"/v1/agents/{args.agent}/prompts"
    if args.prompts_command == "list":
        listed = _request(client, "GET", base, params={"system": args.system} if args.system else None)
        if not listed["versions"]:
            print(f"{args.agent} has no prompt versions yet — `mesh learn {args.agent} SERVICE` makes some",
                  file=sys.stderr)
            return 0
        print(render(["VERSION", "SYSTEM", "ACTIVE", "SUCCESS", "LESSONS", "DEMOS", "PARENT", "CREATED"],
                     [[v["id"][:12], v["system"], "*" if v["active"] else "", v["metrics"].get("success_rate"),
                       len(v["lessons"]), v["demos"], (v["parent_id"] or "")[:12], v["created_at"][:19]]
                      for v in listed["versions"]], width=terminal_width()))
        return 0
    if args.prompts_command == "show":
        version = _version(client, base, args.version, args.system)
        if args.program:
            print(version["program"])
            return 0
        print(f"version   {version['id']}{'  (active)' if version['active'] else ''}\nsystem    {version['system']}\n"
              f"parent    {version['parent_id'] or '-'}\nfrom      plan {version['plan_id'] or '-'}, run "
              f"{version['run_id'] or '-'}, iteration {version['iteration'] if version['iteration'] else '-'}\n"
              f"metrics   {json.dumps(version['metrics'])}\ndemos     {version['demos']}\nlessons")
        for lesson in version["lessons"] or ["(none)"]:
            print(f"  - {lesson}")
        return 0
    if args.prompts_command == "diff":
        old = _version(client, base, args.old, None)
        new = _version(client, base, args.new or "active", old["system"])
        lines = difflib.unified_diff(_readable(old["program"]), _readable(new["program"]),
                                     fromfile=old["id"][:12], tofile=new["id"][:12], lineterm="")
        print("\n".join(lines) or "no difference")
        return 0
    listed = _request(client, "GET", base)
    systems = sorted(listed["active"])
    system = args.system or (systems[0] if len(systems) == 1 else None)
    if system is None:
        print(f"mesh: {args.agent} serves versions for {', '.join(systems) or 'no system'}; say which with --system",
              file=sys.stderr)
        return 1
    target = args.version
    if target is None:
        active = _version(client, base, "active", system)
        if not active["parent_id"]:
            print(f"mesh: {active['id'][:12]} has no earlier version to roll back to", file=sys.stderr)
            return 1
        target = active["parent_id"]
    answer = _request(client, "POST", f"{base}/{target}/activate", json={})
    print(f"{args.agent} now serves {answer['active'][:12]} for {answer['system']} "
          f"(was {(answer['previous'] or '-')[:12]})")
    return 0


def _version(client: httpx.Client, base: str, version: str, system: str | None) -> dict[str, Any]:
    return _request(client, "GET", f"{base}/{version}", params={"system": system} if system else None)


def _readable(program: str) -> list[str]:
    """The saved program with its instructions' line breaks unfolded, so a diff shows lessons line by line."""
    lines: list[str] = []
    for line in json.dumps(json.loads(program), indent=2, ensure_ascii=False).splitlines():
        lines.extend(line.replace("\\n", "\n").splitlines())
    return lines
