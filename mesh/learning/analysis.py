"""Error analysis: why attempts failed, as structured findings, and the lessons the next prompt carries.

A finding names the task, the call that went wrong, what the API said, and what to change. It is read off
the API's own answers and the operation's schema (a missing required field, a value outside an enum, an
unknown id, a refusal), so it is right whatever model made the mistake; when no call failed, the check's
verdict says what was missing. A finding gives lessons, lines in a fixed form
("- createPet: always set `body.species` (one of: dog, cat)") that the next version's instructions carry.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from mesh.learning.target import ToolOutcome, ToolSpec

REQUIRED = re.compile(r"'(\w+)' is a required property")
NOT_ONE_OF = re.compile(r"invalid body\.?([\w.\[\]]*): '([^']*)' is not one of (\[[^\]]*\])")
PATTERN = re.compile(r"invalid body\.?([\w.\[\]]*): '([^']*)' does not match '([^']*)'")
INVALID = re.compile(r"invalid (body|path parameter|query parameter)(?: at |: )?'?([\w.]+)?'?[^:]*: (.*)")


@dataclass(frozen=True)
class Finding:
    task: str
    tool: str | None  # the call that went wrong, None when no call did
    arguments: dict[str, Any] | None
    said: str  # what the API (or the check) said
    change: str  # what to do differently
    lessons: tuple[str, ...]  # the instruction lines this finding adds, if it teaches something general

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _body_property(spec: ToolSpec | None, name: str) -> dict[str, Any]:
    if spec is None:
        return {}
    schema = spec.arguments.get("body") or {}
    properties: dict[str, Any] = dict(schema.get("properties") or {})
    for part in schema.get("allOf") or []:
        properties.update(part.get("properties") or {})
    return properties.get(name) or {}


def _field_lesson(tool: str, name: str, prop: dict[str, Any]) -> str:
    if isinstance(prop.get("enum"), list):
        return f"{tool}: always set `body.{name}` (one of: {', '.join(str(v) for v in prop['enum'])})"
    kind = prop.get("type")
    return f"{tool}: always set `body.{name}`" + (f" (a {kind})" if kind else "")


def analyse_call(task: str, call: ToolOutcome, spec: ToolSpec | None) -> Finding:
    said = call.error or f"HTTP {call.status}: {str(call.body)[:200]}"

    def finding(change: str, *lessons: str) -> Finding:
        return Finding(task, call.tool, call.arguments, said, change, tuple(lessons))

    missing = REQUIRED.findall(said) if "invalid body" in said else []
    if missing:
        return finding(f"include body field{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                       *(_field_lesson(call.tool, name, _body_property(spec, name)) for name in missing))
    outside = NOT_ONE_OF.search(said)
    if outside:
        where = outside.group(1) or "body"
        return finding(f"use one of {outside.group(3)} for {where}",
                       f"{call.tool}: `body.{where}` must be one of {outside.group(3)}")
    pattern = PATTERN.search(said)
    if pattern:
        where = pattern.group(1) or "body"
        return finding(f"make {where} match {pattern.group(3)}",
                       f"{call.tool}: `body.{where}` must match the pattern {pattern.group(3)}")
    if "missing required path parameter" in said:
        name = said.rsplit("'", 2)[-2] if said.count("'") >= 2 else "id"
        return finding(f"pass path parameter {name}",
                       f"{call.tool}: pass `path_params.{name}`, the id an earlier call returned")
    if call.status == 404:
        return finding("use an id the API returned, not an invented one",
                       f"{call.tool}: pass the id that the create call returned")
    if call.status in (401, 403):
        return finding("the call was refused: check credentials and scopes")
    if call.status == 429:
        return finding("rate limited: retry the same call once", f"{call.tool}: on HTTP 429, retry the call once")
    if "denied" in said.lower() or "forbidden" in said.lower():
        return finding("the mesh's policy refused this call: do not retry it",
                       f"{call.tool}: the mesh's policy refuses it; do not call it")
    invalid = INVALID.search(said)
    if invalid:
        return finding(f"fix the {invalid.group(1)}: {invalid.group(3)[:120]}",
                       f"{call.tool}: {invalid.group(1)} {invalid.group(2) or ''} — {invalid.group(3)[:120]}")
    return finding("read the operation's description and try again")


def analyse_attempt(task: dict[str, Any], calls: list[ToolOutcome], verdict: str, error: str | None,
                    tools: dict[str, ToolSpec]) -> Finding:
    """The finding of one failed attempt: its first failed call, else what the check missed."""
    for call in calls:
        if not call.ok and not call.observe:
            return analyse_call(task["id"], call, tools.get(call.tool))
    if error:
        return Finding(task["id"], None, None, error, "the attempt itself failed; keep the answer format", ())
    wanted = re.match(r"never called (\w+) successfully", verdict)
    if wanted:
        tool = tools.get(wanted.group(1))
        what = tool.description if tool else wanted.group(1)
        return Finding(task["id"], None, None, verdict, f"call {wanted.group(1)} as part of this task",
                       (f"{wanted.group(1)}: call it when a task asks to {_verb(what)}",))
    if "answer" in verdict:
        return Finding(task["id"], None, None, verdict, "answer with the value asked for only",
                       ("answers: when a task asks for a value (an id, a count), answer with that value alone",))
    return Finding(task["id"], None, None, verdict, "the system's state did not show the result", ())


def _verb(description: str) -> str:
    summary = description.split(":", 1)[-1].strip().rstrip(".")
    return summary[:1].lower() + summary[1:] if summary else "do this"


def lessons_from(findings: list[Finding], known: list[str]) -> list[str]:
    """``known`` lessons plus the new ones the findings teach, in order, each once."""
    lessons = list(known)
    for finding in findings:
        for lesson in finding.lessons:
            if lesson not in lessons:
                lessons.append(lesson)
    return lessons
