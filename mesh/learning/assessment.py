"""Capability assessments: the learner, with its active prompt version, on held-out tasks, scored by the rubric.

Held-out tasks are part of the plan but never attempted while learning (other words, other values), so a
score says what the agent can do, not what it memorised. Each rubric criterion scores the share of its
tasks that passed; the overall score is the weighted mean. The level: ``proficient`` at or above the plan's
threshold, ``competent`` from 0.5, else ``novice``. Every attempt is evidence, with the registry's run ids.
"""

from __future__ import annotations

from typing import Any

from mesh.learning.loop import LearningLoop
from mesh.learning.program import build_program


def level_of(score: float, threshold: float) -> str:
    if score >= threshold:
        return "proficient"
    return "competent" if score >= 0.5 else "novice"


def assess(loop: LearningLoop, *, trials: int = 1) -> dict[str, Any]:
    """Attempt every held-out task ``trials`` times with the loop's starting program; score by the rubric."""
    plan = loop.plan
    held_out = {task["id"]: task for task in plan.get("tasks", []) if task.get("held_out")}
    program = build_program(loop.toolbox, loop.target.system, loop.start_state)
    loop.version_id = loop.record_version(program, None, None)
    outcomes: dict[str, list[bool]] = {}
    evidence: list[dict[str, Any]] = []
    total = len(held_out) * trials
    for index, task in enumerate(held_out.values()):
        for trial in range(trials):
            loop.progress({"phase": "assess", "done": index * trials + trial, "of": total, "task": task["id"]})
            passed, record = loop.attempt(program, task, kind="assess", iteration=0)
            outcomes.setdefault(task["id"], []).append(passed)
            evidence.append({"attempt": record["id"], "task": task["id"], "passed": passed,
                             "runs": [c["run_id"] for c in record["tool_calls"] if c.get("run_id")]})
    criteria = []
    for criterion in plan.get("rubric", []):
        results = [ok for task_id in criterion.get("tasks", []) for ok in outcomes.get(task_id, [])]
        score = sum(results) / len(results) if results else 0.0
        criteria.append({**criterion, "attempted": len(results), "passed": sum(results), "score": round(score, 4)})
    weights = sum(c.get("weight", 1.0) for c in criteria if c["attempted"])
    score = sum(c["score"] * c.get("weight", 1.0) for c in criteria if c["attempted"]) / weights if weights else 0.0
    threshold = float(plan.get("threshold", 1.0))
    return {"score": round(score, 4), "level": level_of(score, threshold), "criteria": criteria, "evidence": evidence,
            "prompt_version": loop.version_id}
