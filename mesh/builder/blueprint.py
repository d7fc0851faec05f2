"""Brief -> blueprint: the configured model reads a brief into a typed ``Blueprint``, or asks questions first.

The blueprint is ``mesh.knowledge``'s (role, domain, objectives, constraints, audience, capabilities with
why), so the agent definition kept in the workspace's records is the very object a person reviewed. A
brief too vague to build from gets questions back instead of a guess; the answers go into the next
reading. A ``Draft`` is also the file a person edits (``mesh build --blueprint FILE``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mesh.knowledge.records import Blueprint
from mesh.lm.model import load_dspy
from mesh.names import check_name, is_valid_name

INSTRUCTIONS = (
    "Read the brief for a new agent of an MCP mesh into a blueprint: its role, domain, objectives, constraints "
    "(what it must never do, e.g. read-only), audience, and the capabilities (tools) it needs, each with why. "
    "Suggest a short lowercase agent name (letters, digits, '-'). When the brief leaves something a builder "
    "cannot decide (whom it serves, what it must not do, its domain), ask the questions in `questions` instead "
    "of guessing; otherwise leave `questions` empty. `context` lists agents this mesh already defined.")


class BlueprintProblem(ValueError):
    """A blueprint that cannot be used: the message says which field and why."""


class Draft(BaseModel):
    """A reading of a brief: the agent's name, its blueprint, and the questions still open."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The agent's name (agents/NAME.py).")
    brief: str
    blueprint: Blueprint
    questions: list[str] = Field(default_factory=list)
    answers: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "agent name")

    @property
    def ambiguous(self) -> bool:
        return bool(self.questions)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, document: Any, where: str = "blueprint") -> Draft:
        """A draft from its JSON document; every mistake named with its field."""
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
                                 for e in exc.errors())
            raise BlueprintProblem(f"{where}: {problems}") from None
        except ValueError as exc:  # a bad name
            raise BlueprintProblem(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Draft:
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise BlueprintProblem(f"{path}: no such file") from None
        except ValueError as exc:
            raise BlueprintProblem(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(document, str(path))


def agent_name(suggested: str, role: str) -> str:
    """A valid agent name from the model's suggestion, else from the role's words."""
    for text in (suggested, role):
        name = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")[:40].strip("-")
        if is_valid_name(name):
            return name
    return "built-agent"


def read_brief(brief: str, lm: Any, *, context: str = "", answers: dict[str, str] | None = None,
               name: str | None = None) -> Draft:
    """Ask the model for the brief's blueprint (``context``: what the budgeter found in the records)."""
    brief = brief.strip()
    if not brief:
        raise BlueprintProblem("the brief is empty: say in a sentence what the agent should be")
    dspy = load_dspy()

    class ReadBrief(dspy.Signature):
        brief: str = dspy.InputField()
        answers: str = dspy.InputField(desc="answers to questions asked about this brief before")
        context: str = dspy.InputField(desc="agents already defined in this mesh")
        name: str = dspy.OutputField()
        blueprint: Blueprint = dspy.OutputField()
        questions: list[str] = dspy.OutputField()

    answers = dict(answers or {})
    said = "\n".join(f"Q: {q}\nA: {a}" for q, a in answers.items()) or "(none)"
    with dspy.context(lm=lm):
        reading = dspy.Predict(ReadBrief.with_instructions(INSTRUCTIONS))(
            brief=brief, answers=said, context=context or "(none)")
    blueprint = reading.blueprint
    if not isinstance(blueprint, Blueprint):
        raise BlueprintProblem(f"the model's blueprint is not one: {str(blueprint)[:200]}")
    questions = [q for q in (reading.questions or []) if isinstance(q, str) and q.strip() and q not in answers]
    return Draft(name=name or agent_name(reading.name, blueprint.role), brief=brief, blueprint=blueprint,
                 questions=questions, answers=answers)
