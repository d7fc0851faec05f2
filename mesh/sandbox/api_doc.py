"""The sandbox routes in the registry's OpenAPI document (``mesh.registry.openapi`` merges them in)."""

from __future__ import annotations

from typing import Any

from mesh.registry.openapi import (
    AGENT_NAME,
    BODY,
    CALLER,
    GATE,
    _json_body,
    _list,
    _nullable,
    _object,
    _operation,
    _param,
    _ref,
    _responses,
)
from mesh.sandbox.config import MAX_TTL_SECONDS, MODES

_MODE = {"enum": list(MODES), "description": "mock: spec-driven answers; emulated: stateful, a closed world; "
                                             "connected: the real endpoint (needs secret_ref and an approval)"}
_SERVICE_CONFIG = {"type": "object", "description": "per service: seed ({collection path: [records]}), responses "
                                                    "(fixed answers), failures (rate, status, latency_ms), "
                                                    "credentials, base_url"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Sandbox": _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "agent": {"type": "string"},
            "mode": _MODE,
            "status": {"enum": ["active", "expired", "deleted"]},
            "required_services": _list({"type": "string"}),
            "services": {"type": "object", "additionalProperties": _SERVICE_CONFIG},
            "secret_ref": _nullable("string"),
            "description": {"type": "string"},
            "ttl_seconds": {"type": "integer"},
            "revision": {"type": "integer", "minimum": 1, "description": "grows on reset and on changed services"},
            "created_by": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "removed_at": _nullable("string", format="date-time"),
            "mcp": {"type": "string", "description": "the sandbox's MCP endpoint: one tool per API operation"},
            "href": {"type": "string"},
        },
        ["id", "agent", "mode", "status", "required_services", "services", "revision", "expires_at", "mcp"],
    ),
    "SandboxRequest": _object(
        {
            "required_services": _list({"type": "string", "description": "an OpenAPI spec of the workspace"}),
            "mode": _MODE,
            "services": {"type": "object", "additionalProperties": _SERVICE_CONFIG},
            "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS, "default": 3600},
            "secret_ref": {"type": "string", "description": "connected mode: env:MESH_SECRET_NAME"},
            "description": {"type": "string", "maxLength": 2000},
        },
        ["required_services"],
    ),
    "SandboxRun": _object(
        {
            "id": {"type": "integer"},
            "sandbox_id": {"type": "string"},
            "revision": {"type": "integer"},
            "run_id": _nullable("string", description="the registry's run (GET /v1/runs/{run_id}: provenance)"),
            "caller": {"type": "string"},
            "service": {"type": "string"},
            "operation_id": {"type": "string"},
            "attempt": _nullable("string", description="the caller's label, from _meta io.mcpmesh/attempt"),
            "arguments": {"type": "object", "description": "credentials in headers are kept as (redacted)"},
            "status": {"type": "string", "description": "ok, error, or the kind of the registry's refusal"},
            "http_status": _nullable("integer"),
            "answer": {"description": "{status, headers, body} as the service answered, or null"},
            "error": _nullable("string"),
            "started_at": {"type": "string", "format": "date-time"},
        },
        ["id", "sandbox_id", "revision", "run_id", "service", "operation_id", "status", "started_at"],
    ),
    "Approval": _object(
        {
            "id": {"type": "string"},
            "agent": {"type": "string"},
            "service": {"type": "string"},
            "scope": {"type": "string"},
            "approved_by": {"type": "string"},
            "approved_at": {"type": "string", "format": "date-time"},
            "note": _nullable("string"),
            "base_url": _nullable("string", description="the endpoint approved; null: the spec's first server"),
            "revoked_at": _nullable("string", format="date-time"),
        },
        ["id", "agent", "service", "scope", "approved_by", "approved_at", "revoked_at"],
    ),
}

SANDBOX_ID = _param("sandbox_id", "path", {"type": "string"}, "the sandbox's id")
REMOVED = _param("removed", "query", {"type": "boolean", "default": False}, "expired and deleted sandboxes too")
_GONE = "the sandbox is expired or deleted (sandbox-expired)"


def _created(responses: dict[str, Any]) -> dict[str, Any]:
    responses["201"] = responses.pop("200")
    return responses


def sandbox_paths() -> dict[str, Any]:
    read = (*GATE, *CALLER)
    write = (*GATE, *CALLER, *BODY)
    one = [AGENT_NAME, SANDBOX_ID]
    sandbox_list = _object({"sandboxes": _list(_ref("Sandbox"))}, ["sandboxes"])
    return {
        "/v1/agents/{name}/sandboxes": {
            "get": _operation("The agent's sandboxes, newest first",
                              _responses(sandbox_list, "the sandboxes", *read, 400, 404,
                                         s404="not a valid agent name"),
                              parameters=[AGENT_NAME, REMOVED], operation_id="listAgentSandboxes"),
            "post": _operation(
                "Create a sandbox for the agent: OpenAPI services, their configuration, a mode and a TTL",
                _created(_responses(_ref("Sandbox"), "created", *write, 404,
                                    s400="a field is wrong (named in the detail), or no such spec",
                                    s403="the caller is neither the agent nor an operator, or connected mode "
                                         "without an approval (approval-required)",
                                    s404="no such agent")),
                description="Connected mode needs secret_ref and an operator's approval for each service "
                            "(POST /v1/approvals, or `mesh approve AGENT SERVICE`).",
                parameters=[AGENT_NAME], body=_json_body(_ref("SandboxRequest")), operation_id="createSandbox"),
        },
        "/v1/agents/{name}/sandboxes/{sandbox_id}": {
            "get": _operation("One sandbox (a removed one says so in status)",
                              _responses(_ref("Sandbox"), "the sandbox", *read, 404, s404="no such sandbox"),
                              parameters=one, operation_id="getSandbox"),
            "patch": _operation(
                "Change a sandbox; new services, mode or configuration start a new revision",
                _responses(_ref("Sandbox"), "the sandbox as changed", *write, 404, 410,
                           s403="the caller may not, or connected mode without an approval",
                           s404="no such sandbox", s410=_GONE),
                parameters=one, body=_json_body({"type": "object", "description": "any SandboxRequest fields; "
                                                                                  "ttl_seconds counts from now"}),
                operation_id="updateSandbox"),
            "delete": _operation("Remove a sandbox; its runs stay",
                                 _responses(_ref("Sandbox"), "the sandbox, deleted", *read, 403, 404, 410,
                                            s404="no such sandbox", s410=_GONE),
                                 parameters=one, operation_id="deleteSandbox"),
        },
        "/v1/agents/{name}/sandboxes/{sandbox_id}/reset": {"post": _operation(
            "Start the sandbox's services again from their seed data; runs and provenance stay",
            _responses(_ref("Sandbox"), "the sandbox at its new revision", *write, 404, 410, s404="no such sandbox",
                       s410=_GONE),
            description="The body is ignored, but a POST must be application/json; send {}.",
            parameters=one, body=_json_body({"type": "object"}), operation_id="resetSandbox")},
        "/v1/agents/{name}/sandboxes/{sandbox_id}/runs": {"get": _operation(
            "The attempts made in the sandbox, oldest first, every revision",
            _responses(_object({"runs": _list(_ref("SandboxRun")), "next_after": _nullable("integer")},
                               ["runs", "next_after"]), "a page of attempts", *read, 400, 404,
                       s404="no such sandbox"),
            parameters=[*one, _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000,
                                                        "default": 100}, "page size"),
                        _param("after", "query", {"type": "integer"}, "next_after of the previous page")],
            operation_id="listSandboxRuns")},
        "/v1/agents/{name}/sandboxes/{sandbox_id}/state": {"get": _operation(
            "What the sandbox's emulated services hold now, by service and collection path",
            _responses(_object({"sandbox_id": {"type": "string"}, "revision": {"type": "integer"},
                                "run_id": {"type": "string"}, "services": {"type": "object"}},
                               ["sandbox_id", "revision", "run_id", "services"]), "the state", *read, 404, 409,
                       410, 502, 504, s403="the policy denied asking the sandbox agent, or a browser Origin",
                       s404="no such sandbox, or the sandbox agent is not registered", s410=_GONE),
            description="Asked of the sandbox agent through the registry: a recorded, policy-checked call.",
            parameters=one, operation_id="getSandboxState")},
        "/v1/sandboxes": {"get": _operation(
            "Every agent's sandboxes, newest first", _responses(sandbox_list, "the sandboxes", *read, 400),
            parameters=[REMOVED], operation_id="listSandboxes")},
        "/v1/approvals": {
            "get": _operation(
                "Standing approvals (revoked=true: revoked ones too)",
                _responses(_object({"approvals": _list(_ref("Approval"))}, ["approvals"]), "the approvals", *read,
                           400),
                parameters=[_param("agent", "query", {"type": "string"}, "only this agent's"),
                            _param("revoked", "query", {"type": "boolean", "default": False}, "revoked ones too")],
                operation_id="listApprovals"),
            "post": _operation(
                "An operator approves an agent's connected sandboxes for a service",
                _created(_responses(_ref("Approval"), "approved", *write, s403="the caller lacks registry:admin")),
                body=_json_body(_object({"agent": {"type": "string"}, "service": {"type": "string"},
                                         "scope": {"const": "sandbox:connected"},
                                         "base_url": {"type": "string", "description": "the real endpoint "
                                                      "(default: the spec's first server)"},
                                         "note": {"type": "string"}}, ["agent", "service"])),
                operation_id="approve"),
        },
        "/v1/approvals/{approval_id}": {"delete": _operation(
            "Revoke an approval (the record stays); connected calls stop at once",
            _responses(_ref("Approval"), "the approval, revoked", *read, 403, 404, s404="no such approval"),
            parameters=[_param("approval_id", "path", {"type": "string"}, "the approval's id")],
            operation_id="revokeApproval")},
    }
