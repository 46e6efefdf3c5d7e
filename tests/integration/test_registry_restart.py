"""Restarting the registry while devices keep arriving loses none of them."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from tests.integration.support import wait_listed

pytestmark = pytest.mark.integration


async def test_registry_restart_mid_stream_loses_no_device(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    gateway = await serve(build_gateway(common, GatewaySettings()))
    ids = [f"dev-{i:04d}" for i in range(400)]

    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:

        async def poll_all() -> None:
            for start in range(0, len(ids), 20):
                batch = ids[start : start + 20]
                answers = await asyncio.gather(
                    *(client.get(f"{gateway.url}/{tenant}/controller/v1/{cid}") for cid in batch)
                )
                assert {a.status_code for a in answers} == {200}
                await asyncio.sleep(0.01)

        polling = asyncio.create_task(poll_all())
        await asyncio.sleep(0.1)
        # Stop the registry while events are in flight, let more arrive, start a fresh one.
        await registry.stop()
        await asyncio.sleep(0.3)
        registry = await serve(build_registry(common, RegistrySettings()))
        await polling

        listed = await wait_listed(client, registry.url, tenant, set(ids), timeout=20)
    assert listed == set(ids)
    pool = registry.app.state.service.db.pool
    rows = await pool.fetchval("SELECT count(*) FROM registry.devices WHERE tenant = $1", tenant)
    assert rows == len(ids)
