"""The registry's HTTP API as one explicit OpenAPI 3.1 document, served at ``GET /v1/openapi.json``.

Written out by hand rather than collected from docstrings, so that every status a route can answer is
listed — the route's own, and the gate's (``gate.py``), which may refuse any request before a route sees
it: 421 for a foreign ``Host``, 403 for a foreign ``Origin``, 401 when a non-public route has no caller,
and for a request with a body 415 (not ``application/json``), 413 (too large) and 400 (a malformed
``Content-Length``). Every error is an RFC 9457 problem (``application/problem+json``).

``tests/test_openapi_fuzz.py`` holds the live registry to this document with schemathesis.
"""

from __future__ import annotations

from typing import Any

from mesh.names import NAME_PATTERN

PROBLEM_MEDIA_TYPE = "application/problem+json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _object(properties: dict[str, Any], required: list[str] | None = None, **more: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **more}
    if required:
        schema["required"] = required
    return schema


# -- schemas ------------------------------------------------------------------------------------------------

PROBLEM = _object(
    {
        "type": {"type": "string", "format": "uri", "description": "https://mcpmesh.dev/problems/KIND"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "run_id": {"type": "string", "format": "uuid", "description": "the run recorded for a refused call"},
        "rule": {"type": "string", "description": "the policy rule that denied a call"},
    },
    ["type", "title", "status", "detail"],
    description="RFC 9457 problem details; the last segment of type names the kind of failure "
                "(bad-request, unauthenticated, forbidden, unknown-agent, policy-denied, target-timeout, ...).",
    additionalProperties=True,
)

REPUTATION = _object(
    {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "success_rate": {"type": "number"},
        "latency_p50_ms": _nullable("number"),
        "latency_p99_ms": _nullable("number"),
        "latency_ewm_ms": _nullable("number"),
        "tool_errors": {"type": "number"},
        "timeouts": {"type": "number"},
        "schema_violations": {"type": "number"},
        "denials": {"type": "number"},
        "calls": {"type": "integer", "minimum": 0},
    },
    ["score", "calls"],
)

TOOL_SUMMARY = _object(
    {
        "name": {"type": "string"},
        "status": {"type": "string", "description": "verified or blocked"},
        "description": {"type": "string"},
        "annotations": {"type": "object"},
        "scopes": _list({"type": "string"}),
        "pinned_digest": {"type": "string", "description": "detail only"},
        "blocked_reason": _nullable("string", description="detail only"),
    },
    ["name", "status", "description", "annotations", "scopes"],
)

AGENT = _object(
    {
        "name": {"type": "string"},
        "status": {"type": "string", "description": "active, down, refused, ..."},
        "endpoint": {"type": "string"},
        "version": {"type": "string"},
        "description": {"type": "string"},
        "reputation": _ref("Reputation"),
        "last_seen": {"type": "string", "format": "date-time"},
        "flags": _list({"type": "string"}),
        "tools": _list(_ref("ToolSummary")),
        "proficiency": _ref("Proficiency"),
    },
    ["name", "status", "endpoint", "version", "description", "reputation", "last_seen", "flags", "tools"],
)

RUN = _object(
    {
        "id": {"type": "string", "format": "uuid"},
        "parent_run_id": _nullable("string"),
        "log": {"enum": ["caller", "target"], "description": "whose log this record is in"},
        "caller": {"type": "string", "description": "agent:NAME, user:local or anonymous"},
        "agent": {"type": "string"},
        "tool": {"type": "string"},
        "arguments_digest": _nullable("string"),
        "status": {"type": "string", "description": "ok, error, denied, invalid, timeout, unavailable, ..."},
        "error": _nullable("string"),
        "latency_ms": _nullable("number"),
        "policy_decision": _nullable("string"),
        "policy_rule": _nullable("string"),
        "trace_id": _nullable("string"),
        "started_at": {"type": "string", "format": "date-time"},
        "provenance": _nullable("string", description="compact JWS; verify it against /.well-known/jwks.json"),
        "provenance_proof": _nullable("object", description="when the JWS signs a batch of calls (a Merkle "
                                      "root): this run's claims, leaf index, batch size and audit path"),
        "cost": _nullable("number", description="cost units it spent from budgets; null: it reached no agent"),
        "project": {"type": "string", "description": "ORG/PROJECT the run belongs to (its target agent's)"},
    },
    ["id", "parent_run_id", "log", "caller", "agent", "tool", "status", "started_at", "provenance"],
)

SCHEMAS: dict[str, dict[str, Any]] = {
    "Problem": PROBLEM,
    "Reputation": REPUTATION,
    "ToolSummary": TOOL_SUMMARY,
    "Agent": AGENT,
    "AgentDetail": {
        "allOf": [
            _ref("Agent"),
            _object(
                {
                    "manifest": _nullable("object", description="the signed manifest it was admitted on"),
                    "manifest_digest": _nullable("string"),
                    "keys": _nullable("object", description="the JWKS it registered with"),
                    "tool_reputation": {"type": "object", "additionalProperties": _ref("Reputation")},
                    "revoked_keys": _list(_object({"kid": {"type": "string"},
                                                   "revoked_at": {"type": "string", "format": "date-time"},
                                                   "by": {"type": "string"}}, ["kid", "revoked_at", "by"])),
                    "recent_runs": _list(_ref("Run")),
                    "descriptors": _list(_object(
                        {"kind": {"enum": ["resource", "resource_template", "prompt"]}, "name": {"type": "string"},
                         "status": {"enum": ["verified", "blocked"]}, "description": {"type": "string"},
                         "scopes": _list({"type": "string"}), "pinned_digest": {"type": "string"},
                         "blocked_reason": _nullable("string"), "uri": {"type": "string"},
                         "uriTemplate": {"type": "string"}},
                        ["kind", "name", "status", "scopes", "pinned_digest"],
                        description="a resource, resource template or prompt as admitted")),
                },
                ["manifest", "manifest_digest", "keys", "tool_reputation", "revoked_keys", "recent_runs",
                 "descriptors"],
            ),
        ],
    },
    "Run": RUN,
    "RunDetail": {
        "allOf": [_ref("Run"), _object({"linked": _list(_ref("Run"))}, ["linked"])],
        "description": "a run with the runs linked to it (the other side of the call, calls it caused)",
    },
    "DiscoverHit": _object(
        {
            "agent": {"type": "string"},
            "tool": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "score": {"type": "number", "description": "relevance * (0.5 + 0.5 * reputation), times "
                      "0.75 + 0.5 * proficiency when the agent was assessed on the tool's system"},
            "relevance": {"type": "number", "description": "fused relevance in [0, 1]: 1 is first for every ranker"},
            "reputation": {"type": "number", "description": "the prior's score (0.6) for a tool nobody has called"},
            "annotations": {"type": "object"},
            "why": _ref("DiscoverWhy"),
        },
        ["agent", "tool", "description", "score", "relevance", "reputation", "annotations", "why"],
    ),
    "DiscoverWhy": _object(
        {
            "lexical_rank": {"type": ["integer", "null"], "description": "1-based BM25 rank; null: no word matched"},
            "name_rank": {"type": ["integer", "null"], "description": "1-based BM25 rank over names alone"},
            "semantic_rank": {"type": ["integer", "null"], "description": "1-based rank by meaning; null: not near"},
            "similarity": {"type": ["number", "null"], "description": "cosine of the tool to the need"},
            "fused": {"type": "number", "description": "reciprocal rank fusion of the ranks, in [0, 1]"},
            "reputation": {"type": "number"},
            "reputation_known": {"type": "boolean", "description": "false: nobody has called it yet"},
            "proficiency": {"type": ["object", "null"], "description": "the agent's assessed score on the system "
                            "the tool or query names ({system, score}); null: none matched",
                            "properties": {"system": {"type": "string"}, "score": {"type": "number"}}},
            "need": {"type": ["string", "null"], "description": "the part of a several-need query it answers"},
        },
        ["lexical_rank", "name_rank", "semantic_rank", "similarity", "fused", "reputation", "reputation_known",
         "proficiency", "need"],
        description="why a tool ranked where it did",
    ),
    "Registration": _object(
        {
            "name": {"type": "string", "description": "the agent's name; the bearer token's sub must be agent:NAME"},
            "endpoint": {"type": "string", "description": "the agent's MCP URL (http or https)"},
            "manifest": {"type": "object", "description": "the signed manifest (a JWS in JSON form)"},
            "jwks": {"type": "object", "description": "keys, revoked, rotations, revocations"},
        },
        ["name", "endpoint", "manifest"],
    ),
    "Admission": _object(
        {
            "agent": {"type": "string"},
            "status": {"enum": ["admitted", "unchanged"]},
            "tools": _list({"type": "string"}),
            "manifest_digest": {"type": "string"},
        },
        ["agent", "status"],
    ),
    "KeyRevocation": _object(
        {"agent": {"type": "string"}, "kid": {"type": "string"},
         "status": {"enum": ["revoked", "already revoked"]}},
        ["agent", "kid", "status"],
    ),
    "AuditEntry": _object(
        {
            "seq": {"type": "integer", "minimum": 1, "description": "the entry's position in the chain"},
            "at": {"type": "string", "format": "date-time"},
            "org": _nullable("string", description="the organisation it happened in; null: registry-wide, or "
                                                   "written before organisations were recorded (hashed when not null)"),
            "actor": {"type": "string", "description": "who: agent:NAME, user:..., unauthenticated"},
            "action": {"type": "string", "description": "policy-decision, register, revoke-key, trust-key, "
                                                        "credential-set, credential-resolve, ..."},
            "subject": {"type": "string"},
            "outcome": {"type": "string"},
            "detail": _nullable("string"),
            "remote": _nullable("string"),
            "data": {"type": ["object", "null"], "description": "e.g. a policy decision's input (arguments whose "
                                                               "names say secret are redacted), rule and reasons"},
            "prev": {"type": "string", "description": "hash of the entry before (sha256:000... for the first)"},
            "hash": {"type": "string", "description": "sha256: of the RFC 8785 JSON of every field above"},
        },
        ["seq", "at", "org", "actor", "action", "subject", "outcome", "detail", "remote", "data", "prev", "hash"],
    ),
    "AuditCheckpoint": _object(
        {
            "seq": {"type": "integer"}, "hash": {"type": "string"}, "at": {"type": "string", "format": "date-time"},
            "kid": {"type": "string"},
            "jws": {"type": "string", "description": "compact JWS (typ mcpmesh-audit-checkpoint+jws) over "
                                                     "{seq, hash, at}, by a key of /.well-known/jwks.json"},
        },
        ["seq", "hash", "at", "kid", "jws"],
    ),
    "Credential": _object(
        {
            "ref": {"type": "string", "description": "the secret_ref that names it"},
            "org": {"type": "string"}, "agent": {"type": "string", "description": "an agent name, or * for any"},
            "system": {"type": "string"}, "backend": {"enum": ["local", "vault"]},
            "version": {"type": "integer"},
            "previous_version": _nullable("integer", description="kept since the last rotation, until cutover"),
            "description": {"type": "string"}, "created_by": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"}, "rotated_at": _nullable("string"),
        },
        ["ref", "org", "agent", "system", "backend", "version", "previous_version", "description", "created_by",
         "created_at", "rotated_at"],
        description="A credential by reference: everything but its value (no route ever answers with one).",
    ),
    "Invocation": _object(
        {
            "agent": {"type": "string"},
            "tool": {"type": "string"},
            "arguments": {"type": "object", "description": "checked against the tool's pinned input schema"},
        },
        ["agent", "tool", "arguments"],
    ),
    "InvocationResult": _object(
        {
            "run_id": {"type": "string", "format": "uuid", "description": "the caller-side run"},
            "target_run_id": {"type": "string", "format": "uuid", "description": "the target-side run"},
            "trace_id": _nullable("string"),
            "result": _object({"content": {"type": "array"}, "structuredContent": {"type": "object"},
                               "isError": {"type": "boolean"}}, ["content"],
                              description="the MCP CallToolResult"),
        },
        ["run_id", "target_run_id", "trace_id", "result"],
    ),
}

PEOPLE_SCHEMAS = {
    "Me": _object(
        {
            "id": {"type": "string", "description": "user:ID (user:local), or agent:NAME"},
            "kind": {"enum": ["user", "agent"]},
            "org": _nullable("string", description="the organisation the caller acts in"),
            "project": {"type": "string", "description": "ORG/PROJECT it acts in (X-Project-Id; an agent: its own)"},
            "role": _nullable("string", description="owner, admin, member or viewer there (null: none)"),
            "via": _nullable("string", description="loopback, oidc or api-token"),
            "scopes": _list({"type": "string"}),
            "token_id": _nullable("string"),
            "user": {"type": ["object", "null"]},
            "orgs": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "org -> role, every membership"},
        },
        ["id", "kind", "org", "role", "via", "scopes", "token_id"],
    ),
    "ApiToken": _object(
        {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "org": {"type": "string"},
            "scopes": _list({"type": "string"}),
            "created_at": {"type": "string", "format": "date-time"},
            "expires_at": {"type": "string", "format": "date-time"},
            "revoked_at": _nullable("string"),
            "last_used_at": _nullable("string"),
            "token": {"type": "string", "description": "the secret, only in the answer that made it"},
        },
        ["id", "name", "org", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at"],
    ),
    "Membership": _object({"org": {"type": "string"}, "user": {"type": "string"}, "role": _nullable("string")},
                          ["org", "user", "role"]),
}
SCHEMAS.update(PEOPLE_SCHEMAS)

# -- responses ----------------------------------------------------------------------------------------------

# Every status the registry answers with a problem, and what it means here.
PROBLEMS = {
    400: "bad request: malformed input, or (with a body) a Content-Length that is not a number",
    402: "a budget's hard limit would be passed (budget-exceeded, naming the budget); its status is 402 or 429",
    401: "no caller: the route needs an agent's bearer token (or the local user on loopback), "
         "or the token or signed statement does not verify; the detail says why",
    403: "forbidden: a browser Origin not allowed, or the caller lacks the right, or the route's own refusal",
    404: "not found",
    408: "the call waited for approval and no one approved it in time (approval-expired)",
    409: "the tool is blocked (it changed after approval, or its signing key was revoked)",
    413: "the request body is larger than max_body_bytes",
    415: "the request body is not application/json",
    421: "the Host header is not one this registry answers for (DNS rebinding)",
    429: "a budget's hard limit would be passed (budget-exceeded, naming the budget); its status is 402 or 429",
    502: "the target agent is unreachable, answered with an error, or answered outside its output schema",
    503: "a service the registry depends on is unavailable",
    504: "the target agent did not answer within call_timeout",
}
GATE = (403, 421)  # any route
CALLER = (401,)  # every route that is not public
BODY = (400, 413, 415)  # every route that takes a body


def _problem(status: int, description: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description or PROBLEMS[status],
                                "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"description": "Bearer realm=\"mcpmesh\", resource_metadata="
                                                                   "\"…/.well-known/oauth-protected-resource\" when "
                                                                   "the gate refused",
                                                    "schema": {"type": "string"}}}
    return response


def _responses(ok: dict[str, Any], description: str, *statuses: int, **special: str) -> dict[str, Any]:
    """A 200 with ``ok`` as its JSON body, and a problem for each status (``special``: own descriptions)."""
    responses: dict[str, Any] = {"200": {"description": description, "content": {"application/json": {"schema": ok}}}}
    for status in sorted(set(statuses)):
        responses[str(status)] = _problem(status, special.get(f"s{status}"))
    return responses


def _problems(*statuses: int, **special: str) -> dict[str, Any]:
    """Only the problems of ``_responses``: for an operation whose success is not a 200."""
    return {str(status): _problem(status, special.get(f"s{status}")) for status in sorted(set(statuses))}


def _json_body(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def _param(name: str, where: str, schema: dict[str, Any], description: str, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema,
            "description": description}


AGENT_NAME = _param("name", "path", {"type": "string", "pattern": NAME_PATTERN, "maxLength": 64},
                    "the agent's name (1-64 letters, digits, '_', '-', '.'; no '__')")
NO_SECURITY: list[dict[str, list[str]]] = []
REGISTRATION_SECURITY = [{"agentToken": []}]


def _operation(summary: str, responses: dict[str, Any], *, description: str | None = None,
               parameters: list[dict] | None = None, body: dict | None = None,
               security: list[dict[str, list[str]]] | None = None, operation_id: str) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = body
    if security is not None:
        operation["security"] = security
    operation["responses"] = responses
    return operation


SECRETS_ADMIN = "the caller lacks scope secrets:admin (or registry:admin)"
BACKEND_DOWN = "the credential backend cannot keep or give the value (Vault unreachable, a key that does not open it)"
SECRET_REF = _param("ref", "path", {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
                    "the secret_ref")
AUDIT_PAGE = _object({"entries": _list(_ref("AuditEntry")), "next_cursor": _nullable("string")},
                     ["entries", "next_cursor"])


def openapi_document(version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 description of the registry's HTTP API (everything but the MCP endpoint)."""
    read = (*GATE, *CALLER)
    write = (*GATE, *CALLER, *BODY)
    paths = {
        "/healthz": {"get": _operation(
            "Liveness, and which registry process answered (no tenant's data: anyone may ask)",
            _responses(_object({"status": {"const": "ok"}, "replica": {"type": "string"}}, ["status", "replica"]),
                       "alive", *GATE),
            security=NO_SECURITY, operation_id="health")},
        "/.well-known/jwks.json": {"get": _operation(
            "The registry's own public keys, to verify the provenance JWS of runs",
            _responses(_object({"keys": _list({"type": "object", "required": ["kty", "kid"]})}, ["keys"]),
                       "a JWKS", *GATE),
            security=NO_SECURITY, operation_id="jwks")},
        "/v1/openapi.json": {"get": _operation(
            "This document", _responses(_object({"openapi": {"type": "string"}, "paths": {"type": "object"}},
                                                ["openapi", "paths"]), "OpenAPI 3.1", *GATE),
            security=NO_SECURITY, operation_id="openapi")},
        "/v1/agents": {
            "get": _operation(
                "Every registered agent with its status, reputation and tools",
                _responses(_object({"agents": _list(_ref("Agent"))}, ["agents"]), "the agents", *read),
                operation_id="listAgents"),
            "post": _operation(
                "Register (or re-register) an agent with its endpoint, signed manifest and JWKS",
                _responses(_ref("Admission"), "admitted, or unchanged since the last registration", *write, 502,
                           s401="the bearer token is missing or is not the agent's own",
                           s403="the manifest or the live tools do not verify (or a browser Origin not allowed)",
                           s502="the registry could not list the agent's tools at its endpoint"),
                description="The bearer token must be the agent's own: a JWT whose sub is agent:NAME, signed by "
                            "one of its keys (or one its JWKS introduces by a verified rotation statement).",
                body=_json_body(_ref("Registration")), security=REGISTRATION_SECURITY, operation_id="register"),
        },
        "/v1/agents/{name}": {"get": _operation(
            "One agent with its manifest, keys, pinned digests, revoked keys and recent runs",
            _responses(_ref("AgentDetail"), "the agent", *read, 404, s404="no such agent"),
            parameters=[AGENT_NAME], operation_id="getAgent")},
        "/v1/agents/{name}/recheck": {"post": _operation(
            "Re-list an agent's tools now and block any that changed after approval",
            _responses(_object({"blocked": _list({"type": "string"})}, ["blocked"]), "the tools blocked now",
                       *write, 404, 502, s403="the caller is neither the agent nor an admin (or a browser Origin "
                                              "not allowed)", s404="no such agent",
                       s502="the agent could not be reached to list its tools (it is marked down)"),
            description="The body is ignored, but a POST must be application/json; send {}.",
            parameters=[AGENT_NAME], body=_json_body({"type": "object"}), operation_id="recheckAgent")},
        "/v1/agents/{name}/revocations": {"post": _operation(
            "Revoke one of an agent's keys with a revocation statement signed by one of its keys",
            _responses(_ref("KeyRevocation"), "the key is revoked", *GATE, *BODY, 401, 404,
                       s401="the statement does not verify under the keys trusted for the agent",
                       s404="not a valid agent name"),
            description="The statement (a compact JWS, typ mcpmesh-revocation+jws) is its own proof: no caller "
                        "is needed.",
            parameters=[AGENT_NAME],
            body=_json_body(_object({"statement": {"type": "string"}}, ["statement"])),
            security=NO_SECURITY, operation_id="revokeKeyByStatement")},
        "/v1/agents/{name}/keys/{kid}/revoke": {"post": _operation(
            "An operator revokes one of an agent's keys",
            _responses(_ref("KeyRevocation"), "the key is revoked", *write, 404,
                       s403="the caller lacks scope registry:admin (or a browser Origin not allowed)",
                       s404="not a valid agent name"),
            description="Needs scope registry:admin; the local user has it. The agent need not be registered yet.",
            parameters=[AGENT_NAME, _param("kid", "path", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
                                           "the key id (RFC 7638 thumbprint)")],
            body=_json_body(_object({"reason": {"type": "string"}})), operation_id="revokeKey")},
        "/v1/discover": {"get": _operation(
            "Verified tools ranked by words and names (BM25) and meaning, fused, then weighted by reputation; "
            "a task-like q is split into needs and each need gets its tools",
            _responses(_object({"results": _list(_ref("DiscoverHit"))}, ["results"]), "the best tools, best first",
                       *read, 400),
            parameters=[
                _param("q", "query", {"type": "string", "minLength": 1, "maxLength": 2000}, "what you want done",
                       required=True),
                _param("k", "query", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                       "how many tools"),
                _param("agent", "query", {"type": "string", "pattern": NAME_PATTERN}, "only this agent's tools"),
                _param("read_only", "query", {"type": "boolean"}, "only tools that are (or are not) read-only"),
            ],
            operation_id="discover")},
        "/v1/invoke": {"post": _operation(
            "Call AGENT.TOOL through the registry",
            _responses(_ref("InvocationResult"), "the tool's answer (a tool error is a result with isError)",
                       *write, 402, 404, 408, 409, 429, 502, 503, 504,
                       s400="malformed request, or arguments outside the tool's input schema (invalid-arguments)",
                       s403="the policy denied the call (policy-denied, with rule and run_id), an approver denied "
                            "it (approval-denied, with request_id), or a browser Origin not allowed",
                       s408="the policy held the call for approval and no one approved it within [approvals] "
                            "timeout (approval-expired, with request_id and run_id)",
                       s404="unknown agent or tool",
                       s409="the tool is blocked (tool-blocked); a call with this Idempotency-Key is still running "
                            "(call-in-progress, with Retry-After) or the key was used for another request "
                            "(idempotency-key-reused)",
                       s503="the agent's circuit breaker is open (circuit-open, with Retry-After and the breaker)"),
            description="Checked in order: caller, pinned tool, arguments against its pinned schema, policy (which "
                        "may hold the call until a person approves it: /v1/approvals/requests); then forwarded, "
                        "the answer checked against the tool's signed output schema, and the run "
                        "recorded with signed provenance.",
            parameters=[_param("x-mesh-parent-run", "header", {"type": "string", "format": "uuid"},
                               "the run this call is made for (an agent calling on behalf of a call it serves)"),
                        _param("Idempotency-Key", "header", {"type": "string", "pattern": "^[!-~]{1,255}$"},
                               "a retry with the same key (and request) gets the first call's answer and run id, "
                               "marked Idempotent-Replayed: true, instead of running again; kept a day")],
            body=_json_body(_ref("Invocation")), operation_id="invoke")},
        "/v1/runs": {"get": _operation(
            "Recent runs, newest first, paged by cursor",
            _responses(_object({"runs": _list(_ref("Run")), "next_cursor": _nullable("string")},
                               ["runs", "next_cursor"]), "a page of runs", *read, 400),
            parameters=[
                _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                       "page size"),
                _param("cursor", "query", {"type": "string"}, "next_cursor of the previous page, as is"),
                _param("agent", "query", {"type": "string", "pattern": NAME_PATTERN}, "runs of calls to this agent"),
                _param("caller", "query", {"type": "string"}, "agent:NAME, user:local or anonymous"),
                _param("log", "query", {"enum": ["caller", "target"]}, "one side of each call"),
            ],
            operation_id="listRuns")},
        "/v1/audit": {"get": _operation(
            "The caller's organisation's audit entries, newest first: filtered, paged by cursor, or as JSON lines",
            _responses(AUDIT_PAGE, "a page of entries", *read, 400, 403,
                       s403="the caller lacks scope audit:read (or registry:admin)")
            | {"200": {"description": "a page of entries, or with format=jsonl every match as JSON lines, oldest "
                                      "first", "content": {"application/json": {"schema": AUDIT_PAGE},
                                                           "application/jsonl": {"schema": {"type": "string"}}}}},
            parameters=[
                _param("actor", "query", {"type": "string"}, "entries by this actor (agent:NAME, user:...)"),
                _param("action", "query", {"type": "string"}, "e.g. policy-decision, register, revoke-key"),
                _param("subject", "query", {"type": "string"}, "what the entry is about: an agent, AGENT.TOOL, a "
                                                               "secret_ref"),
                _param("since", "query", {"type": "string", "format": "date-time"}, "entries at or after this "
                                                                                    "time (with its offset)"),
                _param("until", "query", {"type": "string", "format": "date-time"}, "entries before this time"),
                _param("cursor", "query", {"type": "string", "pattern": "^[0-9]{1,15}$"},
                       "next_cursor of the previous page, as is"),
                _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                       "page size (no limit with format=jsonl)"),
                _param("format", "query", {"enum": ["json", "jsonl"]}, "jsonl: every match as JSON lines"),
            ],
            operation_id="listAudit")},
        "/v1/audit/export": {"get": _operation(
            "The whole audit chain as JSON lines: the caller's organisation's entries, the rest as witnesses",
            {"200": {"description": "one JSON object a line: {type: entry, ...AuditEntry} for the caller's "
                                    "organisation's entries and {type: witness, seq, prev, hash} for every other "
                                    "one, in chain order, each {type: checkpoint, ...AuditCheckpoint} after the "
                                    "entry it covers; check it "
                                    "with `mesh audit verify --file F --jwks URL`",
                     "content": {"application/jsonl": {"schema": {"type": "string"}}}},
             **{str(s): _problem(s) for s in read}, "403": _problem(403, "the caller lacks scope audit:read")},
            operation_id="exportAudit")},
        "/v1/audit/checkpoints": {"get": _operation(
            "The audit log's signed checkpoints, oldest first",
            _responses(_object({"checkpoints": _list(_ref("AuditCheckpoint"))}, ["checkpoints"]), "the checkpoints",
                       *read, 403, s403="the caller lacks scope audit:read (or registry:admin)"),
            operation_id="listAuditCheckpoints")},
        "/v1/secrets": {"get": _operation(
            "Credentials by reference, with their scope and versions (never a value)",
            _responses(_object({"secrets": _list(_ref("Credential"))}, ["secrets"]), "the credentials", *read, 403,
                       s403=SECRETS_ADMIN),
            operation_id="listSecrets")},
        "/v1/secrets/{ref}": {
            "put": _operation(
                "Store a new credential (its first version)",
                {"201": {"description": "stored", "content": {"application/json": {"schema": _ref("Credential")}}},
                 **{code: response for code, response in _responses(
                     _ref("Credential"), "", *write, 403, 404, 409, 503, s403=SECRETS_ADMIN,
                     s404="no such route (a ref with characters a path cannot hold)",
                     s409="a credential of that ref exists (rotate it)", s503=BACKEND_DOWN).items() if code != "200"}},
                parameters=[SECRET_REF],
                body=_json_body(_object({"value": {"type": "string", "minLength": 1, "writeOnly": True},
                                         "agent": {"type": "string"}, "system": {"type": "string"},
                                         "description": {"type": "string"}}, ["value", "agent", "system"])),
                operation_id="storeSecret"),
            "delete": _operation(
                "Remove a credential and every version of it",
                {"204": {"description": "removed"},
                 **{str(code): _problem(code, special) for code, special in (
                     (400, None), (401, None), (403, SECRETS_ADMIN), (404, "no such credential"), (421, None),
                     (503, BACKEND_DOWN))}},
                parameters=[SECRET_REF], operation_id="removeSecret"),
        },
        "/v1/secrets/{ref}/rotate": {"post": _operation(
            "A new version; the previous one stays (resolvable on request) until the cutover",
            _responses(_ref("Credential"), "rotated", *write, 403, 404, 503, s403=SECRETS_ADMIN,
                       s404="no such credential", s503=BACKEND_DOWN),
            parameters=[SECRET_REF],
            body=_json_body(_object({"value": {"type": "string", "minLength": 1, "writeOnly": True},
                                     "cutover": {"type": "boolean", "default": False}}, ["value"])),
            operation_id="rotateSecret")},
        "/v1/secrets/{ref}/cutover": {"post": _operation(
            "Destroy the version kept since the last rotation",
            _responses(_ref("Credential"), "only the current version remains", *write, 403, 404, 503,
                       s403=SECRETS_ADMIN, s404="no such credential", s503=BACKEND_DOWN),
            parameters=[SECRET_REF], body=_json_body(_object({}), "an empty object"),
            operation_id="cutoverSecret")},
        **people_paths(read, write),
        **budget_paths(read, write),
        "/v1/runs/{run_id}": {"get": _operation(
            "One run with its provenance JWS and the runs linked to it",
            _responses(_ref("RunDetail"), "the run", *read, 400, 404, s404="no such run",
                       s400="the prefix starts more than one run"),
            parameters=[_param("run_id", "path", {"type": "string"},
                               "the run's id, or a unique prefix of 8 or more characters")],
            operation_id="getRun")},
    }
    from mesh.sandbox import api_doc  # its routes, written beside them; it builds on the helpers above

    paths |= api_doc.sandbox_paths()

    from mesh.registry.approvals import openapi_paths as approval_paths

    paths |= approval_paths(read, write)  # calls held for approval

    from mesh.learning.openapi import learning_document

    learning_paths, learning_schemas = learning_document(read, write)  # learning plans, runs, prompts
    paths.update(learning_paths)
    from mesh.builder.openapi import builder_document

    paths.update(builder_document(write))  # the agent builder
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mcpmesh registry",
            "version": version,
            "description": "Agents register with signed manifests; callers discover and invoke their tools "
                           "through the registry, which checks, forwards, records and scores every call. "
                           "The MCP endpoint (/mcp) is not described here. Errors are RFC 9457 problems.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS | api_doc.SCHEMAS | learning_schemas,
            "securitySchemes": {
                "agentToken": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A short-lived JWT (ES256) signed by the calling agent's own key: sub and iss "
                                   "agent:NAME, aud mcpmesh-registry, iat and exp at most 300 s apart.",
                },
                "personToken": {
                    "type": "http", "scheme": "bearer",
                    "description": "A person's access token from the OpenID provider named in "
                                   "/.well-known/oauth-protected-resource (aud: this registry), or a personal "
                                   "API token (mesh_pat_...) from POST /v1/tokens.",
                },
            },
        },
        # An agent or a person sends a token; a caller on loopback without one is the local user
        # (registry.toml: allow_local_user, local_user_scopes), hence the empty alternative.
        "security": [{"agentToken": []}, {"personToken": []}, {}],
    }


BUDGET_FIELDS = {
    "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    "scope": {"enum": ["org", "agent"], "default": "org"},
    "org": {"type": "string", "default": "default"},
    "agent": _nullable("string", description="the spending agent, for scope agent"),
    "period": {"enum": ["day", "week", "month", "fixed"], "default": "month"},
    "starts_at": _nullable("string", format="date-time", description="a fixed period's window, with its offset"),
    "ends_at": _nullable("string", format="date-time"),
    "limit": {"type": "number", "exclusiveMinimum": 0, "description": "cost units per period"},
    "alerts": _list({"type": "number", "exclusiveMinimum": 0, "maximum": 10}),
    "hard": {"type": "boolean", "default": True, "description": "refuse calls past the limit (false: alert only)"},
    "status": {"enum": [402, 429], "default": 429, "description": "what a refusal answers"},
    "approve_overrun": {"type": "boolean", "default": False,
                        "description": "past the hard limit, a call waits for an approver instead of being "
                                       "refused; a yes grants an override of override_hours"},
    "override_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 744, "default": 1},
}
SCHEMAS["Budget"] = _object(
    {**BUDGET_FIELDS, "source": {"enum": ["config", "api"]},
     "current": {"type": ["object", "null"], "description": "this period's spend; null outside a fixed window",
                 "properties": {"period_start": {"type": "string"}, "period_end": {"type": "string"},
                                "spent": {"type": "number"}, "remaining": {"type": "number"},
                                "fraction": {"type": "number"}, "state": {"enum": ["ok", "alert", "exceeded"]}}},
     "overrides": _list(_ref("BudgetOverride"))},
    ["id", "scope", "org", "agent", "period", "limit", "alerts", "hard", "status", "source", "current", "overrides"],
    description="A limit on what an organisation, or one agent in it, spends per period (budgets.py).")
SCHEMAS["BudgetOverride"] = _object(
    {"id": {"type": "string"}, "budget": {"type": "string"}, "granted_by": {"type": "string"},
     "reason": {"type": "string"}, "created_at": {"type": "string"}, "expires_at": {"type": "string"}},
    ["id", "budget", "granted_by", "reason", "created_at", "expires_at"])


def budget_paths(read: tuple[int, ...], write: tuple[int, ...]) -> dict[str, Any]:
    """Budgets (``budgets.py``): listed with their spend by anyone who may read, set by owners and admins."""
    admins = "the caller is not an owner or admin (or an agent with registry:admin)"
    budget_id = _param("budget_id", "path", {"type": "string"}, "the budget's id")
    made = {"201": {"description": "the budget, with this period's spend",
                    "content": {"application/json": {"schema": _ref("Budget")}}},
            **_problems(*write, 403, 409, s403=admins, s409="the budget is defined in registry.toml")}
    granted = {"201": {"description": "the override", "content": {"application/json": {"schema":
                                                                                       _ref("BudgetOverride")}}},
               **_problems(*write, 403, 404, s403=admins, s404="no such budget")}
    return {
        "/v1/budgets": {
            "get": _operation("Every budget with this period's spend, state and active overrides",
                              _responses(_object({"budgets": _list(_ref("Budget"))}, ["budgets"]), "the budgets",
                                         *read), operation_id="listBudgets"),
            "post": _operation("Create or replace a budget (one defined in registry.toml is changed there)", made,
                               body=_json_body(_object(BUDGET_FIELDS, ["id", "limit"], additionalProperties=False)),
                               operation_id="setBudget"),
        },
        "/v1/budgets/{budget_id}": {
            "get": _operation("One budget with this period's spend",
                              _responses(_ref("Budget"), "the budget", *read, 404, s404="no such budget"),
                              parameters=[budget_id], operation_id="getBudget"),
            "delete": _operation(
                "Remove a budget made through the API, with its spend and overrides (the audit log keeps them)",
                {"204": {"description": "removed"},
                 **_problems(*read, 403, 404, 409, s403=admins, s404="no such budget",
                             s409="the budget is defined in registry.toml")},
                parameters=[budget_id], operation_id="removeBudget"),
        },
        "/v1/budgets/{budget_id}/override": {"post": _operation(
            "Let calls past the budget's hard limit for some hours (audited)", granted,
            parameters=[budget_id],
            body=_json_body(_object({"hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 8784,
                                               "default": 1},
                                     "reason": {"type": "string", "maxLength": 2000}})),
            operation_id="overrideBudget")},
    }


def people_paths(read: tuple[int, ...], write: tuple[int, ...]) -> dict[str, Any]:
    """People and sign-in (``people.py``, ``oidc.py``): who am I, personal API tokens, members, the
    protected-resource metadata and the browser's sign-in pair."""
    me_or_tokens = "the caller is not a person (an agent), or its role or token scopes do not allow it"
    org = _param("org", "path", {"type": "string"}, "the organisation's id, e.g. default")
    made = {"201": {"description": "the new token, with its secret (token) shown this once",
                    "content": {"application/json": {"schema": _ref("ApiToken")}}},
            **_problems(*write, 403, 404, s403=me_or_tokens, s404="org names no organisation the caller belongs to")}
    token_body = _object({"name": {"type": "string", "minLength": 1, "maxLength": 100},
                          "scopes": _list({"type": "string"}), "days": {"type": "number"},
                          "org": {"type": "string"}}, ["name"])
    redirect = {"description": "to the OpenID provider, or back into the registry once signed in",
                "headers": {"Location": {"schema": {"type": "string"}}}}
    not_configured = "no OpenID provider is configured, or return_to is not a path of this registry"
    return {
        "/.well-known/oauth-protected-resource": {"get": _operation(
            "This registry as an OAuth protected resource (RFC 9728): the issuer whose tokens it accepts",
            _responses(_object({"resource": {"type": "string"}, "authorization_servers": _list({"type": "string"}),
                                "scopes_supported": _list({"type": "string"}),
                                "bearer_methods_supported": _list({"type": "string"})},
                               ["resource"]), "the metadata", *GATE),
            security=NO_SECURITY, operation_id="protectedResourceMetadata")},
        "/v1/auth/login": {"get": _operation(
            "Start a browser's sign-in: authorization code with PKCE at the configured OpenID provider",
            {"302": redirect, **_problems(*GATE, 400, s400=not_configured)},
            parameters=[_param("return_to", "query", {"type": "string"}, "a path to land on once signed in")],
            security=NO_SECURITY, operation_id="signInStart")},
        "/v1/auth/callback": {"get": _operation(
            "The provider sends the browser back here: the sign-in is kept in an HttpOnly cookie",
            {"303": redirect, **_problems(*GATE, 400, 401, s400="no provider configured, or no code",
                                          s401="unknown state, or the provider's token is refused")},
            parameters=[_param("code", "query", {"type": "string"}, "the authorization code"),
                        _param("state", "query", {"type": "string"}, "the state /v1/auth/login gave out")],
            security=NO_SECURITY, operation_id="signInCallback")},
        "/v1/users/me": {"get": _operation(
            "Who the caller is: the person, the organisation and role they act in, their memberships",
            _responses(_ref("Me"), "the caller", *read), operation_id="whoAmI")},
        "/v1/tokens": {
            "get": _operation("The caller's personal API tokens (never their secrets)",
                              _responses(_object({"tokens": _list(_ref("ApiToken"))}, ["tokens"]), "the tokens",
                                         *read, s403=me_or_tokens), operation_id="listTokens"),
            "post": _operation("Make a personal API token: scoped, expiring, its secret shown once", made,
                               description="scopes: registry:read, registry:invoke, registry:tokens, registry:admin, "
                                           "tool scopes, or * (default); days: default [auth] token_days.",
                               body=_json_body(token_body), operation_id="createToken"),
        },
        "/v1/tokens/{token_id}": {"delete": _operation(
            "Revoke a personal API token (one's own, or one of an organisation one administers)",
            _responses(_ref("ApiToken"), "the token, revoked", *read, 404, s403=me_or_tokens,
                       s404="no such token of the caller's"),
            parameters=[_param("token_id", "path", {"type": "string"}, "the token's id")],
            operation_id="revokeToken")},
        "/v1/orgs": {"get": _operation(
            "The organisations the caller belongs to, with their role in each",
            _responses(_object({"orgs": _list(_object({"id": {"type": "string"}, "role": {"type": "string"}},
                                                      ["id", "role"]))}, ["orgs"]), "the memberships", *read,
                       s403=me_or_tokens), operation_id="listOrgs")},
        "/v1/orgs/{org}/members": {"get": _operation(
            "An organisation's members and their roles",
            _responses(_object({"org": {"type": "string"}, "members": _list({"type": "object"})}, ["org", "members"]),
                       "the members", *read, 404, s404="no such organisation that the caller belongs to"),
            parameters=[org], operation_id="listMembers")},
        "/v1/orgs/{org}/members/{user_id}": {
            "put": _operation(
                "Give a person a role in an organisation (admins and owners; only an owner touches owners)",
                _responses(_ref("Membership"), "the membership", *write, 404,
                           s400="not a role, or the last owner would be demoted",
                           s404="no such organisation or user"),
                parameters=[org, _param("user_id", "path", {"type": "string"}, "the user's id")],
                body=_json_body(_object({"role": {"enum": ["owner", "admin", "member", "viewer"]}}, ["role"])),
                operation_id="setRole"),
            "delete": _operation(
                "Take a person out of an organisation",
                _responses(_ref("Membership"), "the membership, gone (role null)", *read, 400, 404,
                           s400="the last owner cannot leave", s404="no such organisation, user or membership"),
                parameters=[org, _param("user_id", "path", {"type": "string"}, "the user's id")],
                operation_id="removeMember"),
        },
    }
