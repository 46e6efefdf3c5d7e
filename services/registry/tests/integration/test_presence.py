"""Sightings land in the presence table: newest first, never backwards, kept tidy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gaggle_contracts.events import DeviceSeen, Sighting
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.app import build_app
from gaggle_registry.settings import RegistrySettings

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)


def seen(cid: str, minutes: int, address: str | None) -> Sighting:
    return Sighting(controller_id=cid, seen_at=T0 + timedelta(minutes=minutes), address=address)


async def presence(pool: Any, tenant: str) -> dict[str, tuple[datetime | None, str | None]]:
    rows = await pool.fetch(
        "SELECT controller_id, last_seen_at, last_address FROM registry.device_presence"
        " WHERE tenant = $1",
        tenant,
    )
    return {r["controller_id"]: (r["last_seen_at"], r["last_address"]) for r in rows}


async def test_sightings_only_move_last_seen_forward(
    operator_auth: httpx.Auth, create_devices, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_app(common, RegistrySettings()))
    repo = registry.app.state.presence
    pool = registry.app.state.service.db.pool
    await create_devices(registry.url, tenant, ["a", "b", "c"])
    assert await presence(pool, tenant) == {"a": (None, None), "b": (None, None), "c": (None, None)}

    batch = [seen("a", 5, "10.0.0.1"), seen("a", 3, "10.0.0.9"), seen("b", 2, "10.0.0.2")]
    batch.append(seen("unknown", 1, "10.0.0.3"))  # not registered: ignored
    await repo.touch_many(DeviceSeen(tenant=tenant, sightings=batch))
    # Older than what is known, or without an address: last seen and address stay right.
    await repo.touch_many(
        DeviceSeen(tenant=tenant, sightings=[seen("a", 4, "10.9.9.9"), seen("b", 6, None)])
    )
    assert await presence(pool, tenant) == {
        "a": (T0 + timedelta(minutes=5), "10.0.0.1"),
        "b": (T0 + timedelta(minutes=6), "10.0.0.2"),
        "c": (None, None),
    }
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        page = await client.get(
            f"{registry.url}/api/v1/devices", params={"tenant": tenant, "sort": "-last_seen"}
        )
        device = await client.get(f"{registry.url}/api/v1/devices/a", params={"tenant": tenant})
    assert [d["controller_id"] for d in page.json()["items"]] == ["b", "a", "c"]
    assert device.json()["last_address"] == "10.0.0.1"
    assert device.json()["last_seen_at"] == f"{(T0 + timedelta(minutes=5)):%Y-%m-%dT%H:%M:%S}Z"

    # Deleting a device takes its presence along.
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.delete(f"{registry.url}/api/v1/devices/a", params={"tenant": tenant})
    assert set(await presence(pool, tenant)) == {"b", "c"}


async def test_presence_is_vacuumed_and_analyzed_once_sightings_rewrote_enough_of_it(
    common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_app(common, RegistrySettings()))
    repo = registry.app.state.presence
    pool = registry.app.state.service.db.pool
    await pool.execute(
        "INSERT INTO registry.devices (tenant, controller_id)"
        " SELECT $1, 'd' || i FROM generate_series(1, 50) AS i",
        tenant,
    )
    await pool.execute("ANALYZE registry.device_presence")
    sightings = [seen(f"d{i}", i, None) for i in range(1, 51)]
    await repo.touch_many(DeviceSeen(tenant=tenant, sightings=sightings[:5]))
    assert not await repo.tidy_presence(share=0.2, minimum=1)  # 5 of 50 rows: not yet
    await repo.touch_many(DeviceSeen(tenant=tenant, sightings=sightings[5:]))
    assert await repo.tidy_presence(share=0.2, minimum=1)
    assert repo.touched_since_tidy == 0
    assert not await repo.tidy_presence(share=0.2, minimum=1)  # nothing new since
