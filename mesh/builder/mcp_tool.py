"""``build_agent``, the builder as a tool on the registry's MCP face (``/mcp``).

A vague brief's questions are put to the person through MCP elicitation when the client can answer
(a 2025-11-25 session whose client declared ``elicitation``): one form, a text field per question, and
the brief is read again with the answers. Otherwise, or when the person declines, the questions come
back in the tool's result, to be answered in the next call's ``answers``.
"""

from __future__ import annotations

from typing import Any

from mesh.registry.auth import Caller

TOOL = {
    "name": "build_agent",
    "description": "Build a mesh agent from a brief: the blueprint and capability kit for review (or questions "
                   "when the brief is vague); with write=true, the agent written, signed and prompt-versioned.",
    "input_schema": {
        "type": "object", "properties": {
            "brief": {"type": "string", "description": "what the agent should be, in words"},
            "answers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "answers to questions an earlier call asked, by question"},
            "name": {"type": "string", "description": "the agent's name (default: suggested)"},
            "blueprint": {"type": "object", "description": "a reviewed draft an earlier call returned"},
            "write": {"type": "boolean", "default": False}, "force": {"type": "boolean", "default": False}}},
}


def form(questions: list[str]) -> dict[str, Any]:
    """The elicitation request's parameters: one text field per question (q1, q2, ...)."""
    return {"message": "The brief leaves these open; answer what you can.",
            "requestedSchema": {"type": "object",
                                "properties": {f"q{i + 1}": {"type": "string", "title": f"Question {i + 1}",
                                                             "description": q} for i, q in enumerate(questions)},
                                "required": []}}


async def build_agent(service: Any, caller: Caller, arguments: dict[str, Any], ask: Any | None) -> dict[str, Any]:
    """Run the builder for an MCP call; ``ask(method, params)`` reaches the client, None when it cannot answer."""
    body = dict(arguments)
    step = service.build if body.get("write") else service.draft
    answer = await step(caller, body)
    if answer["stage"] != "questions" or ask is None:
        return answer
    questions = answer["questions"]
    reply = await ask("elicitation/create", form(questions))
    content = reply.get("content") or {}
    answers = {q: str(content[f"q{i + 1}"]).strip() for i, q in enumerate(questions)
               if str(content.get(f"q{i + 1}") or "").strip()}
    if reply.get("action") != "accept" or not answers:
        return answer
    body["answers"] = {**(body.get("answers") or {}), **answers}
    return await step(caller, body)
