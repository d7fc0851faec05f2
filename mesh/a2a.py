"""The A2A JSON-RPC binding of an agent, built from a2a-sdk's server pieces.

An A2A client calls one of the agent's MCP tools by sending a message whose data part is
``{"tool": NAME, "arguments": {...}}``. The task completes with one artifact holding the tool's
result: its structured content as a data part, its text content as text parts (images, audio and
resources as raw or URL parts). A tool the card does not list, an MCP error result or a tool that
raises fails the task, with the reason as the status message.

The card served at ``/.well-known/agent-card.json`` is the caller's business (``mesh.card``): serve the
signed dict as it is. a2a-sdk's own card route re-serializes it with v0.3 fields added, which a verifier
that canonicalizes the JSON as received would then reject.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

from a2a.helpers import get_data_parts, new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCard, Part, Task, TaskState, TaskStatus
from google.protobuf.json_format import ParseDict
from mcp import types
from starlette.routing import BaseRoute

from mesh.card import JSONRPC_BINDING

CallTool = Callable[[str, dict[str, Any]], Awaitable[types.CallToolResult]]


class ToolCallRefused(Exception):
    """A message that does not name a tool this agent offers, or names it badly; the text says why."""


def a2a_routes(*, card: dict[str, Any], call_tool: CallTool, path: str = "/a2a") -> list[BaseRoute]:
    """Starlette routes serving the A2A JSON-RPC binding at ``path``; add them to the agent's app.

    ``card`` is the agent's (signed) card; it must name this endpoint as its JSON-RPC interface, and
    its skills are the tools a caller may name. ``call_tool`` may return an MCP error result or raise.
    """
    if not any(
        interface.get("protocolBinding") == JSONRPC_BINDING and urlparse(interface.get("url", "")).path == path
        for interface in card.get("supportedInterfaces", [])
    ):
        raise ValueError(f"the agent card names no {JSONRPC_BINDING} interface at {path!r}")
    agent_card = ParseDict(card, AgentCard(), ignore_unknown_fields=True)
    executor = ToolExecutor(call_tool, {skill["id"] for skill in card.get("skills", [])})
    handler = DefaultRequestHandler(agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=agent_card)
    return list(create_jsonrpc_routes(handler, rpc_url=path))


class ToolExecutor(AgentExecutor):
    """Runs one MCP tool call per A2A task."""

    def __init__(self, call_tool: CallTool, tools: set[str]):
        self.call_tool = call_tool
        self.tools = tools

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = str(context.task_id), str(context.context_id)
        if context.current_task is None:
            await event_queue.enqueue_event(
                Task(
                    id=task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=[context.message] if context.message else [],
                )
            )
        updater = TaskUpdater(event_queue, task_id, context_id)
        try:
            tool, arguments = self.requested_call(context)
        except ToolCallRefused as exc:
            await updater.failed(updater.new_agent_message([Part(text=str(exc))]))
            return
        await updater.start_work()
        try:
            result = await self.call_tool(tool, arguments)
        except Exception as exc:  # the tool's own failure is the task's outcome, not a server error
            await updater.failed(updater.new_agent_message([Part(text=f"tool {tool!r} failed: {exc}")]))
            return
        parts = result_parts(result)
        if getattr(result, "is_error", False):
            reason = [part for part in parts if part.HasField("text")] or [Part(text=f"tool {tool!r} failed")]
            await updater.failed(updater.new_agent_message(reason))
            return
        await updater.add_artifact(parts, name=tool, last_chunk=True)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, str(context.task_id), str(context.context_id)).cancel()

    def requested_call(self, context: RequestContext) -> tuple[str, dict[str, Any]]:
        """The (tool, arguments) the message's data part names."""
        message = context.message
        calls = [data for data in get_data_parts(message.parts if message else []) if isinstance(data, dict)]
        calls = [data for data in calls if "tool" in data]
        if not calls:
            raise ToolCallRefused('send a data part {"tool": NAME, "arguments": {...}} to call a tool')
        tool, arguments = calls[0]["tool"], calls[0].get("arguments") or {}
        if not isinstance(tool, str) or tool not in self.tools:
            raise ToolCallRefused(f"unknown tool {tool!r}; this agent offers: {', '.join(sorted(self.tools))}")
        if not isinstance(arguments, dict):
            raise ToolCallRefused(f"tool {tool!r}: arguments must be a JSON object")
        return tool, _integral(arguments)


def _integral(value: Any) -> Any:
    """Give back the integers a protobuf ``Value`` turned into floats (4 arrives as 4.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def result_parts(result: Any) -> list[Part]:
    """An MCP tool result as A2A parts: structured content first, then each content block."""
    parts = []
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        parts.append(new_data_part(structured, media_type="application/json"))
    parts.extend(_part(block) for block in getattr(result, "content", []) or [])
    return parts


def _part(block: Any) -> Part:
    if isinstance(block, types.TextContent):
        return Part(text=block.text, media_type="text/plain")
    if isinstance(block, types.ImageContent | types.AudioContent):
        return Part(raw=base64.b64decode(block.data), media_type=block.mime_type)
    if isinstance(block, types.ResourceLink):
        return Part(url=str(block.uri), media_type=block.mime_type or "", filename=block.name)
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return Part(text=resource.text, media_type=resource.mime_type or "text/plain")
        return Part(raw=base64.b64decode(resource.blob), media_type=resource.mime_type or "")
    return new_data_part(block.model_dump(by_alias=True, mode="json", exclude_none=True))
