"""At start the registry compares the devices KV with its table and writes only what differs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js.kv import KeyValue

from gaggle_contracts import names
from gaggle_contracts.kv import DeviceEntry
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_runtime.jetstream import ensure_all
from gaggle_runtime.outbox import Outbox
from gaggle_testing import eventually

pytestmark = pytest.mark.integration


async def outbox_empty(registry: Any) -> None:
    """Wait until the registry's relay has sent every queued event and KV write."""
    pool = registry.app.state.service.db.pool

    async def empty() -> bool:
        return await pool.fetchval("SELECT count(*) FROM registry.outbox") == 0

    await eventually(empty)


async def tenant_writes(
    kv: KeyValue,
    tenant: str,
    start: Callable[[], Awaitable[None]],
    expected: int = 0,
    settle: float = 1.0,
) -> list[tuple[str, bytes | None]]:
    """(key, value or None for a delete) of every write to ``tenant``'s keys while ``start`` runs.

    Writes are told from what the bucket held before by their revision (stream sequence), not by
    nats-py's end-of-initial-values marker, which can arrive before the values.
    """
    before = (await kv.status()).stream_info.state.last_seq
    watcher = await kv.watch(f"{tenant}.>")
    await start()
    writes: list[tuple[str, bytes | None]] = []
    while True:
        try:
            entry = await watcher.updates(timeout=10 if len(writes) < expected else settle)
        except nats.errors.TimeoutError:
            break
        if entry is None or (entry.revision or 0) <= before:
            continue
        writes.append((entry.key, None if entry.operation else entry.value))
    await watcher.stop()
    return writes


async def test_a_restart_writes_only_what_the_devices_kv_lacks(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    nc = await nats.connect(common.nats_url)
    try:
        await ensure_all(nc.jetstream(), common)
        kv = await nc.jetstream().key_value(names.BUCKET_DEVICES)
        registry = await serve(build_registry(common, RegistrySettings()))
        ids = ["kv-a", "kv-b", "kv-c", "kv-d"]
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
            for cid in ids:
                created = await client.post(
                    f"{registry.url}/api/v1/devices",
                    params={"tenant": tenant},
                    json={"controller_id": cid},
                )
                assert created.status_code == 201, created.text
        keys = {cid: names.kv_key(tenant, cid) for cid in ids}
        await outbox_empty(registry)
        held = {cid: (await kv.get(key)).value for cid, key in keys.items()}
        assert all(b'"token_hash":"' in value for value in held.values() if value)
        await registry.stop()

        # Nothing changed: the second start writes nothing at all.
        async def restart() -> None:
            nonlocal registry
            registry = await serve(build_registry(common, RegistrySettings()))
            await outbox_empty(registry)

        assert await tenant_writes(kv, tenant, restart) == []
        await registry.stop()

        # A changed value, a lost key and a key without a device: exactly those are fixed.
        await kv.put(keys["kv-a"], b'{"token_hash":null,"config_requested":false}')
        await kv.delete(keys["kv-b"])
        ghost = names.kv_key(tenant, "kv-ghost")
        await kv.put(ghost, b'{"token_hash":null,"config_requested":true}')
        untouched = {cid: (await kv.get(keys[cid])).revision for cid in ("kv-c", "kv-d")}

        writes = await tenant_writes(kv, tenant, restart, expected=3)
        assert sorted(writes, key=lambda w: w[0]) == sorted(
            [(keys["kv-a"], held["kv-a"]), (keys["kv-b"], held["kv-b"]), (ghost, None)],
            key=lambda w: w[0],
        )
        assert {cid: (await kv.get(keys[cid])).revision for cid in ("kv-c", "kv-d")} == untouched
        assert (await kv.get(keys["kv-a"])).value == held["kv-a"]
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(ghost)
    finally:
        await nc.close()


async def test_a_kv_write_still_in_the_outbox_counts_as_written(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        created = await client.post(
            f"{registry.url}/api/v1/devices",
            params={"tenant": tenant},
            json={"controller_id": "queued"},
        )
        assert created.status_code == 201, created.text
    await outbox_empty(registry)
    await registry.stop()
    # A token rotation committed, and the registry stopped before relaying its KV put.
    key = names.kv_key(tenant, "queued")
    entry = DeviceEntry(token_hash="ab" * 32, config_requested=True)
    conn = await asyncpg.connect(common.database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE registry.devices SET token_hash = $3"
                " WHERE tenant = $1 AND controller_id = $2",
                tenant,
                "queued",
                entry.token_hash,
            )
            await Outbox("registry").kv_put(conn, names.BUCKET_DEVICES, key, entry)
    finally:
        await conn.close()

    nc = await nats.connect(common.nats_url)
    try:
        kv = await nc.jetstream().key_value(names.BUCKET_DEVICES)

        async def restart() -> None:
            await outbox_empty(await serve(build_registry(common, RegistrySettings())))

        # The relay sends the queued put; the comparison adds no second one.
        assert await tenant_writes(kv, tenant, restart) == [(key, entry.model_dump_json().encode())]
    finally:
        await nc.close()
