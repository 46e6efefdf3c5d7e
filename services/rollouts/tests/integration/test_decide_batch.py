"""Devices decided together, in one transaction: each as it would be on its own."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from gaggle_contracts.events import Compatibility, DeviceUpdated, SoftwareCreated
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.actions import ActionSpec
from gaggle_rollouts.app import build_app
from gaggle_rollouts.policies import Policy
from gaggle_rollouts.settings import RolloutsSettings

pytestmark = pytest.mark.integration


def inventory(tenant: str, cid: str, version: str) -> DeviceUpdated:
    return DeviceUpdated(
        tenant=tenant,
        controller_id=cid,
        change="attributes",
        hw_model="board",
        hw_revision="1",
        sw_version=version,
    )


async def test_a_batch_decides_every_mode_and_lets_devices_join_a_running_rollout(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    service = await serve(build_app(common, RolloutsSettings(sweep_s=60)))
    state = service.app.state
    catalogue, policies, actions = state.catalogue, state.policies, state.actions
    payload = b"image"
    await catalogue.upsert_software(
        SoftwareCreated(
            tenant=tenant,
            software_id="s1",
            name="img",
            version="2.0.0",
            filename="img-2.0.0.swu",
            size=len(payload),
            md5=hashlib.md5(payload).hexdigest(),  # noqa: S324
            sha1=hashlib.sha1(payload).hexdigest(),  # noqa: S324
            sha256=hashlib.sha256(payload).hexdigest(),
            compatibility=[Compatibility(hw_model="board", hw_revision="*")],
            object_key="k/s1",
        )
    )
    # A running rollout of feed "default" with two members: one runs its version already, the
    # other's action stays open, so the rollout cannot finish before the batch is decided.
    await policies.record_devices(
        [inventory(tenant, "current", "2.0.0"), inventory(tenant, "holder", "1.0.0")]
    )
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        r = await client.post(
            f"{service.url}/api/v1/rollouts",
            params={"tenant": tenant},
            json={"name": "join", "software_id": "s1", "start": True},
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

    # Inventory recorded without deciding (as a pull's batch is, before its decisions).
    async with policies.db.pool.acquire() as conn, conn.transaction():
        await policies.set_policy(conn, tenant, "pinned", Policy(mode="pinned"))
        await policies.set_policy(conn, tenant, "latest", Policy(mode="latest"))
        await policies.set_policy(conn, tenant, "busy", Policy(mode="assigned", software_id="s1"))
    await policies.record_devices(
        [inventory(tenant, cid, "1.0.0") for cid in ("r1", "r2", "pinned", "latest", "busy")]
    )
    software = await catalogue.software(tenant, "s1")
    busy = await state.usecases.assign(tenant, "busy", software, ActionSpec("forced"))

    ids = ["r1", "r2", "current", "pinned", "latest", "busy", "unknown", "r1"]
    decisions = await state.chooser.choose_batch(tenant, ids)
    assert {cid: d.reason for cid, d in decisions.items()} == {
        "busy": "an action is open",
        "current": "device is success in the rollout",
        "latest": decisions["latest"].reason,
        "pinned": "pinned",
        "r1": decisions["r1"].reason,
        "r2": decisions["r2"].reason,
        "unknown": "waiting for the device's inventory",
    }
    assert {cid: decisions[cid].software_id for cid in ("latest", "r1", "r2")} == {
        "latest": "s1",
        "r1": "s1",
        "r2": "s1",
    }
    opened = {cid: await actions.open_action_of(tenant, cid) for cid in ids}
    assert {cid for cid, action in opened.items() if action is not None} == {
        "r1",
        "r2",
        "latest",
        "busy",
    }
    assert opened["busy"].id == busy.id
    assert opened["r1"].rollout_id == opened["r2"].rollout_id == int(rid)
    assert opened["latest"].rollout_id is None

    # Deciding again opens nothing new.
    again = await state.chooser.choose_batch(tenant, ids)
    assert {cid for cid, d in again.items() if d.software_id} == set()
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        doc = (
            await client.get(f"{service.url}/api/v1/rollouts/{rid}", params={"tenant": tenant})
        ).json()
    counters = doc["counters"]
    assert counters["total"] == 4  # r1 and r2 joined current and holder
    # r1 and r2 run; holder's action is opened by the rollout's own pass, maybe not yet.
    assert counters["running"] >= 2
    assert counters["running"] + counters["pending"] == 3
    assert counters["success"] == 1
