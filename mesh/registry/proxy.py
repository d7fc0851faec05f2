"""The path of every call through the registry.

caller (already authenticated) → the pinned tool → arguments checked against the pinned schema → policy
→ forward (``forward.py``) → the answer checked against the signed output schema → record the run in both
agents' logs, with signed provenance → learn reputation → return. Every failure after the caller is known
is recorded too, and counted against the target's reputation only when it is the target's fault.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2
from jsonschema.exceptions import best_match
from mcp.types import CallToolResult
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from mesh import telemetry
from mesh.client import RUN_META
from mesh.manifest import json_digest
from mesh.registry import store
from mesh.registry.auth import Caller
from mesh.registry.forward import AgentError
from mesh.registry.node import PinnedTool, Registry, now_ms
from mesh.registry.policy import Decision
from mesh.registry.problems import Problem
from mesh.registry.reputation import Outcome


@dataclass
class Invocation:
    """A finished call: its run id (the caller-side record) and the target's answer."""

    run_id: str
    result: CallToolResult
    target_run_id: str
    trace_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "target_run_id": self.target_run_id, "trace_id": self.trace_id,
                "result": self.result.model_dump(by_alias=True, mode="json", exclude_none=True)}


def resolve(registry: Registry, agent: str, tool: str) -> PinnedTool:
    pinned = registry.tools.get((agent, tool))
    if pinned is None:
        if agent not in registry.endpoints:
            raise Problem("unknown-agent", f"no agent {agent!r} is registered")
        known = ", ".join(t.name for t in registry.agent_tools(agent)) or "none"
        raise Problem("unknown-tool", f"agent {agent!r} has no tool {tool!r} (its tools: {known})")
    if pinned.status != "verified":
        raise Problem("tool-blocked", f"{agent}.{tool} is blocked: {pinned.blocked_reason}")
    return pinned


def policy_input(registry: Registry, caller: Caller, pinned: PinnedTool, arguments: dict[str, Any]) -> dict:
    caller_reputation = registry.known_score(caller.agent) if caller.agent else None
    return {
        "caller": {"id": caller.id, "kind": caller.kind, "scopes": caller.scopes, "reputation": caller_reputation},
        "target": {"agent": pinned.agent, "tool": pinned.name, "annotations": pinned.annotations,
                   "scopes": pinned.scopes, "reputation": registry.reputation(pinned.agent).score(),
                   "probe": registry.probe_due(pinned.agent)},
        "arguments": arguments,
    }


async def invoke(registry: Registry, caller: Caller, agent: str, tool: str, arguments: dict[str, Any] | None,
                 *, parent_run_id: str | None = None, progress: Any = None,
                 trace_context: Mapping[str, Any] | None = None) -> Invocation:
    """Carry one call from ``caller`` to ``agent.tool``; raise a ``Problem`` for every refusal."""
    arguments = arguments if arguments is not None else {}
    if not isinstance(arguments, dict):
        raise Problem("bad-request", "arguments must be a JSON object")
    attributes = {"mesh.caller": caller.id, "mesh.agent": agent, "mesh.tool": tool}
    context = telemetry.extract_meta(trace_context)
    with telemetry.span("mesh.invoke", context=context, kind=SpanKind.SERVER, **attributes) as span:
        trace_id = _trace_id(span)
        run = _Run(registry, caller, agent, tool, arguments, trace_id, parent_run_id)
        pinned = resolve(registry, agent, tool)  # unknown or blocked: refused before anything is recorded

        errors = sorted(pinned.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            detail = "; ".join(_describe(e) for e in errors[:5])
            await run.finish("invalid", Outcome("invalid", fault="caller"), error=detail)
            raise Problem("invalid-arguments", f"{agent}.{tool}: {detail}", run_id=run.id)

        decision = registry.policy.evaluate(policy_input(registry, caller, pinned, arguments))
        run.decision = decision
        if not decision.allow:
            reasons = "; ".join(decision.reasons) or decision.rule
            await run.finish("denied", Outcome("denied", fault="caller"), error=f"{decision.rule}: {reasons}")
            raise Problem("policy-denied", f"denied by rule {decision.rule!r}: {reasons}",
                          rule=decision.rule, run_id=run.id)

        result = await _forward(registry, run, pinned, arguments, progress)
        violation = _output_violation(pinned, result)
        if violation:
            await run.finish("invalid", Outcome("invalid", latency_ms=run.elapsed_ms()), error=violation)
            raise Problem("invalid-output", f"{agent}.{tool} answered outside its signed output schema: {violation}",
                          run_id=run.id)
        status = "error" if result.is_error else "ok"
        error = _text(result) if result.is_error else None
        await run.finish(status, Outcome(status, latency_ms=run.elapsed_ms()), error=error)
        return Invocation(run.id, result, run.target_id, trace_id)


async def _forward(registry: Registry, run: _Run, pinned: PinnedTool, arguments: dict[str, Any],
                   progress: Any) -> CallToolResult:
    assert registry.forwarder is not None
    endpoint = registry.endpoints[pinned.agent]
    registry.last_forwarded[pinned.agent] = time.monotonic()
    timeout = registry.config.call_timeout
    where = f"{pinned.agent}.{pinned.name}"
    attributes = {"mesh.agent": pinned.agent, "mesh.tool": pinned.name, "url.full": endpoint}
    try:
        with telemetry.span("mesh.forward", kind=SpanKind.CLIENT, **attributes), anyio.fail_after(timeout):
            meta = telemetry.inject_meta({RUN_META: run.target_id})  # the agent's span continues this one
            return await registry.forwarder.call_tool(endpoint, pinned.name, arguments, meta=meta, progress=progress,
                                                      input_schema=pinned.wire.get("inputSchema"))
    except TimeoutError as exc:
        await run.finish("timeout", Outcome("timeout", latency_ms=run.elapsed_ms()),
                         error=f"no answer within {timeout:g} s")
        raise Problem("target-timeout", f"{where} did not answer within {timeout:g} s", run_id=run.id) from exc
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await run.finish("cancelled", None, error="cancelled by the caller")
        raise
    except AgentError as exc:
        await run.finish("error", Outcome("error", latency_ms=run.elapsed_ms()), error=str(exc))
        raise Problem("target-error", f"{where} answered with an error: {exc}", run_id=run.id) from exc
    except ValidationError as exc:
        detail = f"its answer is not a tool result: {exc.errors()[0]['msg']}"
        await run.finish("invalid", Outcome("invalid", latency_ms=run.elapsed_ms()), error=detail)
        raise Problem("invalid-output", f"{where}: {detail}", run_id=run.id) from exc
    except httpx2.HTTPError as exc:
        await run.finish("unavailable", Outcome("unavailable"), error=str(exc) or type(exc).__name__)
        raise Problem("target-unavailable", f"{pinned.agent} at {endpoint} is unreachable: {exc!r}",
                      run_id=run.id) from exc


def _output_violation(pinned: PinnedTool, result: CallToolResult) -> str | None:
    """Why a successful answer breaks the tool's signed output schema, or None when it keeps to it."""
    if pinned.output_validator is None or result.is_error:
        return None
    if result.structured_content is None:
        return "it declares an output schema but returned no structured content"
    error = best_match(pinned.output_validator.iter_errors(result.structured_content))
    return None if error is None else _describe(error)


class _Run:
    """The two linked records of one call (caller's log, target's log), written once it ends."""

    def __init__(self, registry: Registry, caller: Caller, agent: str, tool: str, arguments: dict[str, Any],
                 trace_id: str | None, parent_run_id: str | None):
        self.registry = registry
        self.caller = caller
        self.agent = agent
        self.tool = tool
        self.arguments_digest = json_digest(arguments)
        self.trace_id = trace_id
        self.parent_run_id = parent_run_id
        self.id = str(uuid.uuid4())
        self.target_id = str(uuid.uuid4())
        self.started_at = datetime.now(UTC)
        self.started_ms = now_ms()
        self.decision: Decision | None = None

    def elapsed_ms(self) -> float:
        return now_ms() - self.started_ms

    async def finish(self, status: str, outcome: Outcome | None, *, error: str | None = None) -> None:
        """Sign the provenance and write both records (and the decision) before the caller hears back."""
        latency = round(self.elapsed_ms(), 3)
        decision = self.decision
        common = {
            "caller": self.caller.id, "agent": self.agent, "tool": self.tool,
            "arguments_digest": self.arguments_digest, "status": status, "error": error, "latency_ms": latency,
            "policy_decision": None if decision is None else ("allow" if decision.allow else "deny"),
            "policy_rule": None if decision is None else decision.rule, "trace_id": self.trace_id,
            "started_at": self.started_at,
        }
        claims = {key: value for key, value in common.items() if key not in ("error", "started_at")}
        claims |= {"started_at": self.started_at.isoformat(), "run_id": self.id, "target_run_id": self.target_id,
                   "caused_by": self.parent_run_id, "tool_digest": self._tool_digest(),
                   "policy_input_digest": decision.input_digest if decision else None}
        provenance = self.registry.sign_provenance(claims)
        runs = [{**common, "id": self.id, "parent_run_id": None, "log": "caller", "provenance": provenance},
                {**common, "id": self.target_id, "parent_run_id": self.id, "log": "target", "provenance": provenance}]

        recorded = None if decision is None else {"run_id": self.id, "allow": decision.allow, "rule": decision.rule,
                                                   "input_digest": decision.input_digest}

        def write() -> None:
            with self.registry.engine.begin() as connection:
                store.record_call(connection, runs, recorded)

        if self.registry.embedded_database:
            write()  # an SQLite commit in WAL mode takes tens of µs: less than a hop to a thread
        else:
            await anyio.to_thread.run_sync(write)  # a database server: wait off the event loop
        if outcome is not None:
            self.registry.learn(self.agent, self.tool, outcome)
        telemetry.record_invoke(self.agent, self.tool, status, latency)

    def _tool_digest(self) -> str | None:
        pinned = self.registry.tools.get((self.agent, self.tool))
        return pinned.digest if pinned else None


def _describe(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
    return f"{where}: {error.message}"


def _text(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)[:500]


def _trace_id(span: Any) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
