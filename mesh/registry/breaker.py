"""Per agent circuit breakers: stop sending calls to an agent that keeps failing, and let it earn its way back.

Three states, per agent, in each registry process:

- **closed**: calls go through. A failure the target is to blame for (``Outcome.blames_target``: an error,
  timeout, invalid answer, unreachable) that leaves the agent's reputation below ``trip_below`` opens the
  breaker; so do ``consecutive_failures`` of them in a row, when set (0, the default: the reputation
  alone decides, as the policy's ``low_reputation`` rule did before). A success resets the count.
  A reputation found below ``trip_below`` when a call arrives (another replica's calls lowered it)
  opens it too.
- **open**: calls are refused at once, before they are checked or forwarded (problem ``circuit-open``,
  503, with ``Retry-After``; the run is recorded as ``circuit_open``), for ``open_seconds``.
- **half-open**: then up to ``probe_calls`` calls at a time go through as probes (the policy sees
  ``target.probe: true``, so its ``low_reputation`` rule lets them pass). A probe that fails opens the
  breaker again; one that succeeds closes it once the reputation is back at ``trip_below`` or above,
  else the next probe may go.

Outcomes that do not blame the target (the caller's mistakes, policy denials, tool errors, a failure
caused by an inner call) neither trip nor close a breaker. Thresholds: ``[breaker]`` in registry.toml
(``config.BreakerConfig``); ``trip_below`` defaults to ``[policy] min_reputation`` and ``open_seconds``
to ``[registry] probe_interval``. Each replica keeps its own breakers; they read the shared reputation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mesh.registry.config import RegistryConfig
from mesh.registry.problems import Problem
from mesh.registry.reputation import Outcome

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass(frozen=True)
class Thresholds:
    consecutive_failures: int
    trip_below: float
    open_seconds: float
    probe_calls: int
    probe_timeout: float  # a probe not heard back from within this long frees its place

    @classmethod
    def of(cls, config: RegistryConfig) -> Thresholds:
        """``[breaker]``, with ``trip_below`` defaulting to ``[policy] min_reputation`` and ``open_seconds`` to
        ``[registry] probe_interval``."""
        breaker = config.breaker
        trip_below = breaker.trip_below if breaker.trip_below is not None else config.policy.get("min_reputation", 0.3)
        open_seconds = breaker.open_seconds if breaker.open_seconds is not None else config.probe_interval
        return cls(consecutive_failures=breaker.consecutive_failures, trip_below=float(trip_below),
                   open_seconds=open_seconds, probe_calls=breaker.probe_calls, probe_timeout=config.call_timeout + 5)


@dataclass
class Breaker:
    """One agent's breaker: its state, since when, and why."""

    state: str = CLOSED
    since: float = field(default_factory=time.monotonic)
    changed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    failures: int = 0  # target failures in a row while closed
    reason: str | None = None  # why it last opened
    probes: dict[str, float] = field(default_factory=dict)  # run id -> when the probe went

    def move(self, state: str, reason: str | None = None) -> None:
        self.state, self.since, self.changed_at = state, time.monotonic(), datetime.now(UTC)
        if state == OPEN:
            self.reason = reason
            self.probes.clear()
        if state == CLOSED:
            self.failures = 0


class Breakers:
    """Every agent's breaker: ``admit`` before a call, ``record`` its outcome after."""

    def __init__(self, thresholds: Thresholds):
        self.thresholds = thresholds
        self.breakers: dict[str, Breaker] = {}
        self.started = datetime.now(UTC)  # an agent no call has reached yet has been closed since then

    def get(self, agent: str) -> Breaker:
        return self.breakers.setdefault(agent, Breaker())

    def admit(self, agent: str, run_id: str, score: float) -> bool:
        """May a call (``run_id``) go to ``agent`` now? True when it goes as a probe; ``circuit-open`` when not."""
        breaker, limits = self.get(agent), self.thresholds
        now = time.monotonic()
        if breaker.state == CLOSED and score < limits.trip_below:
            breaker.move(OPEN, f"reputation {score:.3f} is below {limits.trip_below:g}")
        if breaker.state == OPEN and now - breaker.since >= limits.open_seconds:
            breaker.move(HALF_OPEN)
        if breaker.state == CLOSED:
            return False
        if breaker.state == HALF_OPEN:
            for stale in [run for run, sent in breaker.probes.items() if now - sent > limits.probe_timeout]:
                del breaker.probes[stale]
            if len(breaker.probes) < limits.probe_calls:
                breaker.probes[run_id] = now
                return True
            raise Problem("circuit-open", f"{agent}'s circuit breaker is half-open and its probe calls are under way; "
                          "retry shortly", retry_after=1, breaker=self.to_json(agent))
        wait = max(1, round(limits.open_seconds - (now - breaker.since)))
        raise Problem("circuit-open", f"{agent}'s circuit breaker is open ({breaker.reason}); calls are refused for "
                      f"{wait} s more, then a probe call may go", retry_after=wait, breaker=self.to_json(agent))

    def record(self, agent: str, run_id: str, outcome: Outcome | None, score: float) -> None:
        """What a call that went (or was refused after ``admit``) taught: may trip, re-open or close the breaker."""
        breaker, limits = self.get(agent), self.thresholds
        probe = breaker.probes.pop(run_id, None) is not None
        if outcome is None or not outcome.blames_target or outcome.status == "tool_error":
            return  # says nothing about the target's health
        if outcome.status != "ok":
            if breaker.state == HALF_OPEN and probe:
                breaker.move(OPEN, f"a probe call failed ({outcome.status})")
            elif breaker.state == CLOSED:
                breaker.failures += 1
                if 0 < limits.consecutive_failures <= breaker.failures:
                    breaker.move(OPEN, f"{breaker.failures} failures in a row (the last: {outcome.status})")
                elif score < limits.trip_below:
                    breaker.move(OPEN, f"reputation {score:.3f} is below {limits.trip_below:g}")
        elif breaker.state == HALF_OPEN and probe and score >= limits.trip_below:
            breaker.move(CLOSED)
        elif breaker.state == CLOSED:
            breaker.failures = 0

    def to_json(self, agent: str) -> dict[str, Any]:
        """The breaker as ``GET /v1/agents/{name}`` and ``mesh ls`` show it."""
        breaker = self.breakers.get(agent) or Breaker(changed_at=self.started)  # reading it changes nothing
        document: dict[str, Any] = {"state": breaker.state, "since": breaker.changed_at.isoformat(),
                                    "failures_in_a_row": breaker.failures}
        if breaker.state != CLOSED:
            document["reason"] = breaker.reason
        if breaker.state == OPEN:
            document["retry_after"] = max(0.0, round(self.thresholds.open_seconds
                                                     - (time.monotonic() - breaker.since), 1))
        return document
