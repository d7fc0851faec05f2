"""One trace across an MCP hop, invoke metrics, and configuration, seen through the SDK's in-memory exporters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from mesh import telemetry
from mesh.telemetry import Telemetry, extract_meta, inject_meta, record_invoke, span


@pytest.fixture
def memory() -> Iterator[Telemetry]:
    """The process's telemetry on the memory exporter (providers can be installed only once per process)."""
    installed = telemetry.configure("mesh-tests", "memory")
    if installed.exporter != "memory" or installed.spans is None:
        pytest.skip(f"this test process already configured telemetry as {installed.exporter!r}")
    installed.spans.clear()
    yield installed
    installed.spans.clear()


def recorded(memory: Telemetry) -> list[ReadableSpan]:
    assert memory.spans is not None
    return list(memory.spans.get_finished_spans())


def finished(memory: Telemetry) -> dict[str, ReadableSpan]:
    return {s.name: s for s in recorded(memory)}


def ancestry(child: ReadableSpan, spans: list[ReadableSpan]) -> list[int]:
    """Span ids from ``child``'s parent up to the root, following only spans that were recorded."""
    by_id = {s.context.span_id: s for s in spans}
    chain: list[int] = []
    parent = child.parent
    while parent is not None:
        chain.append(parent.span_id)
        parent = by_id[parent.span_id].parent if parent.span_id in by_id else None
    return chain


def metric_points(memory: Telemetry, name: str) -> list[Any]:
    assert memory.metric_reader is not None
    data = memory.metric_reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_a_span_parented_on_extracted_meta_joins_the_callers_trace(memory: Telemetry):
    with span("caller", **{"mesh.agent": "a"}) as caller:
        meta = inject_meta({"progressToken": 7})
    assert meta["progressToken"] == 7 and meta["traceparent"].startswith("00-")

    with span("callee", context=extract_meta(meta)):
        pass

    spans = finished(memory)
    assert spans["caller"].attributes == {"mesh.agent": "a"}
    assert spans["callee"].context.trace_id == caller.get_span_context().trace_id
    assert spans["callee"].parent is not None
    assert spans["callee"].parent.span_id == caller.get_span_context().span_id


def test_meta_without_a_valid_traceparent_keeps_the_current_parent(memory: Telemetry):
    with span("outer") as outer:
        for meta in (None, {}, {"traceparent": "not-a-traceparent"}):
            with span("inner", context=extract_meta(meta)) as inner:
                assert inner.get_span_context().trace_id == outer.get_span_context().trace_id


def test_record_invoke_produces_a_count_and_a_latency_point_with_its_attributes(memory: Telemetry):
    record_invoke("librarian", "search", "ok", 12.5)
    record_invoke("librarian", "search", "ok", 7.5)
    record_invoke("librarian", "search", "denied", 0.5)

    expected = {"mesh.agent": "librarian", "mesh.tool": "search", "mesh.status": "ok"}
    calls = [p for p in metric_points(memory, telemetry.INVOKE_CALLS) if dict(p.attributes) == expected]
    latency = [p for p in metric_points(memory, telemetry.INVOKE_DURATION) if dict(p.attributes) == expected]
    assert [p.value for p in calls] == [2]
    assert [(p.count, p.sum, p.min, p.max) for p in latency] == [(2, 20.0, 7.5, 12.5)]
    denied = [p for p in metric_points(memory, telemetry.INVOKE_CALLS) if p.attributes["mesh.status"] == "denied"]
    assert [p.value for p in denied] == [1]


def test_configure_is_idempotent_per_process(memory: Telemetry, monkeypatch: pytest.MonkeyPatch):
    provider = trace.get_tracer_provider()
    assert telemetry.configure("mesh-tests", "memory") is memory
    assert telemetry.configure("another-service", "console") is memory  # the first enabled configuration wins
    assert telemetry.configure("mesh-tests", "none") is memory
    monkeypatch.setenv("MESH_OTEL_EXPORTER", "otlp")
    assert telemetry.configure_from_env("mesh-tests") is memory
    assert trace.get_tracer_provider() is provider is memory.tracer_provider
    with pytest.raises(ValueError, match="unknown telemetry exporter"):
        telemetry.configure("mesh-tests", "jaeger")  # type: ignore[arg-type]


def traced_server() -> MCPServer:
    server = MCPServer("traced")

    @server.tool()
    async def traced(ctx: Context) -> str:
        """Open one span on the request's own `_meta` and one on the ambient context."""
        with span("tool.from_meta", context=extract_meta(ctx.request_context.meta)):
            pass
        with span("tool.ambient"):
            pass
        return "ok"

    return server


@pytest.mark.parametrize("mode", ["legacy", "auto"])  # JSON-RPC framing (as on the wire) / direct in-process dispatch
async def test_a_tool_call_over_mcp_stays_in_the_callers_trace(memory: Telemetry, mode: str):
    async with Client(traced_server(), mode=mode) as client:
        with span("caller") as caller:
            result = await client.call_tool("traced", {}, meta=inject_meta({}))
    assert not result.is_error

    spans = finished(memory)
    caller_context = caller.get_span_context()
    for name in ("tool.from_meta", "tool.ambient"):
        assert spans[name].context.trace_id == caller_context.trace_id, name
        assert caller_context.span_id in ancestry(spans[name], recorded(memory)), name
    # mcp's own SERVER span wraps the handler, so even a span opened without `extract_meta` nests under it.
    server_span = spans["tools/call traced"]
    assert server_span.kind is trace.SpanKind.SERVER
    assert spans["tool.ambient"].parent is not None
    assert spans["tool.ambient"].parent.span_id == server_span.context.span_id


DISABLED_NODE = """
from opentelemetry import trace
from mesh import telemetry
from mesh.telemetry import extract_meta, inject_meta, span

assert not telemetry.configure_from_env("relay").enabled
incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
with span("relay", context=extract_meta(incoming)) as current:
    assert not current.is_recording()
    forwarded = inject_meta({})
telemetry.record_invoke("a", "t", "ok", 1.0)
assert forwarded["traceparent"] == incoming["traceparent"], forwarded
assert not trace.get_current_span().get_span_context().is_valid
print("passed on")
"""


def test_with_telemetry_off_a_node_records_nothing_yet_passes_the_trace_on():
    """Run in a fresh interpreter: this test process has already installed the memory providers."""
    env = {"MESH_OTEL_EXPORTER": "none", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", DISABLED_NODE], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "passed on"
