"""A learning plan derived from a target system's operations: objectives, ordered tasks with checks, a rubric.

The plan is read off the spec, not invented by a model: every collection that can be created (``POST
/pets`` with a body that names things) gives tasks from simple to composite — list it; create one with every
required field stated; create one with only its name stated (the learner must find what else is required);
set an attribute; create then fetch by id; create then find by a filter; create then delete. Each task has a
check that decides success from the system's observable state (read back through its own operations) or
from the learner's answer. Held-out tasks, phrased differently and with other values, are kept for the
capability assessment and never trained on. Plans are plain JSON: a person can read and edit them.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from mesh.learning.target import ToolSpec

NAME_FIELDS = ("name", "title", "label")


@dataclass(frozen=True)
class Resource:
    """A collection the spec lets a client create, with the operations that act on it."""

    plural: str
    singular: str
    create: ToolSpec
    name_field: str
    required_choices: dict[str, list[Any]]  # required body fields with an enum -> their values
    attribute: tuple[str, list[Any]] | None  # an optional enum field a client may set, e.g. status
    listing: ToolSpec | None = None
    fetch: ToolSpec | None = None
    delete: ToolSpec | None = None
    filters: tuple[str, ...] = ()  # query parameters of the listing


def singular(plural: str) -> str:
    if plural.endswith("ies"):
        return plural[:-3] + "y"
    if plural.endswith(("sses", "xes")):
        return plural[:-2]
    return plural[:-1] if plural.endswith("s") else plural


def _item_schema(tool: ToolSpec) -> dict[str, Any]:
    """The schema of what a create operation returns (the stored item), merged over ``allOf``."""
    responses = tool.operation.get("responses") or {}
    for code in sorted(responses):
        if code.startswith("2") and responses[code].get("schema"):
            return _merged(responses[code]["schema"])
    return {}


def _merged(schema: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = dict(schema.get("properties") or {})
    required = list(schema.get("required") or [])
    for part in schema.get("allOf") or []:
        inner = _merged(part)
        properties.update(inner.get("properties") or {})
        required += inner.get("required") or []
    return {"properties": properties, "required": required}


def find_resources(tools: list[ToolSpec]) -> list[Resource]:
    by_route = {(t.operation.get("method"), t.operation.get("path")): t for t in tools}
    resources = []
    for tool in tools:
        path = tool.operation.get("path", "")
        body = _merged((tool.operation.get("request_body") or {}).get("schema") or {})
        if tool.operation.get("method") != "POST" or "{" in path or not body["properties"]:
            continue  # a nested collection needs its parent first: left to a hand-written task
        properties = body["properties"]
        name_field = next((f for f in NAME_FIELDS if (properties.get(f) or {}).get("type") == "string"), None)
        if name_field is None:
            continue
        plural = path.rstrip("/").rsplit("/", 1)[-1]
        choices = {f: list(properties[f]["enum"]) for f in body["required"]
                   if f != name_field and isinstance((properties.get(f) or {}).get("enum"), list)}
        item = _item_schema(tool)
        attribute = next(((f, list(s["enum"])) for f, s in item["properties"].items()
                          if f not in choices and isinstance(s.get("enum"), list) and len(s["enum"]) > 1
                          and not s.get("readOnly")), None)
        item_routes = [(m, p) for (m, p) in by_route if p and re.fullmatch(re.escape(path) + r"/\{[^}/]+\}", p)]
        listing = by_route.get(("GET", path))
        filters = tuple(p["name"] for p in (listing.operation.get("parameters") or []) if p["in"] == "query") \
            if listing else ()
        resources.append(Resource(
            plural=plural, singular=singular(plural), create=tool, name_field=name_field, required_choices=choices,
            attribute=attribute, listing=listing,
            fetch=next((by_route[r] for r in item_routes if r[0] == "GET"), None),
            delete=next((by_route[r] for r in item_routes if r[0] == "DELETE"), None), filters=filters,
        ))
    return resources


def article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _task(task_id: str, level: int, text: str, params: dict[str, Any], check: dict[str, Any], *,
          held_out: bool = False, skill: str) -> dict[str, Any]:
    return {"id": task_id, "level": level, "skill": skill, "text": text, "params": params, "check": check,
            "held_out": held_out}


def _lists_items(tool: ToolSpec | None) -> bool:
    """Does the operation answer with a JSON array (so the mock's stored items show in it)?"""
    responses = (tool.operation.get("responses") or {}) if tool else {}
    return any(code.startswith("2") and (r.get("schema") or {}).get("type") == "array" for code, r in responses.items())


def _contains(resource: Resource, match: dict[str, str]) -> dict[str, Any]:
    """Look for the item in the listing; when the listing is a page object, read back what the attempt
    created by id instead (``via_created``)."""
    assert resource.listing is not None
    if _lists_items(resource.listing) or resource.fetch is None:
        return {"kind": "state_contains", "tool": resource.listing.name, "arguments": {}, "match": match}
    param = [p["name"] for p in resource.fetch.operation["parameters"] if p["in"] == "path"][-1]
    return {"kind": "state_contains", "tool": resource.fetch.name, "match": match,
            "via_created": {"tool": resource.create.name, "param": param, "field": "id"}}


def resource_tasks(resource: Resource) -> list[dict[str, Any]]:
    """The tasks one resource gives, training ones first (simple to composite), then the held-out ones."""
    if resource.listing is None:
        return []
    r, name = resource, resource.name_field
    a = article(r.singular)
    unique = {"unique": r.singular}
    named = {name: "{name}"}
    tasks = [_task(f"list-{r.plural}", 1, f"List all the {r.plural} (no filter, no limit) and answer with how many "
                   "the list holds.", {}, {"kind": "answer_count", "tool": r.listing.name, "arguments": {}},
                   skill="read")]
    if r.required_choices:
        stated = " and ".join(f"{f} {values[0]}" for f, values in r.required_choices.items())
        tasks.append(_task(f"create-{r.singular}-stated", 1, f"Create {a} named {{name}} with {stated}.",
                           {"name": unique},
                           _contains(r, {**named, **{f: str(v[0]) for f, v in r.required_choices.items()}}),
                           skill="create"))
    tasks.append(_task(f"create-{r.singular}", 1, f"Create {a} named {{name}}.", {"name": unique},
                       _contains(r, named), skill="create"))
    if r.attribute:
        field, values = r.attribute
        tasks.append(_task(f"create-{r.singular}-{field}", 2,
                           f"Create {a} named {{name}} whose {field} is {values[1]}.", {"name": unique},
                           _contains(r, {**named, field: str(values[1])}), skill="create"))
    if r.fetch:
        tasks.append(_task(f"fetch-{r.singular}", 2, f"Create {a} named {{name}}, then fetch it by its id "
                           "and answer with its id.", {"name": unique},
                           {"kind": "all", "checks": [_contains(r, named), {"kind": "called", "tool": r.fetch.name},
                                                      {"kind": "answer_has_field", "field": "id"}]}, skill="read"))
    if r.attribute and r.attribute[0] in r.filters:
        field, values = r.attribute
        tasks.append(_task(f"find-{r.singular}-by-{field}", 3,
                           f"Create {a} named {{name}} whose {field} is {values[-1]}, then list the "
                           f"{r.plural} whose {field} is {values[-1]} and answer with its id.", {"name": unique},
                           {"kind": "all", "checks": [_contains(r, {**named, field: str(values[-1])}),
                                                      {"kind": "called", "tool": r.listing.name},
                                                      {"kind": "answer_has_field", "field": "id"}]},
                           skill="composite"))
    if r.delete:
        tasks.append(_task(f"delete-{r.singular}", 3, f"Create {a} named {{name}}, then delete it.",
                           {"name": unique},
                           {"kind": "all", "checks": [{"kind": "called", "tool": r.create.name},
                                                      {"kind": "called", "tool": r.delete.name},
                                                      {**_contains(r, named), "kind": "state_lacks"}]},
                           skill="composite"))
    # Held out: other words, other values; the assessment's evidence, never trained on.
    tasks.append(_task(f"heldout-add-{r.singular}", 1, f"Add a new {r.singular} called {{name}} to the system.",
                       {"name": unique}, _contains(r, named), held_out=True, skill="create"))
    if r.attribute:
        field, values = r.attribute
        tasks.append(_task(f"heldout-{r.singular}-{field}", 2,
                           f"Register {a} called {{name}}; its {field} must be {values[0]}.",
                           {"name": unique}, _contains(r, {**named, field: str(values[0])}), held_out=True,
                           skill="create"))
    if r.fetch:
        tasks.append(_task(f"heldout-lookup-{r.singular}", 2, f"Add {a} called {{name}}, look it up by id, "
                           "and reply with that id.", {"name": unique},
                           {"kind": "all", "checks": [_contains(r, named), {"kind": "called", "tool": r.fetch.name},
                                                      {"kind": "answer_has_field", "field": "id"}]},
                           held_out=True, skill="read"))
    if r.delete:
        tasks.append(_task(f"heldout-remove-{r.singular}", 3, f"Add {a} called {{name}} and then remove it.",
                           {"name": unique},
                           {"kind": "all", "checks": [{"kind": "called", "tool": r.delete.name},
                                                      {**_contains(r, named), "kind": "state_lacks"}]},
                           held_out=True, skill="composite"))
    if r.delete:  # leave the sandbox as found: what an attempt created is deleted after its check
        param = [p["name"] for p in r.delete.operation["parameters"] if p["in"] == "path"][-1]
        for task in tasks:
            task["cleanup"] = {"created_by": r.create.name, "tool": r.delete.name, "param": param, "field": "id"}
    return tasks


SKILLS = {"create": "creates resources with valid bodies", "read": "reads back what it made (by id, by listing)",
          "composite": "chains operations (create then find, create then delete)"}


def derive_plan(system: str, tools: list[ToolSpec], *, max_resources: int = 3) -> dict[str, Any]:
    """Objectives, tasks (ordered by level, training before held-out) and a rubric for ``system``."""
    resources = find_resources(tools)[:max_resources]
    tasks = [task for resource in resources for task in resource_tasks(resource)]
    tasks.sort(key=lambda task: (task["held_out"], task["level"]))
    objectives = [f"Create {r.plural} with every field the API requires, including those the task does not name"
                  for r in resources]
    objectives += [f"Read {r.plural} back: list them, fetch one by id, find one by a filter" for r in resources]
    objectives += [f"Chain operations on {r.plural}: create then delete" for r in resources if r.delete]
    held_out = [t for t in tasks if t["held_out"]]
    rubric = [{"id": skill, "description": description, "weight": 1.0,
               "tasks": [t["id"] for t in held_out if t["skill"] == skill]}
              for skill, description in SKILLS.items() if any(t["skill"] == skill for t in held_out)]
    return {"objectives": objectives, "tasks": tasks, "rubric": rubric}


def instantiate(task: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A task's text with fresh values for its parameters (unique names, so attempts never collide)."""
    values: dict[str, str] = {}
    for name, spec in (task.get("params") or {}).items():
        if isinstance(spec, dict) and "unique" in spec:
            values[name] = f"{spec['unique']}-{secrets.token_hex(3)}"
        elif isinstance(spec, dict) and "value" in spec:
            values[name] = str(spec["value"])
        else:
            values[name] = str(spec)
    return fill(task["text"], values), values


def fill(template: Any, values: dict[str, str]) -> Any:
    """``{name}`` placeholders replaced in strings, lists and dicts (a check's match uses them)."""
    if isinstance(template, str):
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)
    if isinstance(template, list):
        return [fill(item, values) for item in template]
    if isinstance(template, dict):
        return {key: fill(value, values) for key, value in template.items()}
    return template
