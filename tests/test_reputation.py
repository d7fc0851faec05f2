"""Online reputation: forgetting, blame, latency quantiles and restart-safe state (real river)."""

from __future__ import annotations

import json
import random

import pytest

from mesh.registry.reputation import Outcome, Reputation


def feed(
    reputation: Reputation, status: str, count: int, latency_ms: float | None = 50.0, fault: str = "target"
) -> None:
    for _ in range(count):
        reputation.learn_one(Outcome(status, latency_ms, fault))  # type: ignore[arg-type]


def test_a_new_agent_starts_at_the_neutral_prior() -> None:
    reputation = Reputation()
    assert reputation.score() == pytest.approx(0.6)
    assert reputation.components() == {
        "success_rate": pytest.approx(0.6),
        "latency_p50_ms": None,
        "latency_p99_ms": None,
        "latency_ewm_ms": None,
        "tool_errors": 0.0,
        "timeouts": 0.0,
        "schema_violations": 0.0,
        "denials": 0.0,
        "calls": 0,
    }


def test_failures_after_a_long_good_run_drop_the_score_within_tens_of_calls() -> None:
    reputation = Reputation()
    feed(reputation, "ok", 200)
    assert reputation.score() > 0.9
    feed(reputation, "error", 30)
    assert reputation.score() < 0.5
    assert reputation.components()["calls"] == 230


def test_it_recovers_as_fast_as_it_fell() -> None:
    reputation = Reputation()
    feed(reputation, "error", 100)
    assert reputation.score() < 0.15
    feed(reputation, "ok", 60)
    assert reputation.score() > 0.8


def test_the_callers_fault_is_counted_but_costs_the_target_nothing() -> None:
    reputation = Reputation()
    feed(reputation, "ok", 40)
    before = reputation.score()
    feed(reputation, "invalid", 25, latency_ms=0.1, fault="caller")
    feed(reputation, "denied", 25, latency_ms=None, fault="caller")
    feed(reputation, "error", 25, fault="caller")
    assert reputation.score() == before  # no decay of the target's evidence either
    parts = reputation.components()
    assert parts["schema_violations"] > 1
    assert parts["denials"] > 1
    assert parts["latency_p50_ms"] == 50.0  # caller-fault latencies are not the target's
    assert parts["calls"] == 115


def test_denials_never_move_the_success_rate() -> None:
    reputation = Reputation()
    feed(reputation, "ok", 10)
    before = reputation.success_rate()
    feed(reputation, "denied", 50, latency_ms=None, fault="target")
    assert reputation.success_rate() == before
    assert reputation.components()["denials"] > 10


def test_timeouts_and_invalid_outputs_cost_more_than_errors() -> None:
    errors, timeouts, invalid = Reputation(), Reputation(), Reputation()
    for reputation, status in ((errors, "error"), (timeouts, "timeout"), (invalid, "invalid")):
        feed(reputation, "ok", 40, latency_ms=None)
        feed(reputation, status, 10, latency_ms=None)
    assert errors.success_rate() == timeouts.success_rate() == invalid.success_rate()
    assert timeouts.score() < errors.score()
    assert invalid.score() < errors.score()
    assert timeouts.components()["timeouts"] > 5
    assert invalid.components()["schema_violations"] > 5


def test_tool_errors_are_counted_apart_and_cost_less_than_failures() -> None:
    tool_errors, failures = Reputation(), Reputation()
    for reputation, status in ((tool_errors, "tool_error"), (failures, "error")):
        feed(reputation, "ok", 40)
        feed(reputation, status, 10)
    assert tool_errors.success_rate() > failures.success_rate()  # a tool error is not the agent failing
    assert tool_errors.score() > failures.score()
    assert tool_errors.components()["tool_errors"] > 5 and failures.components()["tool_errors"] == 0.0
    assert failures.components()["success_rate"] < 0.9


def test_tool_errors_never_take_more_than_a_fifth_of_the_score() -> None:
    healthy, fresh = Reputation(), Reputation()
    feed(healthy, "ok", 100)
    before = healthy.score()
    for reputation in (healthy, fresh):
        feed(reputation, "tool_error", 1000)
    assert healthy.score() >= 0.8 * before
    assert healthy.score() < before  # they do count
    # An agent nobody has seen succeed still stays above the shipped policy's min_reputation (0.3).
    assert fresh.score() >= 0.8 * 0.6 * 0.8 > 0.3
    assert fresh.components()["tool_errors"] > 25


def test_ok_calls_wear_tool_errors_off() -> None:
    reputation = Reputation()
    feed(reputation, "ok", 40)
    feed(reputation, "tool_error", 20)
    low = reputation.score()
    feed(reputation, "ok", 100)
    assert reputation.score() > low and reputation.components()["tool_errors"] < 1  # 5 half-lives: 1/32 left


def test_a_failure_caused_by_an_inner_call_costs_the_target_nothing() -> None:
    reputation = Reputation()
    feed(reputation, "ok", 40)
    before = reputation.score()
    feed(reputation, "error", 30, fault="inner")
    feed(reputation, "tool_error", 30, fault="inner")
    feed(reputation, "timeout", 5, fault="inner")
    assert reputation.score() == before
    assert reputation.components()["calls"] == 105
    assert reputation.components()["timeouts"] > 1  # still counted, as with the caller's faults


def test_slow_agents_score_lower_but_latency_never_dominates() -> None:
    fast, slow = Reputation(), Reputation()
    feed(fast, "ok", 100, latency_ms=20.0)
    feed(slow, "ok", 100, latency_ms=5000.0)
    assert slow.score() < fast.score()
    assert slow.score() > 0.8 * fast.score()


def test_latency_quantiles_track_a_bimodal_stream() -> None:
    rng = random.Random(7)
    reputation = Reputation()
    for _ in range(2000):
        slow = rng.random() < 0.1
        latency = rng.gauss(2500.0, 150.0) if slow else rng.gauss(40.0, 5.0)
        reputation.learn_one(Outcome("ok", max(latency, 0.0)))
    parts = reputation.components()
    assert 25.0 < parts["latency_p50_ms"] < 55.0
    assert 2000.0 < parts["latency_p99_ms"] < 3200.0
    assert 100.0 < parts["latency_ewm_ms"] < 900.0  # the mean sits between the modes


def test_latency_figures_follow_a_change() -> None:
    reputation = Reputation()
    feed(reputation, "ok", 500, latency_ms=30.0)
    feed(reputation, "ok", 150, latency_ms=900.0)
    parts = reputation.components()
    assert parts["latency_p50_ms"] == 900.0
    assert parts["latency_ewm_ms"] > 800.0


def test_state_round_trips_through_json_exactly() -> None:
    rng = random.Random(11)
    statuses = ["ok"] * 8 + ["error", "tool_error", "timeout", "invalid", "denied", "unavailable"]
    faults = ["target", "target", "caller", "inner"]

    def outcome() -> Outcome:
        return Outcome(rng.choice(statuses), rng.uniform(5.0, 3000.0), rng.choice(faults))  # type: ignore[arg-type]

    original = Reputation(half_life=15, latency_budget_ms=500, window=64)
    for _ in range(300):
        original.learn_one(outcome())
    state = json.loads(json.dumps(original.to_state(), allow_nan=False))
    restored = Reputation.from_state(state)
    assert restored.score() == original.score()
    assert restored.components() == original.components()
    for _ in range(100):  # and both keep learning identically
        step = outcome()
        original.learn_one(step)
        restored.learn_one(step)
    assert restored.score() == original.score()
    assert restored.components() == original.components()
    assert restored.to_state() == original.to_state()


def test_state_of_a_fresh_reputation_round_trips() -> None:
    restored = Reputation.from_state(json.loads(json.dumps(Reputation().to_state())))
    assert restored.components() == Reputation().components()


def test_a_version_1_state_loads_with_no_tool_errors() -> None:
    original = Reputation()
    feed(original, "ok", 30)
    feed(original, "error", 5)
    state = original.to_state()
    old = {key: value for key, value in state.items() if key != "tool_errors"} | {"version": 1}
    restored = Reputation.from_state(old)
    assert restored.score() == original.score()
    assert restored.components()["tool_errors"] == 0.0
    assert restored.to_state()["version"] == 2


def test_unknown_state_version_is_refused() -> None:
    state = Reputation().to_state() | {"version": 99}
    with pytest.raises(ValueError, match="version"):
        Reputation.from_state(state)


@pytest.mark.parametrize(
    "arguments",
    [("fine", 1.0, "target"), ("ok", -1.0, "target"), ("ok", float("nan"), "target"), ("ok", 1.0, "nobody")],
)
def test_outcomes_are_validated(arguments: tuple) -> None:
    with pytest.raises(ValueError):
        Outcome(*arguments)
