"""Errors the registry answers with: RFC 9457 problem details over HTTP, tool errors over MCP.

Each kind of failure has its own ``type`` and status, so a script can tell an unknown tool from a
policy denial or a target that timed out without parsing the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

PROBLEM_BASE = "https://mcpmesh.dev/problems/"

STATUS = {
    "bad-request": 400,
    "invalid-arguments": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "forbidden-origin": 403,
    "registration-refused": 403,
    "policy-denied": 403,
    "unknown-agent": 404,
    "unknown-tool": 404,
    "unknown-run": 404,
    "unknown-sandbox": 404,
    "unknown-approval": 404,
    "approval-required": 403,
    # a call the policy held for approval (``approvals.py``): denied, or no one answered in time; a step
    # the approval's state machine does not allow (deciding it twice, approving an expired one)
    "approval-denied": 403,
    "approval-expired": 408,
    "approval-conflict": 409,
    "sandbox-expired": 410,
    "unknown-credential": 404,
    "credential-refused": 403,
    "credential-exists": 409,
    "unknown-org": 404,
    "unknown-project": 404,
    "unknown-user": 404,
    "unknown-token": 404,
    "tool-blocked": 409,
    "call-in-progress": 409,  # a call with the same idempotency key is still running (``idempotency.py``)
    "idempotency-key-reused": 409,  # the key was used for a different request
    "payload-too-large": 413,
    "unsupported-media-type": 415,
    "misdirected-request": 421,
    "target-error": 502,
    "invalid-output": 502,
    "target-unavailable": 502,
    "target-timeout": 504,
    "credential-unavailable": 503,
    "circuit-open": 503,  # the agent's circuit breaker refuses calls for now (``breaker.py``); see Retry-After
    # learning (``mesh.learning``)
    "unknown-plan": 404,
    "unknown-learning-run": 404,
    "unknown-prompt-version": 404,
    "learning-busy": 409,
    "lm-not-configured": 503,
    # budgets (``budgets.py``): a refusal answers with the budget's own status, 402 or 429
    "budget-exceeded": 429,
    "unknown-budget": 404,
    "budget-conflict": 409,
    # the agent builder (``mesh.builder``)
    "agent-exists": 409,
}


class Problem(Exception):
    """A failure with a kind (``type``), a human title and a detail naming what went wrong; ``status``
    replaces the kind's usual one where configuration chooses it (a budget's 402 or 429)."""

    def __init__(self, kind: str, detail: str, *, status: int | None = None, **extra: Any):
        super().__init__(detail)
        self.kind = kind
        self.status = status or STATUS[kind]
        self.detail = detail
        self.extra = extra

    @property
    def title(self) -> str:
        return self.kind.replace("-", " ").capitalize()

    def to_json(self) -> dict[str, Any]:
        return {"type": PROBLEM_BASE + self.kind, "title": self.title, "status": self.status,
                "detail": self.detail, **self.extra}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.extra["retry_after"])} if "retry_after" in self.extra else None
        return JSONResponse(self.to_json(), status_code=self.status, media_type="application/problem+json",
                            headers=headers)

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}"


def problem_json(handler: Callable[[Request], Awaitable[Response]], *,
                 kinds: tuple[type[Exception], ...] = ()) -> Callable[[Request], Awaitable[Response]]:
    """A route handler whose ``Problem`` becomes its problem+json answer; its docstring is kept (the OpenAPI
    document is checked against the routes). ``kinds``: a module's own exceptions, each with a ``kind`` (the
    problem type) and a message, answered the same way."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Problem as problem:
            return problem.response()
        except kinds as error:
            return Problem(error.kind, str(error)).response()  # type: ignore[attr-defined]

    wrapped.__doc__ = handler.__doc__
    return wrapped


def page_limit(params: Mapping[str, str], default: int, most: int) -> int:
    """A list route's ``limit`` query parameter: ``default`` when absent, a ``bad-request`` naming the
    range when it is not an integer from 1 to ``most``."""
    try:
        limit = int(params.get("limit", default))
    except ValueError as exc:
        raise Problem("bad-request", "limit must be an integer") from exc
    if not 1 <= limit <= most:
        raise Problem("bad-request", f"limit must be between 1 and {most}, not {limit}")
    return limit
