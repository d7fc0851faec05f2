"""The sandbox agent: mock APIs from OpenAPI specs, so agents can be built before the API exists.

At startup it loads every spec in the workspace's ``docs/openapi/`` (or the paths listed in
``[agents.sandbox] specs = [...]`` of ``registry/registry.toml``, relative to the workspace). Each spec
becomes an API named after its file; calls are validated against the spec and answered with its
examples or with deterministic generated data (see ``mesh.sandbox.openapi_mock``).

It also runs the services of the registry's sandboxes (``mesh.sandbox``): the registry sends the
sandbox's description with every call (``sandbox_call``, ``sandbox_state``, ``sandbox_connected_call``),
and this agent keeps each sandbox's emulated state in memory, per revision. Agents reach those tools
through the registry's sandbox front (``/agents/NAME/sandboxes/ID/mcp``), not directly.
"""

from __future__ import annotations

from typing import Any

import anyio
from pydantic import BaseModel

from mesh import Agent, AgentContext
from mesh.sandbox import connected
from mesh.sandbox.config import SandboxRef, workspace_specs
from mesh.sandbox.emulator import SandboxHost
from mesh.sandbox.openapi_mock import MockAPI

agent = Agent(
    "sandbox",
    version="0.1.0",
    description="Serves mock APIs from OpenAPI specs: list their operations, and call them to get "
    "validated, example-based responses before the real API exists.",
)

_apis: dict[str, MockAPI] = {}
_host = SandboxHost({})


class ApiSummary(BaseModel):
    name: str
    title: str
    version: str
    description: str
    operations: int


class OperationSummary(BaseModel):
    operation_id: str
    method: str
    path: str
    summary: str


@agent.on_startup
def load_specs(ctx: AgentContext) -> None:
    """Load the specs once; a broken spec stops the agent with the file named, rather than hiding it."""
    specs = workspace_specs(ctx.workspace, ctx.settings.get("specs"))
    apis = {name: MockAPI.from_file(path) for name, path in specs.items()}
    _apis.clear()
    _apis.update(apis)
    _host.specs = specs


def _api(name: str) -> MockAPI:
    try:
        return _apis[name]
    except KeyError:
        known = ", ".join(sorted(_apis)) or "none loaded"
        raise ValueError(f"unknown api {name!r} (known: {known})") from None


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["sandbox:read"])
def list_apis() -> list[ApiSummary]:
    """List the mock APIs this sandbox serves, one per OpenAPI spec."""
    return [
        ApiSummary(
            name=api.name,
            title=api.title,
            version=api.version,
            description=api.description,
            operations=len(api.operations()),
        )
        for api in _apis.values()
    ]


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["sandbox:read"])
def list_operations(api: str) -> list[OperationSummary]:
    """List an API's operations: operation id, HTTP method, path and summary."""
    return [
        OperationSummary(operation_id=op.operation_id, method=op.method, path=op.path, summary=op.summary)
        for op in _api(api).operations()
    ]


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["sandbox:read"])
def describe_operation(api: str, operation_id: str) -> dict[str, Any]:
    """Describe one operation: its parameters, request body and responses, with every schema inlined."""
    return _api(api).describe(operation_id)


@agent.tool(read_only=False, destructive=False, idempotent=False, open_world=False, scopes=["sandbox:call"])
def call_operation(
    api: str,
    operation_id: str,
    path_params: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    body: dict[str, Any] | list[Any] | None = None,
) -> dict[str, Any]:
    """Call a mock operation and get {status, headers, body}.

    Parameters and body are checked against the spec (an error names the field). The answer is the
    first 2xx response: the spec's example if it has one, else data generated from the schema, the same
    for the same call. Resources created with POST are remembered, so a later GET returns them.
    """
    return _api(api).call(operation_id, path_params, query, body).to_dict()


# -- the registry's sandboxes ----------------------------------------------------------------------


@agent.tool(read_only=False, destructive=False, idempotent=False, open_world=False, scopes=["sandbox:call"])
async def sandbox_call(
    sandbox: SandboxRef,
    service: str,
    operation_id: str,
    path_params: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    body: dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Call an operation of a sandbox's service (mock or emulated) and get {status, headers, body}.

    Answers as the API would, errors included (401 without an accepted credential, 404 for what does not
    exist, 422/400 naming a bad field, injected 429s); an emulated service remembers what was created,
    changed and deleted until the sandbox is reset. Nothing leaves the machine.
    """
    if sandbox.mode == "connected":
        raise ValueError("a connected sandbox is called through sandbox_connected_call")
    target = _host.service(sandbox, service)
    delay = target.latency(operation_id)
    if delay:
        await anyio.sleep(delay)
    return target.answer(operation_id, path_params, query, body, headers).to_dict()


@agent.tool(read_only=True, idempotent=True, open_world=False, scopes=["sandbox:read"])
def sandbox_state(sandbox: SandboxRef) -> dict[str, Any]:
    """What a sandbox's emulated services hold now: {service: {collection path: [records]}}."""
    return _host.state(sandbox)


@agent.tool(read_only=False, destructive=True, idempotent=False, open_world=True, scopes=["sandbox:connected"])
async def sandbox_connected_call(
    sandbox: SandboxRef,
    service: str,
    operation_id: str,
    path_params: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    body: dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Call an operation of a connected sandbox's service at its real endpoint, with the credential the
    sandbox names (never returned); the arguments are checked against the spec first."""
    if sandbox.mode != "connected":
        raise ValueError(f"sandbox {sandbox.id} is {sandbox.mode}, not connected")
    answer = await connected.send(_host.service(sandbox, service), sandbox.secret_ref, operation_id, path_params,
                                  query, body, headers)
    return answer.to_dict()
