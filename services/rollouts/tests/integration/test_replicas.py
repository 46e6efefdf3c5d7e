"""Two rollouts replicas, one restarted mid-rollout: no duplicate action, no lost feedback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import pytest

from gaggle_contracts.events import ActionFeedback, DeviceUpdated, FeedbackStatus
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_testing import publish_software

pytestmark = pytest.mark.integration

DEVICES = 300


async def wait_doc(
    client: httpx.AsyncClient, url: str, tenant: str, check: Any, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(url, params={"tenant": tenant})
        if r.status_code == 200 and check(r.json()):
            return dict(r.json())
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.05)


async def test_two_replicas_and_a_restart_decide_once_and_count_every_feedback(
    operator_auth: httpx.Auth, common: CommonSettings, serve: Any, tenant: str
) -> None:
    settings = RolloutsSettings(sweep_s=0.5)
    first = await serve(build_rollouts(common, settings))
    second = await serve(build_rollouts(common, settings))
    await publish_software(common, tenant, "r1", "2.0.0", [("board", "*")])
    ids = [f"dev-{i:04d}" for i in range(DEVICES)]
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        for cid in ids:
            await publish_event(
                broker,
                DeviceUpdated(
                    tenant=tenant,
                    controller_id=cid,
                    change="registered",
                    hw_model="board",
                    hw_revision="1",
                    sw_version="1.0.0",
                ),
            )
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
            body = {
                "name": "replicated",
                "software_id": "r1",
                "waves": [{"percent": 20}, {"percent": 80}],
                "success_threshold": 100,
                "start": True,
            }
            deadline = time.monotonic() + 20
            while True:  # until rollouts has every device's inventory
                probe = await client.post(
                    f"{first.url}/api/v1/rollouts",
                    params={"tenant": tenant},
                    json={**body, "start": False, "name": "probe"},
                )
                if probe.status_code == 201 and probe.json()["counters"]["total"] == DEVICES:
                    break
                assert time.monotonic() < deadline, probe.text
                await asyncio.sleep(0.2)
            r = await client.post(
                f"{first.url}/api/v1/rollouts", params={"tenant": tenant}, json=body
            )
            assert r.status_code == 201, r.text
            rid = r.json()["id"]
            url = f"{first.url}/api/v1/rollouts/{rid}"

            async def answer(wave: int) -> None:
                items = (
                    await client.get(f"{url}/devices", params={"tenant": tenant, "limit": DEVICES})
                ).json()["items"]
                for m in items:
                    if m["wave"] == wave:
                        assert m["action_id"] is not None, m
                        await publish_event(
                            broker,
                            ActionFeedback(
                                tenant=tenant,
                                controller_id=m["controller_id"],
                                action_id=m["action_id"],
                                status=FeedbackStatus(execution="closed", finished="success"),
                            ),
                        )

            size1 = DEVICES * 20 // 100
            await wait_doc(client, url, tenant, lambda d: d["counters"]["running"] == size1)
            await answer(1)
            # The second wave opens on one replica or the other; one of them restarts meanwhile.
            await wait_doc(client, url, tenant, lambda d: d["current_wave"] == 2)
            await second.stop()
            await serve(build_rollouts(common, settings))
            await wait_doc(
                client, url, tenant, lambda d: d["counters"]["running"] == DEVICES - size1
            )
            await answer(2)
            doc = await wait_doc(client, url, tenant, lambda d: d["state"] == "finished")
            assert doc["counters"]["success"] == DEVICES
    finally:
        await broker.stop()

    conn = await asyncpg.connect(common.database_url)
    try:
        per_device = await conn.fetch(
            "SELECT controller_id, count(*) AS n FROM rollouts.actions WHERE tenant = $1"
            " GROUP BY controller_id",
            tenant,
        )
        assert len(per_device) == DEVICES
        assert {r["n"] for r in per_device} == {1}
        statuses = await conn.fetch(
            "SELECT status, count(*) AS n FROM rollouts.actions WHERE tenant = $1 GROUP BY status",
            tenant,
        )
        assert {r["status"]: r["n"] for r in statuses} == {"finished": DEVICES}
    finally:
        await conn.close()
