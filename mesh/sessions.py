"""What a 2025-11-25 MCP session is known by, and the log levels it asked for.

The agent, the registry's MCP faces and ``MeshClient`` each keep state per client session (log level,
subscriptions, the registry's own session with an agent): one reading of the session id and one level
rule serve them all.
"""

from __future__ import annotations

from typing import Any, get_args

from mcp_types import LoggingLevel

LOG_LEVELS: tuple[str, ...] = get_args(LoggingLevel)  # severity ascending
SESSION_HEADER = "mcp-session-id"


def session_id(ctx: Any) -> str | None:
    """The 2025-11-25 session a request came in (its ``Mcp-Session-Id``); None without one (stdio, or a
    stateless request)."""
    headers = getattr(getattr(ctx, "request", None), "headers", None)
    return headers.get(SESSION_HEADER) if headers is not None else None


def at_or_above(level: Any, threshold: str | None) -> bool:
    """Whether a log message at ``level`` passes a session's ``logging/setLevel`` (None: every level)."""
    if threshold is None or threshold not in LOG_LEVELS:
        return True
    return level in LOG_LEVELS and LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)
