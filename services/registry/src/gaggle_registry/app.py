"""Registry wiring: the only place that builds and connects the parts."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from nats.js.errors import NoKeysError

from gaggle_contracts import names
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.handlers import SERVICE, make_router
from gaggle_registry.repository import Repo
from gaggle_registry.routes import make_routes
from gaggle_registry.settings import RegistrySettings
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Service

log = logging.getLogger(__name__)

SCHEMA = "registry"


def build_app(common: CommonSettings, settings: RegistrySettings) -> FastAPI:
    """The registry: FastAPI operator API plus device-event subscribers in one process."""
    service = Service(
        SERVICE,
        common,
        schema=SCHEMA,
        migrations_package="gaggle_registry.migrations",
    )
    repo = Repo(service.db, Outbox(SCHEMA))

    async def rebuild_kv() -> None:
        kv = await service.broker.connection.jetstream().key_value(names.BUCKET_DEVICES)
        try:
            existing = set(await kv.keys())
        except NoKeysError:
            existing = set()
        count, stale = await repo.rebuild_kv(existing)
        log.info("devices KV rebuild queued devices=%d stale=%d", count, stale)

    service.on_start.append(rebuild_kv)
    service.broker.include_router(make_router(repo, common))
    app = service.app(
        title="Gaggle registry",
        description="The device inventory: who each device is, what it reports, how it updates.",
    )
    app.include_router(make_routes(repo, lambda: service.broker.connection))
    app.state.service = service
    return app
