"""Prometheus metrics: one registry per service, served as text at ``/metrics``.

Always on, and cheap where it counts: events are counted in a FastStream middleware, operator
requests in an ASGI middleware (route templates as labels, never raw paths), and whatever is read
from elsewhere (consumer lag from JetStream, gauges from the database) is sampled when
``/metrics`` is scraped, at most every ``SAMPLE_EVERY_S`` seconds. Names start with ``gaggle_``.

Several processes behind one port (the gateway's workers) share their counters through
prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before the process
imports prometheus_client, every counter and histogram lives in a memory-mapped file of that
folder, and a scrape of any process sums the files of all of them. Collectors that count in plain
integers (the gateway's poll counts: nothing but ``+= 1`` on the request path) are folded into such
counters every ``FOLD_EVERY_S`` seconds and before each scrape; their gauges, and the other
collectors' gauges, are those of the process that answers the scrape.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, NackMessage, RejectMessage
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gaggle_runtime.failures import Parked, Skipped
from gaggle_runtime.mirror import BucketMirror

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SAMPLE_EVERY_S = 5.0
SAMPLE_TIMEOUT_S = 3.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

FOLD_EVERY_S = 1.0
"""How often a process of a multiprocess group writes its plain-integer counts to the shared
files: a scrape answered by another process sees them at most this late."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

Sampler = Callable[[], Awaitable[None]]


def kind_of(subject: str) -> str:
    """The event kind (``entity.event``) of an ``ota.v1.<tenant>.<entity>.<event>`` subject."""
    parts = subject.split(".")
    return ".".join(parts[3:]) if len(parts) >= 5 else subject


class Metrics:
    """A service's metrics: counters fed as things happen, samplers run when scraped."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        """Counters shared with the other processes of ``PROMETHEUS_MULTIPROC_DIR``."""
        self._collectors: list[Collector] = []
        self._folded: dict[tuple[str, tuple[str, ...]], float] = {}
        self._shared: dict[str, Counter] = {}
        self.events_published = Counter(
            "gaggle_events_published",
            "Events published to JetStream (acknowledged), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.events_consumed = Counter(
            "gaggle_events_consumed",
            "Events handled by this service's consumers, by kind and result (ok: acked; retry: "
            "failed, to be redelivered after a delay; dead_letter: parked as a dead letter and "
            "acked; skipped: a replay for another consumer; rejected: dropped, nothing could "
            "keep it; error: failed otherwise).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.events_redelivered = Counter(
            "gaggle_events_redelivered",
            "Events delivered to this service's consumers again (an earlier delivery failed).",
            ["kind"],
            registry=self.registry,
        )
        self.dead_letters = Gauge(
            "gaggle_dead_letters",
            "Dead letters waiting for an operator (not replayed since parked): events a consumer "
            "could not process, by event kind, and outbox rows the bus refused (kind outbox).",
            ["service", "kind"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.consumer_lag = Gauge(
            "gaggle_consumer_lag",
            "Events in the stream not yet delivered to the durable consumer (num_pending).",
            ["consumer"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.http_duration = Histogram(
            "gaggle_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._samplers: list[Sampler] = []
        self._sampled_at = -SAMPLE_EVERY_S
        self._sample_lock = asyncio.Lock()

    def sampler(self, sample: Sampler) -> None:
        """Run ``sample`` (which sets gauges) before a scrape, at most every ``SAMPLE_EVERY_S``."""
        self._samplers.append(sample)

    def collector(self, collector: Collector) -> None:
        """Register a collector that reads its values when scraped."""
        self.registry.register(collector)
        self._collectors.append(collector)

    def fold(self) -> list[Metric]:
        """Multiprocess mode: add the collectors' new counts to the shared counters.

        Returns the collectors' other families (gauges): they stay this process's own.
        """
        own: list[Metric] = []
        for collector in self._collectors:
            for family in collector.collect():
                if family.type != "counter":
                    own.append(family)
                    continue
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    counter = self._shared_counter(family, tuple(sample.labels))
                    values = tuple(sample.labels.values())
                    child = counter.labels(*values) if values else counter
                    seen = self._folded.get((family.name, values), 0.0)
                    if sample.value > seen:
                        child.inc(sample.value - seen)
                        self._folded[family.name, values] = sample.value
        return own

    def _shared_counter(self, family: Metric, labels: tuple[str, ...]) -> Counter:
        counter = self._shared.get(family.name)
        if counter is None:
            # In no registry: the multiprocess collector reads it from the shared files.
            counter = Counter(family.name, family.documentation, labels, registry=None)
            self._shared[family.name] = counter
        return counter

    async def fold_forever(self) -> None:
        """Multiprocess mode: fold the collectors' counts every ``FOLD_EVERY_S`` seconds."""
        while True:
            await asyncio.sleep(FOLD_EVERY_S)
            try:
                self.fold()
            except Exception:
                log.warning("metrics fold failed service=%s", self.service, exc_info=True)

    async def sample(self) -> None:
        """Run the samplers unless they ran moments ago; a failing one keeps its last values."""
        async with self._sample_lock:
            now = time.monotonic()
            if now - self._sampled_at < SAMPLE_EVERY_S:
                return
            self._sampled_at = now
            for sample in self._samplers:
                try:
                    async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                        await sample()
                except Exception:
                    log.warning("metrics sample failed service=%s", self.service, exc_info=True)

    async def render(self) -> bytes:
        """The Prometheus text exposition, samples refreshed.

        In multiprocess mode: the counters and histograms of every process of the folder,
        summed, and this process's gauges.
        """
        await self.sample()
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_Families(self.fold()))
        return generate_latest(registry)


class _Families:
    """Families read already, as a collector."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class MirrorCollector:
    """``gaggle_kv_mirror_entries``, ``_age_seconds`` and ``_stale`` of followed buckets."""

    def __init__(self, mirrors: Sequence[BucketMirror[Any]]) -> None:
        self.mirrors = list(mirrors)

    def describe(self) -> Iterable[Metric]:
        """The families, for registration (values are read per scrape)."""
        return self._families(with_values=False)

    def collect(self) -> Iterable[Metric]:
        """Entries and seconds since the last change, per bucket."""
        return self._families(with_values=True)

    def _families(self, *, with_values: bool) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            "gaggle_kv_mirror_entries", "Keys held in memory from a KV bucket.", labels=["bucket"]
        )
        age = GaugeMetricFamily(
            "gaggle_kv_mirror_age_seconds",
            "Seconds since the in-memory copy of a KV bucket last changed (or was loaded).",
            labels=["bucket"],
        )
        stale = GaugeMetricFamily(
            "gaggle_kv_mirror_stale",
            "1 while the in-memory copy of a KV bucket may be behind (NATS away, reloading).",
            labels=["bucket"],
        )
        if with_values:
            now = time.time()
            for mirror in self.mirrors:
                entries.add_metric([mirror.bucket], len(mirror.values))
                stale.add_metric([mirror.bucket], 0 if mirror.current else 1)
                if mirror.updated_at is not None:
                    age.add_metric([mirror.bucket], max(0.0, now - mirror.updated_at))
        yield entries
        yield age
        yield stale


class EventMetrics(BaseMiddleware):
    """FastStream middleware counting events published and consumed (one instance per message).

    Bound to a service's :class:`Metrics` with :func:`event_metrics`.
    """

    metrics: Metrics

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        """Count the event by result; a delivery after the first also counts as redelivered.

        A batch's events are counted one by one as they are settled
        (:meth:`~gaggle_runtime.deadletters.ConsumerFailures.settle`).
        """
        raw = msg.raw_message
        if isinstance(raw, list):
            return await call_next(msg)
        self._redelivered(raw)
        kind = kind_of(getattr(raw, "subject", ""))
        metrics = self.metrics
        try:
            result = await call_next(msg)
        except RejectMessage:
            metrics.events_consumed.labels(kind, "rejected").inc()
            raise
        except NackMessage:
            metrics.events_consumed.labels(kind, "retry").inc()
            raise
        except Parked:
            metrics.events_consumed.labels(kind, "dead_letter").inc()
            raise
        except Skipped:
            metrics.events_consumed.labels(kind, "skipped").inc()
            raise
        except AckMessage:
            metrics.events_consumed.labels(kind, "ok").inc()
            raise
        except Exception:
            metrics.events_consumed.labels(kind, "error").inc()
            raise
        metrics.events_consumed.labels(kind, "ok").inc()
        return result

    def _redelivered(self, raw: Any) -> None:
        try:
            if raw.metadata.num_delivered > 1:
                self.metrics.events_redelivered.labels(kind_of(raw.subject)).inc()
        except Exception:  # not a JetStream message
            log.debug("no JetStream metadata subject=%s", getattr(raw, "subject", "?"))

    async def publish_scope(self, call_next: Any, cmd: Any) -> Any:
        """Count the event once JetStream has acknowledged it."""
        result = await call_next(cmd)
        self.metrics.events_published.labels(kind_of(cmd.destination)).inc()
        return result


def event_metrics(metrics: Metrics) -> type[EventMetrics]:
    """The :class:`EventMetrics` class bound to ``metrics`` (FastStream makes one per message)."""
    return type("ServiceEventMetrics", (EventMetrics,), {"metrics": metrics})


class RequestMetrics:
    """ASGI middleware observing ``gaggle_http_request_duration_seconds``.

    The route label is the route's template (``/api/v1/rollouts/{rollout_id}``), found by FastAPI
    or, for requests answered before routing (a fast lane, the operator gate), by matching the
    app's routes; requests matching none are ``unmatched``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes_of: Any) -> None:
        self.app = app
        self.histogram = metrics.http_duration
        self.routes_of = routes_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request from its start to its last body part."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self.histogram.labels(scope["method"], self._route(scope), str(status)).observe(
                time.perf_counter() - start
            )

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        return route_template(self.routes_of, scope) or "unmatched"


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # a router FastAPI includes lazily
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def route_template(app: Any, scope: Scope) -> str | None:
    """The path template of the route of ``app`` that ``scope`` matches, without routing it.

    For requests answered before FastAPI's routing (fast lanes, the operator gate).
    """
    for route in _leaf_routes(getattr(app, "routes", ())):
        path = getattr(route, "path", None)
        if isinstance(path, str) and route.matches(scope)[0] is Match.FULL:
            return path
    return None
