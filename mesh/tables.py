"""The read commands of ``mesh`` (``ls``, ``discover``, ``call``, ``runs``): ask the registry, print for a terminal.

Each ``print_*`` function takes the registry's base URL and returns the command's exit code: 0 when it
worked, 1 when the registry said no (its problem's title and detail are printed) or could not be reached,
2 when the command line itself is malformed. Tables fit the terminal by shortening their widest columns.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import wraps
from typing import Any
from urllib.parse import quote

import httpx

from mesh.login import cli_headers

GAP = "  "
ELLIPSIS = "…"
MIN_COLUMN = 6


class RegistryProblem(Exception):
    """The registry could not be reached, or answered with an error: one line for the user."""


class CallSyntaxError(ValueError):
    """``mesh call`` was given a target or an argument it cannot read."""


# -- tables -------------------------------------------------------------------------------------------


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None) -> str:
    """Rows as aligned columns; numeric columns align right; the widest columns shrink to fit ``width``."""
    cells = [[_cell(value) for value in row] for row in rows]
    numeric = [_numeric([row[i] for row in rows]) for i in range(len(headers))]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    if width is not None:
        widths = _fit(widths, [len(h) for h in headers], width)
    lines = []
    for row in [list(headers), *cells]:
        parts = [_truncate(text, w) for text, w in zip(row, widths, strict=True)]
        parts = [p.rjust(w) if right else p.ljust(w) for p, w, right in zip(parts, widths, numeric, strict=True)]
        lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines)


def terminal_width() -> int | None:
    """The terminal's width, or None when output goes to a pipe or file (which then gets whole cells)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((120, 24)).columns


def _fit(widths: list[int], minimums: list[int], total: int) -> list[int]:
    """Shrink the widest column, one character at a time, until the row fits or nothing can shrink."""
    widths = list(widths)
    floors = [min(w, max(m, MIN_COLUMN)) for w, m in zip(widths, minimums, strict=True)]
    while sum(widths) + len(GAP) * (len(widths) - 1) > total:
        shrinkable = [i for i, w in enumerate(widths) if w > floors[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return " ".join(str(value).split())  # one line per row: newlines and runs of spaces become one space


def _numeric(column: list[Any]) -> bool:
    """A column of numbers (blanks allowed) aligns right."""
    return any(_is_number(v) for v in column) and all(_is_number(v) or v is None for v in column)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


# -- talking to the registry -------------------------------------------------------------------------


def _request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """JSON from the registry, or RegistryProblem with a line the user can act on."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.ConnectError as exc:
        raise RegistryProblem(
            f"no registry at {client.base_url} — start one with `mesh up` or `mesh registry run`"
        ) from exc
    except httpx.HTTPError as exc:
        raise RegistryProblem(f"the registry at {client.base_url} did not answer: {exc}") from exc
    if response.is_error:
        raise RegistryProblem(problem_line(response))
    try:
        return response.json()
    except ValueError as exc:
        raise RegistryProblem(f"the registry at {client.base_url} answered {path} with something not JSON") from exc


def problem_line(response: httpx.Response) -> str:
    """An RFC 9457 problem (``title``, ``detail``) as one line; any other error body as its status."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict) or not problem.get("title"):
        body = response.text.strip()[:200]
        return f"{response.status_code} {response.reason_phrase}" + (f": {body}" if body else "")
    title, detail = problem["title"], problem.get("detail")
    return f"{title}: {detail}" if detail and detail != title else str(title)


def _command(fn: Callable[..., int]) -> Callable[..., int]:
    """Give ``fn`` an httpx client for the base URL and turn a RegistryProblem into a line and exit code 1."""

    @wraps(fn)
    def run(base_url: str, *args: Any, client: httpx.Client | None = None, **kwargs: Any) -> int:
        owned = client is None
        client = client or httpx.Client(base_url=base_url.rstrip("/"), headers=cli_headers(base_url), timeout=60.0)
        try:
            return fn(client, *args, **kwargs)
        except RegistryProblem as exc:
            print(f"mesh: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `mesh ls | head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        finally:
            if owned:
                client.close()

    return run


# -- the commands ---------------------------------------------------------------------------------------


@_command
def print_agents(client: httpx.Client) -> int:
    """``mesh ls``: every agent with its status and reputation, then every tool with its description."""
    agents = _request(client, "GET", "/v1/agents")["agents"]
    if not agents:
        print("no agents registered — `mesh up` starts a workspace's agents", file=sys.stderr)
        return 0
    width = terminal_width()
    assessed = any(a.get("proficiency") for a in agents)  # the column shows once an agent was assessed
    built = any(a.get("blueprint") for a in agents)  # ... and the role once the builder made one (mesh build)
    print(render(
        ["AGENT", "STATUS", "REPUTATION", "BREAKER", "TOOLS", *(["PROFICIENCY"] if assessed else []),
         *(["ROLE"] if built else []), "ENDPOINT"],
        [[a["name"], a.get("status"), _score(a.get("reputation")), _breaker(a.get("breaker")), len(a.get("tools", [])),
          *([_proficiency(a.get("proficiency"))] if assessed else []),
          *([(a.get("blueprint") or {}).get("role", "")] if built else []), a.get("endpoint")]
         for a in agents],
        width=width,
    ))
    tools = [(a["name"], t) for a in agents for t in a.get("tools", [])]
    if tools:
        print()
        print(render(
            ["TOOL", "STATUS", "DESCRIPTION"],
            [[f"{agent}.{t['name']}", t.get("status"), t.get("description")] for agent, t in tools],
            width=width,
        ))
    return 0


@_command
def print_discover(client: httpx.Client, text: str, k: int = 5) -> int:
    """``mesh discover TEXT``: the verified tools that best match TEXT, best first."""
    results = _request(client, "GET", "/v1/discover", params={"q": text, "k": k})["results"]
    if not results:
        print(f"no verified tool matches {text!r}", file=sys.stderr)
        return 0
    print(render(
        ["SCORE", "TOOL", "REPUTATION", "DESCRIPTION"],
        [[r.get("score"), f"{r['agent']}.{r['tool']}", _score(r.get("reputation")), r.get("description")]
         for r in results],
        width=terminal_width(),
    ))
    return 0


@_command
def print_call(client: httpx.Client, target: str, pairs: Sequence[str]) -> int:
    """``mesh call AGENT.TOOL key=value ...`` through the registry: the tool's output on stdout."""
    try:
        agent, tool = parse_target(target)
        arguments = parse_arguments(pairs, input_schema(client, agent, tool))
    except CallSyntaxError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        return 2
    answer = _request(client, "POST", "/v1/invoke", json={"agent": agent, "tool": tool, "arguments": arguments})
    result = answer.get("result", {})
    text = format_result(result)
    failed = bool(result.get("isError"))
    if text:
        print(text, file=sys.stderr if failed else sys.stdout)
    if answer.get("run_id"):
        print(f"run {answer['run_id']}" + (" (the tool reported an error)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


@_command
def print_runs(client: httpx.Client, limit: int = 20, agent: str | None = None, log: str | None = "caller") -> int:
    """``mesh runs``: the latest calls through the registry, newest first.

    A call is logged twice, in its caller's log and its target's; by default one row per call (the
    caller's side), ``log=None`` shows both (LOG says which). RUN is the id's first 8 characters, as
    ``docker ps`` shortens container ids.
    """
    params: dict[str, Any] = {"limit": limit}
    if agent:
        params["agent"] = agent
    if log:
        params["log"] = log
    runs = _request(client, "GET", "/v1/runs", params=params)["runs"]
    if not runs:
        print("no runs yet — `mesh call AGENT.TOOL` makes one", file=sys.stderr)
        return 0
    print(render(
        ["STARTED", "RUN", "LOG", "CALLER", "TOOL", "STATUS", "MS", "POLICY"],
        [[_when(r.get("started_at")), str(r.get("id"))[:8], r.get("log"), r.get("caller"),
          f"{r.get('agent')}.{r.get('tool')}", r.get("status"), _latency(r.get("latency_ms")), _policy(r)]
         for r in runs],
        width=terminal_width(),
    ))
    return 0


@_command
def print_approvals(client: httpx.Client, status: str = "requested") -> int:
    """``mesh approvals``: calls the policy holds for a person's approval, oldest first (``status``: another
    state, or ``all``). ``mesh approve ID`` or ``mesh deny ID`` decides one."""
    found = _request(client, "GET", "/v1/approvals/requests", params={"status": status})["requests"]
    if not found:
        print("no calls wait for approval" if status == "requested" else f"no {status} approval requests",
              file=sys.stderr)
        return 0
    print(render(
        ["REQUESTED", "ID", "CALLER", "TOOL", "RULE", "STATUS", "APPROVERS", "DECIDED BY"],
        [[_when(r.get("requested_at")), r.get("id"), r.get("caller"), f"{r.get('agent')}.{r.get('tool')}",
          r.get("rule"), r.get("status"), " ".join(r.get("approvers") or []), r.get("decided_by")] for r in found],
        width=terminal_width(),
    ))
    return 0


@_command
def decide_approval(client: httpx.Client, request_id: str, verdict: str, note: str | None = None) -> int:
    """``mesh approve ID`` / ``mesh deny ID`` (``verdict``: approve or deny): decide a waiting call."""
    body = {"note": note} if note else {}
    decided = _request(client, "POST", f"/v1/approvals/requests/{quote(request_id, safe='')}/{verdict}", json=body)
    print(f"{decided['status']}: {decided['agent']}.{decided['tool']} called by {decided['caller']} "
          f"(request {decided['id']})")
    return 0


RUN_FIELDS = ["id", "log", "caller", "agent", "tool", "status", "error", "latency_ms", "policy_decision",
              "policy_rule", "arguments_digest", "trace_id", "started_at", "parent_run_id"]


@_command
def print_run(client: httpx.Client, run_id: str) -> int:
    """``mesh runs show ID``: one run in full (an 8-character prefix is enough), with the linked side."""
    run = _request(client, "GET", f"/v1/runs/{run_id}")
    for record in [run, *run.get("linked", [])]:
        print(f"{record.get('log')} side of {record.get('agent')}.{record.get('tool')}")
        for field in RUN_FIELDS:
            if record.get(field) is not None:
                print(f"  {field:17s} {record[field]}")
    print(f"  provenance        {run.get('provenance')}")
    return 0


@_command
def verify_run(client: httpx.Client, run_id: str) -> int:
    """``mesh runs verify ID``: check a run's provenance signature against the registry's published JWKS
    and that the signed claims say what the record says; print what that proves."""
    from mesh.keys import TrustStore, b64url_decode
    from mesh.provenance import ProvenanceProblem, verified_claims

    run = _request(client, "GET", f"/v1/runs/{run_id}")
    jwks = _request(client, "GET", "/.well-known/jwks.json")
    try:
        claims = verified_claims(run, TrustStore.from_jwks(jwks))
    except ProvenanceProblem as exc:
        print(f"mesh: run {run.get('id')}: its provenance does not verify: {exc}", file=sys.stderr)
        return 1
    signed_id = claims.get("run_id") if run.get("log") == "caller" else claims.get("target_run_id")
    differences = [field for field in ("caller", "agent", "tool", "arguments_digest", "status", "policy_decision",
                                       "policy_rule") if claims.get(field) != run.get(field)]
    if signed_id != run.get("id"):
        differences.insert(0, "id")
    if differences:
        print(f"mesh: run {run.get('id')}: the signature holds, but the record differs from what was signed in: "
              f"{', '.join(differences)}", file=sys.stderr)
        return 1
    kid = json.loads(b64url_decode(run["provenance"].split(".")[0])).get("kid")
    rule = f" by rule {claims['policy_rule']}" if claims.get("policy_rule") else ""
    batch = run.get("provenance_proof")
    signed = (f"is in a batch of {batch['size']} calls whose Merkle root is signed by the registry's key {kid}"
              if batch else f"is signed by the registry's key {kid}")
    print(f"verified: run {run['id']} {signed}. It proves that {claims['caller']} "
          f"called {claims['agent']}.{claims['tool']} with arguments {claims['arguments_digest']}; the policy "
          f"decided {claims.get('policy_decision') or 'nothing (refused before it)'}{rule}; the tool was "
          f"{claims.get('tool_digest') or 'unknown'}; the call ended {claims['status']} "
          f"(started {claims['started_at']}).")
    return 0


# -- mesh call: reading the command line, showing the result -------------------------------------------


def parse_target(target: str) -> tuple[str, str]:
    agent, dot, tool = target.partition(".")
    if not (agent and dot and tool):
        raise CallSyntaxError(f"expected AGENT.TOOL (as `mesh ls` lists them), got {target!r}")
    return agent, tool


def input_schema(client: httpx.Client, agent: str, tool: str) -> dict[str, Any] | None:
    """The pinned input schema of ``agent.tool``, to read ``key=value`` by it; None when it cannot be had
    (the call itself will then say what is wrong)."""
    try:
        response = client.get(f"/v1/agents/{agent}")
        tools = response.json().get("tools", []) if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    for entry in tools:
        if isinstance(entry, dict) and entry.get("name") == tool and isinstance(entry.get("inputSchema"), dict):
            return entry["inputSchema"]
    return None


def parse_arguments(pairs: Sequence[str], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """``key=value`` and ``key:=json`` pairs as tool arguments, as HTTPie reads them.

    ``key:=json`` is always JSON. ``key=value`` is read by the tool's input schema: a parameter that takes
    a string gets the text as it is (``topic=1`` is "1"); any other parameter gets the value as JSON when
    it reads as JSON (5, true, [1], {...}), else as text. Without a schema every value is tried as JSON."""
    properties = (schema or {}).get("properties") or {}
    arguments: dict[str, Any] = {}
    for pair in pairs:
        explicit = ":=" in pair and pair.index(":=") < pair.find("=") + 1
        key, _, raw = pair.partition(":=" if explicit else "=")
        if not key or (not explicit and "=" not in pair):
            raise CallSyntaxError(f"expected key=value or key:=json, got {pair!r}")
        if key in arguments:
            raise CallSyntaxError(f"{key!r} is given twice")
        if explicit:
            try:
                arguments[key] = json.loads(raw, parse_constant=_not_json)
            except ValueError as exc:
                raise CallSyntaxError(f"{key}:= takes JSON, and {raw!r} is not JSON") from exc
        elif _takes_string(properties.get(key)):
            arguments[key] = raw
        else:
            arguments[key] = parse_value(raw)
    return arguments


def _takes_string(schema: Any) -> bool:
    """Does a property's schema accept a string (``type: string``, or a union with it)?"""
    if not isinstance(schema, dict):
        return False
    kinds = schema.get("type")
    if kinds == "string" or (isinstance(kinds, list) and "string" in kinds):
        return True
    return any(_takes_string(option) for option in schema.get("anyOf", []) + schema.get("oneOf", []))


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_not_json)  # NaN and Infinity stay text
    except ValueError:
        return raw


def _not_json(name: str) -> Any:
    raise ValueError(name)


def format_result(result: dict[str, Any]) -> str:
    """A CallToolResult for reading: structured content as indented JSON, else the text content.

    With structured content, text blocks are its serialization (the MCP spec asks servers to send both),
    so only the structured form is shown. ``{"result": X}`` — how MCPServer wraps a return value that is
    not an object — shows as X, and a string X as plain text.
    """
    structured = result.get("structuredContent")
    parts = []
    for item in result.get("content") or []:
        kind = item.get("type")
        if kind == "text":
            if structured is None:
                parts.append(item.get("text", ""))
        elif kind == "resource_link":
            parts.append(f"[resource {item.get('uri')}]")
        elif kind == "resource":
            resource = item.get("resource", {})
            parts.append(resource.get("text") or f"[resource {resource.get('uri')}]")
        else:
            parts.append(f"[{kind} {item.get('mimeType', '')}]".replace(" ]", "]"))
    if structured is not None:
        value = structured["result"] if isinstance(structured, dict) and list(structured) == ["result"] else structured
        parts.insert(0, value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False))
    return "\n".join(parts)


# -- cell formats ---------------------------------------------------------------------------------------


def _breaker(breaker: Any) -> str | None:
    """A circuit breaker's state, with how long an open one still refuses calls."""
    if not isinstance(breaker, dict):
        return None
    state = breaker.get("state")
    return f"{state} ({breaker['retry_after']:g}s)" if state == "open" and "retry_after" in breaker else state


def _score(reputation: Any) -> float | None:
    if isinstance(reputation, dict):
        reputation = reputation.get("score")
    return reputation if _is_number(reputation) else None


def _proficiency(assessed: Any) -> str:
    """``petstore proficient 0.92`` per assessed target system (``mesh learn`` assesses), else empty."""
    if not isinstance(assessed, dict):
        return ""
    return ", ".join(f"{system} {entry.get('level')} {entry.get('score', 0):.2f}" for system, entry in
                     sorted(assessed.items()) if isinstance(entry, dict))


def _latency(ms: Any) -> int | None:
    return round(ms) if _is_number(ms) else None


def _policy(run: dict[str, Any]) -> str | None:
    decision, rule = run.get("policy_decision"), run.get("policy_rule")
    return f"{decision} ({rule})" if decision and rule and rule != decision else decision


def _when(started: Any) -> str | None:
    """Local time, seconds precision, from an ISO 8601 string or a Unix timestamp."""
    try:
        if _is_number(started):
            moment = datetime.fromtimestamp(started)
        elif isinstance(started, str):
            moment = datetime.fromisoformat(started.replace("Z", "+00:00"))
            moment = moment.astimezone() if moment.tzinfo else moment
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return str(started)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
