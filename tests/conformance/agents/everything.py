"""The conformance suite's fixtures, written with mcpmesh's public Agent API only.

`@modelcontextprotocol/conformance` calls these by name (tests/test_conformance.py runs it). The content
tools, resources and prompts live in tools/content.py; this agent adds what talks back to the client:
logging, progress, elicitation and sampling on 2025-11-25 (server-to-client requests through the SDK's
``Context``), the same through ``input_required`` results on 2026-07-28, and a resolver that needs a
client capability.
"""

from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, Resolve, Sample
from mcp.types import (
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    TextContent,
)
from pydantic import BaseModel, Field

from mesh import Agent

agent = Agent("everything", version="1.0.0", description="Every MCP feature the conformance suite checks.")
agent.mount("content")


# -- talking back within a call (both versions) ------------------------------------------------------

@agent.tool
async def test_tool_with_logging(ctx: Context) -> str:
    """Tests tool that emits log messages during execution."""
    for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.info(message)
        await anyio.sleep(0.05)
    return "Tool with logging executed successfully"


@agent.tool
async def test_tool_with_progress(ctx: Context) -> str:
    """Tests tool that reports progress notifications."""
    for step in (0, 50, 100):
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        await anyio.sleep(0.05)
    meta = ctx.request_context.meta
    return str(meta.progress_token if meta and meta.progress_token is not None else 0)


@agent.tool
async def test_reconnection(ctx: Context) -> str:
    """Tests SSE polling by closing the stream mid-call (SEP-1699); the client resumes from the event store."""
    await ctx.info("Before disconnect")
    await ctx.close_sse_stream()
    await anyio.sleep(0.2)
    await ctx.info("After reconnect")
    return "Reconnection test completed"


# -- 2025-11-25: server-to-client requests --------------------------------------------------------------

@agent.tool
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Tests server-initiated sampling (LLM completion request). Asked on the call's own stream: on the
    session's standalone stream the question is lost if the client has not opened that stream yet (a race
    the suite's client loses now and then under load); tests/test_mcp_front.py covers that stream."""
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=100,
        related_request_id=ctx.request_id)
    text = result.content.text if result.content.type == "text" else "No response"
    return f"LLM response: {text}"


class UserResponse(BaseModel):
    response: str = Field(description="User's response")


@agent.tool
async def test_elicitation(message: str, ctx: Context) -> str:
    """Tests server-initiated elicitation (user input request)."""
    result = await ctx.elicit(message=message, schema=UserResponse)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"User response: action={result.action}, content={content}"


class Defaults(BaseModel):
    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(default="active", description="User status",
                        json_schema_extra={"enum": ["active", "inactive", "pending"]})
    verified: bool = Field(default=True, description="Verification status")


@agent.tool
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Tests elicitation with default values for all primitive types (SEP-1034)."""
    result = await ctx.elicit(message="Please provide user information", schema=Defaults)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"Elicitation result: action={result.action}, content={content}"


class Enums(BaseModel):
    untitledSingle: str = Field(description="Simple enum without titles",
                                json_schema_extra={"enum": ["active", "inactive", "pending"]})
    titledSingle: str = Field(description="Enum with titled options (oneOf)", json_schema_extra={"oneOf": [
        {"const": "low", "title": "Low Priority"}, {"const": "medium", "title": "Medium Priority"},
        {"const": "high", "title": "High Priority"}]})
    untitledMulti: list[str] = Field(description="Multi-select without titles",
                                     json_schema_extra={"items": {"type": "string",
                                                                  "enum": ["read", "write", "execute"]}})
    titledMulti: list[str] = Field(description="Multi-select with titled options", json_schema_extra={
        "items": {"anyOf": [{"const": "feature", "title": "New Feature"}, {"const": "bug", "title": "Bug Fix"},
                            {"const": "docs", "title": "Documentation"}]}})
    legacyEnum: str = Field(description="Legacy enum with enumNames", json_schema_extra={
        "enum": ["small", "medium", "large"], "enumNames": ["Small Size", "Medium Size", "Large Size"]})


@agent.tool
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Tests elicitation with enum schema variations (SEP-1330)."""
    result = await ctx.elicit(message="Please select values using different enum schema types", schema=Enums)
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"Elicitation completed: action={result.action}, content={content}"


# -- explicit input schema --------------------------------------------------------------------------

SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {"address": {"$anchor": "addressDef", "type": "object",
                          "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"},
                   "contactMethod": {"type": "string", "enum": ["phone", "email"]},
                   "phone": {"type": "string"}, "email": {"type": "string"}},
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


@agent.tool(input_schema=SCHEMA_2020_12)
def json_schema_2020_12_tool(name: str | None = None, contactMethod: str | None = None) -> str:
    """Tool with JSON Schema 2020-12 features."""
    return f"ok: {name} by {contactMethod}"


@agent.tool
def test_header_param(region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})]) -> str:
    """Echoes a parameter that also travels as the Mcp-Param-Region header (2026-07-28)."""
    return f"region={region}"


# -- 2026-07-28: input_required results ------------------------------------------------------------------

def _ask(message: str, field: str, kind: str = "string") -> ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens))


def _answers(ctx: Context, *keys: str) -> dict[str, Any] | None:
    """The client's answers to ``keys``, or None when any is missing (then ask again)."""
    responses = ctx.input_responses or {}
    return {key: responses[key] for key in keys} if all(key in responses for key in keys) else None


def _accepted(response: Any, field: str) -> Any:
    if not isinstance(response, ElicitResult):
        raise ValueError("expected an elicitation result")
    return (response.content or {}).get(field)


def _sampled(response: Any) -> str:
    if not isinstance(response, CreateMessageResult):
        raise ValueError("expected a sampling result")
    return response.content.text if response.content.type == "text" else ""


@agent.tool
def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Asks the user's name through an input_required result."""
    answers = _answers(ctx, "user_name")
    if answers is None:
        return InputRequiredResult(input_requests={"user_name": _ask("What is your name?", "name")})
    return f"Hello, {_accepted(answers['user_name'], 'name')}!"


@agent.tool
def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Asks the client's model a question through an input_required result."""
    answers = _answers(ctx, "capital_question")
    if answers is None:
        return InputRequiredResult(input_requests={
            "capital_question": _sample("What is the capital of France?", 100)})
    return f"The model says: {_sampled(answers['capital_question'])}"


@agent.tool
def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Asks for the client's roots through an input_required result."""
    answers = _answers(ctx, "client_roots")
    if answers is None:
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})
    roots = answers["client_roots"]
    if not isinstance(roots, ListRootsResult):
        raise ValueError("expected a roots/list result")
    return "Roots: " + ", ".join(str(root.uri) for root in roots.roots)


@agent.tool
def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Round-trips requestState (sealed by the SDK) beside an elicitation."""
    answers = _answers(ctx, "confirm")
    if answers is None or ctx.request_state != "awaiting-confirmation":
        return InputRequiredResult(input_requests={"confirm": _ask("Please confirm", "ok", "boolean")},
                                   request_state="awaiting-confirmation")
    return f"state-ok: confirmed={_accepted(answers['confirm'], 'ok')}"


@agent.tool
def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Asks for elicitation, sampling and roots in one round."""
    answers = _answers(ctx, "user_name", "greeting", "client_roots")
    if answers is None:
        return InputRequiredResult(
            input_requests={"user_name": _ask("What is your name?", "name"),
                            "greeting": _sample("Generate a greeting", 50), "client_roots": ListRootsRequest()},
            request_state="multiple-inputs")
    return f"All inputs received: {_accepted(answers['user_name'], 'name')}, {_sampled(answers['greeting'])}"


@agent.tool
def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Two elicitation rounds with evolving requestState, then the result."""
    state = ctx.request_state
    if state and state.startswith("round-2:") and _answers(ctx, "step2"):
        color = _accepted(_answers(ctx, "step2")["step2"], "color")
        return f"Multi-round complete: {state.removeprefix('round-2:')} likes {color}"
    if state == "round-1" and _answers(ctx, "step1"):
        name = _accepted(_answers(ctx, "step1")["step1"], "name")
        return InputRequiredResult(input_requests={"step2": _ask("Step 2: What is your favorite color?", "color")},
                                   request_state=f"round-2:{name}")
    return InputRequiredResult(input_requests={"step1": _ask("Step 1: What is your name?", "name")},
                               request_state="round-1")


@agent.tool
def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """The SDK seals requestState, so a tampered one never reaches this body (it answers -32602)."""
    if ctx.request_state == "sealed" and _answers(ctx, "confirm"):
        return "state verified"
    return InputRequiredResult(input_requests={"confirm": _ask("Please confirm", "ok", "boolean")},
                               request_state="sealed")


@agent.tool
def test_input_required_result_capabilities(ctx: Context) -> str | InputRequiredResult:
    """Asks only for what the client declared it can answer."""
    capabilities = ctx.client_capabilities
    requests: dict[str, Any] = {}
    if capabilities and capabilities.sampling is not None:
        requests["greeting"] = _sample("Generate a greeting", 50)
    if capabilities and capabilities.elicitation is not None:
        requests["user_name"] = _ask("What is your name?", "name")
    if not requests or _answers(ctx, *requests):
        return "Nothing more to ask"
    return InputRequiredResult(input_requests=requests)


def _colour() -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text="Name a colour"))],
                  max_tokens=20)


@agent.tool
def test_missing_capability(colour: Annotated[CreateMessageResult, Resolve(_colour)]) -> str:
    """Needs sampling through a resolver: a client that did not declare it gets -32021."""
    return _sampled(colour)


@agent.prompt
def test_input_required_result_prompt(ctx: Context) -> str | InputRequiredResult:
    """A prompt that asks for context before it renders."""
    answers = _answers(ctx, "user_context")
    if answers is None:
        return InputRequiredResult(input_requests={
            "user_context": _ask("What context should the prompt use?", "context")})
    return f"Use this context: {_accepted(answers['user_context'], 'context')}"


@agent.completion
async def complete(ref: Any, argument: Any, context: Any) -> Completion:
    """Completes prompt and template arguments from a short fixed list."""
    choices = ["paris", "park", "party"]
    matching = [choice for choice in choices if choice.startswith(argument.value or "")]
    return Completion(values=matching, total=len(matching), has_more=False)
