"""The model double's part for the agent builder: it plays the brief reader, the task writer, the judge,
the built agent and the generic one, following only what each prompt says (see ``tests/lm_double.py``).

The judge rewards an answer that speaks as the role (``As a documentation reviewer``) and one that names a
kit tool (a backquoted tool name); the role's answerer does both only when its prompt carries the pack's
instructions and the kit's tool lines. So the built agent outscores the generic one exactly when the
pack and the kit reach its prompt: mechanics, not intelligence.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .lm_double import fields, reply

VAGUE = "something useful"
UNREADABLE = "a brief the model garbles"
QUESTIONS = ["Whom does the agent work for?", "May it change anything, or is it read-only?"]
BLUEPRINT = {
    "role": "documentation reviewer", "domain": "technical documentation",
    "objectives": ["find passages that contradict each other", "suggest clearer wording"],
    "constraints": ["read-only: never change or delete anything"], "audience": "the engineers who write the docs",
    "capabilities": [
        {"name": "find the passages of the documents closest in meaning to a query", "why": "to quote what it reviews"},
        {"name": "delete outdated notes", "why": "to tidy up what it found"},
        {"name": "count words and estimate reading time", "why": "to flag passages too long to read"},
    ],
}
TASKS = [f"Review the documentation about topic {n} and say what to improve." for n in range(1, 7)]
RUBRIC = [{"name": "role_fit", "description": "answers as a documentation reviewer would"},
          {"name": "uses_kit", "description": "names the tool of its kit that helps"}]
TOOL_LINE = re.compile(r"^\s*- `(\w+)` \(", re.M)


def builder_model(messages: list[dict[str, Any]]) -> str:
    system = messages[0].get("content", "") if messages else ""
    current = fields(messages[-1].get("content", "")) if messages else {}
    if "`blueprint`" in system and "`questions`" in system:
        if UNREADABLE in messages[-1].get("content", ""):
            return "I would rather not fill in your fields."
        if VAGUE in current.get("brief", "") and current.get("answers") == "(none)":
            return reply(name="helper", blueprint=json.dumps({"role": "assistant"}), questions=json.dumps(QUESTIONS))
        blueprint = dict(BLUEPRINT)
        if "Q: " in current.get("answers", ""):
            blueprint["audience"] = current["answers"].split("A: ", 1)[1].splitlines()[0]
        return reply(name="doc-reviewer", blueprint=json.dumps(blueprint), questions="[]")
    if "`rubric`" in system and "`tasks`" in system:
        return reply(tasks=json.dumps(TASKS), rubric=json.dumps(RUBRIC))
    if "`scores`" in system:
        answer = current.get("answer", "")
        return reply(scores=json.dumps({"role_fit": 1.0 if "As a documentation reviewer" in answer else 0.0,
                                        "uses_kit": 1.0 if re.search(r"`\w+`", answer) else 0.0}))
    if "`answer`" in system:
        tools = TOOL_LINE.findall(system)
        if "You are " in system:
            return reply(answer="As a documentation reviewer: " + ", ".join(f"`{t}`" for t in tools[:2]) +
                         " would show what to change.")
        return reply(answer="Here is a general answer.")
    return reply(answer="?")
