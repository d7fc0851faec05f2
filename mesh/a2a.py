"""The A2A JSON-RPC binding of an agent, built from a2a-sdk's server pieces.

An A2A client calls one of the agent's MCP tools by sending a message whose data part is
``{"tool": NAME, "arguments": {...}}``. The task completes with one artifact holding the tool's
result: its structured content as a data part, its text content as text parts (images, audio and
resources as raw or URL parts). A tool the card does not list, an MCP error result or a tool that
raises fails the task, with the reason as the status message.

A plain text message calls the agent's text tool (``mesh.card.text_tool``: its only tool, when that
tool takes a single string and is harmless) with the text as that string. Without a text tool, the task
asks for input (``INPUT_REQUIRED``): a message naming the tools and the data part that calls them, and
``{"tools": [...]}`` as data. The client may answer on the same task with the data part.

The binding answers at its path with and without a trailing ``/`` (the A2A TCK posts to ``.../a2a/``).

Numbers: a data part is a protobuf ``Value``, which holds every number as a double, so a2a-sdk writes
the integer 5 as ``5.0``. JSON has one number type and RFC 8785 (which the mesh signs with) writes 5.0
as ``5``, so the answer is written back in that form: every integral number up to 2**53 loses its
``.0``. A JSON client thus reads integers where the tool returned integers. (a2a-sdk's own client parses
the answer into protobuf again and hands out floats: narrow them with ``integral``.)

The card served at ``/.well-known/agent-card.json`` is the caller's business (``mesh.card``): serve the
signed dict as it is. a2a-sdk's own card route re-serializes it with v0.3 fields added, which a verifier
that canonicalizes the JSON as received would then reject.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlparse

from a2a.helpers import get_data_parts, get_text_parts, new_data_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.owner_resolver import OwnerResolver, resolve_user_scope
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import ServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.server.tasks import InMemoryTaskStore, TaskStore, TaskUpdater
from a2a.types import AgentCard, Part, Task, TaskState, TaskStatus
from google.protobuf.json_format import ParseDict
from mcp import types
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mesh.card import JSONRPC_BINDING, text_tool
from mesh.manifest import canonical

CallTool = Callable[[str, dict[str, Any]], Awaitable[types.CallToolResult]]
MAX_EXACT_INTEGER = 2**53  # beyond it a double no longer holds every integer


class ToolCallRefused(Exception):
    """A message that does not name a tool this agent offers, or names it badly; the text says why."""


class ToolCallFailed(Exception):
    """The call was made (or refused on the way) and failed: ``str`` says why, ``details`` is JSON for machines."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None):
        super().__init__(reason)
        self.details = details


class InputRequired(Exception):
    """The message calls no tool, and none can be guessed: the text says how to call one."""

    def __init__(self, text: str, tools: list[dict[str, Any]]):
        super().__init__(text)
        self.tools = tools


def a2a_routes(
    *, card: dict[str, Any], call_tool: CallTool, path: str = "/a2a", tools: list[dict[str, Any]] | None = None
) -> list[BaseRoute]:
    """Starlette routes serving the A2A JSON-RPC binding at ``path`` (and ``path/``); add them to the agent's app.

    ``card`` is the agent's (signed) card; it must name this endpoint as its JSON-RPC interface, and
    its skills are the tools a caller may name. ``tools`` are the agent's wire tools (their input schemas
    say which one a plain text message can call); without them, the card's skills stand in and a text
    message is answered with ``INPUT_REQUIRED``. ``call_tool`` may return an MCP error result or raise.
    """
    if not any(
        interface.get("protocolBinding") == JSONRPC_BINDING and urlparse(interface.get("url", "")).path == path
        for interface in card.get("supportedInterfaces", [])
    ):
        raise ValueError(f"the agent card names no {JSONRPC_BINDING} interface at {path!r}")
    offered = tools if tools is not None else [
        {"name": skill["id"], "description": skill.get("description", "")} for skill in card.get("skills", [])
    ]
    return jsonrpc_routes(card=card, executor=ToolExecutor(call_tool, offered), path=path)


def jsonrpc_routes(
    *, card: dict[str, Any], executor: AgentExecutor, path: str,
    context_builder: ServerCallContextBuilder | None = None, task_store: TaskStore | None = None,
) -> list[BaseRoute]:
    """The JSON-RPC binding of ``executor`` at ``path`` and ``path/``; ``card`` says what it can do
    (no streaming, no push notifications). ``path`` may hold Starlette path parameters."""
    agent_card = ParseDict(card, AgentCard(), ignore_unknown_fields=True)
    handler = DefaultRequestHandler(agent_executor=executor, task_store=task_store or RecentTaskStore(),
                                    agent_card=agent_card)
    dispatcher = IntegralDispatcher(request_handler=handler, context_builder=context_builder)
    path = path.rstrip("/")
    return [Route(path, dispatcher.handle_requests, methods=["POST"]),
            Route(path + "/", dispatcher.handle_requests, methods=["POST"])]


class RecentTaskStore(InMemoryTaskStore):
    """a2a-sdk's in-memory task store, keeping only the ``limit`` tasks saved last (it keeps every task
    otherwise, and a server runs for long). A forgotten task is answered as unknown (``GetTask``)."""

    def __init__(self, limit: int = 1000, owner_resolver: OwnerResolver = resolve_user_scope):
        super().__init__(owner_resolver=owner_resolver)
        self.limit = limit
        self._saved: OrderedDict[tuple[str, str], ServerCallContext] = OrderedDict()
        self._owner = owner_resolver

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await super().save(task, context)
        key = (self._owner(context), task.id)
        self._saved[key] = context
        self._saved.move_to_end(key)
        while len(self._saved) > self.limit:
            (_, task_id), owner_context = self._saved.popitem(last=False)
            await self.delete(task_id, owner_context)


class IntegralDispatcher(JsonRpcDispatcher):
    """a2a-sdk's JSON-RPC dispatcher, writing integral numbers as integers (see the module's docstring)."""

    def _create_response(self, context: ServerCallContext, handler_result: Any) -> Response:
        if isinstance(handler_result, AsyncGenerator):
            return super()._create_response(context, _integral_stream(handler_result))
        return super()._create_response(context, integral(handler_result))


async def _integral_stream(stream: AsyncGenerator[dict[str, Any]]) -> AsyncGenerator[dict[str, Any]]:
    async for item in stream:
        yield integral(item)


def integral(value: Any) -> Any:
    """``value`` with the integers a protobuf ``Value`` turned into floats given back (4.0 becomes 4)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return value


class ToolExecutor(AgentExecutor):
    """Runs one MCP tool call per A2A task.

    Subclasses change where calls go by overriding ``offered`` (the tools a message may call) and
    ``call`` (make the call, given the A2A call context): the registry's binding sends them through its
    call path."""

    def __init__(self, call_tool: CallTool | None, tools: list[dict[str, Any]]):
        self.call_tool = call_tool
        self.tools = tools

    def offered(self, context: ServerCallContext) -> list[dict[str, Any]]:
        """The wire tools a message may call (``name``, ``description``, ``inputSchema``, ``annotations``)."""
        return self.tools

    async def call(self, tool: str, arguments: dict[str, Any], context: ServerCallContext) -> types.CallToolResult:
        """Call ``tool``; raise ``ToolCallFailed`` (or anything) for a call that did not happen or failed."""
        assert self.call_tool is not None
        return await self.call_tool(tool, arguments)

    def result_metadata(self, result: types.CallToolResult) -> dict[str, Any] | None:
        """Metadata for what carries the result: its artifact, or the failed task's message (none here)."""
        return None

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
            tool, arguments = requested_call(context.message.parts if context.message else [],
                                             self.offered(context.call_context))
        except ToolCallRefused as exc:
            await updater.failed(updater.new_agent_message([Part(text=str(exc))]))
            return
        except InputRequired as exc:
            parts = [Part(text=str(exc)), new_data_part({"tools": exc.tools}, media_type="application/json")]
            await updater.requires_input(updater.new_agent_message(parts))
            return
        await updater.start_work()
        try:
            result = await self.call(tool, arguments, context.call_context)
        except ToolCallFailed as exc:
            reason = [Part(text=str(exc))]
            if exc.details:
                reason.append(new_data_part(exc.details, media_type="application/json"))
            await updater.failed(updater.new_agent_message(reason))
            return
        except Exception as exc:  # the tool's own failure is the task's outcome, not a server error
            await updater.failed(updater.new_agent_message([Part(text=f"tool {tool!r} failed: {exc}")]))
            return
        parts = result_parts(result)
        if getattr(result, "is_error", False):
            reason = [part for part in parts if part.HasField("text")] or [Part(text=f"tool {tool!r} failed")]
            await updater.failed(updater.new_agent_message(reason, metadata=self.result_metadata(result)))
            return
        await updater.add_artifact(parts, name=tool, metadata=self.result_metadata(result), last_chunk=True)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, str(context.task_id), str(context.context_id)).cancel()


def requested_call(parts: Iterable[Part], tools: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The (tool, arguments) a message asks for: its data part's, else its text for the text tool.

    Raises ``ToolCallRefused`` for a call this agent cannot take, ``InputRequired`` when nothing is asked."""
    parts = list(parts)
    names = sorted(tool["name"] for tool in tools)
    calls = [data for data in get_data_parts(parts) if isinstance(data, dict) and "tool" in data]
    if not calls:
        text = "\n".join(get_text_parts(parts)).strip()
        default = text_tool(tools)
        if text and default:
            return default[0], {default[1]: text}
        raise InputRequired(how_to_call(tools, bool(text)), [_summary(tool) for tool in tools])
    tool, arguments = calls[0]["tool"], calls[0].get("arguments") or {}
    if not isinstance(tool, str) or tool not in names:
        raise ToolCallRefused(f"unknown tool {tool!r}; this agent offers: {', '.join(names)}")
    if not isinstance(arguments, dict):
        raise ToolCallRefused(f"tool {tool!r}: arguments must be a JSON object")
    return tool, integral(arguments)


def how_to_call(tools: list[dict[str, Any]], got_text: bool) -> str:
    """What an agent without a text tool answers: which tools it has and the data part that calls one."""
    opening = "This agent answers tool calls, not free text." if got_text else "This message calls no tool."
    lines = [f'{opening} Send a data part {{"tool": NAME, "arguments": {{...}}}} naming one of:']
    for tool in sorted(tools, key=lambda tool: tool["name"]):
        properties = (tool.get("inputSchema") or {}).get("properties") or {}
        required = set((tool.get("inputSchema") or {}).get("required") or [])
        arguments = ", ".join(name + ("" if name in required else "?") for name in properties)
        description = (tool.get("description") or "").strip().split("\n")[0]
        lines.append(f"- {tool['name']}({arguments}): {description}".rstrip(": "))
    if tools:
        example = min(tools, key=lambda tool: tool["name"])
        required = (example.get("inputSchema") or {}).get("required") or []
        call = {"tool": example["name"], "arguments": {name: f"<{name}>" for name in required}}
        lines.append(f"For example: {canonical(call).decode()}")
    return "\n".join(lines)


def _summary(tool: dict[str, Any]) -> dict[str, Any]:
    summary = {"name": tool["name"], "description": tool.get("description", "")}
    if tool.get("inputSchema"):
        summary["inputSchema"] = tool["inputSchema"]
    return summary


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
