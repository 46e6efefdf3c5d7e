"""The first flow across services: a device polls the gateway, the registry lists it."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from tests.integration.support import wait_listed

pytestmark = pytest.mark.integration


async def test_first_poll_registers_device_and_registry_lists_it(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    gateway = await serve(
        build_gateway(common, GatewaySettings(polling_sleep="00:00:30", poll_jitter=0))
    )
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        r = await client.get(f"{gateway.url}/{tenant.upper()}/controller/v1/dev-1")
        polled_at = time.monotonic()
        assert r.status_code == 200
        body = r.json()
        assert body["config"]["polling"]["sleep"] == "00:00:30"
        assert body["_links"] == {
            "configData": {"href": f"{gateway.url}/{tenant.upper()}/controller/v1/dev-1/configData"}
        }

        listed = await wait_listed(client, registry.url, tenant, {"dev-1"}, timeout=1.0)
        assert listed == {"dev-1"}
        assert time.monotonic() - polled_at < 1.0

        device = (
            await client.get(f"{registry.url}/api/v1/devices/dev-1", params={"tenant": tenant})
        ).json()
        assert device["controller_id"] == "dev-1"
        assert device["tenant"] == tenant
        assert device["update_state"] == "unknown"
        assert device["last_address"] == "127.0.0.1"


async def test_concurrent_first_polls_create_each_device_exactly_once(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    gateways = [await serve(build_gateway(common, GatewaySettings())) for _ in range(2)]
    ids = [f"dev-{i:04d}" for i in range(1000)]
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(auth=operator_auth, timeout=30, limits=limits) as client:
        # Every device polls twice, once through each gateway, 32 connections at a time.
        gate = asyncio.Semaphore(32)

        async def poll(url: str) -> int:
            async with gate:
                return (await client.get(url)).status_code

        polls = [poll(f"{gw.url}/{tenant}/controller/v1/{cid}") for cid in ids for gw in gateways]
        codes = await asyncio.gather(*polls)
        assert set(codes) == {200}
        listed = await wait_listed(client, registry.url, tenant, set(ids), timeout=15)
    assert listed == set(ids)
    pool = registry.app.state.service.db.pool
    rows = await pool.fetchval("SELECT count(*) FROM registry.devices WHERE tenant = $1", tenant)
    assert rows == len(ids)


async def test_unknown_device_in_registry_answers_404_with_json(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    async with httpx.AsyncClient(auth=operator_auth) as client:
        r = await client.get(f"{registry.url}/api/v1/devices/nope", params={"tenant": tenant})
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"
        r = await client.get(f"{registry.url}/api/v1/devices", params={"limit": 0})
        assert r.status_code == 400
        assert "limit" in r.json()["message"]
