"""OpenTelemetry for the mesh: one trace per call across every hop, plus invoke counts and latency.

``configure`` installs the process-wide tracer and meter providers once; ``configure_from_env`` reads
``MESH_OTEL_EXPORTER`` (``none``, ``console``, ``otlp`` or ``memory``) and ``OTEL_EXPORTER_OTLP_ENDPOINT``.
``scrape=True`` (the registry) also keeps the metrics for a Prometheus scrape (``prometheus_text``), with
or without an exporter: the same instruments feed both, there is no second set of counters.

Across an MCP hop nothing extra is needed: mcp 2.3's client opens a CLIENT span per request and writes
its W3C ``traceparent`` into the request's ``_meta``, and every ``MCPServer`` runs each request inside a
SERVER span parented on that ``traceparent``. So a tool's ``span(...)`` nests under the caller's trace.
``inject_meta`` / ``extract_meta`` are for every other carrier (HTTP headers, A2A messages, queued work).

With the ``none`` exporter nothing is installed and the hot path stays at a couple of µs: ``span`` only
makes a given parent context current (so a node with telemetry off still passes a trace on) and
``record_invoke`` returns at once.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

__all__ = [
    "Exporter",
    "Telemetry",
    "configure",
    "configure_from_env",
    "extract_meta",
    "inject_meta",
    "observe_reputation",
    "prometheus_text",
    "record_invoke",
    "span",
    "tracer",
]

Exporter = Literal["none", "console", "otlp", "memory"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)
INSTRUMENTATION = "mesh"
INVOKE_CALLS = "mesh.invoke.calls"
INVOKE_DURATION = "mesh.invoke.duration"
POLICY_DECISIONS = "mesh.policy.decisions"
RUN_BATCH_SIZE = "mesh.runlog.batch_size"  # calls per commit of run records (group commit)
REPUTATION_SCORE = "mesh.reputation.score"
AGENT_ATTRIBUTE = "mesh.agent"
AGENT_LABEL = "mesh_agent"  # the Prometheus label of AGENT_ATTRIBUTE (dots become underscores)

logger = logging.getLogger(__name__)


@dataclass
class Telemetry:
    """What ``configure`` installed; the ``memory`` exporter's exporter and reader are kept for tests."""

    service_name: str
    exporter: Exporter
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    spans: InMemorySpanExporter | None = None
    metric_reader: InMemoryMetricReader | None = None
    invoke_counter: Counter | None = field(default=None, repr=False)
    invoke_latency: Histogram | None = field(default=None, repr=False)
    policy_counter: Counter | None = field(default=None, repr=False)
    batch_sizes: Histogram | None = field(default=None, repr=False)
    scrape: bool = False  # metrics are also kept for a Prometheus scrape

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None

    def shutdown(self) -> None:
        """Flush and stop the exporters (also done at interpreter exit by the SDK)."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


_lock = threading.Lock()
_current: Telemetry | None = None


def configure(service_name: str, exporter: Exporter = "none", endpoint: str | None = None, *,
              scrape: bool = False) -> Telemetry:
    """Install the global tracer and meter providers, once per process.

    OpenTelemetry lets a process set its global providers only once, so the first enabled
    configuration wins and later calls return it. ``none`` installs nothing (unless ``scrape``), so a
    later call may still enable telemetry. ``endpoint`` is the OTLP/HTTP base URL (``http://host:4318``);
    without it the OTLP exporters read the standard ``OTEL_EXPORTER_OTLP_*`` variables.
    """
    global _current
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown telemetry exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    with _lock:
        installed = _current is not None and (_current.enabled or _current.scrape)
        if installed and _current is not None and (_current.enabled or (exporter == "none" and not scrape)):
            if (_current.service_name, _current.exporter) != (service_name, exporter):
                logger.warning(
                    "telemetry already configured as %s/%s; ignoring %s/%s",
                    _current.service_name, _current.exporter, service_name, exporter,
                )
            return _current
        if exporter == "none" and not scrape:
            _current = Telemetry(service_name, "none")
        else:
            _current = _install(service_name, exporter, endpoint, scrape)
        return _current


def configure_from_env(service_name: str, *, scrape: bool = False) -> Telemetry:
    """``configure`` from ``MESH_OTEL_EXPORTER`` (default ``none``) and ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    exporter = os.environ.get("MESH_OTEL_EXPORTER", "none").strip().lower() or "none"
    return configure(service_name, exporter, os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),  # type: ignore[arg-type]
                     scrape=scrape)


def _install(service_name: str, exporter: Exporter, endpoint: str | None, scrape: bool = False) -> Telemetry:
    resource = Resource.create({SERVICE_NAME: service_name})
    telemetry = Telemetry(service_name, exporter, scrape=scrape)
    processor: SpanProcessor | None = None
    readers: list[MetricReader] = []
    if exporter == "memory":
        telemetry.spans = InMemorySpanExporter()
        processor = SimpleSpanProcessor(telemetry.spans)
        readers.append(InMemoryMetricReader())
        telemetry.metric_reader = readers[-1]  # type: ignore[assignment]
    elif exporter == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        processor = BatchSpanProcessor(ConsoleSpanExporter())
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/") if endpoint else None
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None))
        metric_endpoint = f"{base}/v1/metrics" if base else None
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=metric_endpoint)))
    if scrape:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())

    if processor is not None:
        telemetry.tracer_provider = TracerProvider(resource=resource)
        telemetry.tracer_provider.add_span_processor(processor)
        trace.set_tracer_provider(telemetry.tracer_provider)
    telemetry.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(telemetry.meter_provider)

    meter = telemetry.meter_provider.get_meter(INSTRUMENTATION)
    telemetry.invoke_counter = meter.create_counter(INVOKE_CALLS, unit="{call}", description="Tool invocations")
    telemetry.invoke_latency = meter.create_histogram(
        INVOKE_DURATION, unit="ms", description="Tool invocation latency, end to end"
    )
    telemetry.policy_counter = meter.create_counter(POLICY_DECISIONS, unit="{decision}",
                                                    description="Policy decisions, by outcome and rule")
    telemetry.batch_sizes = meter.create_histogram(RUN_BATCH_SIZE, unit="{call}",
                                                   description="Calls whose run records committed together")
    return telemetry


def observe_reputation(scores: Callable[[], Iterable[tuple[str, float]]]) -> None:
    """Report each agent's reputation score as a gauge, read from ``scores()`` at each collection."""
    telemetry = _current
    if telemetry is None or telemetry.meter_provider is None:
        return

    def observe(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(score, {AGENT_ATTRIBUTE: agent}) for agent, score in scores()]

    telemetry.meter_provider.get_meter(INSTRUMENTATION).create_observable_gauge(
        REPUTATION_SCORE, [observe], unit="1", description="Reputation score of each agent, 0 to 1")


def prometheus_text(agents: Collection[str] | None = None) -> tuple[bytes, str]:
    """The metrics in the Prometheus text format, and its content type (empty unless ``scrape``).

    ``agents``: only the series of these agents (by their ``mesh_agent`` label) and every series that
    names no agent; None: every series. Chosen at collection, so no label is ever parsed back out of text."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY if agents is None else _OfAgents(REGISTRY, agents)), CONTENT_TYPE_LATEST


class _OfAgents:
    """A Prometheus collector showing what ``source`` collects, less the series of agents not in ``agents``."""

    def __init__(self, source: Any, agents: Collection[str]):
        self.source = source
        self.agents = frozenset(agents)

    def collect(self) -> Iterator[Any]:
        for family in self.source.collect():
            kept = copy.copy(family)  # the family's name, type, help and unit as they are; fewer samples
            kept.samples = [sample for sample in family.samples
                            if AGENT_LABEL not in sample.labels or sample.labels[AGENT_LABEL] in self.agents]
            yield kept


def tracer() -> trace.Tracer:
    """The mesh's tracer: a no-op until ``configure`` installs a provider (it follows the global one)."""
    return trace.get_tracer(INSTRUMENTATION)


_tracer = tracer()  # a proxy: it delegates to whichever provider is installed later


def span(
    name: str, *, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL, **attributes: AttributeValue
) -> AbstractContextManager[Span]:
    """Open a span as the current one: ``with span("invoke", agent="b") as s: ...``.

    ``context`` parents it explicitly (e.g. on ``extract_meta(...)``); otherwise the current span is
    its parent. Dotted attribute names go through ``**{"mesh.agent": name}``.
    """
    return _SpanScope(name, context, kind, attributes)


class _SpanScope:
    """``span``'s context manager; while telemetry is off it only makes ``context`` current.

    That keeps a disabled node cheap (no span objects) yet still passes an incoming trace on.
    """

    __slots__ = ("_attributes", "_context", "_kind", "_name", "_scope", "_token")

    def __init__(self, name: str, context: Context | None, kind: SpanKind, attributes: dict[str, AttributeValue]):
        self._name, self._context, self._kind, self._attributes = name, context, kind, attributes
        self._scope: AbstractContextManager[Span] | None = None
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        if _current is not None and _current.enabled:
            self._scope = _tracer.start_as_current_span(
                self._name, context=self._context, kind=self._kind, attributes=self._attributes or None
            )
            return self._scope.__enter__()
        if self._context is not None:
            self._token = otel_context.attach(self._context)
        return trace.get_current_span()

    def __exit__(self, *exc_info: Any) -> bool | None:
        if self._scope is not None:
            return self._scope.__exit__(*exc_info)
        if self._token is not None:
            otel_context.detach(self._token)
        return None


def inject_meta(meta: MutableMapping[str, Any] | None = None) -> MutableMapping[str, Any]:
    """Write the current trace context (``traceparent``, ``tracestate``) into ``meta`` and return it.

    Any dict-like carrier works: a request ``_meta``, HTTP headers, an A2A message's metadata.
    """
    carrier: MutableMapping[str, Any] = {} if meta is None else meta
    inject(carrier)
    return carrier


def extract_meta(meta: Mapping[str, Any] | None) -> Context:
    """The trace context a ``_meta`` carries, to parent spans on; the current context when it has none.

    Falling back to the current context (rather than an empty one) keeps a span nested under
    whatever is already active instead of orphaning it in a new trace, as mcp's own server does.
    """
    if meta:
        try:
            extracted = extract(meta)
        except (TypeError, ValueError):
            extracted = None
        if extracted is not None and trace.get_current_span(extracted).get_span_context().is_valid:
            return extracted
    return otel_context.get_current()


def record_invoke(agent: str, tool: str, status: str, latency_ms: float, *, decision: str | None = None,
                  rule: str | None = None) -> None:
    """Count one invocation and record its latency, labelled by agent, tool and status; and its policy
    decision (allow/deny, by rule) when the policy was asked."""
    telemetry = _current
    if telemetry is None or telemetry.invoke_counter is None or telemetry.invoke_latency is None:
        return
    attributes = {AGENT_ATTRIBUTE: agent, "mesh.tool": tool, "mesh.status": status}
    telemetry.invoke_counter.add(1, attributes)
    telemetry.invoke_latency.record(latency_ms, attributes)
    if decision is not None and telemetry.policy_counter is not None:
        telemetry.policy_counter.add(1, {AGENT_ATTRIBUTE: agent, "mesh.decision": decision, "mesh.rule": rule or ""})


def record_batch(size: int) -> None:
    """One commit of run records, holding ``size`` calls (``registry/runlog.py``)."""
    telemetry = _current
    if telemetry is not None and telemetry.batch_sizes is not None:
        telemetry.batch_sizes.record(size)
