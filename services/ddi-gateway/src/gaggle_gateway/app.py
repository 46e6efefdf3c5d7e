"""Gateway wiring: mirror, reporter, routes; no database."""

from __future__ import annotations

import gc
from functools import partial

from fastapi import FastAPI
from nats.js.client import JetStreamContext

from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.core import Gateway, make_publisher
from gaggle_gateway.errors import install_handlers
from gaggle_gateway.fastlane import PollFastLane
from gaggle_gateway.mirror import Mirror
from gaggle_gateway.reporting import DeviceReporter
from gaggle_gateway.routes import router
from gaggle_gateway.settings import GatewaySettings
from gaggle_gateway.upgrade import router as upgrade_router
from gaggle_runtime.logs import configure_logging
from gaggle_runtime.service import Service
from gaggle_storage import CachedStore, ObjectStore, StorageSettings, open_store

SERVICE = "gateway"


def cached_store(store: ObjectStore, settings: GatewaySettings) -> ObjectStore:
    """``store`` behind the hot-artifact memory cache, unless it is switched off."""
    if settings.artifact_cache_mib <= 0:
        return store
    return CachedStore(
        store,
        max_bytes=settings.artifact_cache_mib << 20,
        max_object=settings.artifact_cache_object_mib << 20,
    )


def build_app(
    common: CommonSettings, settings: GatewaySettings, storage: StorageSettings | None = None
) -> FastAPI:
    """The DDI gateway: stateless, answers devices from the KV mirror, reports to JetStream."""
    storage = storage or StorageSettings()
    service = Service(SERVICE, common)
    mirror = Mirror(service.auth.keys)
    reporter = DeviceReporter(
        service.broker,
        rediscover_after_s=settings.rediscover_after_s,
        flush_s=settings.seen_flush_s,
    )
    gateway = Gateway(
        settings,
        mirror,
        reporter,
        cached_store(open_store(storage), settings),
        storage,
        make_publisher(service.broker, settings.publish_timeout_s),
    )

    def jetstream() -> JetStreamContext:
        return service.broker.connection.jetstream()

    for bucket in mirror.buckets:
        service.background(partial(bucket.watch, jetstream))
    service.background(reporter.run)
    service.background(gateway.forget)

    async def wait_for_mirror() -> None:
        await mirror.wait_loaded(timeout=30)
        # The mirror is long-lived: keep its objects out of every later full collection,
        # whose pauses would otherwise grow with the fleet and show up in poll latency.
        gc.collect()
        gc.freeze()

    service.on_start.append(wait_for_mirror)
    service.ready_checks["kv_mirror"] = lambda: mirror.current
    service.mirror_metrics.mirrors.extend(mirror.buckets)
    service.metrics.collector(gateway.polls)
    service.metrics.collector(gateway.replaced)
    service.metrics.collector(gateway.strain)
    app = service.app(
        title="Gaggle DDI gateway",
        description="Eclipse hawkBit DDI API for devices (SWUpdate, rauc-hawkbit-updater, ...).",
    )
    install_handlers(app)
    # The one wiring step of the routes: they take the gateway from the app's state.
    app.state.gateway = gateway
    app.include_router(router)
    app.include_router(upgrade_router)  # attended upgrade checks (upgrade.py)
    # Metrics and tracing sit behind the fast lane: a base poll pays for neither. With tracing
    # on, feedback goes through them: its HTTP span starts the feedback's trace.
    service.instrument(app)
    app.add_middleware(PollFastLane, gateway=gateway, feedback=service.tracing is None)
    app.state.service = service
    return app


def create_app() -> FastAPI:
    """App factory for multi-worker serving: settings from the environment, logging set up."""
    common = CommonSettings()
    configure_logging(SERVICE, common.log_level, json_lines=common.log_json)
    return build_app(common, GatewaySettings())
