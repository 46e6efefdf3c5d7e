"""A rollout through the gateway: waves, confirmation, windows, pause, resume, takeover."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gaggle_contracts.events import ActionFeedback, DeviceUpdated, FeedbackStatus
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_testing import feedback, publish_software
from tests.integration.support import Stack, device, policy

pytestmark = pytest.mark.integration


async def rollout(client: httpx.AsyncClient, s: Stack, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post(f"{s.ro}/api/v1/rollouts", params={"tenant": s.tenant}, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def wait_rollout(
    client: httpx.AsyncClient, s: Stack, rid: str, check: Any, timeout: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = (
            await client.get(f"{s.ro}/api/v1/rollouts/{rid}", params={"tenant": s.tenant})
        ).json()
        if check(doc):
            return doc
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.05)


async def offered(client: httpx.AsyncClient, s: Stack, cid: str) -> dict[str, str]:
    return (await client.get(s.dev(cid))).json()["_links"]


async def wait_link(
    client: httpx.AsyncClient, s: Stack, cid: str, link: str, timeout: float = 10
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        links = await offered(client, s, cid)
        if link in links:
            return str(links[link]["href"])
        assert time.monotonic() < deadline, links
        await asyncio.sleep(0.05)


async def known_to_rollouts(client: httpx.AsyncClient, s: Stack, body: dict[str, Any]) -> None:
    """Create-rollout answers 409 until rollouts has every device's inventory: wait for that."""
    deadline = time.monotonic() + 10
    while True:
        r = await client.post(
            f"{s.ro}/api/v1/rollouts", params={"tenant": s.tenant}, json={**body, "name": "probe"}
        )
        if r.status_code == 201:
            rid = r.json()["id"]
            if r.json()["counters"]["total"] == len(body["filter"]["controller_ids"]):
                await client.post(
                    f"{s.ro}/api/v1/rollouts/{rid}/abort", params={"tenant": s.tenant}
                )
                return
            await client.post(f"{s.ro}/api/v1/rollouts/{rid}/abort", params={"tenant": s.tenant})
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.1)


async def test_waves_start_one_after_the_other_and_the_rollout_finishes(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "s2", "2.0.0", [("board", "*")])
    ids = [f"w{i}" for i in range(10)]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in ids:
            await device(client, stack, cid, "board", "1", "1.0.0")
        body = {
            "software_id": "s2",
            "filter": {"controller_ids": ids},
            "waves": [{"count": 2}, {"count": 3}],
            "success_threshold": 100,
        }
        await known_to_rollouts(client, stack, body)
        doc = await rollout(client, stack, {**body, "name": "r", "start": True})
        assert [w["size"] for w in doc["waves"]] == [2, 3, 5]
        assert doc["state"] == "running" and doc["current_wave"] == 1
        rid = doc["id"]
        for wave in (1, 2, 3):
            doc = await wait_rollout(
                client,
                stack,
                rid,
                lambda d, w=wave: (
                    d["waves"][w - 1]["counters"]["running"] == d["waves"][w - 1]["size"]
                ),
            )
            members = (
                await client.get(
                    f"{stack.ro}/api/v1/rollouts/{rid}/devices", params={"tenant": stack.tenant}
                )
            ).json()["items"]
            now = [m for m in members if m["wave"] == wave]
            later = [m for m in members if m["wave"] > wave]
            assert all(m["state"] == "running" and m["action_id"] for m in now)
            assert all(m["state"] == "waiting" and m["action_id"] is None for m in later)
            for m in later[:2]:
                assert "deploymentBase" not in await offered(client, stack, m["controller_id"])
            for m in now:
                href = await wait_link(client, stack, m["controller_id"], "deploymentBase")
                action = href.split("/")[-1].split("?")[0]
                r = await client.post(
                    f"{stack.dev(m['controller_id'])}/deploymentBase/{action}/feedback",
                    json=feedback("closed", "success"),
                )
                assert r.status_code == 200
        doc = await wait_rollout(client, stack, rid, lambda d: d["state"] == "finished")
        assert doc["counters"] == {
            "total": 10,
            "pending": 0,
            "queued": 0,
            "running": 0,
            "success": 10,
            "failure": 0,
            "canceled": 0,
            "timed_out": 0,
            "rolled_back": 0,
            "soaking": 0,
        }
        started = [w["started_at"] for w in doc["waves"]]
        assert started == sorted(started)


async def test_confirmation_window_pause_resume_and_takeover(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "s3", "3.0.0", [("board", "*")])
    await publish_software(common, stack.tenant, "s4", "4.0.0", [("board", "*")])
    ids = ["c1", "c2"]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in ids:
            await device(client, stack, cid, "board", "1", "1.0.0")
            await policy(client, stack, cid, {"mode": "rollout", "feed": "beta"})
        body = {"software_id": "s3", "feed": "beta", "filter": {"controller_ids": ids}}
        await known_to_rollouts(client, stack, body)
        # A window that is closed now: the device may download but must not install yet.
        hour = time.gmtime().tm_hour
        closed = {"start": f"{(hour + 2) % 24:02d}:00", "end": f"{(hour + 3) % 24:02d}:00"}
        doc = await rollout(
            client,
            stack,
            {
                **body,
                "name": "confirm",
                "confirmation_required": True,
                "maintenance_window": closed,
                "start": True,
            },
        )
        rid = doc["id"]
        href = await wait_link(client, stack, "c1", "confirmationBase")
        base = (await client.get(href)).json()
        assert base["confirmation"]["maintenanceWindow"] == "unavailable"
        action = href.split("/")[-1].split("?")[0]
        r = await client.post(
            f"{stack.dev('c1')}/confirmationBase/{action}/feedback",
            json={"confirmation": "confirmed", "details": ["ok by user"]},
        )
        assert r.status_code == 200, r.text
        href = await wait_link(client, stack, "c1", "deploymentBase")
        deployment = (await client.get(href)).json()["deployment"]
        assert deployment["update"] == "skip" and deployment["maintenanceWindow"] == "unavailable"

        paused = await client.post(
            f"{stack.ro}/api/v1/rollouts/{rid}/pause", params={"tenant": stack.tenant}
        )
        assert paused.json()["state"] == "paused"
        again = await client.post(
            f"{stack.ro}/api/v1/rollouts/{rid}/pause", params={"tenant": stack.tenant}
        )
        assert again.status_code == 409 and "paused" in again.json()["message"]
        resumed = await client.post(
            f"{stack.ro}/api/v1/rollouts/{rid}/resume", params={"tenant": stack.tenant}
        )
        assert resumed.json()["state"] == "running"

        # A newer rollout of the feed takes over: the older one is aborted, its open actions
        # run to their end, and its devices then get the newer software.
        newer = await rollout(
            client, stack, {**body, "software_id": "s4", "name": "newer", "start": True}
        )
        old = await wait_rollout(client, stack, rid, lambda d: d["state"] == "aborted")
        assert old["reason"] == f"superseded by rollout {newer['id']}"
        r = await client.post(
            f"{stack.dev('c1')}/deploymentBase/{action}/feedback",
            json=feedback("closed", "success"),
        )
        assert r.status_code == 200
        await wait_rollout(client, stack, rid, lambda d: d["counters"]["success"] == 1)
        href = await wait_link(client, stack, "c1", "deploymentBase")
        assert href.split("/")[-1].split("?")[0] != action
        assert (await client.get(href)).json()["deployment"]["chunks"][0]["version"] == "4.0.0"


async def test_bad_rollout_requests_are_refused_with_reasons(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "s5", "5.0.0", [("other-board", "*")])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "b1", "board", "1", "1.0.0")
        url = f"{stack.ro}/api/v1/rollouts"
        params = {"tenant": stack.tenant}
        cases = [
            ({"name": "x", "software_id": "nope"}, 404, "software"),
            ({"name": "x", "software_id": "s5", "feed": "nowhere"}, 404, "feed"),
            ({"name": "x", "software_id": "s5", "error_threshold": 101}, 400, "error_threshold"),
            ({"name": "x", "software_id": "s5", "success_threshold": 0}, 400, "success_threshold"),
            (
                {"name": "x", "software_id": "s5", "waves": [{"percent": 60}, {"percent": 50}]},
                400,
                "100",
            ),
            (
                {"name": "x", "software_id": "s5", "waves": [{"percent": 10, "count": 3}]},
                400,
                "either",
            ),
            (
                {
                    "name": "x",
                    "software_id": "s5",
                    "maintenance_window": {"start": "25:00", "end": "01:00"},
                },
                400,
                "start",
            ),
        ]
        for body, status, word in cases:
            r = await client.post(url, params=params, json=body)
            assert r.status_code == status, (body, r.text)
            assert word in r.text, (body, r.text)
        deadline = time.monotonic() + 10
        while True:
            r = await client.post(url, params=params, json={"name": "x", "software_id": "s5"})
            if r.status_code == 409 and "fits none" in r.json()["message"]:
                break
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.1)
        r = await client.post(f"{url}/999999/pause", params=params)
        assert r.status_code == 404
        r = await client.post(f"{url}/abc/pause", params=params)
        assert r.status_code == 404


async def test_bulk_policy_and_auto_confirmation(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "s6", "6.0.0", [("board", "*")])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in ("p1", "p2", "p3"):
            await device(client, stack, cid, "board", "1", "1.0.0" if cid != "p3" else "0.9")
        url = f"{stack.ro}/api/v1/policies"
        params = {"tenant": stack.tenant}
        r = await client.put(url, params=params, json={"filter": {}, "policy": {"mode": "latest"}})
        assert r.status_code == 400 and r.json()["parameter"] == "filter"
        deadline = time.monotonic() + 10
        while True:  # until rollouts knows both devices' inventory
            r = await client.put(
                url,
                params=params,
                json={"filter": {"sw_version": "1.0.0"}, "policy": {"mode": "latest"}},
            )
            assert r.status_code == 200, r.text
            if r.json()["matched"] == 2:
                break
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.1)
        for cid in ("p1", "p2"):
            href = await wait_link(client, stack, cid, "deploymentBase")
            assert (await client.get(href)).json()["deployment"]["chunks"][0]["version"] == "6.0.0"
        assert "deploymentBase" not in await offered(client, stack, "p3")
        got = (await client.get(f"{stack.ro}/api/v1/devices/p3/policy", params=params)).json()
        assert got["mode"] == "rollout"

        # An operator's action that waits for the device's confirmation, until the device
        # switches auto-confirmation on.
        r = await client.post(
            f"{stack.ro}/api/v1/devices/p3/actions",
            params=params,
            json={"software_id": "s6", "confirmation_required": True},
        )
        assert r.status_code == 201 and r.json()["status"] == "wait_for_confirmation", r.text
        await wait_link(client, stack, "p3", "confirmationBase")
        r = await client.post(
            f"{stack.dev('p3')}/confirmationBase/activateAutoConfirm",
            json={"initiator": "tester", "remark": "go"},
        )
        assert r.status_code == 200, r.text
        await wait_link(client, stack, "p3", "deploymentBase")


async def test_reports_handled_out_of_order_keep_the_newest_status_and_a_timed_history(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "s7", "7.0.0", [("board", "*")])
    params = {"tenant": stack.tenant}
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "o1", "board", "1", "1.0.0")
        deadline = time.monotonic() + 10
        while True:
            r = await client.post(
                f"{stack.ro}/api/v1/devices/o1/actions", params=params, json={"software_id": "s7"}
            )
            if r.status_code == 201:
                break
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.1)
        action = r.json()["id"]
        now = datetime.now(UTC)
        reports = [  # published newest first, as concurrent handling may apply them
            (now + timedelta(seconds=2), "downloaded", "image stored"),
            (now + timedelta(seconds=1), "download", "fetching"),
        ]
        broker = make_broker(common.nats_url, "test")
        await broker.connect()
        try:
            for at, execution, text in reports:
                await publish_event(
                    broker,
                    ActionFeedback(
                        tenant=stack.tenant,
                        controller_id="o1",
                        action_id=action,
                        occurred_at=at,
                        status=FeedbackStatus(execution=execution, details=[text]),
                    ),
                )
        finally:
            await broker.stop()
        deadline = time.monotonic() + 10
        while True:
            doc = (await client.get(f"{stack.ro}/api/v1/actions/{action}", params=params)).json()
            if len(doc["history"]) == 3:
                break
            assert time.monotonic() < deadline, doc
            await asyncio.sleep(0.05)
        assert doc["status"] == "downloaded"
        assert [h["details"] for h in doc["history"][1:]] == [["fetching"], ["image stored"]]


async def test_devices_whose_inventory_lands_while_the_rollout_is_created_all_join_it(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "s9", "9.0.0", [("board", "*")])
    ids = [f"race-{i:03d}" for i in range(400)]
    broker = make_broker(common.nats_url, "test")
    await broker.connect()

    def report(cid: str, board: str) -> Any:
        return publish_event(
            broker,
            DeviceUpdated(
                tenant=stack.tenant,
                controller_id=cid,
                change="attributes",
                hw_model=board,
                hw_revision="1",
                sw_version="1.0.0",
            ),
        )

    try:
        # Devices of another board in the feed make the creation read (and take) a while.
        await asyncio.gather(*(report(f"other-{i:04d}", "other") for i in range(3000)))
        # The fleet's inventory arrives (as the registry reports it) while the operator is
        # already creating the rollout, retrying until the feed has a device.
        reports = asyncio.gather(*(report(cid, "board") for cid in ids))
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                r = await client.post(
                    f"{stack.ro}/api/v1/rollouts",
                    params={"tenant": stack.tenant},
                    json={"name": "race", "software_id": "s9", "start": True},
                )
                if r.status_code == 201:
                    break
                assert r.status_code == 409 and time.monotonic() < deadline, r.text
            await reports
            doc = await wait_rollout(
                client, stack, r.json()["id"], lambda d: d["counters"]["total"] == len(ids), 15
            )
            assert doc["counters"]["total"] == len(ids)
    finally:
        await broker.stop()
