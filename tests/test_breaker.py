"""Circuit breaker state transitions: closed → open → half-open → closed (or open again), and what does not count."""

from __future__ import annotations

import time

import pytest

from mesh.registry.breaker import CLOSED, HALF_OPEN, OPEN, Breakers, Thresholds
from mesh.registry.problems import Problem
from mesh.registry.reputation import Outcome

HEALTHY, SHUNNED = 0.8, 0.2
OK, ERROR = Outcome("ok", 3.0), Outcome("error", 3.0)


def breakers(open_seconds: float = 60.0, **overrides) -> Breakers:
    limits = {"consecutive_failures": 3, "trip_below": 0.3, "open_seconds": open_seconds, "probe_calls": 1,
              "probe_timeout": 30.0, **overrides}
    return Breakers(Thresholds(**limits))


def call(b: Breakers, run: str, outcome: Outcome | None, score: float = HEALTHY) -> bool:
    """One call admitted while the agent looked healthy, ending with ``outcome`` and the reputation at ``score``."""
    probe = b.admit("a", run, HEALTHY)
    b.record("a", run, outcome, score)
    return probe


def test_failures_in_a_row_open_it_and_a_success_resets_the_count():
    b = breakers()
    call(b, "1", ERROR)
    call(b, "2", ERROR)
    call(b, "3", OK)
    assert b.get("a").state == CLOSED and b.get("a").failures == 0
    for run in "456":
        call(b, run, ERROR)
    assert b.get("a").state == OPEN and "3 failures in a row" in b.to_json("a")["reason"]
    with pytest.raises(Problem) as refused:
        b.admit("a", "7", HEALTHY)
    assert refused.value.kind == "circuit-open" and refused.value.status == 503
    assert refused.value.extra["retry_after"] >= 1 and refused.value.extra["breaker"]["state"] == OPEN


def test_a_failure_leaving_the_reputation_below_the_threshold_opens_it_at_once():
    b = breakers()
    call(b, "1", ERROR, score=SHUNNED)
    assert b.get("a").state == OPEN and "reputation 0.200 is below 0.3" in b.to_json("a")["reason"]


def test_a_low_reputation_learnt_elsewhere_opens_it_when_a_call_arrives():
    b = breakers()
    with pytest.raises(Problem):
        b.admit("a", "1", SHUNNED)  # e.g. another replica's calls lowered the shared reputation
    assert b.get("a").state == OPEN


def test_what_does_not_blame_the_target_neither_trips_nor_closes_it():
    b = breakers()
    call(b, "0", ERROR)
    call(b, "1", ERROR)
    for run, outcome in enumerate([Outcome("invalid", fault="caller"), Outcome("denied", fault="caller"),
                                   Outcome("tool_error", 2.0), Outcome("error", 2.0, fault="inner"), None] * 3):
        call(b, f"x{run}", outcome, score=SHUNNED)
    assert b.get("a").state == CLOSED and b.get("a").failures == 2  # neither reset nor counted


def test_after_open_seconds_one_probe_goes_and_its_success_closes_it():
    b = breakers(open_seconds=0.0)
    call(b, "1", ERROR, score=SHUNNED)
    assert b.get("a").state == OPEN
    assert b.admit("a", "probe", SHUNNED) is True  # open_seconds passed: half-open, this call is the probe
    assert b.get("a").state == HALF_OPEN
    with pytest.raises(Problem) as busy:  # one probe at a time
        b.admit("a", "other", SHUNNED)
    assert busy.value.kind == "circuit-open" and "half-open" in busy.value.detail
    b.record("a", "probe", OK, score=0.25)  # succeeded, but the reputation is still below the threshold
    assert b.get("a").state == HALF_OPEN
    assert call(b, "probe2", OK, score=0.35) is True
    assert b.get("a").state == CLOSED and b.admit("a", "next", 0.35) is False


def test_a_failed_probe_opens_it_again():
    b = breakers(open_seconds=0.0)
    call(b, "1", ERROR, score=SHUNNED)
    assert call(b, "probe", ERROR, score=SHUNNED) is True
    assert b.get("a").state == OPEN and "a probe call failed" in b.to_json("a")["reason"]


def test_a_probe_never_heard_back_from_frees_its_place():
    b = breakers(open_seconds=0.0, probe_timeout=0.0)
    call(b, "1", ERROR, score=SHUNNED)
    assert b.admit("a", "lost", SHUNNED) is True
    time.sleep(0.01)
    assert b.admit("a", "next", SHUNNED) is True  # "lost" outlived probe_timeout


def test_open_shows_how_long_it_still_refuses():
    b = breakers(open_seconds=30.0)
    call(b, "1", ERROR, score=SHUNNED)
    shown = b.to_json("a")
    assert shown["state"] == OPEN and 0 < shown["retry_after"] <= 30.0
    fresh = breakers().to_json("never-called")
    assert fresh["state"] == CLOSED and fresh["failures_in_a_row"] == 0 and "reason" not in fresh


def test_by_default_the_reputation_alone_opens_it():
    b = breakers(consecutive_failures=0)
    for run in range(10):
        call(b, str(run), ERROR, score=HEALTHY)  # failing, yet still trusted: the breaker stays closed
    assert b.get("a").state == CLOSED
    call(b, "low", ERROR, score=SHUNNED)
    assert b.get("a").state == OPEN
