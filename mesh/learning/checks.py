"""Checks: did an attempt succeed? Decided from the system's observable state or from the answer.

A check is JSON in the plan (so a person can edit it). Kinds:

- ``state_contains`` / ``state_lacks``: call a read operation (``tool`` with ``arguments``) and look for an
  item whose fields equal ``match`` (placeholders filled from the task's values); with ``via_created``,
  read back by id each item the attempt's successful create calls made (for listings that page);
- ``called``: the attempt made a successful call of ``tool``;
- ``answer_has_field``: the answer holds the ``field`` (e.g. ``id``) of the item ``state_contains`` found;
- ``answer_count``: the answer holds the number of items the read operation lists;
- ``all``: every one of ``checks``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mesh.learning.curriculum import fill
from mesh.learning.target import Target, ToolOutcome

LIST_FIELDS = ("items", "data", "results", "records")


@dataclass
class Verdict:
    passed: bool
    detail: str
    observed: list[ToolOutcome] = field(default_factory=list)  # the calls the check made


def items_of(body: Any) -> list[Any]:
    """The items a listing returned: a JSON array, or the array of a page object (``items``, ``data``...)."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for name in LIST_FIELDS:
            if isinstance(body.get(name), list):
                return body[name]
    return []


def _read_back(check: dict[str, Any], calls: list[ToolOutcome], target: Target,
               observed: list[ToolOutcome]) -> list[Any]:
    """What the attempt's successful create calls made, each read back by its id (404: gone)."""
    via = check["via_created"]
    items = []
    for call in calls:
        if call.tool == via["tool"] and call.ok and isinstance(call.body, dict) and via["field"] in call.body:
            path = {**(call.arguments.get("path_params") or {}), via["param"]: call.body[via["field"]]}
            outcome = target.call(check["tool"], {"path_params": path}, observe=True)
            observed.append(outcome)
            if outcome.ok:
                items.append(outcome.body)
    return items


def _matches(item: Any, match: dict[str, Any]) -> bool:
    return isinstance(item, dict) and all(str(item.get(key)) == str(value) for key, value in match.items())


def _mentions(answer: str, value: Any) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(str(value))}(?![\w-])", answer or "") is not None


def evaluate(check: dict[str, Any], values: dict[str, str], calls: list[ToolOutcome], answer: str,
             target: Target) -> Verdict:
    found: dict[str, Any] = {}
    observed: list[ToolOutcome] = []
    passed, detail = _evaluate(fill(check, values), calls, answer or "", target, found, observed)
    return Verdict(passed, detail, observed)


def _evaluate(check: dict[str, Any], calls: list[ToolOutcome], answer: str, target: Target,
              found: dict[str, Any], observed: list[ToolOutcome]) -> tuple[bool, str]:
    kind = check.get("kind")
    if kind == "all":
        for part in check.get("checks") or []:
            passed, detail = _evaluate(part, calls, answer, target, found, observed)
            if not passed:
                return False, detail
        return True, "every check passed"
    if kind in ("state_contains", "state_lacks"):
        match = check.get("match") or {}
        if "via_created" in check:
            listed = _read_back(check, calls, target, observed)
        else:
            outcome = target.call(check["tool"], dict(check.get("arguments") or {}), observe=True)
            observed.append(outcome)
            if not outcome.ok:
                return False, f"could not observe the state: {check['tool']} said {outcome.error or outcome.status}"
            listed = items_of(outcome.body)
        hit = next((item for item in listed if _matches(item, match)), None)
        if kind == "state_lacks":
            return (hit is None, "no item matches" if hit is None else f"an item still matches {match}")
        if hit is None:
            return False, f"{check['tool']} lists no item with {match}"
        found["item"] = hit
        return True, f"found {match}"
    if kind == "called":
        ok = any(call.tool == check["tool"] and call.ok and not call.observe for call in calls)
        return ok, f"called {check['tool']}" if ok else f"never called {check['tool']} successfully"
    if kind == "answer_has_field":
        item = found.get("item")
        if not isinstance(item, dict) or check["field"] not in item:
            return False, f"no item to read {check['field']} from"
        value = item[check["field"]]
        ok = _mentions(answer, value)
        return ok, f"answer holds {check['field']} {value}" if ok else f"answer {answer[:80]!r} lacks {value}"
    if kind == "answer_count":
        outcome = target.call(check["tool"], dict(check.get("arguments") or {}), observe=True)
        observed.append(outcome)
        if not outcome.ok:
            return False, f"could not observe the state: {check['tool']} said {outcome.error or outcome.status}"
        count = len(items_of(outcome.body))
        ok = _mentions(answer, count)
        return ok, f"answer holds the count {count}" if ok else f"answer {answer[:80]!r} lacks the count {count}"
    return False, f"unknown check kind {kind!r}"


def clean_up(cleanup: dict[str, Any] | None, calls: list[ToolOutcome], target: Target) -> list[ToolOutcome]:
    """Delete what the attempt's successful create calls made (``cleanup`` of a task), so the sandbox's
    state stays small and attempts stay independent; returns the calls made."""
    if not cleanup:
        return []
    made = []
    for call in calls:
        if call.tool == cleanup["created_by"] and call.ok and isinstance(call.body, dict) \
                and cleanup["field"] in call.body:
            path = {**(call.arguments.get("path_params") or {}), cleanup["param"]: call.body[cleanup["field"]]}
            made.append(target.call(cleanup["tool"], {"path_params": path}, observe=True))
    return made
