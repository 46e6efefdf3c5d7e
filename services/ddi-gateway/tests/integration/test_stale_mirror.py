"""While the gateway's mirror may be behind, no action is offered from it; back-pressure instead.

The gateway reaches NATS through a proxy the test takes away and brings back: while it is away,
the test changes KV directly (one action closes, another opens), as rollouts would meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats
import pytest

from gaggle_contracts import names
from gaggle_contracts.kv import DeploymentEntry, DeviceEntry, TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.jetstream import ensure_all
from gaggle_testing import ART, deployment, eventually, feedback
from gaggle_testing.proxy import TcpProxy

pytestmark = pytest.mark.integration


async def put(nc: Any, bucket: str, key: str, value: Any) -> None:
    await (await nc.jetstream().key_value(bucket)).put(key, value.model_dump_json().encode())


def offered(poll: httpx.Response) -> str | None:
    """The action a 200 poll answer offers, if any."""
    href = poll.json()["_links"].get("deploymentBase", {}).get("href")
    return None if href is None else href.split("/deploymentBase/")[1].split("?")[0]


async def test_while_the_mirror_is_behind_no_action_is_offered_from_it(
    common: CommonSettings, serve: Any, tenant: str
) -> None:
    nc = await nats.connect(common.nats_url)
    await ensure_all(nc.jetstream(), common)
    await put(nc, names.BUCKET_TENANTS, tenant, TenantConfig(polling_sleep="00:00:02"))
    key_open, key_idle = names.kv_key(tenant, "s-open"), names.kv_key(tenant, "s-idle")
    for key in (key_open, key_idle):
        await put(nc, names.BUCKET_DEVICES, key, DeviceEntry(config_requested=False))
    await put(nc, names.BUCKET_DEPLOYMENTS, key_open, deployment("41", ART))
    url = urlsplit(common.nats_url)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 4222))
    await proxy.start()
    app = build_gateway(
        common.model_copy(update={"nats_url": f"nats://127.0.0.1:{proxy.port}"}),
        GatewaySettings(poll_jitter=0),
    )
    gw = await serve(app)
    mirror = app.state.gateway.mirror
    base = f"{gw.url}/{tenant}/controller/v1"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            assert offered(await client.get(f"{base}/s-open")) == "41"

            await proxy.stop()
            await eventually(lambda: not mirror.deployments.current, timeout=5, interval=0.02)
            # Rollouts closes 41 and opens 42 for the other device while the gateway is cut off.
            await put(nc, names.BUCKET_DEPLOYMENTS, key_open, DeploymentEntry(closed=["41"]))
            await put(nc, names.BUCKET_DEPLOYMENTS, key_idle, deployment("42", ART))

            busy = await client.get(f"{base}/s-open")
            assert busy.status_code == 429
            assert busy.headers["Retry-After"] == "5"
            assert busy.json()["errorCode"] == "hawkbit.server.error.tooManyRequests"
            for page in ("deploymentBase/41", "confirmationBase"):
                assert (await client.get(f"{base}/s-open/{page}")).status_code == 429
            url41 = f"{base}/s-open/deploymentBase/41/feedback"
            assert (await client.post(url41, json=feedback("proceeding"))).status_code == 429
            idle = await client.get(f"{base}/s-idle")
            assert idle.status_code == 200
            assert offered(idle) is None
            assert idle.json()["config"]["polling"]["sleep"] == "00:00:05"  # Retry-After
            assert (await client.get(f"{gw.url}/readyz")).status_code == 503
            metrics = (await client.get(f"{gw.url}/metrics")).text
            assert 'gaggle_ddi_polls_total{outcome="busy"} 1.0' in metrics

            await proxy.start()
            # Until the mirror has caught up: 429 or the new state, never the old offer.
            answers = []
            while not mirror.deployments.current or not answers:
                polls = [await client.get(f"{base}/{cid}") for cid in ("s-open", "s-idle")]
                for poll in polls:
                    assert poll.status_code in (200, 429), poll.text
                if polls[0].status_code == 200:
                    assert offered(polls[0]) is None
                answers.append(polls[0].status_code)
                await asyncio.sleep(0.01)
            assert offered(await client.get(f"{base}/s-open")) is None
            assert offered(await client.get(f"{base}/s-idle")) == "42"
            idle = await client.get(f"{base}/s-idle")
            assert idle.json()["config"]["polling"]["sleep"] == "00:00:02"
            assert (await client.get(f"{gw.url}/readyz")).status_code == 200
    finally:
        await proxy.stop()
        await nc.close()
