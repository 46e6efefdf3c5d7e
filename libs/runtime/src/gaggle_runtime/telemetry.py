"""Tracing: OpenTelemetry spans from a device's request through NATS into each consumer and its SQL.

Off unless ``GAGGLE_OTEL_ENDPOINT`` is set (or a test exports to a span exporter with
:func:`export_to`): then a service has no tracer, no tracing middleware and no instrumentation,
and the poll path never asks whether tracing is on (outbox writes read the current span, which
is one context-variable look-up).

When on, each service has its own :class:`Tracing` (a tracer provider whose resource names the
service) and it covers:

* HTTP requests (ASGI middleware; the gateway's base poll fast lane sits in front of it and is not
  traced, nor are ``/healthz``, ``/readyz`` and ``/metrics``);
* events published and consumed (FastStream's telemetry middleware, W3C ``traceparent`` in the
  NATS headers);
* the outbox: the ``traceparent`` of the transaction that wrote a row is stored with it and the
  relay publishes under it, so an event sent later still belongs to the request or event that
  caused it; KV writes from the outbox get a span and carry ``traceparent`` as a header;
* SQL (asyncpg), only inside a traced operation: a query's span goes to the tracer of the service
  whose span is current, and queries outside any trace (background loops) make no spans.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes
from starlette.types import Scope

from gaggle_contracts.settings import CommonSettings

if TYPE_CHECKING:
    # The SDK (with psutil) is imported only when tracing is on: a quicker start without it.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

TRACES_PATH = "/v1/traces"
EXPORT_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_MS = 5000
NOT_TRACED_URLS = "/healthz$,/readyz$,/metrics$"
"""Regular expressions (comma-separated) of URLs the HTTP middleware leaves alone."""

_PROPAGATOR = TraceContextTextMapPropagator()
_exporter: SpanExporter | None = None
_sql_instrumented = False
_sql_lock = threading.Lock()
_SQL_TRACERS: dict[int, tuple[Resource, trace.Tracer]] = {}
"""Per service resource (by identity): the resource, kept alive, and the tracer for SQL spans."""


def export_to(exporter: SpanExporter | None) -> None:
    """Trace every service built from now on into ``exporter``, whatever the settings say.

    For tests (an ``InMemorySpanExporter``); ``None`` goes back to the settings.
    """
    global _exporter
    _exporter = exporter


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``endpoint``: ``/v1/traces`` added when it names no path."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + TRACES_PATH
    return endpoint


class Tracing:
    """One service's tracer provider and what it instruments."""

    def __init__(self, service: str, processor: SpanProcessor, *, owns_exporter: bool) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        resource = Resource.create(
            {"service.name": f"gaggle-{service}", "service.namespace": "gaggle"}
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("gaggle_runtime")
        self._owns_exporter = owns_exporter
        _SQL_TRACERS[id(resource)] = (resource, self.provider.get_tracer("gaggle_runtime.sql"))
        _instrument_sql()

    def broker_middleware(self) -> Any:
        """FastStream's NATS telemetry middleware bound to this provider."""
        from faststream.nats.opentelemetry import NatsTelemetryMiddleware

        return NatsTelemetryMiddleware(tracer_provider=self.provider)

    def http_middleware_options(self, app: Any) -> dict[str, Any]:
        """Options of ``OpenTelemetryMiddleware`` for ``app``: span names from route templates."""
        return {
            "tracer_provider": self.provider,
            "excluded_urls": NOT_TRACED_URLS,
            "exclude_spans": ["receive", "send"],
            "default_span_details": _route_namer(app),
        }

    @contextlib.contextmanager
    def kv_span(self, op: str, bucket: str, key: str) -> Iterator[Span]:
        """A producer span around one KV write (``op`` is ``put`` or ``delete``)."""
        with self.tracer.start_as_current_span(
            f"{bucket} {op}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "gaggle.kv.bucket": bucket,
                "gaggle.kv.key": key,
            },
        ) as span:
            yield span

    def flush(self) -> None:
        """Send what is buffered (called when the service stops)."""
        self.provider.force_flush(timeout_millis=FLUSH_TIMEOUT_MS)
        if self._owns_exporter:
            self.provider.shutdown()


def tracing_for(service: str, common: CommonSettings) -> Tracing | None:
    """The service's tracing, or None when it is off (no endpoint, no test exporter)."""
    if _exporter is not None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return Tracing(service, SimpleSpanProcessor(_exporter), owns_exporter=False)
    if not common.otel_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=traces_url(common.otel_endpoint), timeout=EXPORT_TIMEOUT_S)
    return Tracing(service, BatchSpanProcessor(exporter), owns_exporter=True)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, None outside a trace (or tracing off)."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    flags = int(span_context.trace_flags)
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"


@contextlib.contextmanager
def continued(traceparent: str | None) -> Iterator[None]:
    """Run the block as part of the trace ``traceparent`` names (nothing when None)."""
    if not traceparent:
        yield
        return
    token = otel_context.attach(_PROPAGATOR.extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        otel_context.detach(token)


def _route_namer(app: Any) -> Any:
    """``scope -> (span name, attributes)``: ``GET /api/v1/rollouts/{rollout_id}``, not the URL."""
    from gaggle_runtime.metrics import route_template

    def details(scope: Scope) -> tuple[str, dict[str, Any]]:
        method = scope.get("method", "HTTP")
        path = route_template(app, scope)
        if path is None:
            return method, {}
        return f"{method} {path}", {"http.route": path}

    return details


class _FollowParentTracer(trace.Tracer):
    """Starts a span with the tracer of the current span's service; nothing outside a trace."""

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: trace._Links = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        """A span of the parent's service, or the invalid span when there is no traced parent."""
        parent = trace.get_current_span(context)
        found = _SQL_TRACERS.get(id(getattr(parent, "resource", None)))
        if found is None:
            return trace.INVALID_SPAN
        return found[1].start_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception,
        )  # fmt: skip

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: trace._Links = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        """:meth:`start_span`, made current for the block."""
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception,
            set_status_on_exception,
        )  # fmt: skip
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class _FollowParentProvider(trace.TracerProvider):
    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> trace.Tracer:
        return _FollowParentTracer()


def _instrument_sql() -> None:
    """Instrument asyncpg once per process (it patches the class, for every pool)."""
    global _sql_instrumented
    with _sql_lock:
        if _sql_instrumented:
            return
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument(  # type: ignore[no-untyped-call]
            tracer_provider=_FollowParentProvider()
        )
        _sql_instrumented = True
