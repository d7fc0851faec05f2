"""Validated specialisation: the built agent against a generic one on the held-out role tasks.

The generic agent is the same model with no blueprint, no kit and no pack: DSPy's bare ``task -> answer``.
The built agent is asked through the registry (its role tool, as any caller would reach it), so what is
measured is the agent as deployed. Both answers to each held-out task are judged by the rubric; the
report gives both scores and the difference per criterion.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from mesh.builder.tasks import Judged, RoleTasks, judge
from mesh.lm.model import load_dspy


def generic_answer(task: str, lm: Any) -> str:
    """What the model answers with no role at all."""
    dspy = load_dspy()
    with dspy.context(lm=lm):
        return str(dspy.Predict("task -> answer")(task=task).answer)


async def compare(tasks: RoleTasks, lm: Any, ask_built: Callable[[str], Awaitable[str]], *,
                  model: str = "") -> dict[str, Any]:
    """Run both agents on the held-out tasks, judge them, and report scores and per-criterion differences."""
    held_out = tasks.held_out
    if not held_out:
        raise ValueError("no held-out task to validate on")
    rows = []
    built_scores: list[Judged] = []
    generic_scores: list[Judged] = []
    for task in held_out:
        built = await ask_built(task.text)
        generic = await anyio.to_thread.run_sync(generic_answer, task.text, lm)
        judged_built = await anyio.to_thread.run_sync(judge, task.text, built, tasks.rubric, lm)
        judged_generic = await anyio.to_thread.run_sync(judge, task.text, generic, tasks.rubric, lm)
        built_scores.append(judged_built)
        generic_scores.append(judged_generic)
        rows.append({"task": task.id, "text": task.text,
                     "built": {"answer": built, "scores": judged_built.scores, "score": round(judged_built.mean, 4)},
                     "generic": {"answer": generic, "scores": judged_generic.scores,
                                 "score": round(judged_generic.mean, 4)}})
    criteria = {}
    for criterion in tasks.rubric:
        built = _mean([j.scores[criterion.name] for j in built_scores])
        generic = _mean([j.scores[criterion.name] for j in generic_scores])
        criteria[criterion.name] = {"built": built, "generic": generic, "difference": round(built - generic, 4)}
    built_mean = _mean([j.mean for j in built_scores])
    generic_mean = _mean([j.mean for j in generic_scores])
    return {"model": model, "held_out": len(held_out), "built": built_mean, "generic": generic_mean,
            "difference": round(built_mean - generic_mean, 4), "criteria": criteria, "tasks": rows,
            "validated_at": datetime.now(UTC).isoformat()}


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
