"""The sandbox agent: mock APIs from OpenAPI specs, so agents can be built before the API exists.

At startup it loads every spec in the workspace's ``docs/openapi/`` (or the paths listed in
``[agents.sandbox] specs = [...]`` of ``registry/registry.toml``, relative to the workspace). Each spec
becomes an API named after its file; calls are validated against the spec and answered with its
examples or with deterministic generated data (see ``mesh.sandbox.openapi_mock``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mesh import Agent, AgentContext
from mesh.sandbox.openapi_mock import MockAPI

SPEC_SUFFIXES = (".yaml", ".yml", ".json")

agent = Agent(
    "sandbox",
    version="0.1.0",
    description="Serves mock APIs from OpenAPI specs: list their operations, and call them to get "
    "validated, example-based responses before the real API exists.",
)

_apis: dict[str, MockAPI] = {}


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
    paths = _spec_paths(ctx.workspace, ctx.settings.get("specs"))
    apis: dict[str, MockAPI] = {}
    for path in paths:
        api = MockAPI.from_file(path)
        if api.name in apis:
            raise ValueError(f"two specs would both be called {api.name!r}: rename one of them ({path})")
        apis[api.name] = api
    _apis.clear()
    _apis.update(apis)


def _spec_paths(workspace: Path, listed: Any) -> list[Path]:
    if listed is None:
        folder = workspace / "docs" / "openapi"
        return sorted(p for p in folder.glob("*") if p.suffix.lower() in SPEC_SUFFIXES) if folder.is_dir() else []
    if not isinstance(listed, list) or not all(isinstance(item, str) for item in listed):
        raise ValueError("settings 'specs' must be a list of paths relative to the workspace")
    return [workspace / item for item in listed]


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
