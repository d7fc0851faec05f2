"""The instructions pack: system instructions, per-tool guidance and worked examples for the role.

Rendered from the Jinja2 templates in ``templates/``, then optimised with DSPy against the role's training
tasks: ``BootstrapFewShot`` keeps the answers the judge passes as demonstrations. The demonstrations are
kept as optimization-example records and come back into the program through the ``ContextBudgeter``, so
what the agent's prompt carries fits a token budget and says what it left out. The optimised program is
saved the way the learning loop saves its versions (``mesh.learning.program.saved``: the SHA-256 of
``program.save``'s JSON names the version), and the registry keeps it as the agent's prompt version.
"""

from __future__ import annotations

import json
import keyword
from pathlib import Path
from typing import Any

import jinja2
from pydantic import BaseModel, Field

from mesh.builder.kit import Kit
from mesh.builder.tasks import RoleTasks, judge
from mesh.knowledge import ContextBudgeter, OptimizationExample, RecordStore
from mesh.knowledge.records import Blueprint
from mesh.learning.program import saved
from mesh.lm.model import load_dspy

TEMPLATES = Path(__file__).parent / "templates"
ROLE_TOOL = "do_task"
PROMPT_SYSTEM = "role"  # the role tool's prompt versions, beside the learning loop's per target system
PASS = 0.5  # a bootstrapped answer becomes a demonstration when its mean rubric score reaches this
MAX_DEMOS = 3
DEMO_TOKENS = 1500  # the demonstrations' share of the role tool's prompt
RESERVED = {"agent", "pack", "Agent", "RolePack", "result_of", "Any", "annotations", ROLE_TOOL}


def environment() -> jinja2.Environment:
    """The builder's templates: strict (a missing value is an error, not an empty string), Python literals
    through ``pyrepr``, text inside a docstring through ``doc`` (it can neither end the docstring nor escape)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["pyrepr"] = repr
    env.filters["doc"] = docstring_text
    return env


def docstring_text(text: str) -> str:
    """``text`` on one line, safe inside a triple-quoted docstring."""
    return " ".join(str(text).replace("\\", "\\\\").replace('"""', "'''").split())


class ToolGuide(BaseModel):
    """A kit tool as the agent module and the instructions name it."""

    function: str = Field(description="The Python function (and tool) name in agents/NAME.py.")
    ref: str
    owner: str
    tool: str
    source: str
    need: str
    description: str


class Pack(BaseModel):
    """The instructions pack written beside the agent (``agents/NAME.pack.json``)."""

    version: str = Field(description="The prompt version: SHA-256 of the optimised program's saved JSON.")
    instructions: str
    tool_guidance: dict[str, str] = Field(default_factory=dict)
    examples: list[dict[str, str]] = Field(default_factory=list)
    examples_text: str = ""
    program: dict[str, Any] = Field(default_factory=dict)
    program_text: str = Field("", exclude=True, description="program.save's JSON exactly: what the version id names")
    metrics: dict[str, Any] = Field(default_factory=dict)


def function_name(owner: str, tool: str, taken: set[str]) -> str:
    """A Python name for a kit tool: its own name, else prefixed by its owner, never one the module uses."""
    for candidate in (tool, f"{owner}_{tool}"):
        name = "".join(c if c.isalnum() else "_" for c in candidate).strip("_").lower() or "tool"
        if name[0].isdigit():
            name = f"tool_{name}"
        if name not in taken and name not in RESERVED and not keyword.iskeyword(name):
            taken.add(name)
            return name
    index = 2
    while f"{name}_{index}" in taken:
        index += 1
    taken.add(f"{name}_{index}")
    return f"{name}_{index}"


def guides(kit: Kit) -> list[ToolGuide]:
    """The kit's tools as the pack and module name them (mesh tools get wrappers; kit tools keep their names)."""
    taken: set[str] = set()
    found = []
    for tool in kit.taken:
        function = function_name(tool.owner, tool.tool, taken) if tool.source == "mesh" else tool.tool
        taken.add(function)
        found.append(ToolGuide(function=function, ref=tool.ref, owner=tool.owner, tool=tool.tool, source=tool.source,
                               need=tool.need, description=tool.description.strip().rstrip(".") + "."))
    return found


def render_instructions(name: str, blueprint: Blueprint, tools: list[ToolGuide]) -> tuple[str, dict[str, str]]:
    """(system instructions listing the kit's tools with their guidance, per-tool guidance) from the templates."""
    env = environment()
    guidance = {tool.function: env.get_template("tool_guidance.md.j2").render(tool=tool, role=blueprint.role).strip()
                for tool in tools}
    system = env.get_template("system.md.j2").render(name=name, blueprint=blueprint).strip()
    listing = env.get_template("tools.md.j2").render(tools=tools, guidance=guidance).strip()
    return (system + ("\n\n" + listing if listing else "")), guidance


def role_program(instructions: str) -> Any:
    """The role tool's DSPy program: one prediction, ``task -> answer``, under the pack's instructions."""
    dspy = load_dspy()
    return dspy.Predict(dspy.Signature("task -> answer", instructions))


def make_pack(name: str, blueprint: Blueprint, kit: Kit, tasks: RoleTasks, lm: Any, *,
              store: RecordStore | None = None, demo_tokens: int = DEMO_TOKENS) -> Pack:
    """Render the pack, optimise it on the training tasks, and choose its demonstrations under budget."""
    dspy = load_dspy()
    tools = guides(kit)
    instructions, guidance = render_instructions(name, blueprint, tools)
    program = role_program(instructions)
    trainset = [dspy.Example(task=t.text).with_inputs("task") for t in tasks.training]
    scores: dict[str, float] = {}

    def passes(example: Any, prediction: Any, trace: Any = None) -> bool:
        score = judge(example.task, str(prediction.answer), tasks.rubric, lm).mean
        scores[example.task] = score
        return score >= PASS

    optimiser = dspy.BootstrapFewShot(metric=passes, max_bootstrapped_demos=MAX_DEMOS, max_labeled_demos=0,
                                      max_rounds=1)
    with dspy.context(lm=lm):
        compiled = optimiser.compile(program, trainset=trainset)
    demos = [{"task": str(d["task"]), "answer": str(d["answer"])} for d in compiled.demos]
    left_out = 0
    if store is not None and demos:
        demos, left_out = _budgeted_demos(store, name, blueprint, demos, scores, demo_tokens)
    compiled.demos = [dspy.Example(task=d["task"], answer=d["answer"]).with_inputs("task") for d in demos]
    version, text = saved(compiled)
    examples_text = environment().get_template("examples.md.j2").render(examples=demos).strip()
    metrics = {"training_tasks": len(trainset), "passed": sum(s >= PASS for s in scores.values()),
               "training_score": round(sum(scores.values()) / len(scores), 4) if scores else None,
               "demos": len(demos), "demos_left_out": left_out}
    return Pack(version=version, instructions=instructions, tool_guidance=guidance, examples=demos,
                examples_text=examples_text, program=json.loads(text), program_text=text, metrics=metrics)


def _budgeted_demos(store: RecordStore, name: str, blueprint: Blueprint, demos: list[dict[str, str]],
                    scores: dict[str, float], budget_tokens: int) -> tuple[list[dict[str, str]], int]:
    """Keep the demonstrations as records, then take back those the budgeter fits (best match first)."""
    program = f"builder.{name}"
    store.put_many([OptimizationExample(program=program, inputs={"task": d["task"]}, outputs={"answer": d["answer"]},
                                        score=scores.get(d["task"]), source="bootstrapped") for d in demos])
    role = " ".join([blueprint.role, blueprint.domain, *blueprint.objectives])
    current = {d["task"] for d in demos}
    context = ContextBudgeter(store).build(role, kinds=["optimization_example"], budget_tokens=budget_tokens,
                                           where=lambda r: r.program == program and r.inputs.get("task") in current)
    chosen = [{"task": str(i.record.inputs["task"]), "answer": str(i.record.outputs["answer"])}
              for i in context.included]
    unique = list({d["task"]: d for d in chosen}.values())  # a rebuild may have kept the same demo again
    return unique[:MAX_DEMOS], len(context.left_out_records("budget"))
