"""The Rego policy the registry checks before every cross-agent call.

Every ``*.rego`` file in the workspace's ``registry/policies/`` is compiled once into a regopy bundle;
each call then costs one ``set_input`` + ``query_bundle_entrypoint``. The policy answers
``data.mesh.authz.decision = {"allow": bool, "deny": [{"rule": name, "reason": text}, ...],
"approval_required": [{"rule": name, "reason": text, "roles": [role, ...]}, ...]}`` for an input shaped
like this (``registry/policies/mesh.rego`` documents it too)::

    {"caller": {"id": "agent:librarian" | "user:local", "kind": "agent" | "user",
                "scopes": [...], "reputation": 0.0-1.0 | null},
     "target": {"agent": "librarian", "tool": "search",
                "annotations": {"readOnlyHint": ..., "destructiveHint": ...,
                                "idempotentHint": ..., "openWorldHint": ...},
                "scopes": [...required...], "reputation": 0.0-1.0},
     "arguments": {...}}

Settings from ``registry.toml`` (``min_reputation``, ``allow_destructive``, ``approve_destructive``,
``allow_anonymous``, ...) reach the policy as ``data``. The engine fails closed: an undefined or failing
decision denies the call. A call no rule denies but some rule wants approved is neither allowed nor
denied: its ``Decision`` names the roles that may approve it (``approvers``), and the call path waits for
one of them (``approvals.py``); to a reader that only looks at ``allow`` it is refused.

Editing a policy file takes effect without a restart: ``evaluate`` looks at the files' mtimes at most
once per ``check_interval`` seconds. A file that no longer compiles leaves the last good bundle in
charge and is reported (``engine.error`` and a log warning naming the file and line); at start-up
the same problem raises ``PolicyError`` instead.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regopy
import rfc8785

from mesh.manifest import json_digest

log = logging.getLogger(__name__)

ENTRYPOINT = "mesh/authz/decision"
DEFAULT_APPROVERS = ("admin", "owner")  # who may approve when an approval rule names no roles
# Bound to a variable: reading an undefined, unbound result aborts the process (FIELD-NOTES).
QUERY = "decision := data.mesh.authz.decision"

# A well-formed call, evaluated once after each build to prove the policy answers at all.
_PROBE = {
    "caller": {"id": "agent:probe", "kind": "agent", "scopes": [], "reputation": None},
    "target": {
        "agent": "probe",
        "tool": "probe",
        "annotations": {"readOnlyHint": True},
        "scopes": [],
        "reputation": 1.0,
    },
    "arguments": {},
}


class PolicyError(Exception):
    """Policy files that cannot be compiled or do not answer; the message names file and line."""

    def __init__(self, message: str, files: list[Path] | None = None) -> None:
        super().__init__(message)
        self.files = files or []


@dataclass(frozen=True)
class Decision:
    """The answer for one call: ``rule`` is the first deny rule by name (or, when the call needs an approval,
    the first approval rule), else ``"allow"``. ``approvers``: the roles that may approve, when the call
    needs an approval (every approval rule's roles, intersected); empty otherwise."""

    allow: bool
    rule: str
    reasons: list[str]
    input_digest: str
    approvers: tuple[str, ...] = ()

    @property
    def approval_required(self) -> bool:
        return bool(self.approvers)


def input_digest(value: Any) -> str:
    """``sha256:`` of the RFC 8785 canonical JSON, so a logged decision can be tied to its input."""
    return json_digest(value)


class PolicyEngine:
    """Compiles a folder of Rego files once and evaluates calls against it, reloading on change."""

    def __init__(
        self,
        folder: str | Path,
        data: Mapping[str, Any] | None = None,
        *,
        check_interval: float | None = 1.0,
    ) -> None:
        """``check_interval``: seconds between mtime checks in ``evaluate``; ``None`` checks only in
        ``reload_if_changed``."""
        self.folder = Path(folder)
        self.data: dict[str, Any] = dict(data or {})
        self.check_interval = check_interval
        self.error: PolicyError | None = None
        self._lock = threading.Lock()  # one regopy interpreter: one evaluation at a time
        self._reloading = threading.Lock()
        self._signature = self._stat()
        self._interpreter, self._bundle, self.version = self._compile()
        self._checked = time.monotonic()

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.rego"))

    def evaluate(self, input: dict[str, Any]) -> Decision:
        """Decide one call. Never raises for a bad input or policy: those deny."""
        if self.check_interval is not None and time.monotonic() - self._checked >= self.check_interval:
            self.reload_if_changed()
        try:
            digest = input_digest(input)
            rego_input = regopy.Input(input)
        except (TypeError, ValueError, rfc8785.CanonicalizationError) as exc:
            return _denied("", "malformed_input", f"input is not plain JSON: {exc}")
        with self._lock:
            answer = _query(self._interpreter, self._bundle, rego_input)
        if isinstance(answer, str):
            return _denied(digest, "policy_error", answer)
        return _decision(answer, digest)

    def reload_if_changed(self) -> bool:
        """Recompile if a policy file was added, removed or modified; True when a new bundle is live.

        A file that fails to compile keeps the previous bundle and sets ``self.error``; the same
        files are not retried until they change again.
        """
        with self._reloading:
            self._checked = time.monotonic()
            signature = self._stat()
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                interpreter, bundle, version = self._compile()
            except PolicyError as exc:
                self.error = exc
                log.warning("policy not reloaded, keeping the previous one: %s", exc)
                return False
            with self._lock:
                self._interpreter, self._bundle, self.version = interpreter, bundle, version
            self.error = None
            log.info("policy reloaded from %s (%s)", self.folder, version)
            return True

    def _stat(self) -> tuple[tuple[str, int, int], ...]:
        """Name, mtime and size of every policy file: cheap enough to compare once a second."""
        entries = []
        for path in self.files:
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed between glob and stat: the next check sees it
                continue
            entries.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    def _compile(self) -> tuple[regopy.Interpreter, regopy.Bundle, str]:
        paths = self.files
        if not paths:
            raise PolicyError(f"{self.folder}: no *.rego policy files", [self.folder])
        try:
            sources = {path.name: path.read_text(encoding="utf-8") for path in paths}
        except (OSError, UnicodeDecodeError) as exc:  # e.g. removed or half-written mid-reload
            raise PolicyError(f"{self.folder}: cannot read a policy file: {exc}", paths) from exc
        interpreter = regopy.Interpreter()
        interpreter.log_level = regopy.LogLevel.NONE  # regopy otherwise prints errors on stdout
        try:
            interpreter.add_data(self.data)
            for name, source in sources.items():
                interpreter.add_module(name, source)
            bundle = interpreter.build(QUERY, [ENTRYPOINT])
        except regopy.RegoError as exc:  # parse errors, naming the module
            raise _compile_error(self.folder, sources, [str(exc)]) from None
        if not bundle.ok():  # errors found while planning: one error term per child node
            errors = bundle.node()
            raise _compile_error(self.folder, sources, [errors.at(i).json() for i in range(len(errors))])
        answer = _query(interpreter, bundle, regopy.Input(_PROBE))
        if isinstance(answer, str):
            raise PolicyError(f"{self.folder}: {answer} (files: {', '.join(sources)})", paths)
        version = input_digest({"files": sources, "data": self.data})
        return interpreter, bundle, version


def _query(interpreter: regopy.Interpreter, bundle: regopy.Bundle, rego_input: regopy.Input) -> Any:
    """The decision object, or a string saying why there is none."""
    try:
        interpreter.set_input(rego_input)
        output = interpreter.query_bundle_entrypoint(bundle, ENTRYPOINT)
    except regopy.RegoError as exc:
        return f"policy evaluation failed: {exc}"
    except ValueError:  # regopy's Output could not parse what came back: an error term, not JSON
        return "policy evaluation failed (an unknown built-in or a runtime error in a rule)"
    if not output.ok():
        return f"policy evaluation failed: {output}"
    expressions = output[0].expressions if len(output) else []
    if not expressions:
        return "data.mesh.authz.decision is undefined (is the package `mesh.authz`?)"
    decision = expressions[0]
    if not isinstance(decision, dict) or not isinstance(decision.get("allow"), bool):
        return f"data.mesh.authz.decision must be an object with a boolean `allow`, not {decision!r}"
    return decision


def _decision(answer: dict[str, Any], digest: str) -> Decision:
    denials = sorted(
        (str(item.get("rule", "deny")), str(item.get("reason", ""))) if isinstance(item, dict) else ("deny", str(item))
        for item in answer.get("deny") or []
    )
    if answer["allow"] and not denials:
        return Decision(True, "allow", [], digest)
    if not denials and answer.get("approval_required"):
        return _approval(answer["approval_required"], digest)
    if not denials:  # allow is false yet no rule says why
        denials = [("deny", "the policy denied the call without a reason")]
    return Decision(False, denials[0][0], [f"{rule}: {reason}" for rule, reason in denials], digest)


def _approval(items: Any, digest: str) -> Decision:
    """Approval required: the rules and reasons, and the roles every rule accepts (none in common: denied)."""
    asked: list[tuple[str, str]] = []
    roles: set[str] | None = None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            return _denied(digest, "policy_error", f"an approval_required entry must be an object, not {item!r}")
        named = item.get("roles")
        if named is not None:
            if not (isinstance(named, list) and all(isinstance(role, str) for role in named)):
                return _denied(digest, "policy_error", f"approval_required roles must be strings, not {named!r}")
            roles = set(named) if roles is None else roles & set(named)
        asked.append((str(item.get("rule", "approval_required")), str(item.get("reason", ""))))
    if not asked:
        return _denied(digest, "policy_error", "approval_required must be a set of objects")
    asked.sort()
    reasons = [f"{rule}: {reason}" for rule, reason in asked]
    approvers = tuple(sorted(roles)) if roles is not None else DEFAULT_APPROVERS
    if not approvers:
        return Decision(False, asked[0][0], [*reasons, f"{asked[0][0]}: no role may approve every rule"], digest)
    return Decision(False, asked[0][0], reasons, digest, approvers)


def _denied(digest: str, rule: str, reason: str) -> Decision:
    return Decision(False, rule, [f"{rule}: {reason}"], digest)


# rego-cpp errors are s-expressions with byte-length-prefixed strings, e.g.
# (error 9:mesh.rego|44|2 (errormsg 24:Invalid boolean operator) ...): file, byte offset, length.
_ERROR_START = re.compile(rb"\(error\s")
_MESSAGE = re.compile(rb"\(errormsg (\d+):")
_LENGTH_PREFIX = re.compile(rb"(\d+):")


def _compile_error(folder: Path, sources: dict[str, str], problems: list[str]) -> PolicyError:
    """Turn rego-cpp's error terms into ``file:line:col: message`` lines naming the files."""
    encoded = {name: source.encode("utf-8") for name, source in sources.items()}
    lines: list[str] = []
    files: list[Path] = []
    for problem in problems:
        raw = problem.encode("utf-8")
        for segment in _ERROR_START.split(raw)[1:] or [raw]:
            message = _prefixed(segment, _MESSAGE) or problem.strip()
            where = _location(segment, encoded)
            if where is None:
                lines.append(f"{folder}: {message}")
                continue
            name, line, column = where
            lines.append(f"{folder / name}:{line}:{column}: {message}")
            if folder / name not in files:
                files.append(folder / name)
    return PolicyError("\n".join(dict.fromkeys(lines)), files or [folder])


def _prefixed(segment: bytes, pattern: re.Pattern[bytes]) -> str | None:
    match = pattern.search(segment)
    if match is None:
        return None
    start = match.end()
    return segment[start : start + int(match.group(1))].decode("utf-8", "replace")


def _location(segment: bytes, sources: dict[str, bytes]) -> tuple[str, int, int] | None:
    """The first ``N:name|offset|length`` in the segment whose name is one of the policy files."""
    for match in _LENGTH_PREFIX.finditer(segment):
        start = match.end()
        end = start + int(match.group(1))
        name = segment[start:end].decode("utf-8", "replace")
        offset = re.match(rb"\|(\d+)\|", segment[end:])
        if name in sources and offset:
            source = sources[name]
            at = min(int(offset.group(1)), len(source))
            line = source.count(b"\n", 0, at) + 1
            column = at - (source.rfind(b"\n", 0, at) + 1) + 1
            return name, line, column
    return None


__all__ = ["Decision", "PolicyEngine", "PolicyError", "input_digest"]
