"""The learner's DSPy program: a ReAct agent over the target's tools, plus what learning adds to it.

Learning changes two things only, both part of the program's saved state: the instructions of the ReAct
step (the base text plus a "lessons" block that the error analysis writes) and its demonstrations (what the
optimizer bootstrapped from successful attempts). ``program.save`` writes them as JSON deterministically,
so the SHA-256 of that JSON names the version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh.learning.target import Target, ToolOutcome, ToolSpec
from mesh.lm.model import load_dspy

LESSONS_HEADING = "Lessons from earlier attempts (follow them):"
TASK_INSTRUCTIONS = ("Carry out the task on the {system} API using its tools, one call at a time; every call "
                     "goes to a sandbox, never to a real system. Then answer briefly; when the task asks for a "
                     "value (an id, a count), the answer is that value.")
MAX_STEPS = 8


class Stopped(BaseException):
    """Raised inside a tool call to end the attempt at once (DSPy catches ``Exception``, not this)."""


class Toolbox:
    """The target's tools as Python callables for ReAct; it keeps every call of the current attempt."""

    def __init__(self, target: Target, should_stop: Callable[[], str | None] = lambda: None):
        self.target = target
        self.should_stop = should_stop
        self.calls: list[ToolOutcome] = []

    def take_calls(self) -> list[ToolOutcome]:
        calls, self.calls = self.calls, []
        return calls

    def tools(self) -> list[Any]:
        dspy = load_dspy()
        return [dspy.Tool(self._caller(spec), name=spec.name, desc=spec.description, args=spec.loose_arguments())
                for spec in self.target.tools()]

    def _caller(self, spec: ToolSpec) -> Callable[..., str]:
        def call(**arguments: Any) -> str:
            reason = self.should_stop()
            if reason:
                raise Stopped(reason)
            outcome = self.target.call(spec.name, arguments)
            self.calls.append(outcome)
            return outcome.observation()

        call.__name__ = spec.name
        return call


def build_program(toolbox: Toolbox, system: str, state: dict[str, Any] | None = None) -> Any:
    """A fresh ReAct program over the toolbox's tools; ``state`` (a saved version) restores what it learned."""
    dspy = load_dspy()
    signature = dspy.Signature("task -> answer", TASK_INSTRUCTIONS.format(system=system))
    program = dspy.ReAct(signature, tools=toolbox.tools(), max_iters=MAX_STEPS)
    program.base_instructions = program.react.signature.instructions
    if state is not None:
        program.load_state(state)
    return program


def lessons_of(program: Any) -> list[str]:
    """The lesson lines the program's ReAct instructions carry now."""
    instructions = program.react.signature.instructions
    if LESSONS_HEADING not in instructions:
        return []
    block = instructions.split(LESSONS_HEADING, 1)[1]
    return [line[2:] for line in block.strip().splitlines() if line.startswith("- ")]


def with_lessons(program: Any, lessons: list[str]) -> Any:
    """The program with its lessons block replaced by ``lessons`` (the base instructions stay as they were)."""
    base = program.react.signature.instructions.split(LESSONS_HEADING, 1)[0].rstrip()
    text = base if not lessons else base + "\n\n" + LESSONS_HEADING + "\n" + "\n".join(f"- {x}" for x in lessons)
    program.react.signature = program.react.signature.with_instructions(text)
    return program


def demos_count(program: Any) -> int:
    return sum(len(predictor.demos) for _, predictor in program.named_predictors())


def saved(program: Any) -> tuple[str, str]:
    """``(version id, JSON)``: what ``program.save`` writes (deterministic) and its SHA-256."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "program.json"
        program.save(str(path))
        text = path.read_text()
    return hashlib.sha256(text.encode()).hexdigest(), text


def state_of(text: str) -> dict[str, Any]:
    """A saved version's JSON as the state ``build_program`` restores."""
    return json.loads(text)
