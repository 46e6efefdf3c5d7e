"""The gateway's KV mirror after a NATS restart: not ready while it is away, current soon after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import nats
import pytest

from gaggle_contracts import names
from gaggle_contracts.kv import DeviceEntry, TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.jetstream import ensure_all
from gaggle_testing import ART, deployment, eventually

pytestmark = pytest.mark.integration

CATCH_UP_BOUND_S = 5.0


async def readyz(client: httpx.AsyncClient, url: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(f"{url}/readyz")
    return response.status_code, response.json()


async def test_after_a_nats_restart_the_mirror_catches_up_within_seconds(
    restartable_nats: Any, serve: Any, tenant: str
) -> None:
    common = CommonSettings(nats_url=restartable_nats.url, log_json=False)
    nc = await nats.connect(restartable_nats.url)
    await ensure_all(nc.jetstream(), common)
    tenants = await nc.jetstream().key_value(names.BUCKET_TENANTS)
    await tenants.put(tenant, TenantConfig().model_dump_json().encode())
    deployments = await nc.jetstream().key_value(names.BUCKET_DEPLOYMENTS)
    busy_key = names.kv_key(tenant, "busy-1")
    await deployments.put(busy_key, deployment("7", ART).model_dump_json().encode())
    await nc.close()
    app = build_gateway(common, GatewaySettings())
    gw = await serve(app)
    mirror = app.state.gateway.mirror
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await readyz(client, gw.url))[0] == 200
        poll = f"{gw.url}/{tenant}/controller/v1/busy-1"
        assert "deploymentBase" in (await client.get(poll)).json()["_links"]

        restartable_nats.kill()
        # While NATS is away the gateway says so, and every mirror counts as stale.
        await eventually(
            lambda: not all(b.current for b in (*mirror.buckets, app.state.service.auth.keys)),
            timeout=5,
            interval=0.05,
        )
        status, body = await readyz(client, gw.url)
        assert status == 503
        assert body["checks"]["kv_mirror"] is False
        metrics = (await client.get(f"{gw.url}/metrics")).text
        assert f'gaggle_kv_mirror_stale{{bucket="{names.BUCKET_DEVICES}"}} 1.0' in metrics
        # Its open action may have closed meanwhile: the device is asked to come back.
        busy = await client.get(poll)
        assert busy.status_code == 429
        assert busy.headers["Retry-After"] == "5"

        restartable_nats.start()
        nc = await nats.connect(restartable_nats.url)
        try:
            devices = await nc.jetstream().key_value(names.BUCKET_DEVICES)
            key = names.kv_key(tenant, "after-restart")
            written = time.monotonic()
            await devices.put(key, DeviceEntry(config_requested=True).model_dump_json().encode())
            while key not in mirror.devices.values:
                assert time.monotonic() - written < 30, "the mirror never caught up"
                await asyncio.sleep(0.02)
            caught_up = time.monotonic() - written
        finally:
            await nc.close()
        assert caught_up < CATCH_UP_BOUND_S, f"caught up after {caught_up:.2f} s"

        await eventually(
            lambda: all(b.current for b in (*mirror.buckets, app.state.service.auth.keys)),
            timeout=CATCH_UP_BOUND_S,
            interval=0.05,
        )
        status, body = await readyz(client, gw.url)
        assert status == 200, body
        assert "deploymentBase" in (await client.get(poll)).json()["_links"]
        metrics = (await client.get(f"{gw.url}/metrics")).text
        assert f'gaggle_kv_mirror_stale{{bucket="{names.BUCKET_DEVICES}"}} 0.0' in metrics
