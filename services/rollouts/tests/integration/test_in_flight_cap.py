"""The tenant's cap on updates in flight: a started wave opens what the cap allows, queues the rest.

The cap comes from KV ``tenants`` (as registry writes it); devices report through NATS as the
gateway would publish their feedback; the database is checked directly for what matters most:
no device ever gets two actions, and the tenant never has more open actions than its cap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import nats
import orjson
import pytest
from nats.aio.msg import Msg

from gaggle_contracts import names
from gaggle_contracts.events import ActionFeedback, DeviceUpdated, FeedbackStatus, Finished
from gaggle_contracts.kv import TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.app import build_app
from gaggle_rollouts.policies import Policy
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_testing import eventually, publish_software

pytestmark = pytest.mark.integration

IN_FLIGHT = "SELECT count(*) FROM rollouts.actions WHERE tenant = $1 AND active"
ACTIONS_PER_DEVICE = """
SELECT controller_id, count(*) AS n FROM rollouts.actions
WHERE tenant = $1 GROUP BY controller_id"""


def inventory(tenant: str, cid: str) -> DeviceUpdated:
    return DeviceUpdated(
        tenant=tenant,
        controller_id=cid,
        change="registered",
        hw_model="board",
        hw_revision="1",
        sw_version="1.0.0",
    )


async def set_cap(common: CommonSettings, tenant: str, cap: int) -> None:
    """Put the tenant's settings in KV ``tenants``, as registry does when an operator sets them."""
    nc = await nats.connect(common.nats_url)
    try:
        kv = await nc.jetstream().key_value(names.BUCKET_TENANTS)
        await kv.put(tenant, TenantConfig(max_updates_in_flight=cap).model_dump_json().encode())
    finally:
        await nc.close()


class Rollouts:
    """The rollouts API as an operator uses it, and the devices' side through NATS."""

    def __init__(self, url: str, tenant: str, client: httpx.AsyncClient, broker: Any) -> None:
        self.url = f"{url}/api/v1/rollouts"
        self.tenant = tenant
        self.client = client
        self.broker = broker

    async def create(self, body: dict[str, Any]) -> str:
        async def created() -> str:
            r = await self.client.post(self.url, params={"tenant": self.tenant}, json=body)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        rid: str = await eventually(created, timeout=20)
        return rid

    async def doc(self, rid: str) -> dict[str, Any]:
        r = await self.client.get(f"{self.url}/{rid}", params={"tenant": self.tenant})
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def counters(self, rid: str, **want: int) -> dict[str, Any]:
        """Wait until the rollout's overall counters show ``want``; its document."""

        async def reached() -> dict[str, Any]:
            doc = await self.doc(rid)
            got = {k: doc["counters"][k] for k in want}
            assert got == want, doc["counters"]
            return doc

        doc: dict[str, Any] = await eventually(reached, timeout=15)
        return doc

    async def command(self, rid: str, name: str) -> None:
        r = await self.client.post(f"{self.url}/{rid}/{name}", params={"tenant": self.tenant})
        assert r.status_code == 200, r.text

    async def members(self, rid: str, state: str) -> dict[str, str | None]:
        r = await self.client.get(
            f"{self.url}/{rid}/devices",
            params={"tenant": self.tenant, "state": state, "limit": 10_000},
        )
        assert r.status_code == 200, r.text
        return {m["controller_id"]: m["action_id"] for m in r.json()["items"]}

    async def finish(self, rid: str, cids: Sequence[str], result: Finished = "success") -> None:
        """The devices report their running action closed, as the gateway publishes it."""
        running = await self.members(rid, "running")
        for cid in cids:
            action_id = running[cid]
            assert action_id is not None
            await publish_event(
                self.broker,
                ActionFeedback(
                    tenant=self.tenant,
                    controller_id=cid,
                    action_id=action_id,
                    status=FeedbackStatus(execution="closed", finished=result),
                ),
            )


@contextlib.asynccontextmanager
async def progressed(common: CommonSettings, tenant: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Every ``rollout.progressed`` of ``tenant`` published meanwhile, as sent."""
    seen: list[dict[str, Any]] = []
    nc = await nats.connect(common.nats_url)

    async def keep(msg: Msg) -> None:
        seen.append(orjson.loads(msg.data))

    sub = await nc.subscribe(f"ota.v1.{tenant}.rollout.progressed", cb=keep)
    try:
        yield seen
    finally:
        await sub.unsubscribe()
        await nc.close()


@pytest.fixture
async def broker(common: CommonSettings) -> AsyncIterator[Any]:
    b = make_broker(common.nats_url, "test")
    await b.connect()
    yield b
    await b.stop()


async def test_a_wave_opens_what_the_cap_allows_and_the_rest_as_earlier_actions_end(
    operator_auth: httpx.Auth, common: CommonSettings, serve: Any, tenant: str, broker: Any
) -> None:
    service = await serve(build_app(common, RolloutsSettings(sweep_s=0.5)))
    await set_cap(common, tenant, 3)
    await eventually(lambda: service.app.state.store.members.caps.cap(tenant) == 3)
    await publish_software(common, tenant, "s1", "2.0.0", [("board", "*")])
    devices = [f"d{i:02d}" for i in range(10)]
    await service.app.state.policies.record_devices([inventory(tenant, c) for c in devices])
    db = await asyncpg.connect(common.database_url)
    async with (
        httpx.AsyncClient(auth=operator_auth, timeout=10) as client,
        progressed(common, tenant) as events,
    ):
        ro = Rollouts(service.url, tenant, client, broker)
        rid = await ro.create(
            {"name": "capped", "software_id": "s1", "success_threshold": 100, "start": True}
        )
        doc = await ro.counters(rid, total=10, running=3, queued=7, pending=7)
        assert doc["waves"][0]["counters"]["queued"] == 7
        # In member order: the first three devices run, the others wait.
        assert sorted(await ro.members(rid, "running")) == ["d00", "d01", "d02"]
        assert await db.fetchval(IN_FLIGHT, tenant) == 3

        # Two finish: the next two in order get their actions, never more than three at once.
        await ro.finish(rid, ["d00", "d01"])
        await ro.counters(rid, success=2, running=3, queued=5)
        assert sorted(await ro.members(rid, "running")) == ["d02", "d03", "d04"]
        assert await db.fetchval(IN_FLIGHT, tenant) == 3

        # Paused, a freed slot stays free: queued devices are neither opened nor counted done.
        await ro.command(rid, "pause")
        await ro.finish(rid, ["d02"])
        await ro.counters(rid, success=3, running=2, queued=5)
        await service.app.state.engine.step(int(rid))
        doc = await ro.counters(rid, success=3, running=2, queued=5, failure=0)
        assert doc["state"] == "paused"
        assert await db.fetchval(IN_FLIGHT, tenant) == 2

        # Resumed, the slot is filled; a failure frees one as a success does.
        await ro.command(rid, "resume")
        await ro.counters(rid, running=3, queued=4)
        await ro.finish(rid, ["d03"], "failure")
        await ro.counters(rid, success=3, failure=1, running=3, queued=3)

        # A cap raised in KV tenants opens the rest at the next sweep.
        await set_cap(common, tenant, 100)
        await ro.counters(rid, running=6, queued=0, pending=0)
        await ro.finish(rid, sorted(await ro.members(rid, "running")))
        doc = await ro.counters(rid, success=9, failure=1, running=0, queued=0)

        async def announced_the_end() -> bool:
            return any(e["state"] == "finished" for e in events)

        await eventually(announced_the_end)
    try:
        per_device = {
            r["controller_id"]: r["n"] for r in await db.fetch(ACTIONS_PER_DEVICE, tenant)
        }
    finally:
        await db.close()
    assert per_device == dict.fromkeys(devices, 1)
    mine = [e for e in events if e["rollout_id"] == rid]
    assert {"running": 3, "queued": 7} in [
        {"running": e["running"], "queued": e["queued"]} for e in mine
    ]
    assert mine[-1]["queued"] == 0


async def test_a_freed_slot_goes_to_whichever_rollout_of_the_tenant_waits(
    operator_auth: httpx.Auth, common: CommonSettings, serve: Any, tenant: str, broker: Any
) -> None:
    # No sweep during the test: only the pokes of the feedback move the rollouts on.
    service = await serve(build_app(common, RolloutsSettings(sweep_s=600)))
    state = service.app.state
    await set_cap(common, tenant, 2)
    await eventually(lambda: state.store.members.caps.cap(tenant) == 2)
    await publish_software(common, tenant, "s1", "2.0.0", [("board", "*")])
    alpha, beta = ["a0", "a1"], ["b0", "b1", "b2"]
    async with state.policies.db.pool.acquire() as conn, conn.transaction():
        for cid in beta:
            await state.policies.set_policy(conn, tenant, cid, Policy(mode="rollout", feed="b"))
    await state.policies.record_devices([inventory(tenant, c) for c in alpha + beta])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        ro = Rollouts(service.url, tenant, client, broker)
        body = {"software_id": "s1", "success_threshold": 100, "start": True}
        first = await ro.create({**body, "name": "alpha"})
        await ro.counters(first, running=2, queued=0)
        second = await ro.create({**body, "name": "beta", "feed": "b"})
        await ro.counters(second, running=0, queued=3)
        await ro.finish(first, alpha)
        await ro.counters(first, success=2, running=0)
        await ro.counters(second, running=2, queued=1)
        assert sorted(await ro.members(second, "running")) == ["b0", "b1"]


async def test_two_replicas_never_open_more_than_the_cap_nor_two_actions_for_a_device(
    operator_auth: httpx.Auth, common: CommonSettings, serve: Any, tenant: str, broker: Any
) -> None:
    cap, size = 10, 120
    settings = RolloutsSettings(sweep_s=0.2)
    first = await serve(build_app(common, settings))
    second = await serve(build_app(common, settings))
    await set_cap(common, tenant, cap)
    for replica in (first, second):
        await eventually(lambda r=replica: r.app.state.store.members.caps.cap(tenant) == cap)
    await publish_software(common, tenant, "s1", "2.0.0", [("board", "*")])
    devices = [f"dev-{i:03d}" for i in range(size)]
    await first.app.state.policies.record_devices([inventory(tenant, c) for c in devices])
    db = await asyncpg.connect(common.database_url)
    highest = 0
    try:
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
            ro = Rollouts(first.url, tenant, client, broker)
            rid = await ro.create(
                {
                    "name": "replicated",
                    "software_id": "s1",
                    "waves": [{"percent": 30}, {"percent": 70}],
                    "success_threshold": 50,
                    "start": True,
                }
            )
            done = 0
            while done < size:
                running = await ro.members(rid, "running")
                highest = max(highest, int(await db.fetchval(IN_FLIGHT, tenant)))
                if running:
                    await ro.finish(rid, sorted(running))
                    done += len(running)
                    await ro.counters(rid, success=done)
                else:
                    await asyncio.sleep(0.05)
            doc = await ro.counters(rid, success=size, queued=0, running=0)
            assert doc["state"] in ("running", "finished")
        per_device = {
            r["controller_id"]: r["n"] for r in await db.fetch(ACTIONS_PER_DEVICE, tenant)
        }
    finally:
        await db.close()
    assert 0 < highest <= cap
    assert per_device == dict.fromkeys(devices, 1)


async def test_a_deleted_device_frees_its_slot(
    operator_auth: httpx.Auth, common: CommonSettings, serve: Any, tenant: str, broker: Any
) -> None:
    service = await serve(build_app(common, RolloutsSettings(sweep_s=600)))
    await set_cap(common, tenant, 1)
    await eventually(lambda: service.app.state.store.members.caps.cap(tenant) == 1)
    await publish_software(common, tenant, "s1", "2.0.0", [("board", "*")])
    await service.app.state.policies.record_devices([inventory(tenant, c) for c in ("d0", "d1")])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        ro = Rollouts(service.url, tenant, client, broker)
        rid = await ro.create({"name": "one at a time", "software_id": "s1", "start": True})
        await ro.counters(rid, running=1, queued=1)
        assert list(await ro.members(rid, "running")) == ["d0"]
        await publish_event(
            broker, DeviceUpdated(tenant=tenant, controller_id="d0", change="deleted")
        )
        await ro.counters(rid, running=1, queued=0, canceled=1)
        assert list(await ro.members(rid, "running")) == ["d1"]
