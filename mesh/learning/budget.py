"""A learning run's budget (iterations, calls, tokens) and what it has spent; the loop stops when one runs out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


class BudgetProblem(ValueError):
    """A budget that cannot be used (unknown key, not a positive number)."""


@dataclass(frozen=True)
class Budget:
    iterations: int = 5
    calls: int = 1000  # model calls plus tool calls through the registry
    tokens: int = 2_000_000

    @classmethod
    def from_json(cls, document: dict[str, Any] | None) -> Budget:
        document = dict(document or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise BudgetProblem(f"unknown budget key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        for key, value in document.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BudgetProblem(f"budget {key} must be a positive integer, not {value!r}")
        return cls(**document)

    def merged(self, overrides: dict[str, Any] | None) -> Budget:
        return Budget.from_json({**asdict(self), **(overrides or {})})

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Spent:
    iterations: int = 0
    lm_calls: int = 0
    tool_calls: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        return self.lm_calls + self.tool_calls

    def over(self, budget: Budget) -> str | None:
        """Which part of the budget is spent, if any (the loop checks before every attempt)."""
        if self.calls >= budget.calls:
            return f"call budget spent ({self.calls} of {budget.calls})"
        if self.tokens >= budget.tokens:
            return f"token budget spent ({self.tokens} of {budget.tokens})"
        return None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "calls": self.calls, "seconds": round(self.seconds, 3)}
