"""Policy evaluation and reputation update costs, in µs. Figures only: run ``python bench/bench_policy.py``."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import regopy

from mesh.registry.policy import ENTRYPOINT, PolicyEngine, input_digest
from mesh.registry.reputation import Outcome, Reputation

POLICIES = Path(__file__).resolve().parents[1] / "registry" / "policies"
SETTINGS = {"min_reputation": 0.3, "allow_destructive": ["janitor.*"], "allow_anonymous": False}
CALL = {
    "caller": {"id": "agent:librarian", "kind": "agent", "scopes": ["notes:read", "web:fetch"], "reputation": 0.8},
    "target": {
        "agent": "search",
        "tool": "find",
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
        "scopes": ["notes:read"],
        "reputation": 0.9,
    },
    "arguments": {"query": "how does the registry learn reputation", "limit": 10},
}


def timings(fn: Callable[[], object], runs: int, warmup: int = 200) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def report(label: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    print(f"{label:<44} median {statistics.median(ordered):8.1f} µs   p99 {p99:8.1f} µs")


def main() -> None:
    runs = 5000
    engine = PolicyEngine(POLICIES, data=SETTINGS, check_interval=1.0)
    denied = {**CALL, "target": {**CALL["target"], "annotations": {}, "reputation": 0.1}}
    print(f"policy: {len(engine.files)} file(s) from {POLICIES}, {runs} evaluations each")
    report("evaluate (allowed call)", timings(lambda: engine.evaluate(CALL), runs))
    report("evaluate (denied by two rules)", timings(lambda: engine.evaluate(denied), runs))

    # Where the time goes: building regopy's input, the compiled query, the RFC 8785 digest.
    interpreter, bundle = engine._interpreter, engine._bundle
    prepared = regopy.Input(CALL)
    interpreter.set_input(prepared)
    report("  regopy.Input(call)", timings(lambda: regopy.Input(CALL), runs))
    report("  set_input + query_bundle_entrypoint", timings(lambda: query(interpreter, bundle, prepared), runs))
    report("  input_digest (rfc8785 + sha256)", timings(lambda: input_digest(CALL), runs))
    report("  reload_if_changed (stat, unchanged)", timings(engine.reload_if_changed, runs))
    floor = regopy.Interpreter()
    floor.add_module("floor.rego", 'package mesh.authz\n\ndecision := {"allow": true, "deny": set()}\n')
    trivial = floor.build("decision := data.mesh.authz.decision", [ENTRYPOINT])
    report("  the same on a one-line policy (floor)", timings(lambda: query(floor, trivial, prepared), runs))

    rng = random.Random(1)
    outcomes = [
        Outcome(rng.choice(["ok"] * 9 + ["error", "timeout"]), rng.uniform(5, 2000), "target") for _ in range(runs)
    ]
    reputation = Reputation()
    print(f"\nreputation: {runs} updates")
    feed = iter(outcomes * 2)
    report("learn_one", timings(lambda: reputation.learn_one(next(feed)), runs, warmup=runs // 2))
    report("score", timings(reputation.score, runs))
    report("components", timings(reputation.components, runs))
    report("to_state + from_state", timings(lambda: Reputation.from_state(reputation.to_state()), 1000))


def query(interpreter: regopy.Interpreter, bundle: regopy.Bundle, prepared: regopy.Input) -> None:
    interpreter.set_input(prepared)
    interpreter.query_bundle_entrypoint(bundle, ENTRYPOINT)


if __name__ == "__main__":
    main()
