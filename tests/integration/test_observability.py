"""Tracing, metrics and event documentation, against the real services.

* One trace links a device's feedback POST at the gateway, the rollouts consumer handling that
  ``action.feedback`` event (and its SQL), the outbox relay's ``deployments`` KV write and the
  registry consuming the ``action.finished`` the relay published later.
* Every service answers ``/metrics`` with the ``gaggle_*`` names, and the values move.
* Each service's AsyncAPI document lists what it subscribes to and publishes, the contracts agree
  with the brokers, and the committed ``docs/`` are what ``make docs`` writes today.
"""

from __future__ import annotations

import filecmp
import importlib.util
import os
import sys
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.events import EVENT_TYPES
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.mirror import Mirror
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker
from gaggle_storage import LocalStore, StorageSettings
from gaggle_testing import eventually, feedback
from tests.integration.support import Stack, sample, value

ROOT = Path(__file__).resolve().parents[2]
FEEDBACK_ROUTE = "/{tenant}/controller/v1/{controller_id}/deploymentBase/{action_id}/feedback"
POLL_ROUTE = "/{tenant}/controller/v1/{controller_id}"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gaggle_docs_generate", ROOT / "docs/generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --- tracing ---------------------------------------------------------------------------------


def _service(span: ReadableSpan) -> str:
    return str(span.resource.attributes.get("service.name"))


@pytest.mark.integration
async def test_one_trace_links_a_feedback_post_to_the_rollouts_handling_of_it(
    spans: InMemorySpanExporter,
    common: CommonSettings,
    serve: Any,
    tenant: str,
    tmp_path: Path,
    operator_auth: httpx.Auth,
) -> None:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    await serve(build_registry(common, RegistrySettings()))
    await serve(build_artifacts(common, ArtifactsSettings(), storage))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(), storage))
    assert gateway.app.state.service.tracing is not None
    stack = Stack(gateway, rollouts, tenant, LocalStore(storage.dir))
    sid = await stack.software(common, os.urandom(1000))
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(stack.dev("d1"))
        r = await client.put(
            f"{stack.dev('d1')}/configData", json={"mode": None, "data": {"hw_boardname": "board"}}
        )
        assert r.status_code == 200
        action = await stack.assign(client, "d1", sid)
        await stack.wait_poll(client, "d1", lambda links: "deploymentBase" in links)
        url = f"{stack.dev('d1')}/deploymentBase/{action['id']}/feedback"
        r = await client.post(url, json=feedback("closed", "success"))
        assert r.status_code == 200, r.text
        await stack.wait_action(client, action["id"], "finished")

    def finished() -> list[ReadableSpan]:
        return list(spans.get_finished_spans())

    posts = [
        s
        for s in finished()
        if _service(s) == "gaggle-gateway"
        and s.kind is SpanKind.SERVER
        and s.name == f"POST {FEEDBACK_ROUTE}"
    ]
    assert len(posts) == 1, [s.name for s in finished() if _service(s) == "gaggle-gateway"]
    trace_id = posts[0].context.trace_id

    async def in_trace() -> list[ReadableSpan]:
        return [s for s in finished() if s.context.trace_id == trace_id]

    def named(found: list[ReadableSpan], service: str, name: str) -> list[ReadableSpan]:
        return [s for s in found if _service(s) == f"gaggle-{service}" and s.name == name]

    # The rollouts consumer handled that very event in the span of its pull: a trace of its own,
    # linked to the gateway request's trace (a pull applies many devices' feedback at once).
    handled = f"ota.v1.{tenant}.action.feedback process"

    async def pull_span() -> ReadableSpan | None:
        for created in finished():
            if (
                _service(created) == "gaggle-rollouts"
                and created.name.endswith(" create")
                and any(link.context.trace_id == trace_id for link in created.links)
            ):
                pull = created.context.trace_id
                return next(
                    (s for s in finished() if s.context.trace_id == pull and s.name == handled),
                    None,
                )
        return None

    consumer = await eventually(pull_span, timeout=10)
    assert consumer.kind is SpanKind.CONSUMER
    pull_trace = consumer.context.trace_id

    async def in_pull_trace() -> list[ReadableSpan]:
        return [s for s in finished() if s.context.trace_id == pull_trace]

    # ... with its SQL as children of that handling.
    trace = await in_pull_trace()
    sql = [s for s in trace if _service(s) == "gaggle-rollouts" and s.kind is SpanKind.CLIENT]
    assert sql, "no SQL spans under the rollouts consumer"
    assert any(s.parent is not None and s.parent.span_id == consumer.context.span_id for s in sql)

    # The outbox relay, later, sent the KV write and the action.finished event in the pull's
    # trace, and the registry consumed that event there too.
    finished_kind = f"ota.v1.{tenant}.action.finished process"
    trace = await eventually(
        lambda: _when(
            in_pull_trace(),
            lambda t: (
                named(t, "registry", finished_kind)
                and [s for s in t if s.name in ("deployments put", "deployments delete")]
            ),
        ),
        timeout=10,
    )
    kv = [s for s in trace if s.name in ("deployments put", "deployments delete")]
    assert all(_service(s) == "gaggle-rollouts" and s.kind is SpanKind.PRODUCER for s in kv)

    # The base poll is answered in front of the tracing middleware: no span for it.
    assert not [s for s in finished() if s.name == f"GET {POLL_ROUTE}"]


async def _when(
    found: Awaitable[list[ReadableSpan]], ok: Callable[[list[ReadableSpan]], Any]
) -> Any:
    spans = await found
    return spans if ok(spans) else None


# --- metrics ---------------------------------------------------------------------------------

COMMON_METRICS = (
    "gaggle_events_published",
    "gaggle_events_consumed",
    "gaggle_events_redelivered",
    "gaggle_consumer_lag",
    "gaggle_http_request_duration_seconds",
    "gaggle_kv_mirror_entries",
    "gaggle_kv_mirror_age_seconds",
    "gaggle_dead_letters",
)
SERVICE_METRICS = {
    "gateway": ("gaggle_ddi_polls",),
    "registry": (),
    "artifacts": (),
    "rollouts": ("gaggle_actions_finished", "gaggle_rollouts", "gaggle_rollout_devices"),
}


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.mark.integration
async def test_every_service_serves_its_metrics_and_they_move(
    common: CommonSettings,
    serve: Any,
    tenant: str,
    tmp_path: Path,
    operator_auth: httpx.Auth,
    operator_key: str,
) -> None:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    running = {
        "registry": await serve(build_registry(common, RegistrySettings())),
        "rollouts": await serve(build_rollouts(common, RolloutsSettings())),
        "artifacts": await serve(build_artifacts(common, ArtifactsSettings(), storage)),
        "gateway": await serve(build_gateway(common, GatewaySettings(), storage)),
    }
    # Tracing is off by default: no tracer, no tracing middleware anywhere.
    for server in running.values():
        assert server.app.state.service.tracing is None
        assert "OpenTelemetryMiddleware" not in {m.cls.__name__ for m in server.app.user_middleware}

    # A new connection per request: a kept-alive one that a server closes after its idle time,
    # while this test waits for something else, can be cut just as the next scrape goes out.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10, limits=fresh) as client:

        async def scrape(service: str) -> str:
            r = await client.get(f"{running[service].url}/metrics")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"].startswith("text/plain")
            return r.text

        for service in running:
            text = await scrape(service)
            missing = {*COMMON_METRICS, *SERVICE_METRICS[service]} - families(text)
            assert not missing, (service, missing)

        gw = running["gateway"].url
        before = value(await scrape("gateway"), "gaggle_ddi_polls_total", outcome="idle")
        for _ in range(3):
            assert (await client.get(f"{gw}/{tenant}/controller/v1/m1")).status_code == 200
        assert (await client.get(f"{gw}/{tenant}/controller/v1/bad$id")).status_code == 400
        text = await scrape("gateway")
        assert value(text, "gaggle_ddi_polls_total", outcome="idle") == before + 3
        assert value(text, "gaggle_ddi_polls_total", outcome="bad_request") >= 1

        async def discovered() -> bool:
            gw_text, reg_text = await scrape("gateway"), await scrape("registry")
            return (
                value(gw_text, "gaggle_events_published_total", kind="device.discovered") >= 1
                and value(
                    reg_text, "gaggle_events_consumed_total", kind="device.discovered", result="ok"
                )
                >= 1
                and value(gw_text, "gaggle_kv_mirror_entries", bucket=names.BUCKET_DEVICES) >= 1
            )

        await eventually(discovered, timeout=15)
        text = await scrape("gateway")
        assert value(text, "gaggle_kv_mirror_age_seconds", bucket=names.BUCKET_DEVICES) < 60

        # An event that cannot be valid is parked as a dead letter and counted as such.
        broker = make_broker(common.nats_url, "test")
        await broker.connect()
        try:
            await broker.publish(
                b'{"not": "an event"}',
                names.subject(tenant, "device.discovered"),
                stream=names.STREAM,
            )
        finally:
            await broker.stop()

        async def parked() -> bool:
            text = await scrape("registry")
            return (
                value(
                    text,
                    "gaggle_events_consumed_total",
                    kind="device.discovered",
                    result="dead_letter",
                )
                >= 1
                and value(text, "gaggle_dead_letters", service="registry", kind="device.discovered")
                >= 1
            )

        await eventually(parked, timeout=15)

        # Operator requests are timed by route template, fast lane included.
        r = await client.get(f"{running['registry'].url}/api/v1/devices")
        assert r.status_code == 200
        text = await scrape("registry")
        count = "gaggle_http_request_duration_seconds_count"
        assert value(text, count, method="GET", route="/api/v1/devices", status="200") >= 1
        # The registry's durable for device.seen is sampled, and has taken every event by now.
        seen_durable = names.durable("registry", "device.seen")

        async def caught_up() -> bool:
            lag = sample(await scrape("registry"), "gaggle_consumer_lag", consumer=seen_durable)
            assert lag is not None, f"no gaggle_consumer_lag sample for {seen_durable}"
            return lag == 0

        await eventually(caught_up, timeout=15)

        text = await scrape("rollouts")
        assert "gaggle_rollouts{state=" in text
        assert value(text, "gaggle_rollouts", state="running") == 0

        # The AsyncAPI document each service serves lists what it subscribes to.
        for service, server in running.items():
            r = await client.get(f"{server.url}/asyncapi.json")
            assert r.status_code == 200
            addresses = {c["address"] for c in r.json()["channels"].values()}
            for cls in EVENT_TYPES:
                if service in cls.consumers:
                    assert names.subscription(cls.kind) in addresses, (service, cls.kind)
        page = await client.get(f"{running['rollouts'].url}/asyncapi")
        assert page.status_code == 200 and "asyncapi" in page.text.lower()

    # GAGGLE_OPEN_METRICS=false: a token is needed, on the gateway too (it has no operator gate).
    closed = common.model_copy(update={"open_metrics": False})
    gateway = await serve(build_gateway(closed, GatewaySettings(), storage))
    registry = await serve(build_registry(closed, RegistrySettings()))
    async with httpx.AsyncClient(timeout=10) as client:
        for server in (gateway, registry):
            assert (await client.get(f"{server.url}/metrics")).status_code == 401
            r = await client.get(
                f"{server.url}/metrics", headers={"Authorization": f"Bearer {operator_key}"}
            )
            assert r.status_code == 200 and "gaggle_events_published" in r.text


# --- event documentation ---------------------------------------------------------------------


def test_asyncapi_of_each_service_lists_its_subscriptions_and_publications(
    tmp_path: Path,
) -> None:
    generator = _load_generator()
    apps = generator.build_apps(tmp_path)
    for service, app in apps.items():
        svc = app.state.service
        consumed = {cls.kind for cls in EVENT_TYPES if service in cls.consumers}
        published = {cls.kind for cls in EVENT_TYPES if service in cls.publishers}
        # The contracts say what the broker really subscribes to.
        assert svc.durables() == sorted(names.durable(service, k) for k in consumed), service
        doc = svc.asyncapi()
        assert doc["asyncapi"].startswith("3.")
        receive, send = set(), set()
        for operation in doc["operations"].values():
            ref = operation["channel"]["$ref"].removeprefix("#/channels/")
            channel = doc["channels"][ref.replace("%2A", "*")]
            (receive if operation["action"] == "receive" else send).add(channel["address"])
        assert receive == {names.subscription(k) for k in consumed}, service
        assert send == {names.subject("{tenant}", k) for k in published}, service
        schemas = doc["components"]["schemas"]
        for cls in EVENT_TYPES:
            if cls.kind in consumed | published:
                assert cls.__name__ in schemas, (service, cls.__name__)


def test_each_service_openapi_has_unique_operation_ids_without_a_warning(tmp_path: Path) -> None:
    generator = _load_generator()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apps = generator.build_apps(tmp_path)
        documents = {service: app.openapi() for service, app in apps.items()}
    assert [str(w.message) for w in caught if "Operation ID" in str(w.message)] == []
    for service, document in documents.items():
        ids = [
            operation["operationId"]
            for item in document["paths"].values()
            for operation in item.values()
        ]
        assert len(ids) == len(set(ids)), service
    # The downloads answer GET and HEAD, as two operations.
    download = "/api/v1/software/{software_id}/download"
    assert set(documents["artifacts"]["paths"][download]) == {"get", "head"}


def test_docs_are_what_make_docs_writes(tmp_path: Path) -> None:
    generator = _load_generator()
    generator.generate(tmp_path)
    committed = ROOT / "docs"
    stale = []
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            target = committed / path.relative_to(tmp_path)
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                stale.append(str(path.relative_to(tmp_path)))
    assert not stale, f"docs/ is out of date, run `make docs`: {stale}"
    # The bucket table covers every bucket, and the gateway follows what it says it does.
    assert {b.name for b in generator.BUCKETS} == set(names.BUCKETS)
    gateway_reads = {b.name for b in generator.BUCKETS if "gateway" in b.readers}
    mirrored = {m.bucket for m in Mirror().buckets} | {names.BUCKET_API_KEYS}
    assert gateway_reads == mirrored
