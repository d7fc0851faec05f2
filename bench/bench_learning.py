"""The learning loop's curriculum on the shipped specs, against whatever model is configured.

    python bench/bench_learning.py [--iterations 5] [--specs petstore issues] [--optimizer gepa]
                                   [--through-registry]

For each spec (``docs/openapi/petstore.yaml``, ``docs/openapi/issues.yaml``) it derives the plan, runs the
loop until the model is proficient or the budget is spent, then assesses it on the held-out tasks, and
prints the success rate of every iteration with the model calls, tool calls and tokens it spent. The
model is the workspace's ``[lm]`` / ``MESH_LM_*`` (``mesh lm check`` says whether it answers); without one
it says so and measures nothing. By default the target is the mock API in this process; with
``--through-registry`` every call goes through a registry, in a sandbox the run creates, as ``mesh learn`` does.
Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SPECS = {"petstore": REPO / "docs" / "openapi" / "petstore.yaml", "issues": REPO / "docs" / "openapi" / "issues.yaml"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=3_000_000)
    parser.add_argument("--specs", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--optimizer", default="bootstrap", choices=["bootstrap", "gepa", "none"])
    parser.add_argument("--through-registry", action="store_true", help="call the sandbox through a registry")
    args = parser.parse_args()

    from mesh.lm.settings import HOW_TO_CONFIGURE
    from mesh.registry.config import lm_settings
    from mesh.workspace import Workspace

    settings = lm_settings(Workspace(REPO).config())
    if not settings.configured:
        print(f"measured nothing: {HOW_TO_CONFIGURE}")
        return 0
    where = "registry, in an emulated sandbox" if args.through_registry else "in-process mock"
    print(f"model: {settings.describe()}  budget: {args.iterations} iterations, {args.calls} calls, "
          f"{args.tokens} tokens per spec  optimizer: {args.optimizer}  target: {where}")
    if args.through_registry:
        return through_registry(args)
    for name in args.specs:
        in_process(name, settings, args)
    return 0


def in_process(name: str, settings: Any, args: argparse.Namespace) -> None:
    from mesh.learning.assessment import assess
    from mesh.learning.budget import Budget
    from mesh.learning.curriculum import derive_plan
    from mesh.learning.loop import LearningLoop, LoopSettings, MemoryRecorder
    from mesh.learning.program import state_of
    from mesh.learning.target import MockTarget
    from mesh.lm.model import build_lm
    from mesh.sandbox.openapi_mock import MockAPI

    target = MockTarget(MockAPI.from_file(SPECS[name]))
    plan = {**derive_plan(name, target.tools()), "threshold": 1.0}
    recorder = MemoryRecorder()
    lm = build_lm(settings)
    started = time.perf_counter()
    result = LearningLoop(plan, target, lm, recorder, budget=Budget(args.iterations, args.calls, args.tokens),
                          settings=LoopSettings(optimizer=args.optimizer)).run()
    print_run(name, plan, result.status, result.reason, recorder.iterations, result.spent.to_json(),
              time.perf_counter() - started)
    best = recorder.versions.get(result.best_version or "", {})
    scored = assess(LearningLoop(plan, target, lm, MemoryRecorder(),
                                 start_state=state_of(best["program"]) if best else None))
    print_assessment(scored)


def print_run(name: str, plan: dict[str, Any], status: str, reason: str, iterations: list[dict[str, Any]],
              spent: dict[str, Any], seconds: float) -> None:
    training = sum(not t["held_out"] for t in plan["tasks"])
    print(f"\n{name}: {training} training tasks, {len(plan['tasks']) - training} held out")
    print(f"{'iter':>4} {'success':>8} {'passed':>7} {'retries':>7} {'lm calls':>8} {'tool calls':>10} "
          f"{'tokens':>9} {'seconds':>8}  lessons")
    for i in iterations:
        print(f"{i['number']:>4} {i['success_rate']:>8.2f} {str(i['passed']) + '/' + str(i['attempted']):>7} "
              f"{i['retries']:>7} {i['lm_calls']:>8} {i['tool_calls']:>10} {i['tokens']:>9} {i['seconds']:>8.1f}  "
              f"{len(i['lessons'])}")
    print(f"{status}: {reason}; spent {spent['lm_calls']} model calls, {spent['tool_calls']} tool calls, "
          f"{spent['tokens']} tokens in {seconds:.1f} s")


def print_assessment(scored: dict[str, Any]) -> None:
    criteria = ", ".join(f"{c['id']} {c['passed']}/{c['attempted']}" for c in scored["criteria"])
    print(f"held-out assessment: {scored['level']} (score {scored['score']:.2f}; {criteria})")


def through_registry(args: argparse.Namespace) -> int:
    """A registry, the sandbox and a learner agent as processes on a fresh workspace; the loop runs in the registry."""
    import httpx
    from common import fresh_workspace, start_mesh_process

    from mesh.serving import free_port

    workspace = fresh_workspace()
    (workspace / "agents" / "learner.py").write_text(
        'from mesh import Agent\n\nagent = Agent("learner", description="Learns sandbox APIs.")\n\n\n'
        '@agent.tool(read_only=True)\ndef ready() -> bool:\n    """Always true."""\n    return True\n')
    config = workspace / "registry" / "registry.toml"
    grant = '[grants]\nlearner = ["sandbox:read", "sandbox:call"]\n'
    config.write_text(config.read_text().replace("[grants]\n", grant))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [start_mesh_process(["registry", "run", "--workspace", str(workspace), "--port", str(port),
                                     "--trust-local-keys"], f"{url}/healthz")]
    try:
        for agent in ("sandbox", "learner"):
            agent_port = free_port()
            processes.append(start_mesh_process(["agent", "run", agent, "--workspace", str(workspace), "--port",
                                                 str(agent_port), "--registry", url],
                                                f"http://127.0.0.1:{agent_port}/healthz"))
        for _ in range(300):
            agents = {a["name"]: a["status"] for a in httpx.get(f"{url}/v1/agents").json()["agents"]}
            if agents.get("sandbox") == agents.get("learner") == "active":
                break
            time.sleep(0.1)
        client = httpx.Client(base_url=f"{url}/v1", timeout=600)
        for name in args.specs:
            plan = client.post("/agents/learner/learning-plans", json={"system": name}).raise_for_status().json()
            started = time.perf_counter()
            budget = {"iterations": args.iterations, "calls": args.calls, "tokens": args.tokens}
            run = client.post(f"/learning-plans/{plan['id']}/run", json={"budget": budget, "optimizer": args.optimizer}
                              ).raise_for_status().json()
            while run["status"] == "running":
                time.sleep(0.5)
                run = client.get(f"/learning-runs/{run['id']}").json()
            print_run(name, plan, run["status"], run["reason"] or "", run["iterations"], run["spent"],
                      time.perf_counter() - started)
            print_assessment(client.post(f"/learning-plans/{plan['id']}/assess", json={}).raise_for_status().json())
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
