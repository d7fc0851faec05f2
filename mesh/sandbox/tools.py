"""A sandbox's services as MCP tools: one tool per operation of each spec, named ``SERVICE__OPERATION``.

A tool's arguments are the operation's path and query parameters by name, ``body`` for the request
body and ``headers`` for HTTP headers (``Authorization: Bearer TOKEN`` where the spec asks for a
credential). Its result is the service's answer as structured content: ``{status, headers, body}``.
"""

from __future__ import annotations

import re
from typing import Any

import mcp_types as types

from mesh.sandbox.openapi_mock import MockAPI, Operation

SEPARATOR = "__"
READS = ("GET", "HEAD", "OPTIONS")
HEADERS_SCHEMA = {"type": "object", "additionalProperties": {"type": "string"},
                  "description": "HTTP headers to send, e.g. {\"Authorization\": \"Bearer TOKEN\"}"}
ANSWER_SCHEMA = {
    "type": "object", "required": ["status", "headers", "body"],
    "properties": {"status": {"type": "integer", "description": "the HTTP status the service answered"},
                   "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                   "body": {"description": "the JSON body, or null"}},
}


def tool_name(service: str, operation_id: str) -> str:
    """``tracker__createTask``; characters MCP tool names cannot hold become ``_``."""
    return f"{service}{SEPARATOR}{re.sub(r'[^A-Za-z0-9_.-]', '_', operation_id)}"


def operation_tools(api: MockAPI, service: str, mode: str) -> list[types.Tool]:
    return [operation_tool(api, service, op, mode) for op in api.operations()]


def operation_tool(api: MockAPI, service: str, op: Operation, mode: str) -> types.Tool:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in op.parameters:
        if param.location not in ("path", "query"):
            continue
        schema = dict(api.doc.inline(param.schema))
        if param.description:
            schema.setdefault("description", f"{param.location} parameter: {param.description}")
        properties[param.name] = schema
        if param.required:
            required.append(param.name)
    if op.body_schema is not None:
        properties["body"] = {**api.doc.inline(op.body_schema), "description": "the request body (JSON)"}
        if op.body_required:
            required.append("body")
    properties["headers"] = HEADERS_SCHEMA
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    secured = " Needs a credential (see headers)." if op.security and all(op.security) else ""
    description = f"{op.summary or op.operation_id} — {op.method} {op.path} on {service}.{secured}"
    if op.description:
        description += f"\n\n{op.description.strip()}"
    connected = mode == "connected"
    annotations = types.ToolAnnotations(read_only_hint=op.method in READS,
                                        destructive_hint=connected and op.method not in READS,
                                        idempotent_hint=op.method in (*READS, "PUT", "DELETE"),
                                        open_world_hint=connected)
    return types.Tool(name=tool_name(service, op.operation_id), description=description, input_schema=schema,
                      output_schema=ANSWER_SCHEMA, annotations=annotations)


def find_operation(apis: dict[str, MockAPI], name: str) -> tuple[str, Operation] | None:
    service, separator, _ = name.partition(SEPARATOR)
    api = apis.get(service)
    if not separator or api is None:
        return None
    for op in api.operations():
        if tool_name(service, op.operation_id) == name:
            return service, op
    return None


def split_arguments(op: Operation, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool's flat arguments as the sandbox agent's call takes them: path_params, query, body, headers.
    An argument the operation does not declare is a ``ValueError`` naming it and the ones it takes."""
    declared = {p.name: p.location for p in op.parameters if p.location in ("path", "query")}
    out: dict[str, Any] = {"path_params": {}, "query": {}}
    for name, value in arguments.items():
        if name in declared:
            out["path_params" if declared[name] == "path" else "query"][name] = value
        elif name == "body" and op.body_schema is not None:
            out["body"] = value
        elif name == "headers":
            out["headers"] = value
        else:
            known = ", ".join([*declared, *(["body"] if op.body_schema is not None else []), "headers"])
            raise ValueError(f"{op.operation_id} takes no argument {name!r} (it takes: {known})")
    return {key: value for key, value in out.items() if key not in ("path_params", "query") or value}
