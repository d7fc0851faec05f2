"""The path of every call through the registry.

caller (already authenticated) → arguments that canonical JSON can hold → the pinned tool → arguments
checked against the pinned schema → policy (which may hold the call until a person approves it:
``approvals.py``) → forward (``forward.py``) → the agent still serves the manifest it was admitted on →
the answer checked against the signed output schema → record the run in both agents' logs, with signed
provenance → learn reputation → return. Every failure after the pinned tool is known is recorded too.

Every kind of MCP request the registry carries takes this path (``Call.kind``): a tool call, a resource
read, a prompt get, a completion. The policy's input names the kind and the MCP method, so a policy can
tell them apart. Resources, prompts and what a completion completes are pinned at admission like tools
(``PinnedDescriptor``): an unknown or blocked one is refused before anything is recorded, a resource URI
counts as pinned when a pinned resource lists it or a pinned template matches it, and the manifest's
scopes for it reach the policy. They have no schema to check their arguments or answer against. An
``input_required`` answer (MCP 2026-07-28: the agent asks the client for input first) is not an outcome:
it is recorded as such, teaches reputation nothing, and is handed back whole, its ``requestState``
untouched; the retry that carries the client's answers is a call of its own.

Who is to blame — one rule: a failure counts against the target's reputation only when the target could
have avoided it whatever the caller sent.

- The registry refuses oversized bodies (``app.py``), malformed arguments (nested deeper than 64 levels,
  NaN or infinite numbers, integers beyond ±(2**53-1)), arguments outside the pinned schema and policy
  denials before forwarding: the caller's fault, the target untouched.
- The agent refuses the request itself — HTTP 400, 413, 414, 415, 422 or 431, or JSON-RPC -32602
  (invalid params): the caller's fault. The caller hears ``payload-too-large`` (413) for the agent's
  413 and ``invalid-arguments`` (400) otherwise, quoting the agent's answer: the same problems the
  registry gives when it refuses such a call itself, since what must change is the caller's request.
- Any other HTTP status without a JSON-RPC answer (401, 403, 404, 405, 5xx...), any other JSON-RPC
  error (``target-error``), a timeout, an unreachable agent, an answer that is not a tool result or
  breaks the signed output schema, a tool changed after approval: the target's fault.
- A tool error result (``isError: true``) is the tool answering, often to reject its input: recorded as
  "error", learnt as a tool error, which can lower the score by at most 20 % (``reputation.py``).
- When a tool's own call through the mesh (linked by ``x-mesh-parent-run``) fails, that inner call
  carries the blame: if the outer call then fails too, it is recorded saying so and costs its target
  nothing. The link counts only when made by the agent that is the target of that run, while it runs.
"""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx2
import rfc8785
from jsonschema.exceptions import best_match
from mcp.shared.uri_template import UriTemplate
from mcp.types import CallToolResult, InputRequiredResult
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from mesh import telemetry
from mesh.client import RUN_META
from mesh.manifest import MANIFEST_META, json_digest
from mesh.registry import admission, retries, tenancy
from mesh.registry.auth import Caller
from mesh.registry.budgets import REFUSAL_RULE, Charge
from mesh.registry.forward import AgentError, Relay
from mesh.registry.node import PinnedDescriptor, PinnedTool, Registry, now_ms
from mesh.registry.policy import Decision
from mesh.registry.problems import Problem
from mesh.registry.reputation import Outcome
from mesh.registry.runlog import PendingCall

MAX_SAFE_INTEGER = 2**53 - 1  # beyond it RFC 8785 (and JavaScript) cannot hold an integer exactly
# HTTP statuses by which an agent refuses the request itself (its size or form): the caller's fault.
CALLER_STATUSES = frozenset({400, 413, 414, 415, 422, 431})
INVALID_PARAMS = -32602
RESOURCE_NOT_FOUND = -32002  # the spec's code for a resource no one serves
TARGET_RUN_META = "io.mcpmesh/target-run"  # beside RUN_META in an answer's _meta: the target-side record
TRACE_META = "io.mcpmesh/trace"
_READ = {"readOnlyHint": True, "destructiveHint": False}
METHODS = {"tool": "tools/call", "resource": "resources/read", "prompt": "prompts/get",
           "completion": "completion/complete"}


@dataclass(frozen=True)
class Call:
    """What one request through the registry asks of an agent.

    ``name`` is the tool or prompt name, the resource URI, or what a completion completes (a prompt
    name or a resource template URI); ``extra`` holds request params passed on as they are (a retry's
    ``inputResponses`` and ``requestState``, a completion's ``ref``, ``argument`` and ``context``)."""

    agent: str
    name: str
    kind: str = "tool"
    arguments: dict[str, Any] | None = None
    extra: Mapping[str, Any] | None = None

    @property
    def method(self) -> str:
        return METHODS[self.kind]

    @property
    def label(self) -> str:
        """How runs name what was called: the tool's name, else ``KIND:NAME``."""
        return self.name if self.kind == "tool" else f"{self.kind}:{self.name}"

    def params(self, arguments: dict[str, Any]) -> dict[str, Any]:
        params = dict(self.extra or {})
        if self.kind == "resource":
            params["uri"] = self.name
        elif self.kind in ("tool", "prompt"):
            params |= {"name": self.name, "arguments": arguments}
        return params


_REMEMBERED_DIGESTS = 8  # mismatching manifest digests remembered per agent as already rechecked


@dataclass
class Invocation:
    """A finished call: its run id (the caller-side record) and the target's answer."""

    run_id: str
    result: Any  # CallToolResult or InputRequiredResult for a tool; the wire dict for the other kinds
    target_run_id: str
    trace_id: str | None

    def stamp(self) -> dict[str, str]:
        """The registry's ids for this call, as every front adds them to the answer's ``_meta``."""
        meta = {RUN_META: self.run_id, TARGET_RUN_META: self.target_run_id}
        if self.trace_id:
            meta[TRACE_META] = self.trace_id
        return meta

    def to_json(self) -> dict[str, Any]:
        result = self.result
        if not isinstance(result, dict):
            result = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return {"run_id": self.run_id, "target_run_id": self.target_run_id, "trace_id": self.trace_id,
                "result": result}


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


def resolve_agent(registry: Registry, agent: str) -> None:
    if agent not in registry.endpoints:
        raise Problem("unknown-agent", f"no agent {agent!r} is registered")


@functools.lru_cache(maxsize=1024)
def _template(uri_template: str) -> UriTemplate | None:
    try:
        return UriTemplate.parse(uri_template)
    except ValueError:
        return None


def pinned_resource(registry: Registry, agent: str, uri: str) -> PinnedDescriptor | None:
    """The pin a read of ``uri`` at ``agent`` stands on: the resource listing it, else a verified template
    matching it, else a blocked one (so the refusal can say why); None when nothing pinned covers it."""
    matching = None
    for described in registry.agent_descriptors(agent, "resource"):
        if described.wire.get("uri") == uri:
            return described
    for described in registry.agent_descriptors(agent, "resource_template"):
        template = _template(described.wire.get("uriTemplate", ""))
        if template is not None and template.match(uri) is not None:
            if described.verified:
                return described
            matching = matching or described
    return matching


def resource_owner(registry: Registry, uri: str, among: Collection[str]) -> str | None:
    """Which of the agents ``among`` (those the caller sees) pinned what covers ``uri`` (the whole mesh's
    face routes reads by it): a listed resource first, then a matching template."""
    for (agent, kind, _), described in sorted(registry.descriptors.items()):
        if kind == "resource" and agent in among and described.wire.get("uri") == uri:
            return agent
    for agent in sorted(among):
        if pinned_resource(registry, agent, uri) is not None:
            return agent
    return None


def resolve_descriptor(registry: Registry, call: Call) -> PinnedDescriptor:
    """The verified pin a resource read, prompt get or completion stands on; a ``Problem`` otherwise."""
    resolve_agent(registry, call.agent)
    described = None
    if call.kind == "resource":
        described = pinned_resource(registry, call.agent, call.name)
        if described is None:
            raise Problem("unknown-tool", f"agent {call.agent!r} lists no resource or template for {call.name!r}",
                          jsonrpc_error={"code": RESOURCE_NOT_FOUND, "message": f"Resource not found: {call.name}",
                                         "data": {"uri": call.name}})
    elif call.kind == "prompt" or (call.kind == "completion" and (call.extra or {}).get("ref", {}).get("type")
                                   == "ref/prompt"):
        described = registry.descriptors.get((call.agent, "prompt", call.name))
        if described is None:
            raise Problem("unknown-tool", f"agent {call.agent!r} has no prompt {call.name!r}")
    else:  # a completion of a resource template's argument: ``name`` is the template (or resource) URI
        for candidate in registry.agent_descriptors(call.agent):
            if call.name in (candidate.wire.get("uriTemplate"), candidate.wire.get("uri")):
                described = candidate
                break
        if described is None:
            raise Problem("unknown-tool", f"agent {call.agent!r} lists no resource template {call.name!r}")
    if not described.verified:
        raise Problem("tool-blocked", f"{call.agent}.{described.kind}:{described.name} is blocked: "
                      f"{described.blocked_reason}")
    return described


def policy_input(registry: Registry, caller: Caller, pinned: PinnedTool | PinnedDescriptor | None,
                 arguments: dict[str, Any], call: Call | None = None,
                 credentials: list[dict[str, Any]] | None = None, budget: dict[str, Any] | None = None) -> dict:
    """The Rego input: ``target.tool`` is the tool (or prompt, resource URI...) named, ``kind`` and
    ``method`` say which kind of request it is, ``target.scopes`` what the signed manifest requires for it.
    Reading a resource, getting a prompt and completing an argument change nothing (MCP defines them as
    reads): they are annotated read-only. ``caller.org``/``caller.project`` say where the caller acts and
    ``target.org``/``target.project`` where the agent belongs (``tenancy.py``). ``credentials``
    (``credentials.Credentials.policy_field``) names the credentials a call would carry, by reference: the
    policy decides whether they may be attached. ``budget`` (``budgets.Budgets.policy_field``) is the call's
    cost and each budget it would spend from."""
    caller_reputation = registry.known_score(caller.agent) if caller.agent else None
    agent = pinned.agent if pinned else call.agent
    acting, owner = registry.tenancy.of_caller(caller), registry.tenancy.of(agent)
    kind = call.kind if call else "tool"
    tool = isinstance(pinned, PinnedTool)
    return {
        "kind": kind, "method": METHODS[kind],
        "caller": {"id": caller.id, "kind": caller.kind, "scopes": caller.scopes, "reputation": caller_reputation,
                   "proficiency": registry.proficiencies.get(caller.agent, {}) if caller.agent else {},
                   "org": acting.org, "project": acting.project, "role": caller.acting_role},
        "target": {"agent": agent, "tool": pinned.name if tool else call.name, "kind": kind,
                   "annotations": pinned.annotations if tool else _READ, "scopes": pinned.scopes if pinned else [],
                   "reputation": registry.reputation(agent).score(), "probe": registry.probe_due(agent),
                   "org": owner.org, "project": owner.project},
        "arguments": arguments,
        **({"credentials": credentials} if credentials is not None else {}),
        **({"budget": budget} if budget is not None else {}),
    }


async def invoke(registry: Registry, caller: Caller, agent: str, tool: str, arguments: dict[str, Any] | None,
                 *, parent_run_id: str | None = None, progress: Any = None,
                 trace_context: Mapping[str, Any] | None = None, relay: Relay | None = None,
                 extra: Mapping[str, Any] | None = None) -> Invocation:
    """Carry one tool call from ``caller`` to ``agent.tool``; raise a ``Problem`` for every refusal."""
    return await carry(registry, caller, Call(agent, tool, "tool", arguments, extra), parent_run_id=parent_run_id,
                       progress=progress, trace_context=trace_context, relay=relay)


async def carry(registry: Registry, caller: Caller, call: Call, *, parent_run_id: str | None = None,
                progress: Any = None, trace_context: Mapping[str, Any] | None = None,
                relay: Relay | None = None) -> Invocation:
    """Carry one request of any kind (``Call``) from ``caller`` to its agent; a ``Problem`` for every refusal."""
    try:
        return await _carry(registry, caller, call, parent_run_id, progress, trace_context, relay)
    except Problem as problem:
        if "run_id" not in problem.extra:  # refused before it was recorded: a recorded run tells on its own
            _tell_parent(registry, caller, parent_run_id, f"{call.agent}.{call.label} refused: {problem}")
        raise


async def _carry(registry: Registry, caller: Caller, call: Call, parent_run_id: str | None, progress: Any,
                 trace_context: Mapping[str, Any] | None, relay: Relay | None) -> Invocation:
    agent = call.agent
    arguments = call.arguments if call.arguments is not None else {}
    if not isinstance(arguments, dict):
        raise Problem("bad-request", "arguments must be a JSON object")
    # Before anything is recorded: canonical JSON could not even digest them.
    check_arguments(arguments, registry.config.max_json_depth)
    attributes = {"mesh.caller": caller.id, "mesh.agent": agent, "mesh.tool": call.label}
    context = telemetry.extract_meta(trace_context)
    with telemetry.span("mesh.invoke", context=context, kind=SpanKind.SERVER, **attributes) as span:
        trace_id = _trace_id(span)
        run = _Run(registry, caller, agent, call.label, arguments, trace_id, parent_run_id)
        # Unknown (or another project's: the same to the caller) or blocked: refused before anything is recorded.
        if not registry.tenancy.visible(caller, agent):
            raise tenancy.unknown_agent(agent)
        pinned = described = None
        if call.kind == "tool":
            pinned = resolve(registry, agent, call.name)
        else:
            described = resolve_descriptor(registry, call)
            run.pinned_digest = described.digest
        # An agent that keeps failing is not called until its breaker lets a probe through (``breaker.py``).
        try:
            registry.breakers.admit(agent, run.id, registry.reputation(agent).score())
        except Problem as problem:  # a refusal like a policy denial's: recorded, and costs the target nothing
            await run.finish("circuit_open", Outcome("denied", fault="caller"), error=problem.detail)
            problem.extra["run_id"] = run.id
            raise

        errors = sorted(pinned.validator.iter_errors(arguments), key=lambda e: list(e.absolute_path)) if pinned else []
        if errors:
            detail = "; ".join(_describe(e) for e in errors[:5])
            await run.finish("invalid", Outcome("invalid", fault="caller"), error=detail)
            raise Problem("invalid-arguments", f"{agent}.{call.label}: {detail}", run_id=run.id)

        # What it would spend joins the one policy evaluation: the budgets are in memory, no round trip.
        budgets = registry.budgets
        charge = budgets.charge_for(registry.tenancy.of_caller(caller).org, caller.agent,
                                    budgets.cost_of(agent, call.label, pinned.cost if pinned else None))
        run.policy_input = policy_input(registry, caller, pinned or described, arguments, call,
                                        budget=budgets.policy_field(charge))
        decision = registry.policy.evaluate(run.policy_input)
        run.decision = decision
        if decision.approval_required:  # a person says yes first (approvals.py); a no is recorded and raised there
            run.decision = decision = await registry.approvals.hold(run, decision, progress, relay)
            # A yes to a call past a budget that asks for approval lets the caller past it for a while.
            await budgets.grant_approved_overrun(run.policy_input["budget"], by=decision.approved_by or "",
                                                 request_id=decision.approval_request)
        if not decision.allow:
            reasons = "; ".join(decision.reasons) or decision.rule  # each reads "rule: why"
            await run.finish("denied", Outcome("denied", fault="caller"), error=reasons)
            why = "; ".join(reason.removeprefix(f"{decision.rule}: ") for reason in decision.reasons[:1])
            over = budgets.refusing(run.policy_input["budget"]) if decision.rule == REFUSAL_RULE else None
            if over is not None:  # answered as the budget says (402 or 429), naming it
                raise Problem("budget-exceeded", f"denied by rule {decision.rule!r}: {why or reasons}",
                              status=over["status"], budget=over["id"], rule=decision.rule, run_id=run.id)
            raise Problem("policy-denied", f"denied by rule {decision.rule!r}: {why or reasons}",
                          rule=decision.rule, run_id=run.id)
        run.charge = charge  # from here on the call reaches its target: it spends, whatever the outcome

        result = await _forward(registry, run, call, pinned, arguments, progress, relay)
        await _check_manifest(registry, run, call, result)
        if pinned is None:  # no schema to check the answer against: the agent's word, recorded
            await run.finish("ok", Outcome("ok", latency_ms=run.elapsed_ms()))
            return Invocation(run.id, result, run.target_id, trace_id)
        if isinstance(result, InputRequiredResult):  # not an answer yet: the client is asked first
            await run.finish("input_required", None)
            return Invocation(run.id, result, run.target_id, trace_id)
        violation = _output_violation(pinned, result)
        if violation:
            await run.finish("invalid", Outcome("invalid", latency_ms=run.elapsed_ms()), error=violation)
            raise Problem("invalid-output", f"{agent}.{call.name} answered outside its signed output schema: "
                          f"{violation}", run_id=run.id)
        if result.is_error:  # the tool answered that it could not: counted apart from the agent failing
            await run.finish("error", Outcome("tool_error", latency_ms=run.elapsed_ms()), error=_text(result))
        else:
            await run.finish("ok", Outcome("ok", latency_ms=run.elapsed_ms()))
        return Invocation(run.id, result, run.target_id, trace_id)


def check_arguments(arguments: dict[str, Any], max_depth: int = 64) -> None:
    """Refuse what canonical JSON (RFC 8785) cannot hold, naming where: nesting deeper than ``max_depth``,
    NaN and infinities (Python's json reads ``NaN``, ``Infinity`` and ``1e400``), integers beyond
    ±(2**53-1). Iterative, so a deep document cannot exhaust the stack; about a microsecond for a small
    dict, since only containers get a path and scalars are judged by their exact type."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(arguments, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        for key, value in node.items() if type(node) is dict else enumerate(node):
            kind = type(value)
            if kind is str or kind is bool or value is None:
                continue
            if kind is dict or kind is list:
                if depth >= max_depth:
                    raise _malformed((*path, key), f"nested deeper than {max_depth} levels")
                stack.append((value, depth + 1, (*path, key)))
            elif kind is float and not math.isfinite(value):
                raise _malformed((*path, key), f"{value} is not a finite number")
            elif kind is int and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                raise _malformed((*path, key), "an integer beyond ±(2**53-1) cannot be exchanged exactly")


def _malformed(path: tuple[Any, ...], problem: str) -> Problem:
    where = "/".join(str(part) for part in path)
    return Problem("invalid-arguments", f"arguments/{where}: {problem}")


async def _forward(registry: Registry, run: _Run, call: Call, pinned: PinnedTool | None, arguments: dict[str, Any],
                   progress: Any, relay: Relay | None) -> Any:
    assert registry.forwarder is not None
    endpoint = registry.endpoints[call.agent]
    registry.last_forwarded[call.agent] = time.monotonic()
    timeout = registry.config.call_timeout
    where = f"{call.agent}.{call.label}"
    attributes = {"mesh.agent": call.agent, "mesh.tool": call.label, "url.full": endpoint}
    try:
        with (_in_flight(registry, run), telemetry.span("mesh.forward", kind=SpanKind.CLIENT, **attributes),
              anyio.fail_after(timeout)):
            meta = telemetry.inject_meta({RUN_META: run.target_id})  # the agent's span continues this one

            async def send() -> Any:
                assert registry.forwarder is not None
                if pinned is not None:
                    return await registry.forwarder.call_tool(
                        endpoint, pinned.name, arguments, meta=meta, progress=progress, relay=relay,
                        extra=call.extra, input_schema=pinned.wire.get("inputSchema"))
                return await registry.forwarder.request(endpoint, call.method, call.params(arguments), meta=meta,
                                                        progress=progress, relay=relay)

            # A tool safe to repeat is sent again when the agent never answered (``retries.py``).
            return await retries.send(send, repeatable=pinned is None or retries.safe_to_repeat(pinned.annotations),
                                      attempts=registry.config.retry_attempts)
    except TimeoutError as exc:
        await run.finish("timeout", Outcome("timeout", latency_ms=run.elapsed_ms()),
                         error=f"no answer within {timeout:g} s")
        raise Problem("target-timeout", f"{where} did not answer within {timeout:g} s", run_id=run.id) from exc
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await run.finish("cancelled", None, error="cancelled by the caller")
        raise
    except AgentError as exc:
        if exc.http_status in CALLER_STATUSES or exc.code == INVALID_PARAMS:  # it refused the request itself
            await run.finish("invalid", Outcome("invalid", fault="caller"), error=f"{call.agent} refused: {exc}")
            kind = "payload-too-large" if exc.http_status == 413 else "invalid-arguments"
            raise Problem(kind, f"{where} refused the request: {exc}", run_id=run.id, **exc.extra()) from exc
        await run.finish("error", Outcome("error", latency_ms=run.elapsed_ms()), error=str(exc))
        raise Problem("target-error", f"{where} answered with an error: {exc}", run_id=run.id, **exc.extra()) from exc
    except ValidationError as exc:
        detail = f"its answer is not a tool result: {exc.errors()[0]['msg']}"
        await run.finish("invalid", Outcome("invalid", latency_ms=run.elapsed_ms()), error=detail)
        raise Problem("invalid-output", f"{where}: {detail}", run_id=run.id) from exc
    except httpx2.HTTPError as exc:
        await run.finish("unavailable", Outcome("unavailable"), error=str(exc) or type(exc).__name__)
        raise Problem("target-unavailable", f"{call.agent} at {endpoint} is unreachable: {exc!r}",
                      run_id=run.id) from exc


@contextmanager
def _in_flight(registry: Registry, run: _Run) -> Iterator[None]:
    """While the target serves the call, calls it makes through the mesh may name this run as their
    parent (``x-mesh-parent-run``); afterwards, keep the first of them that failed, if any."""
    registry.in_flight[run.target_id] = run.agent
    try:
        yield
    finally:
        del registry.in_flight[run.target_id]
        run.inner_failure = registry.inner_failures.pop(run.target_id, None)


async def _check_manifest(registry: Registry, run: _Run, call: Call, result: Any) -> None:
    """Is the agent still serving the manifest it was admitted on? Each answer names its manifest digest.

    Equal: one dict lookup and a string compare. Different (or missing from a tool's answer: a restarted
    agent re-signed, or an agent that does not say): list its tools, resources and prompts again now, once
    per agent at a time, and block those whose live form left its pin; a digest already rechecked since
    the last admission is not again. If what was called is now blocked, its answer is not delivered. An
    agent can lie about its digest: the periodic recheck (``admission.recheck_forever``) stays the backstop.
    Agents stamp only tool answers, so another kind's unstamped answer is left to that backstop."""
    meta = result.get("_meta") if isinstance(result, dict) else result.meta
    served = (meta or {}).get(MANIFEST_META)
    agent = call.agent
    if served == registry.manifest_digests.get(agent) or (served is None and call.kind != "tool"):
        return
    async with registry.recheck_locks.setdefault(agent, anyio.Lock()):
        admitted = registry.manifest_digests.get(agent)
        checked_for, seen = registry.rechecked.get(agent, (None, set()))
        if served != admitted and (checked_for != admitted or served not in seen):
            if checked_for != admitted or len(seen) >= _REMEMBERED_DIGESTS:
                seen = set()
            if await admission.recheck(registry, agent) is not None:  # listed: this digest is checked
                seen.add(served)
                registry.rechecked[agent] = (admitted, seen)
    if call.kind == "tool":
        now = registry.tools.get((agent, call.name))
        reason = None if now is not None and now.status == "verified" else (
            now.blocked_reason if now else "no longer served")
    else:
        try:
            resolve_descriptor(registry, call)
            reason = None
        except Problem as problem:
            reason = problem.detail
    if reason is not None:
        await run.finish("blocked", Outcome("invalid", latency_ms=run.elapsed_ms()), error=reason)
        raise Problem("tool-blocked", f"{agent}.{call.label} is blocked: {reason}", run_id=run.id)


def _tell_parent(registry: Registry, caller: Caller, parent_run_id: str | None, failure: str) -> None:
    """A call failed: if a tool made it while serving another call through the mesh, let that call know.
    Only the agent that is the target of that call, while it is in flight, can name it as parent."""
    if parent_run_id and caller.agent and registry.in_flight.get(parent_run_id) == caller.agent:
        registry.inner_failures.setdefault(parent_run_id, failure[:500])


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
        try:
            self.arguments_digest = json_digest(arguments)
        except rfc8785.CanonicalizationError as exc:  # e.g. a lone surrogate in a string
            raise Problem("invalid-arguments", f"the arguments have no canonical JSON form: {exc}") from exc
        self.trace_id = trace_id
        self.parent_run_id = parent_run_id
        self.id = str(uuid.uuid4())
        self.target_id = str(uuid.uuid4())
        self.started_at = datetime.now(UTC)
        self.started_ms = now_ms()
        self.decision: Decision | None = None
        self.policy_input: dict[str, Any] | None = None  # what the decision was taken on (audited, redacted)
        self.inner_failure: str | None = None  # set once forwarded: a call this one made that failed
        self.pinned_digest: str | None = None  # of the resource, template or prompt it stands on, once known
        self.charge: Charge | None = None  # what it spends from which budgets, once allowed to reach its target

    def elapsed_ms(self) -> float:
        return now_ms() - self.started_ms

    async def finish(self, status: str, outcome: Outcome | None, *, error: str | None = None) -> None:
        """Write both records (and the decision), with signed provenance, before the caller hears back."""
        if status != "ok":
            _tell_parent(self.registry, self.caller, self.parent_run_id,
                         f"{self.agent}.{self.tool} ({status}, run {self.id}): {error or status}")
            if self.inner_failure and outcome is not None:  # the inner call carries the blame
                outcome = Outcome(outcome.status, outcome.latency_ms, fault="inner")
                error = f"an inner call failed: {self.inner_failure}" + (f"; then {error}" if error else "")
        latency = round(self.elapsed_ms(), 3)
        decision = self.decision
        owner = self.registry.tenancy.of(self.agent)  # both records are the target's project's (calls stay in one)
        tenant_columns = {"org_id": owner.org, "project_id": owner.project}
        common = {
            "caller": self.caller.id, "agent": self.agent, "tool": self.tool,
            "arguments_digest": self.arguments_digest, "status": status, "error": error, "latency_ms": latency,
            "policy_decision": None if decision is None else ("allow" if decision.allow else "deny"),
            "policy_rule": None if decision is None else decision.rule, "trace_id": self.trace_id,
            "started_at": self.started_at, "cost": None if self.charge is None else self.charge.cost,
        }
        claims = {key: value for key, value in common.items() if key not in ("error", "started_at")}
        claims |= {"started_at": self.started_at.isoformat(), "run_id": self.id, "target_run_id": self.target_id,
                   "caused_by": self.parent_run_id, "tool_digest": self._tool_digest(),
                   "policy_input_digest": decision.input_digest if decision else None}
        runs = [{**common, **tenant_columns, "id": self.id, "parent_run_id": None, "log": "caller"},
                {**common, **tenant_columns, "id": self.target_id, "parent_run_id": self.id, "log": "target"}]
        pending = PendingCall(claims, runs, charge=self.charge)
        if decision is not None:
            pending.decision = {"run_id": self.id, "allow": decision.allow, "rule": decision.rule,
                                "input_digest": decision.input_digest, **tenant_columns}
            pending.audited = {"org": self.registry.tenancy.of_caller(self.caller).org,  # the acting tenant's
                               "caller": self.caller.id, "subject": f"{self.agent}.{self.tool}",
                               "allow": decision.allow, "rule": decision.rule, "reasons": decision.reasons,
                               "policy_input": self.policy_input, "input_digest": decision.input_digest,
                               "run_id": self.id}
        await self.registry.runlog.record(pending)  # signed and committed, maybe with other calls (runlog.py)
        if self.charge is not None:
            self.registry.budgets.settle(self.charge)  # running totals and alerts follow what was committed
        if outcome is not None:
            self.registry.learn(self.agent, self.tool, outcome)
        self.registry.breakers.record(self.agent, self.id, outcome, self.registry.reputation(self.agent).score())
        telemetry.record_invoke(self.agent, self.tool, status, latency,
                                decision=common["policy_decision"], rule=common["policy_rule"])

    def _tool_digest(self) -> str | None:
        if self.pinned_digest is not None:
            return self.pinned_digest
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
