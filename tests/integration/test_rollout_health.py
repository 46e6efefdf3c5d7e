"""Rollout health gates through the gateway: action time-outs, rollback detection, soak time.

Registry, artifacts, rollouts and the gateway run on the test's NATS and PostgreSQL; scripted
devices speak DDI to the gateway. Limits and soaks are a second or two, and rollouts checks
them every 0.2 s, so each test takes seconds; nothing depends on the calendar.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_storage import LocalStore, StorageSettings
from gaggle_testing import eventually, feedback
from tests.integration.support import Stack, device

pytestmark = pytest.mark.integration

OLD = "1.0.0"
NEW = "1.2.3"  # what Stack.software announces


@pytest.fixture
async def stack(common: CommonSettings, serve: Any, tenant: str, tmp_path: Path) -> Stack:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    await serve(build_registry(common, RegistrySettings()))
    await serve(build_artifacts(common, ArtifactsSettings(), storage))
    rollouts = await serve(build_rollouts(common, RolloutsSettings(health_s=0.2, sweep_s=0.3)))
    gateway = await serve(
        build_gateway(common, GatewaySettings(polling_sleep="00:00:05", seen_flush_s=0.2), storage)
    )
    return Stack(gateway, rollouts, tenant, LocalStore(storage.dir))


async def create_rollout(client: httpx.AsyncClient, s: Stack, body: dict[str, Any]) -> dict:
    deadline = time.monotonic() + 10
    while True:
        r = await client.post(f"{s.ro}/api/v1/rollouts", params={"tenant": s.tenant}, json=body)
        if r.status_code not in (404, 409) or time.monotonic() > deadline:
            assert r.status_code == 201, r.text
            doc: dict = r.json()
            return doc
        await asyncio.sleep(0.1)


async def rollout(client: httpx.AsyncClient, s: Stack, rid: str) -> dict:
    r = await client.get(f"{s.ro}/api/v1/rollouts/{rid}", params={"tenant": s.tenant})
    assert r.status_code == 200, r.text
    doc: dict = r.json()
    return doc


async def members(client: httpx.AsyncClient, s: Stack, rid: str) -> dict[str, dict]:
    r = await client.get(f"{s.ro}/api/v1/rollouts/{rid}/devices", params={"tenant": s.tenant})
    assert r.status_code == 200, r.text
    return {m["controller_id"]: m for m in r.json()["items"]}


async def known(client: httpx.AsyncClient, s: Stack, ids: list[str]) -> None:
    """Wait until rollouts knows the devices' inventory (a rollout then includes them)."""

    async def all_known() -> bool:
        r = await client.put(
            f"{s.ro}/api/v1/policies",
            params={"tenant": s.tenant},
            json={"filter": {"controller_ids": ids, "hw_model": "board"}, "policy": {}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["matched"] == len(ids), r.text
        return True

    await eventually(all_known, timeout=10)


async def offered(client: httpx.AsyncClient, s: Stack, cid: str) -> str:
    """The device's deploymentBase href, once its poll offers one."""
    body = await s.wait_poll(client, cid, lambda links: "deploymentBase" in links)
    href: str = body["_links"]["deploymentBase"]["href"]
    return href


def action_id(href: str) -> str:
    return href.split("/deploymentBase/")[1].split("?")[0]


async def succeed(client: httpx.AsyncClient, s: Stack, cid: str) -> str:
    """The device installs what it is offered and reports success; the action id."""
    href = await offered(client, s, cid)
    aid = action_id(href)
    url = f"{s.dev(cid)}/deploymentBase/{aid}/feedback"
    assert (await client.post(url, json=feedback("proceeding"))).status_code == 200
    assert (await client.post(url, json=feedback("closed", "success"))).status_code == 200
    return aid


async def test_a_device_that_stops_reporting_mid_download_is_timed_out_and_trips_the_threshold(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await stack.software(common, os.urandom(2000))
    ids = ["h-ok1", "h-ok2", "h-stuck"]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in ids:
            await device(client, stack, cid, "board", "1.0", OLD)
        await known(client, stack, ids)
        doc = await create_rollout(
            client,
            stack,
            {
                "name": "timeouts",
                "software_id": "40",
                "error_threshold": 20,
                "error_action": "pause",
                "report_timeout": "1s",
                "action_timeout": "1h",
                "start": True,
            },
        )
        rid = doc["id"]
        assert (doc["report_timeout"], doc["action_timeout"]) == ("1s", "1h")
        # The stuck device starts its download and then says nothing more.
        href = await offered(client, stack, "h-stuck")
        stuck = action_id(href)
        fb_url = f"{stack.dev('h-stuck')}/deploymentBase/{stuck}/feedback"
        r = await client.post(fb_url, json=feedback("download"))
        assert r.status_code == 200
        await stack.wait_action(client, stuck, "download")
        for cid in ("h-ok1", "h-ok2"):
            await succeed(client, stack, cid)

        timed_out = await stack.wait_action(client, stuck, "timed_out", timeout=10)
        assert timed_out["active"] is False
        assert "report timeout" in timed_out["history"][-1]["details"][0]
        assert timed_out["history"][-1]["status"] == "timed_out"

        async def paused() -> dict:
            doc = await rollout(client, stack, rid)
            assert doc["state"] == "paused", doc
            return doc

        doc = await eventually(paused, timeout=10)
        assert "error threshold exceeded: 1 of 3 devices failed" in doc["reason"]
        assert "1 timed out" in doc["reason"]
        counters = doc["counters"]
        assert (counters["success"], counters["failure"], counters["timed_out"]) == (2, 1, 1)
        assert (await members(client, stack, rid))["h-stuck"]["state"] == "timed_out"

        # The gateway no longer offers it; the device's late report is refused as for any
        # closed action, and leaves the time-out standing.
        await stack.wait_poll(client, "h-stuck", lambda links: "deploymentBase" not in links)
        late = await client.post(fb_url, json=feedback("closed", "success"))
        assert late.status_code == 410
        assert (await stack.action(client, stuck))["status"] == "timed_out"


async def test_a_single_action_times_out_without_a_final_state_within_its_limit(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, os.urandom(2000))
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "h-slow", "board", "1.0", OLD)
        action = await stack.assign(client, "h-slow", sid, action_timeout="2s", report_timeout="1h")
        assert (action["action_timeout"], action["report_timeout"]) == ("2s", "1h")
        href = await offered(client, stack, "h-slow")
        url = f"{stack.dev('h-slow')}/deploymentBase/{action['id']}/feedback"
        # It keeps reporting progress, but never finishes.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = await client.post(url, json=feedback("proceeding"))
            if r.status_code == 410:
                break
            assert r.status_code == 200
            await asyncio.sleep(0.3)
        done = await stack.wait_action(client, action["id"], "timed_out")
        assert "action timeout" in done["history"][-1]["details"][0]
        assert href  # it had been offered


async def test_bad_durations_are_refused_with_a_clear_message(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for bad in ("30", "soon", "0s", "-1m", "9999d"):
            r = await client.post(
                f"{stack.ro}/api/v1/rollouts",
                params={"tenant": stack.tenant},
                json={"name": "x", "software_id": "40", "soak": bad},
            )
            assert r.status_code in (400, 422), r.text
            assert "duration" in r.text


async def test_a_device_back_on_its_old_version_after_success_is_rolled_back_and_blocked(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, os.urandom(2000))
    params = {"tenant": stack.tenant}
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "h-ab", "board", "1.0", OLD)
        await known(client, stack, ["h-ab"])
        doc = await create_rollout(client, stack, {"name": "ab", "software_id": sid, "start": True})
        rid = doc["id"]
        aid = await succeed(client, stack, "h-ab")
        # After its reboot the device comes up on its old slot and says so at once, maybe before
        # rollouts and registry have handled its success: the gateway's times order the two.
        r = await client.put(
            f"{stack.dev('h-ab')}/configData",
            json={"mode": "merge", "data": {"sw_version": OLD}},
        )
        assert r.status_code == 200
        rolled = await stack.wait_action(client, aid, "rolled_back")
        assert f"reports {OLD} again after installing {NEW}" in rolled["history"][-1]["details"][0]

        async def counted() -> dict:
            doc = await rollout(client, stack, rid)
            assert doc["counters"]["rolled_back"] == 1, doc
            return doc

        doc = await eventually(counted, timeout=10)
        assert (doc["counters"]["failure"], doc["counters"]["success"]) == (1, 0)
        assert (await members(client, stack, rid))["h-ab"]["state"] == "rolled_back"

        blocked = await client.get(f"{stack.ro}/api/v1/devices/h-ab/blocked", params=params)
        assert blocked.status_code == 200
        (item,) = blocked.json()["items"]
        assert (item["software_id"], item["version"], item["action_id"]) == (sid, NEW, aid)

        # Not offered again: a new rollout of the same software leaves it out, and so does
        # mode latest.
        again = await create_rollout(
            client, stack, {"name": "ab again", "software_id": sid, "start": True}
        )

        async def left_out() -> bool:
            state = (await members(client, stack, again["id"]))["h-ab"]["state"]
            assert state == "canceled", state
            return True

        await eventually(left_out, timeout=10)
        r = await client.put(
            f"{stack.ro}/api/v1/devices/h-ab/policy", params=params, json={"mode": "latest"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == {
            "software_id": None,
            "reason": "rolled back on this device; blocked until cleared",
        }
        body = (await client.get(stack.dev("h-ab"))).json()
        assert "deploymentBase" not in body["_links"]

        # An operator clears it: the device is offered the software again.
        r = await client.delete(f"{stack.ro}/api/v1/devices/h-ab/blocked/{sid}", params=params)
        assert r.status_code == 204
        again_offered = await offered(client, stack, "h-ab")
        assert action_id(again_offered) != aid
        r = await client.delete(f"{stack.ro}/api/v1/devices/h-ab/blocked/{sid}", params=params)
        assert r.status_code == 404


async def test_another_version_after_success_is_out_of_band_not_a_failure(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, os.urandom(2000))
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "h-oob", "board", "1.0", OLD)
        action = await stack.assign(client, "h-oob", sid)
        aid = await succeed(client, stack, "h-oob")
        assert aid == action["id"]
        await stack.wait_action(client, aid, "finished")
        r = await client.put(
            f"{stack.dev('h-oob')}/configData",
            json={"mode": "merge", "data": {"sw_version": "9.9"}},
        )
        assert r.status_code == 200

        async def noted() -> dict:
            found = await stack.action(client, aid)
            assert "Out-of-band change" in found["history"][-1]["details"][0], found
            return found

        found = await eventually(noted, timeout=10)
        assert found["status"] == "finished"


async def test_a_wave_with_a_soak_time_starts_the_next_wave_only_after_the_soak(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, os.urandom(2000))
    ids = ["h-s1", "h-s2"]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in ids:
            await device(client, stack, cid, "board", "1.0", OLD)
        await known(client, stack, ids)
        doc = await create_rollout(
            client,
            stack,
            {
                "name": "soak",
                "software_id": sid,
                "waves": [{"count": 1}, {"count": 1}],
                "success_threshold": 100,
                "soak": "2s",
                "start": True,
            },
        )
        rid = doc["id"]
        assert doc["soak"] == "2s"
        first = next(
            cid for cid, m in (await members(client, stack, rid)).items() if m["wave"] == 1
        )
        second = next(cid for cid in ids if cid != first)
        aid = await succeed(client, stack, first)
        await stack.wait_action(client, aid, "finished")
        succeeded = time.monotonic()

        # Within the soak: the success does not count yet, the device keeps polling.
        async def soaking() -> dict:
            doc = await rollout(client, stack, rid)
            assert doc["waves"][0]["counters"]["soaking"] == 1, doc
            return doc

        await eventually(soaking, timeout=5)
        started_at = None
        while time.monotonic() - succeeded < 10:
            await client.get(stack.dev(first))  # healthy: it keeps polling
            doc = await rollout(client, stack, rid)
            if doc["current_wave"] == 2:
                started_at = time.monotonic()
                break
            await asyncio.sleep(0.2)
        assert started_at is not None, doc
        assert started_at - succeeded >= 2.0
        assert doc["waves"][0]["counters"]["soaking"] == 0
        assert doc["waves"][0]["counters"]["success"] == 1
        await offered(client, stack, second)


async def test_a_device_silent_after_its_success_fails_its_soak(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, os.urandom(2000))
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "h-quiet", "board", "1.0", OLD)
        await known(client, stack, ["h-quiet"])
        doc = await create_rollout(
            client,
            stack,
            {"name": "quiet", "software_id": sid, "soak": "1s", "start": True},
        )
        aid = await succeed(client, stack, "h-quiet")
        # It never polls again.
        done = await stack.wait_action(client, aid, "timed_out", timeout=10)
        assert "Went silent after its success" in done["history"][-1]["details"][0]

        async def failed() -> dict:
            found = await rollout(client, stack, doc["id"])
            assert found["counters"]["timed_out"] == 1 and found["state"] != "running", found
            return found

        found = await eventually(failed, timeout=10)
        assert found["counters"]["success"] == 0
