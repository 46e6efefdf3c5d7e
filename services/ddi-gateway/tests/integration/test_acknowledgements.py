"""The gateway keeps what it acknowledged, read back from its own memory.

The test plays registry and rollouts by writing KV entries, so the KV mirror holds still and what
the device sees can only come from the gateway's memory of its acknowledgements.
"""

from __future__ import annotations

from typing import Any

import httpx
import nats
import orjson
import pytest

from gaggle_contracts import names
from gaggle_contracts.kv import DeploymentEntry, DeviceEntry, TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.core import Gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.jetstream import ensure_all
from gaggle_testing import ART, deployment, eventually, feedback

from ..publishing import lose_first_ack

pytestmark = pytest.mark.integration


@pytest.fixture
async def nc(common: CommonSettings) -> Any:
    conn = await nats.connect(common.nats_url)
    await ensure_all(conn.jetstream(), common)
    yield conn
    await conn.close()


async def put(nc: Any, bucket: str, key: str, value: Any) -> None:
    await (await nc.jetstream().key_value(bucket)).put(key, value.model_dump_json().encode())


async def feedback_count(nc: Any, tenant: str, kind: str) -> int:
    subject = names.subject(tenant, kind)
    info = await nc.jetstream().stream_info(names.STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def known(nc: Any, tenant: str, cid: str, entry: DeploymentEntry) -> str:
    """Register ``cid`` with ``entry`` in KV, as the registry and rollouts would; its key."""
    key = names.kv_key(tenant, cid)
    await put(nc, names.BUCKET_DEVICES, key, DeviceEntry(config_requested=False))
    await put(nc, names.BUCKET_DEPLOYMENTS, key, entry)
    return key


async def start(common: CommonSettings, serve: Any, tenant: str) -> tuple[Gateway, str]:
    """A gateway served over HTTP: its core, and the tenant's DDI base URL."""
    app = build_gateway(common, GatewaySettings(poll_jitter=0))
    gw = await serve(app)
    return app.state.gateway, f"{gw.url}/{tenant}/controller/v1"


async def mirrored(gateway: Any, key: str, predicate: Any) -> None:
    await eventually(
        lambda: predicate(gateway.mirror.deployments.values.get(key)), timeout=5, interval=0.02
    )


async def test_without_the_mirror_catching_up_the_gateway_reads_back_its_own_acknowledgements(
    common: CommonSettings, serve: Any, tenant: str, nc: Any
) -> None:
    """Nothing closes the action in KV here: only the gateway's memory hides it."""
    await put(nc, names.BUCKET_TENANTS, tenant, TenantConfig(polling_sleep="00:10:00"))
    await known(nc, tenant, "m-1", deployment("41", ART))
    await known(nc, tenant, "m-2", deployment("41", ART, state="canceling"))
    gateway, base = await start(common, serve, tenant)
    kind = "action.feedback"
    async with httpx.AsyncClient(timeout=10) as client:
        assert "deploymentBase" in (await client.get(f"{base}/m-1")).json()["_links"]
        url = f"{base}/m-1/deploymentBase/41/feedback"
        assert (await client.post(url, json=feedback("proceeding"))).status_code == 200
        assert (await client.post(url, json=feedback("closed", "success"))).status_code == 200
        taken = await feedback_count(nc, tenant, kind)
        for _ in range(200):  # the fast lane answers these polls
            poll = (await client.get(f"{base}/m-1")).json()
            assert poll["_links"] == {}
            assert poll["config"]["polling"]["sleep"] == "00:10:00"
        assert (await client.get(f"{base}/m-1/deploymentBase/41")).status_code == 404
        assert gateway.mirror.deployments.values[names.kv_key(tenant, "m-1")].open is not None

        retried = feedback("closed", "success")
        retried["time"] = "20991231T235959"  # a retry may carry a new device time
        assert (await client.post(url, json=retried)).status_code == 200
        assert (await client.post(url, json=feedback("closed", "failure"))).status_code == 410
        assert (await client.post(url, json=feedback("proceeding"))).status_code == 410
        assert await feedback_count(nc, tenant, kind) == taken

        # The mirror catches up (the action is closed); a retry inside the window is still 200.
        key = names.kv_key(tenant, "m-1")
        await put(nc, names.BUCKET_DEPLOYMENTS, key, DeploymentEntry(closed=["41"]))
        await mirrored(gateway, key, lambda e: e is not None and e.open is None)
        assert (await client.post(url, json=feedback("closed", "success"))).status_code == 200
        assert (await client.post(url, json=feedback("proceeding"))).status_code == 410
        assert await feedback_count(nc, tenant, kind) == taken

        # A cancel acknowledged through the FastAPI route: no cancelAction offered any more.
        assert "cancelAction" in (await client.get(f"{base}/m-2")).json()["_links"]
        cancel = f"{base}/m-2/cancelAction/41/feedback"
        assert (await client.post(cancel, json=feedback("canceled"))).status_code == 200
        assert (await client.get(f"{base}/m-2")).json()["_links"] == {}
        assert (await client.get(f"{base}/m-2/cancelAction/41")).status_code == 404
        confirm = {"confirmation": "confirmed"}
        r = await client.post(f"{base}/m-2/confirmationBase/41/feedback", json=confirm)
        assert r.status_code == 410
        assert (await client.post(cancel, json=feedback("canceled"))).status_code == 200
        assert await feedback_count(nc, tenant, "cancel.feedback") == 1

        # A new action for the device is offered at once.
        await put(nc, names.BUCKET_DEPLOYMENTS, key, deployment("42", ART))
        await mirrored(gateway, key, lambda e: e is not None and e.open is not None)
        links = (await client.get(f"{base}/m-1")).json()["_links"]
        assert links["deploymentBase"]["href"].startswith(f"{base}/m-1/deploymentBase/42?c=")


async def test_an_action_takes_a_thousand_statuses_then_429_but_still_its_final_report(
    common: CommonSettings, serve: Any, tenant: str, nc: Any
) -> None:
    await put(nc, names.BUCKET_TENANTS, tenant, TenantConfig())
    await known(nc, tenant, "st-1", deployment("7", ART))
    _, base = await start(common, serve, tenant)
    url = f"{base}/st-1/deploymentBase/7/feedback"
    headers = {"Content-Type": "application/json"}

    def step(i: int) -> bytes:  # statuses that differ, so none is a retry of another
        return orjson.dumps(feedback("proceeding", progress={"cnt": i, "of": 1001}))

    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(1000):
            r = await client.post(url, content=step(i), headers=headers)
            assert r.status_code == 200
        r = await client.post(url, content=step(1000), headers=headers)
        assert r.status_code == 429
        assert r.json()["info"] == {"quota": 1000}
        assert "1000 statuses" in r.json()["message"]
        assert (await client.post(url, json=feedback("closed", "success"))).status_code == 200
    assert await feedback_count(nc, tenant, "action.feedback") == 1001


async def test_a_final_report_retried_after_a_lost_acknowledgement_is_200_and_stored_once(
    common: CommonSettings, serve: Any, tenant: str, nc: Any
) -> None:
    """The bus stored the report but its ack was lost (429); the device retries the same one."""
    await put(nc, names.BUCKET_TENANTS, tenant, TenantConfig())
    key = await known(nc, tenant, "u-1", deployment("51", ART))
    gateway, base = await start(common, serve, tenant)
    lost = lose_first_ack(gateway)
    url = f"{base}/u-1/deploymentBase/51/feedback"
    kind = "action.feedback"
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.post(url, json=feedback("closed", "success"))
        assert first.status_code == 429
        assert first.headers["Retry-After"] == "5"
        assert await feedback_count(nc, tenant, kind) == 1  # stored all the same
        # Rollouts closes the action and the mirror catches up before the device retries.
        await put(nc, names.BUCKET_DEPLOYMENTS, key, DeploymentEntry(closed=["51"]))
        await mirrored(gateway, key, lambda e: e is not None and e.open is None)
        assert (await client.post(url, json=feedback("closed", "failure"))).status_code == 410
        assert (await client.post(url, json=feedback("closed", "success"))).status_code == 200
        assert (await client.post(url, json=feedback("closed", "success"))).status_code == 200
        assert (await client.post(url, json=feedback("proceeding"))).status_code == 410
    assert await feedback_count(nc, tenant, kind) == 1  # the retry went under the same id
    assert len(lost) == 1


async def test_a_report_retried_after_a_lost_acknowledgement_is_stored_once(
    common: CommonSettings, serve: Any, tenant: str, nc: Any
) -> None:
    """Progress and configData: the retry carries the first attempt's event id, JetStream drops it.

    A report that differs (another message, or the same one sent a second later) is stored.
    """
    await put(nc, names.BUCKET_TENANTS, tenant, TenantConfig())
    await known(nc, tenant, "r-1", deployment("61", ART))
    gateway, base = await start(common, serve, tenant)
    url = f"{base}/r-1/deploymentBase/61/feedback"
    attributes = {"mode": "merge", "data": {"hw": "b"}, "time": "20261123T182554"}
    async with httpx.AsyncClient(timeout=10) as client:
        for send, kind in (
            (lambda: client.post(url, json=feedback("proceeding")), "action.feedback"),
            (
                lambda: client.put(f"{base}/r-1/configData", json=attributes),
                "device.config_reported",
            ),
        ):
            lost = lose_first_ack(gateway)
            first = await send()
            assert first.status_code == 429
            assert await feedback_count(nc, tenant, kind) == 1  # stored all the same
            assert (await send()).status_code == 200
            assert (await send()).status_code == 200
            assert await feedback_count(nc, tenant, kind) == 1
            assert len(lost) == 1

        later = feedback("proceeding")
        later["time"] = "20261123T182555"
        assert (await client.post(url, json=later)).status_code == 200
        other = feedback("proceeding")
        other["status"]["details"] = ["another step"]
        assert (await client.post(url, json=other)).status_code == 200
    assert await feedback_count(nc, tenant, "action.feedback") == 3
