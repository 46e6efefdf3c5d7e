"""Registry wiring: the only place that builds and connects the parts."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from fastapi import FastAPI
from nats.js.kv import KeyValue
from pydantic import BaseModel

from gaggle_contracts import names
from gaggle_contracts.settings import CommonSettings
from gaggle_registry import access_routes, routes, tenants
from gaggle_registry.access import AccessStore
from gaggle_registry.access_routes import NewKey
from gaggle_registry.devices_kv import rebuild_kv as rebuild_devices_kv
from gaggle_registry.fastlane import ListFastLane
from gaggle_registry.handlers import SERVICE, Parts, build_router
from gaggle_registry.listing import DeviceListing
from gaggle_registry.lookups import make_responder
from gaggle_registry.presence import PresenceRepo
from gaggle_registry.repository import Repo
from gaggle_registry.routes import DevicePatch, NewDevice
from gaggle_registry.settings import RegistrySettings
from gaggle_registry.tenant_store import TenantSettings, TenantStore
from gaggle_registry.tenants import FirstKey
from gaggle_runtime.openapi import add_examples
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Service
from gaggle_runtime.state import put_parts

log = logging.getLogger(__name__)

SCHEMA = "registry"
TIDY_PRESENCE_EVERY_S = 5.0
EXAMPLES: dict[type[BaseModel], list[dict[str, Any]]] = {
    NewDevice: [{"controller_id": "dev-1", "name": "Pump 1", "tags": ["hall-a"]}],
    DevicePatch: [{"name": "Pump 1 (spare)", "tags": ["hall-b", "spare"]}],
    NewKey: [
        {"name": "ci", "role": "operator", "expires_in_days": 90},
        {"name": "dashboard", "permissions": ["device:read", "rollout:read"]},
    ],
    TenantSettings: [
        {"polling_sleep": "00:05:00", "polling_sleep_open_action": "00:00:30"},
        {"anonymous": False, "auto_register": False, "gateway_token": "a-long-shared-secret"},
    ],
    FirstKey: [{"name": "acme admin"}],
}


async def held_values(kv: KeyValue, timeout: float = 30.0) -> dict[str, bytes]:
    """Every key a KV bucket holds, with its value (deleted keys left out).

    The watch is read up to the last value the server counts as pending for it (``delta`` 0), or
    the bucket's last message as of the call, not up to nats-py's end-of-initial-values marker:
    that marker can arrive before the values (when the server answers the watcher's consumer info
    before the values it already sent have been read), and a read that stopped there would miss
    keys.
    """
    state = (await kv.status()).stream_info.state
    last = state.last_seq
    held: dict[str, bytes] = {}
    if not state.messages:
        return held
    watcher = await kv.watchall()
    try:
        while True:
            entry = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]
            if entry is None:  # the marker: not trusted, see above
                continue
            if entry.operation is None:
                held[entry.key] = entry.value or b""
            else:  # a delete or purge marker
                held.pop(entry.key, None)
            if entry.delta == 0 or (entry.revision or 0) >= last:
                return held
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated


def build_app(common: CommonSettings, settings: RegistrySettings) -> FastAPI:
    """The registry: FastAPI operator API plus device-event subscribers in one process."""
    service = Service(
        SERVICE,
        common,
        schema=SCHEMA,
        migrations_package="gaggle_registry.migrations",
    )
    repo = Repo(service.db, Outbox(SCHEMA))
    presence = PresenceRepo(service.db)
    listing = DeviceListing(service.db)
    access = AccessStore(service.db, Outbox(SCHEMA))
    tenant_store = TenantStore(service.db, Outbox(SCHEMA))

    async def rebuild_kv() -> None:
        kv = await service.broker.connection.jetstream().key_value(names.BUCKET_DEVICES)
        held = await held_values(kv)
        puts, deletes = await rebuild_devices_kv(service.db, Outbox(SCHEMA), held)
        log.info("devices KV checked held=%d puts=%d deletes=%d", len(held), puts, deletes)

    async def prepare_access() -> None:
        if settings.bootstrap_key:
            key_id, sha256 = settings.bootstrap_key.split(":")
            if await access.ensure_bootstrap(settings.bootstrap_tenant.lower(), key_id, sha256):
                log.info("bootstrap admin key created id=%s", key_id)
        kv = await service.broker.connection.jetstream().key_value(names.BUCKET_API_KEYS)
        puts, deletes = await access.rebuild_kv(await held_values(kv))
        log.info("api_keys KV checked puts=%d deletes=%d", puts, deletes)

    async def freeze_heap() -> None:
        # What exists now lives as long as the process: keep it out of every later full
        # collection, whose pauses would otherwise show up in the listing's latency.
        gc.collect()
        gc.freeze()

    async def tidy_presence() -> None:
        while True:
            await asyncio.sleep(TIDY_PRESENCE_EVERY_S)
            try:
                await presence.tidy_presence()
            except Exception:
                log.warning("VACUUM of device presence failed; retrying later", exc_info=True)

    responder = make_responder(repo, service.tracing)

    async def answer() -> None:
        await responder.start(service.broker.connection)

    service.on_start += [prepare_access, rebuild_kv, answer, freeze_heap]
    service.on_stop.append(responder.stop)
    service.background(tidy_presence)
    service.broker.include_router(build_router(common, Parts.of(repo, presence, access)))
    app = service.app(
        title="Gaggle registry",
        description="The device inventory: who each device is, what it reports, how it updates.",
    )
    for router in (routes.api, access_routes.api, tenants.api):
        app.include_router(router)
    app.add_middleware(ListFastLane, listing=listing)
    service.secure(app)
    add_examples(app, EXAMPLES)
    put_parts(
        app,
        service=service,
        repo=repo,
        presence=presence,
        listing=listing,
        access=access,
        tenants=tenant_store,
        bootstrap_tenant=settings.bootstrap_tenant.lower(),
    )
    return app
