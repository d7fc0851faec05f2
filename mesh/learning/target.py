"""The target system a learner practises on, seen through a small protocol: list tools, call one.

The loop never talks to an API directly. A ``Target`` lists the system's operations as tools and calls
them; checks observe the system's state by calling its read operations the same way. Three targets exist:

- ``SandboxTarget``: one service of a sandbox with a lifecycle (``mesh/sandbox``), what a learning run
  practises in. Every call takes the sandbox's own call path in the registry (policy, provenance,
  reputation) and is kept as a ``sandbox_runs`` row labelled with the attempt (``label``); the outcome
  names both the registry's run and that row, the attempt's evidence.
- ``SandboxAgentTarget``: one API of the ``sandbox`` agent, every call carried by the registry; the
  registry reads a system's operations this way to derive a plan.
- ``MockTarget``: a ``MockAPI`` in this process, for offline tests; nothing is recorded by a registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mesh.client import RUN_META
from mesh.sandbox.openapi_mock import MockAPI, OpenAPIError
from mesh.sandbox.tools import tool_name

MAX_OUTPUT = 4000  # characters of a tool's answer kept in an attempt's record


@dataclass(frozen=True)
class ToolSpec:
    """One operation of the target as a tool: its name, what it does, and the arguments it takes."""

    name: str
    description: str
    arguments: dict[str, Any]  # argument name -> JSON Schema (path_params, query, body)
    operation: dict[str, Any] = field(default_factory=dict, repr=False)  # the described operation, schemas inlined

    def loose_arguments(self) -> dict[str, Any]:
        """The argument groups as plain objects: the API, behind the registry, is what validates a call (so
        the learner meets the API's own error, and the attempt is recorded), not a check in this process."""
        return {name: {"type": "object" if schema.get("type", "object") == "object" else schema.get("type")}
                for name, schema in self.arguments.items()}


@dataclass
class ToolOutcome:
    """What one call did: the API's status and body, or the error the call met; ``run_id`` is the registry's."""

    tool: str
    arguments: dict[str, Any]
    ok: bool
    status: int | None = None
    body: Any = None
    error: str | None = None
    run_id: str | None = None
    observe: bool = False  # made by a check, not by the learner
    sandbox_run: int | None = None  # the ``sandbox_runs`` row, when the call was made in a sandbox

    def observation(self) -> str:
        """The text the learner sees after the call."""
        if self.error is not None:
            return f"error: {self.error}"
        return json.dumps({"status": self.status, "body": self.body}, ensure_ascii=False, default=str)[:MAX_OUTPUT]

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        text = json.dumps(document["body"], ensure_ascii=False, default=str)
        if len(text) > MAX_OUTPUT:
            document["body"] = text[:MAX_OUTPUT] + "…"
        return document


class Target(Protocol):
    """What the loop needs of a system: its name, its tools, and a way to call them."""

    system: str
    label: str | None  # the attempt the next calls belong to; a sandbox keeps it with each call

    def tools(self) -> list[ToolSpec]: ...

    def call(self, tool: str, arguments: dict[str, Any], *, observe: bool = False) -> ToolOutcome: ...


def describe_tool(described: dict[str, Any]) -> ToolSpec:
    """A tool for one operation (as ``MockAPI.describe`` gives it): compact words for a model to read."""
    path_params = [p for p in described["parameters"] if p["in"] == "path"]
    query = [p for p in described["parameters"] if p["in"] == "query"]
    words = [f"{described['method']} {described['path']}: {described.get('summary') or described['operation_id']}."]
    arguments: dict[str, Any] = {}
    if path_params:
        words.append("path parameters: " + ", ".join(p["name"] for p in path_params) + ".")
        arguments["path_params"] = {"type": "object", "properties": {p["name"]: p["schema"] for p in path_params},
                                    "required": [p["name"] for p in path_params]}
    if query:
        words.append("query: " + ", ".join(p["name"] for p in query) + ".")
        arguments["query"] = {"type": "object", "properties": {p["name"]: p["schema"] for p in query}}
    body = described.get("request_body")
    if body is not None:
        schema = body.get("schema") or {}
        words.append(f"body: a JSON {schema.get('type', 'value')}{_fields_summary(schema)}.")
        arguments["body"] = schema
    return ToolSpec(described["operation_id"], " ".join(words), arguments, described)


def _fields_summary(schema: dict[str, Any]) -> str:
    """``; fields: name (string, required), species (dog|cat)...`` for an object schema."""
    properties: dict[str, Any] = dict(schema.get("properties") or {})
    required = set(schema.get("required") or [])
    for part in schema.get("allOf") or []:
        properties.update(part.get("properties") or {})
        required |= set(part.get("required") or [])
    if not properties:
        return ""
    described = []
    for name, prop in properties.items():
        kind = "|".join(str(v) for v in prop["enum"]) if isinstance(prop.get("enum"), list) else prop.get("type", "any")
        described.append(f"{name} ({kind}{', required' if name in required else ''})")
    return "; fields: " + ", ".join(described)


def _call_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Only the three argument groups an operation takes; anything else a model invents is dropped."""
    return {key: arguments[key] for key in ("path_params", "query", "body") if arguments.get(key) is not None}


class MockTarget:
    """A ``MockAPI`` called in this process: for tests and offline runs (no registry, no policy, no run ids)."""

    def __init__(self, api: MockAPI):
        self.api = api
        self.system = api.name
        self.label: str | None = None

    def tools(self) -> list[ToolSpec]:
        return [describe_tool(self.api.describe(op.operation_id)) for op in self.api.operations()]

    def call(self, tool: str, arguments: dict[str, Any], *, observe: bool = False) -> ToolOutcome:
        try:
            answer = self.api.call(tool, **_call_arguments(arguments)).to_dict()
        except (OpenAPIError, TypeError) as exc:
            return ToolOutcome(tool, arguments, False, error=str(exc), observe=observe)
        return ToolOutcome(tool, arguments, 200 <= answer["status"] < 300, answer["status"], answer["body"],
                           observe=observe)


Invoke = Callable[[str, str, dict[str, Any]], dict[str, Any]]
"""``invoke(agent, tool, arguments)`` through the registry: ``{"run_id", "result": CallToolResult JSON}``;
raises for a refusal (policy, scopes, unknown tool), with the refusal as its message."""


class SandboxAgentTarget:
    """One API of the ``sandbox`` agent, reached through the registry with ``invoke``."""

    def __init__(self, invoke: Invoke, api: str, agent: str = "sandbox"):
        self.invoke = invoke
        self.system = api
        self.agent = agent
        self.label: str | None = None
        self._tools: list[ToolSpec] | None = None

    def tools(self) -> list[ToolSpec]:
        if self._tools is None:
            listed = self._result(self.invoke(self.agent, "list_operations", {"api": self.system}))
            self._tools = [describe_tool(self._result(self.invoke(self.agent, "describe_operation",
                                                                   {"api": self.system,
                                                                    "operation_id": op["operation_id"]})))
                           for op in listed]
        return self._tools

    def call(self, tool: str, arguments: dict[str, Any], *, observe: bool = False) -> ToolOutcome:
        try:
            answer = self.invoke(self.agent, "call_operation",
                                 {"api": self.system, "operation_id": tool, **_call_arguments(arguments)})
        except Exception as exc:
            return ToolOutcome(tool, arguments, False, error=" ".join(str(exc).split())[:MAX_OUTPUT],
                               observe=observe)
        run_id = answer.get("run_id")
        result = answer.get("result") or {}
        if result.get("isError"):
            return ToolOutcome(tool, arguments, False, error=_text(result)[:MAX_OUTPUT], run_id=run_id, observe=observe)
        payload = self._structured(result)
        status = payload.get("status") if isinstance(payload, dict) else None
        return ToolOutcome(tool, arguments, isinstance(status, int) and 200 <= status < 300, status,
                           payload.get("body") if isinstance(payload, dict) else payload, run_id=run_id,
                           observe=observe)

    def _result(self, answer: dict[str, Any]) -> Any:
        result = answer.get("result") or {}
        if result.get("isError"):
            raise OpenAPIError(_text(result))
        return self._structured(result)

    @staticmethod
    def _structured(result: dict[str, Any]) -> Any:
        structured = result.get("structuredContent")
        if structured is None:
            try:
                structured = json.loads(_text(result))
            except ValueError:
                return _text(result)
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]  # a tool returning a list or a scalar is wrapped this way
        return structured


SandboxCall = Callable[[str, dict[str, Any], str | None], tuple[dict[str, Any], int | None]]
"""``call(tool, arguments, attempt)`` on a sandbox's MCP tool (``SERVICE__OPERATION``, flat arguments):
the ``CallToolResult`` JSON (a refusal is a tool error with its problem in ``_meta``) and the
``sandbox_runs`` row's id."""


class SandboxTarget:
    """One service of a sandbox: its operations as tools, each call made in the sandbox by ``call``."""

    def __init__(self, call: SandboxCall, api: MockAPI, sandbox_id: str, reset: Callable[[], Any] | None = None):
        self._call = call
        self._reset = reset
        self.api = api
        self.system = api.name
        self.sandbox_id = sandbox_id
        self.label: str | None = None

    def tools(self) -> list[ToolSpec]:
        return [describe_tool(self.api.describe(op.operation_id)) for op in self.api.operations()]

    def reset(self) -> None:
        """Start the sandbox again from its seed data (a new revision; its runs stay)."""
        if self._reset is None:
            raise RuntimeError(f"sandbox {self.sandbox_id} cannot be reset from here")
        self._reset()

    def call(self, tool: str, arguments: dict[str, Any], *, observe: bool = False) -> ToolOutcome:
        grouped = _call_arguments(arguments)
        flat: dict[str, Any] = {}
        for group in ("path_params", "query"):
            if isinstance(grouped.get(group), dict):
                flat.update(grouped[group])
        if "body" in grouped:
            flat["body"] = grouped["body"]
        label = f"{self.label}/check" if observe and self.label else self.label
        try:
            result, sandbox_run = self._call(tool_name(self.system, tool), flat, label)
        except Exception as exc:
            return ToolOutcome(tool, arguments, False, error=" ".join(str(exc).split())[:MAX_OUTPUT], observe=observe)
        run_id = (result.get("_meta") or {}).get(RUN_META)
        if result.get("isError"):
            return ToolOutcome(tool, arguments, False, error=_text(result)[:MAX_OUTPUT], run_id=run_id,
                               observe=observe, sandbox_run=sandbox_run)
        answer = result.get("structuredContent") or {}
        status = answer.get("status")
        return ToolOutcome(tool, arguments, isinstance(status, int) and 200 <= status < 300, status,
                           answer.get("body"), run_id=run_id, observe=observe, sandbox_run=sandbox_run)


def _text(result: dict[str, Any]) -> str:
    return " ".join(part.get("text", "") for part in result.get("content") or [] if part.get("type") == "text")
