"""The builder routes' part of the registry's OpenAPI document (``mesh.registry.openapi`` merges it in)."""

from __future__ import annotations

from typing import Any


def builder_document(write: tuple[int, ...]) -> dict[str, Any]:
    """``paths`` for ``POST /v1/builder`` and ``POST /v1/builder/{name}/validation``."""
    from mesh.registry.openapi import AGENT_NAME, _json_body, _list, _object, _operation, _responses

    no_model = "no language model is configured (lm-not-configured); the detail says how to configure one"
    admin = "only an administrator may build agents (or a browser Origin not allowed)"
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    request = _object({
        "brief": {"type": "string", "description": "what the agent should be, in words"},
        "answers": {**string_map, "description": "answers to the questions an earlier call asked, by question"},
        "name": {"type": "string", "description": "the agent's name (default: the model's suggestion)"},
        "blueprint": {"type": "object", "description": "a draft an earlier call returned, reviewed or edited"},
        "write": {"type": "boolean", "default": False, "description": "build, write and sign the agent"},
        "force": {"type": "boolean", "default": False, "description": "overwrite an existing agents/NAME.py"}})
    answer = _object({
        "stage": {"enum": ["questions", "review", "written"]},
        "questions": _list({"type": "string"}), "draft": {"type": "object"}, "kit": {"type": "object"},
        "exists": {"type": "boolean"}, "name": {"type": "string"}, "files": string_map,
        "manifest": {"type": "string"}, "prompt_version": {"type": "string"}, "pack": {"type": "object"},
        "tasks": {"type": "object"}, "grants": {"type": "object"}}, ["stage", "draft"])
    report = _object({
        "model": {"type": "string"}, "held_out": {"type": "integer"}, "built": {"type": "number"},
        "generic": {"type": "number"}, "difference": {"type": "number"},
        "criteria": {"type": "object", "additionalProperties": _object(
            {"built": {"type": "number"}, "generic": {"type": "number"}, "difference": {"type": "number"}})},
        "tasks": _list({"type": "object"}), "validated_at": {"type": "string", "format": "date-time"}},
        ["held_out", "built", "generic", "difference", "criteria"])
    return {
        "/v1/builder": {"post": _operation(
            "Brief -> blueprint and capability kit for review (or questions); with write, the agent built and signed",
            _responses(answer, "the draft and kit, the questions, or what was written", *write, 403, 409, 502, 503,
                       s403=admin, s409="agents/NAME.py exists and force was not given",
                       s502="the model failed, or answered what cannot be used", s503=no_model),
            body=_json_body(request), operation_id="buildAgent")},
        "/v1/builder/{name}/validation": {"post": _operation(
            "The built agent against a generic one (same model) on its held-out role tasks; kept with the agent",
            _responses(report, "both scores and the difference per criterion", *write, 403, 404, 502, 503,
                       s403=admin, s404="the agent was not made by the builder",
                       s502="the agent is not registered, or its role tool failed", s503=no_model),
            parameters=[AGENT_NAME], body=_json_body(_object({})), operation_id="validateBuiltAgent")},
    }
