"""How far the mesh trusts an agent, or one of its tools, learned online from every call.

The registry keeps one ``Reputation`` per agent and one per (agent, tool) and feeds each an
``Outcome`` after every call it carries (``learn_one``, River's verb). Everything forgets at the
same pace, counted in calls: evidence loses half its weight after ``half_life`` calls (default 20),
so an agent that starts failing falls within tens of calls. River's ``proba.Beta`` never forgets,
hence the decayed Beta on two floats below.

Who is to blame decides what is learnt (the rule, applied by ``proxy.py``: a failure counts against
the target only when the target could have avoided it whatever the caller sent):

- ``fault="target"``: the target's own failures (unreachable, timeouts, JSON-RPC errors other than
  invalid params, HTTP errors not caused by the request, answers outside the signed output schema)
  move the success rate, the latency figures and (timeouts, invalid outputs) ``harm``.
- ``fault="caller"``: calls refused because of what the caller sent (by the registry, or by the
  agent with a 400/413/414/415/422/431 or JSON-RPC -32602) and policy denials are counted
  (``schema_violations``, ``denials``) but cost the target nothing.
- ``fault="inner"``: the target failed because a call it made through the mesh failed; that inner
  call carries the blame, so the outer failure costs the target nothing either.
- ``status="tool_error"``: the tool answered ``isError: true``, often because it rejected its input.
  Counted apart (``tool_errors``) and bounded: it cannot lower the score by more than 20 %, so a
  flood of calls crafted to make a tool reject them cannot push a healthy agent under the policy's
  ``min_reputation`` (0.3 by default).

Policy denials never touch the success rate whatever their fault: the call never reached the target,
and counting a ``low_reputation`` denial as a failure would lock an agent out for good. Outcomes that
do not blame the target do not decay its evidence either, and tool errors decay only their own
counter, so a flood of such calls cannot wash out what was learnt.

The score, in [0, 1]::

    success_rate = (s + a0) / (s + f + a0 + b0)      s, f: decayed successes and failures
    speed        = 0.8 + 0.2 * B / (B + ewm)         B: latency budget (1000 ms), ewm: EW mean latency
    care         = 1 - 0.5 * harm / (s + f + a0 + b0)  harm: decayed timeouts and invalid outputs
    answers      = 1 - 0.2 * t / (t + s + f + a0 + b0) t: decayed tool errors
    score        = success_rate * speed * care * answers

The prior (a0, b0) = (3, 2) starts a new agent at 0.6, worth five calls of evidence. Latency moves
the score by at most 20 %, and so do tool errors; a timeout or a schema-violating answer costs more
than a plain error because it wastes the caller's budget or misleads it. Tool errors alone leave at
least 0.6 * 0.8 * 0.8 = 0.384 to an agent with no other evidence.

Latency quantiles use River's ``stats.RollingQuantile`` over the last ``window`` latencies (exact,
forgets, and its state is just those numbers) rather than P² ``stats.Quantile``, whose state lives
in Rust and cannot be written out as JSON. ``to_state()`` is plain JSON numbers: about ``window``
floats plus a dozen scalars.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, get_args

from river import stats

Status = Literal["ok", "error", "tool_error", "timeout", "invalid", "denied", "unavailable"]
Fault = Literal["target", "caller", "inner"]

STATE_VERSION = 2  # 2 added tool_errors; a version 1 state loads with none
# Statuses whose latency measures the target's work (a denial or an unreachable target does not).
_TIMED = frozenset({"ok", "error", "tool_error", "timeout", "invalid"})
TOOL_ERROR_WEIGHT = 0.2  # the most tool errors can take off the score


@dataclass(frozen=True)
class Outcome:
    """One finished call: how it ended, how long it took, and whose fault a failure was."""

    status: Status
    latency_ms: float | None = None
    fault: Fault = "target"

    def __post_init__(self) -> None:
        if self.status not in get_args(Status):
            raise ValueError(f"unknown status {self.status!r}; expected one of {get_args(Status)}")
        if self.fault not in get_args(Fault):
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {get_args(Fault)}")
        if self.latency_ms is not None and not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0, not {self.latency_ms!r}")

    @property
    def blames_target(self) -> bool:
        return self.fault == "target" and self.status != "denied"


class Reputation:
    """Online trust score of one agent or tool: ``learn_one(outcome)``, then ``score()``."""

    def __init__(
        self,
        *,
        half_life: float = 20.0,
        latency_budget_ms: float = 1000.0,
        window: int = 100,
        prior: tuple[float, float] = (3.0, 2.0),
    ) -> None:
        if half_life <= 0 or latency_budget_ms <= 0 or window < 1 or min(prior) <= 0:
            raise ValueError("half_life, latency_budget_ms, window and the prior must be positive")
        self.half_life = float(half_life)
        self.latency_budget_ms = float(latency_budget_ms)
        self.window = int(window)
        self.prior = (float(prior[0]), float(prior[1]))
        self._keep = 0.5 ** (1.0 / self.half_life)  # weight left to old evidence after one call
        self.calls = 0
        self.successes = 0.0
        self.failures = 0.0
        self.harm = 0.0
        self.tool_errors = 0.0
        self.timeouts = 0.0
        self.schema_violations = 0.0
        self.denials = 0.0
        self._latencies: deque[float] = deque(maxlen=self.window)
        self._ewm = stats.EWMean(fading_factor=1.0 - self._keep)
        self._ewm_ms: float | None = None
        self._p50 = stats.RollingQuantile(q=0.5, window_size=self.window)
        self._p99 = stats.RollingQuantile(q=0.99, window_size=self.window)

    def learn_one(self, outcome: Outcome) -> None:
        keep = self._keep
        self.calls += 1
        self.timeouts = self.timeouts * keep + (outcome.status == "timeout")
        self.schema_violations = self.schema_violations * keep + (outcome.status == "invalid")
        self.denials = self.denials * keep + (outcome.status == "denied")
        if not outcome.blames_target:
            return
        self.tool_errors = self.tool_errors * keep + (outcome.status == "tool_error")
        if outcome.latency_ms is not None and outcome.status in _TIMED:
            self._learn_latency(float(outcome.latency_ms))
        if outcome.status == "tool_error":
            return  # the tool answered: neither a success nor a failure of the agent
        self.successes = self.successes * keep + (outcome.status == "ok")
        self.failures = self.failures * keep + (outcome.status != "ok")
        self.harm = self.harm * keep + (outcome.status in ("timeout", "invalid"))

    def _learn_latency(self, latency_ms: float) -> None:
        self._latencies.append(latency_ms)
        self._ewm.update(latency_ms)
        self._ewm_ms = self._ewm.get()
        self._p50.update(latency_ms)
        self._p99.update(latency_ms)

    def success_rate(self) -> float:
        a0, b0 = self.prior
        return (self.successes + a0) / (self.successes + self.failures + a0 + b0)

    def score(self) -> float:
        a0, b0 = self.prior
        evidence = self.successes + self.failures + a0 + b0
        speed = 1.0
        if self._ewm_ms is not None:
            speed = 0.8 + 0.2 * self.latency_budget_ms / (self.latency_budget_ms + self._ewm_ms)
        care = 1.0 - 0.5 * self.harm / evidence
        answers = 1.0 - TOOL_ERROR_WEIGHT * self.tool_errors / (self.tool_errors + evidence)
        return min(1.0, max(0.0, self.success_rate() * speed * care * answers))

    def components(self) -> dict[str, Any]:
        """What the score is made of; counters are decayed like the evidence, ``calls`` is lifetime."""
        have_latency = bool(self._latencies)
        return {
            "success_rate": self.success_rate(),
            "latency_p50_ms": self._p50.get() if have_latency else None,
            "latency_p99_ms": self._p99.get() if have_latency else None,
            "latency_ewm_ms": self._ewm_ms,
            "tool_errors": self.tool_errors,
            "timeouts": self.timeouts,
            "schema_violations": self.schema_violations,
            "denials": self.denials,
            "calls": self.calls,
        }

    def to_state(self) -> dict[str, Any]:
        """Plain JSON numbers, enough to carry on learning after a restart exactly where it stopped."""
        return {
            "version": STATE_VERSION,
            "half_life": self.half_life,
            "latency_budget_ms": self.latency_budget_ms,
            "window": self.window,
            "prior": list(self.prior),
            "calls": self.calls,
            "successes": self.successes,
            "failures": self.failures,
            "harm": self.harm,
            "tool_errors": self.tool_errors,
            "timeouts": self.timeouts,
            "schema_violations": self.schema_violations,
            "denials": self.denials,
            "latency_ewm_ms": self._ewm_ms,
            "latencies_ms": list(self._latencies),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Reputation:
        if state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"reputation state version {state.get('version')!r}, expected {STATE_VERSION}")
        state = {"tool_errors": 0.0, **state}  # version 1 knew no tool errors
        a0, b0 = state["prior"]
        reputation = cls(
            half_life=state["half_life"],
            latency_budget_ms=state["latency_budget_ms"],
            window=state["window"],
            prior=(a0, b0),
        )
        reputation.calls = int(state["calls"])
        for name in ("successes", "failures", "harm", "tool_errors", "timeouts", "schema_violations", "denials"):
            setattr(reputation, name, float(state[name]))
        # The rolling quantiles are rebuilt by replaying their window; EWMean's first update sets
        # its mean, so one update with the saved mean restores it exactly.
        for latency in state["latencies_ms"][-reputation.window :]:
            latency = float(latency)
            reputation._latencies.append(latency)
            reputation._p50.update(latency)
            reputation._p99.update(latency)
        if state["latency_ewm_ms"] is not None:
            reputation._ewm.update(float(state["latency_ewm_ms"]))
            reputation._ewm_ms = reputation._ewm.get()
        return reputation

    def __repr__(self) -> str:
        return f"Reputation(score={self.score():.3f}, calls={self.calls})"


UNKNOWN_SCORE = Reputation().score()
"""The score of an agent or tool nobody has called yet (the prior's, 0.6): what every view reports for it."""

__all__ = ["UNKNOWN_SCORE", "Fault", "Outcome", "Reputation", "Status"]
