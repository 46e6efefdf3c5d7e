"""Update states from action events, written in batches: in order per device, never backwards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaggle_contracts.events import DeviceConfigReported
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.app import build_app
from gaggle_registry.repository import StateChange
from gaggle_registry.settings import RegistrySettings

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(microsecond=0)


async def test_a_batch_of_state_changes_applies_in_order_per_device(
    create_devices, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_app(common, RegistrySettings()))
    repo = registry.app.state.repo
    pool = registry.app.state.service.db.pool
    await create_devices(registry.url, tenant, ["s1", "s2", "s3"])

    queued: list[Any] = []
    queue_many = repo.outbox.many

    async def spy(conn: Any, events: Any = (), **rest: Any) -> None:
        queued.extend(events)
        await queue_many(conn, events, **rest)

    repo.outbox.many = spy

    def change(cid: str, state: str, minute: int, installed: str | None = None) -> StateChange:
        return StateChange(tenant, cid, state, T0 + timedelta(minutes=minute), "7", installed)

    results = await repo.set_state_many(
        [
            change("s1", "pending", 1),
            change("s1", "downloading", 2),
            change("s2", "installing", 5),
            change("s1", "success", 3, installed="2.0.0"),
            change("s2", "pending", 4),  # older than what s2 has by then: ignored
            change("nobody", "pending", 1),  # no such device
            change("s1", "pending", 6),  # the next action, after the installed one
        ]
    )
    assert [r.update_state if r else None for r in results] == [
        "pending",
        "downloading",
        "installing",
        "success",
        None,
        None,
        "pending",
    ]
    rows = await pool.fetch(
        "SELECT controller_id, update_state, installed_version FROM registry.devices"
        " WHERE tenant = $1 ORDER BY controller_id",
        tenant,
    )
    assert [tuple(r) for r in rows] == [
        ("s1", "pending", "2.0.0"),
        ("s2", "installing", None),
        ("s3", "unknown", None),
    ]
    # The installation is announced once, with the version, for rollouts' inventory.
    assert [(e.controller_id, e.change, e.sw_version) for e in queued] == [
        ("s1", "installed", "2.0.0")
    ]


async def test_a_config_report_writes_the_kv_entry_only_when_it_changes(
    common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_app(common, RegistrySettings()))
    repo = registry.app.state.repo
    puts: list[list[str]] = []
    events: list[list[tuple[str, str]]] = []
    queue_many = repo.outbox.many

    async def spy(conn: Any, **queued: Any) -> None:
        puts.append([key for _, key, _ in queued.get("kv_puts", ())])
        events.append([(e.controller_id, e.change) for e in queued.get("events", ())])
        await queue_many(conn, **queued)

    repo.outbox.many = spy

    def report(cid: str, minute: int, **data: str) -> DeviceConfigReported:
        return DeviceConfigReported(
            tenant=tenant,
            controller_id=cid,
            occurred_at=T0 + timedelta(minutes=minute),
            data=data,
        )

    await repo.apply_config_many([report("c1", 1, hw_boardname="b", sw_version="1.0")])
    await repo.apply_config_many(
        [
            report("c1", 2, hw_boardname="b", sw_version="2.0"),  # the same names: KV as it was
            report("c2", 2, hw_boardname="b"),  # registers c2: its entry is new
        ]
    )
    await repo.apply_config_many([report("c1", 3, extra="x")])  # a new name: a new entry
    key = f"{tenant}.c1"
    assert puts == [[key], [f"{tenant}.c2"], [key]]
    # device.updated goes out for every report all the same (rollouts decides from it).
    assert events == [
        [("c1", "registered")],
        [("c1", "attributes"), ("c2", "registered")],
        [("c1", "attributes")],
    ]
    device = await repo.get(tenant, "c1")
    assert device is not None
    assert device.sw_version == "2.0"
    assert device.attributes == {"hw_boardname": "b", "sw_version": "2.0", "extra": "x"}
