"""configData and sightings reach the registry."""

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

pytestmark = pytest.mark.integration


async def wait_device(client: httpx.AsyncClient, url: str, tenant: str, cid: str, check) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while True:
        r = await client.get(f"{url}/api/v1/devices/{cid}", params={"tenant": tenant})
        if r.status_code == 200 and check(r.json()):
            return r.json()
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.05)


async def test_config_data_is_merged_lifted_and_stops_being_requested(
    operator_auth: httpx.Auth, common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(seen_flush_s=0.2)))
    base = f"{gateway.url}/{tenant}/controller/v1/swu-dev"
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        assert "configData" in (await client.get(base)).json()["_links"]
        # SWUpdate's body, legacy fields and all.
        r = await client.put(
            f"{base}/configData",
            json={
                "id": "",
                "time": "20261123T182543",
                "mode": "replace",
                "status": {
                    "result": {"finished": "success"},
                    "execution": "closed",
                    "details": [""],
                },
                "data": {
                    "client": "swupdate-suricatta",
                    "hw_revision": "1.0",
                    "hw_boardname": "e2eboard",
                    "sw_version": "0.0.1",
                },
            },
        )
        assert r.status_code == 200
        device = await wait_device(
            client, registry.url, tenant, "swu-dev", lambda d: d["hw_model"] == "e2eboard"
        )
        assert (device["hw_revision"], device["sw_version"]) == ("1.0", "0.0.1")
        assert device["attributes"]["client"] == "swupdate-suricatta"
        assert device["config_requested"] is False

        deadline = time.monotonic() + 5
        while "configData" in (await client.get(base)).json()["_links"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        r = await client.put(f"{base}/configData", json={"mode": "remove", "data": {"client": ""}})
        assert r.status_code == 200
        device = await wait_device(
            client, registry.url, tenant, "swu-dev", lambda d: "client" not in d["attributes"]
        )
        assert device["hw_model"] == "e2eboard"

        first_seen = device["last_seen_at"]
        await asyncio.sleep(0.3)
        # The newest sighting wins: its time and the address it came from.
        await client.get(base, headers={"X-Forwarded-For": "192.0.2.7"})
        device = await wait_device(
            client, registry.url, tenant, "swu-dev", lambda d: d["last_address"] == "192.0.2.7"
        )
        assert device["last_seen_at"] > first_seen
