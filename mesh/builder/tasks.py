"""Role tasks with a rubric, and the judge that scores an answer by it, criterion by criterion.

The configured model writes tasks a person in the role would be given, and the criteria a good answer
meets. Every third task is held out: the instructions pack is optimised on the others, and validation
compares agents on the held-out ones only, so the pack never saw what it is judged on.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field

from mesh.knowledge.records import Blueprint
from mesh.lm.model import load_dspy

TASKS_INSTRUCTIONS = (
    "Write realistic tasks that someone would give an agent in this role (each answerable in text, one or two "
    "paragraphs), and a rubric: the criteria (short snake_case names, each with a description) by which a good "
    "answer in this role is judged. `context` is what the mesh knows of similar agents.")
JUDGE_INSTRUCTIONS = (
    "Judge the answer to the task by each criterion of the rubric. Give every criterion a score from 0 (not met) "
    "to 1 (fully met), as a JSON object from criterion name to score.")
HOLD_OUT_EVERY = 3


class Criterion(BaseModel):
    name: str
    description: str = ""


class RoleTask(BaseModel):
    id: str
    text: str
    held_out: bool = False


class RoleTasks(BaseModel):
    """The role's tasks (some held out) and the rubric they are judged by."""

    tasks: list[RoleTask]
    rubric: list[Criterion]

    @property
    def training(self) -> list[RoleTask]:
        return [t for t in self.tasks if not t.held_out]

    @property
    def held_out(self) -> list[RoleTask]:
        return [t for t in self.tasks if t.held_out]

    def rubric_text(self) -> str:
        return "\n".join(f"- {c.name}: {c.description}" for c in self.rubric)


def split(texts: list[str]) -> list[RoleTask]:
    """Tasks with every third one held out (at least one held out and one to train on, given two)."""
    tasks = [RoleTask(id=f"task-{i + 1}", text=text, held_out=i % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1)
             for i, text in enumerate(texts)]
    if len(tasks) >= 2 and not any(t.held_out for t in tasks):
        tasks[-1].held_out = True
    return tasks


def generate_tasks(blueprint: Blueprint, lm: Any, *, context: str = "", count: int = 6) -> RoleTasks:
    """Ask the model for ``count`` role tasks and a rubric; fewer than two tasks or no criterion is an error."""
    dspy = load_dspy()

    class RoleTasksSignature(dspy.Signature):
        blueprint: str = dspy.InputField(desc="the role, as JSON")
        count: int = dspy.InputField(desc="how many tasks to write")
        context: str = dspy.InputField()
        tasks: list[str] = dspy.OutputField()
        rubric: list[Criterion] = dspy.OutputField()

    with dspy.context(lm=lm):
        written = dspy.Predict(RoleTasksSignature.with_instructions(TASKS_INSTRUCTIONS))(
            blueprint=blueprint.model_dump_json(), count=count, context=context or "(none)")
    texts = [t.strip() for t in written.tasks or [] if isinstance(t, str) and t.strip()]
    rubric = [c for c in written.rubric or [] if isinstance(c, Criterion) and c.name.strip()]
    if len(texts) < 2 or not rubric:
        raise ValueError(f"the model wrote {len(texts)} role tasks and {len(rubric)} criteria; a validation "
                         "needs at least two tasks and one criterion")
    return RoleTasks(tasks=split(texts[:count]), rubric=rubric)


class Judged(BaseModel):
    """One answer's scores, criterion by criterion (0..1), and their mean."""

    scores: dict[str, float] = Field(default_factory=dict)

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores) if self.scores else 0.0


def judge(task: str, answer: str, rubric: list[Criterion], lm: Any) -> Judged:
    """The model's score of ``answer`` on each criterion; a criterion it skips, or scores out of range,
    counts 0 (clamped), so a judge that says nothing never passes an answer."""
    dspy = load_dspy()
    rubric_text = "\n".join(f"- {c.name}: {c.description}" for c in rubric)

    class JudgeSignature(dspy.Signature):
        task: str = dspy.InputField()
        answer: str = dspy.InputField()
        rubric: str = dspy.InputField()
        scores: str = dspy.OutputField(desc="a JSON object: criterion name -> score from 0 to 1")

    with dspy.context(lm=lm):
        verdict = dspy.Predict(JudgeSignature.with_instructions(JUDGE_INSTRUCTIONS))(
            task=task, answer=answer, rubric=rubric_text)
    given = _json_object(verdict.scores)
    scores = {}
    for criterion in rubric:
        value = given.get(criterion.name)
        scores[criterion.name] = min(1.0, max(0.0, float(value))) if isinstance(value, int | float) else 0.0
    return Judged(scores=scores)


def _json_object(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    match = re.search(r"\{.*\}", str(text), re.S)
    try:
        value = json.loads(match.group(0)) if match else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
