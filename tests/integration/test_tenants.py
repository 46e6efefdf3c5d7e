"""Tenants are explicit: devices of a tenant nobody created get 404; operators create tenants."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import nats
import pytest

from gaggle_contracts import names
from gaggle_contracts.kv import MAX_UPDATES_IN_FLIGHT, MAX_UPDATES_IN_FLIGHT_LIMIT
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.jetstream import ensure_all
from gaggle_testing import eventually
from tests.integration.support import cli_env, run_cli

pytestmark = pytest.mark.integration


async def messages(common: CommonSettings, tenant: str) -> int:
    """Events of ``tenant`` on the stream, of any kind."""
    nc = await nats.connect(common.nats_url)
    try:
        js = nc.jetstream()
        await ensure_all(js, common)
        info = await js.stream_info(names.STREAM, subjects_filter=f"ota.v1.{tenant}.>")
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def until_status(
    client: httpx.AsyncClient, url: str, status: int, timeout: float = 5, **kw: Any
) -> httpx.Response:
    async def answered() -> httpx.Response:
        r = await client.get(url, **kw)
        assert r.status_code == status, (r.status_code, r.text)
        return r

    response: httpx.Response = await eventually(answered, timeout=timeout)
    return response


async def test_a_tenant_nobody_created_gets_404_and_nothing_is_registered(
    common: CommonSettings, serve: Any
) -> None:
    gw = await serve(build_gateway(common, GatewaySettings(seen_flush_s=0.2)))
    ghost = f"ghost{secrets.token_hex(4)}"
    base = f"{gw.url}/{ghost.upper()}/controller/v1/dev-1"
    feedback = {"status": {"execution": "closed", "result": {"finished": "success"}}}
    async with httpx.AsyncClient(timeout=10) as client:
        for method, url, body in [
            ("GET", base, None),
            ("PUT", f"{base}/configData", {"data": {"hw_boardname": "b"}}),
            ("POST", f"{base}/deploymentBase/1/feedback", feedback),
            ("GET", f"{base}/confirmationBase", None),
        ]:
            r = await client.request(method, url, json=body)
            assert r.status_code == 404, (method, url, r.text)
            error = r.json()
            assert error["errorCode"] == "hawkbit.server.error.repo.entityNotFound"
            assert f"tenant {ghost.upper()!r} does not exist" in error["message"]
        # The configured default tenant works out of the box, any case.
        assert (await client.get(f"{gw.url}/DEFAULT/controller/v1/dev-1")).status_code == 200
        assert (await client.get(f"{gw.url}/default/controller/v1/dev-1")).status_code == 200
        await asyncio.sleep(0.5)  # past a sightings flush
        metrics = (await client.get(f"{gw.url}/metrics")).text
    assert await messages(common, ghost.lower()) == 0
    assert 'gaggle_ddi_polls_total{outcome="not_found"} 1.0' in metrics


async def test_a_tenant_with_an_api_key_or_configured_on_the_gateway_exists(
    common: CommonSettings, serve: Any, issue_key: Any
) -> None:
    keyed, configured = (f"t{secrets.token_hex(5)}" for _ in range(2))
    gw = await serve(build_gateway(common, GatewaySettings(tenants=f"default, {configured}")))
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{gw.url}/{keyed}/controller/v1/dev-1"
        assert (await client.get(url)).status_code == 404
        await issue_key(keyed, ["device:read"])
        await until_status(client, url, 200)
        r = await client.get(f"{gw.url}/{configured.upper()}/controller/v1/dev-1")
        assert r.status_code == 200


async def test_an_operator_creates_a_tenant_and_configures_its_devices(
    common: CommonSettings, serve: Any, tenant: str, operator_key: str
) -> None:
    # The operator's key is of the registry's bootstrap tenant: it may create others.
    registry = await serve(build_registry(common, RegistrySettings()))
    gw = await serve(build_gateway(common, GatewaySettings(poll_jitter=0)))
    acme = f"acme{secrets.token_hex(4)}"
    poll = f"{gw.url}/{acme.upper()}/controller/v1/dev-1"
    admin = {"Authorization": f"Bearer {operator_key}"}
    gateway_token = {"Authorization": "GatewayToken gw-secret-1"}
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(poll)).status_code == 404
        assert (
            await client.get(f"{registry.url}/api/v1/tenants/{acme}", headers=admin)
        ).status_code == 404

        url = f"{registry.url}/api/v1/tenants/{acme.upper()}"
        settings = {"polling_sleep": "00:00:42", "anonymous": False, "gateway_token": "gw-secret-1"}
        r = await client.put(url, json=settings, headers=admin)
        assert r.status_code == 201, r.text
        doc = r.json()
        assert (doc["tenant"], doc["polling_sleep"], doc["anonymous"]) == (acme, "00:00:42", False)
        assert doc["has_gateway_token"] is True
        assert "gateway_token_hash" not in doc and "gw-secret-1" not in r.text

        # Within moments every gateway knows it: anonymous polls are refused, the token works.
        await until_status(client, poll, 401)
        r = await client.get(poll, headers=gateway_token)
        assert r.status_code == 200
        assert r.json()["config"]["polling"]["sleep"] == "00:00:42"

        # Replacing the settings keeps the gateway token unless it is named.
        r = await client.put(
            url, json={"polling_sleep": "00:00:43", "anonymous": False}, headers=admin
        )
        assert r.status_code == 200, r.text
        assert r.json()["has_gateway_token"] is True

        async def sleep_is(value: str) -> bool:
            r = await client.get(poll, headers=gateway_token)
            return r.status_code == 200 and r.json()["config"]["polling"]["sleep"] == value

        deadline = time.monotonic() + 5
        while not await sleep_is("00:00:43"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        listed = (await client.get(f"{registry.url}/api/v1/tenants", headers=admin)).json()
        assert acme in [t["tenant"] for t in listed["items"]]

        # Its first admin key: it manages its own tenant, and no other.
        r = await client.post(f"{url}/keys", json={"name": "acme admin"}, headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["tenant"] == acme
        theirs = {"Authorization": f"Bearer {r.json()['key']}"}
        mine = await until_status(
            client, f"{registry.url}/api/v1/tenants/{acme}", 200, headers=theirs
        )
        assert mine.json()["polling_sleep"] == "00:00:43"
        r = await client.get(f"{registry.url}/api/v1/tenants", headers=theirs)
        assert [t["tenant"] for t in r.json()["items"]] == [acme]
        other = f"{registry.url}/api/v1/tenants/{tenant}"
        assert (await client.put(other, json={}, headers=theirs)).status_code == 404
        assert (
            await client.post(f"{other}/keys", json={"name": "x"}, headers=theirs)
        ).status_code == 404

        # Bad settings are a clear 400 naming the field.
        r = await client.put(url, json={"polling_sleep": "25:00:00"}, headers=admin)
        assert r.status_code == 400 and "polling_sleep" in r.text
        r = await client.put(url, json={"gateway_token": "short"}, headers=admin)
        assert r.status_code == 400 and "gateway_token" in r.text


async def test_the_cap_on_updates_in_flight_is_set_in_registry_and_read_by_rollouts(
    common: CommonSettings, serve: Any, operator_key: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    rollouts = await serve(build_rollouts(common, RolloutsSettings(sweep_s=60)))
    caps = rollouts.app.state.store.members.caps
    name = f"cap{secrets.token_hex(4)}"
    url = f"{registry.url}/api/v1/tenants/{name}"
    admin = {"Authorization": f"Bearer {operator_key}"}
    async with httpx.AsyncClient(timeout=10) as client:
        # A tenant never configured has the default cap.
        await eventually(lambda: caps.cap(name) == MAX_UPDATES_IN_FLIGHT)
        r = await client.put(url, json={"max_updates_in_flight": 3}, headers=admin)
        assert r.status_code == 201, r.text
        assert r.json()["max_updates_in_flight"] == 3
        await eventually(lambda: caps.cap(name) == 3)

        # Anything but a whole number from 1 to the limit is a clear 400; nothing changes.
        for bad in (0, -5, MAX_UPDATES_IN_FLIGHT_LIMIT + 1, 2.5, "7", True, None):
            r = await client.put(url, json={"max_updates_in_flight": bad}, headers=admin)
            assert r.status_code == 400, (bad, r.text)
            body = r.json()
            assert body["error"] == "invalid_request", body
            assert body["message"].startswith("invalid max_updates_in_flight"), body
        got = await client.get(url, headers=admin)
        assert got.json()["max_updates_in_flight"] == 3

        # Settings replaced without it take the default again, as every omitted setting does.
        r = await client.put(url, json={"polling_sleep": "00:00:30"}, headers=admin)
        assert r.json()["max_updates_in_flight"] == MAX_UPDATES_IN_FLIGHT
        await eventually(lambda: caps.cap(name) == MAX_UPDATES_IN_FLIGHT)
        r = await client.put(
            url, json={"max_updates_in_flight": MAX_UPDATES_IN_FLIGHT_LIMIT}, headers=admin
        )
        assert r.status_code == 200, r.text


async def test_the_command_line_creates_and_shows_a_tenant(
    common: CommonSettings, serve: Any, operator_key: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    gw = await serve(build_gateway(common, GatewaySettings(poll_jitter=0)))
    name = f"cli{secrets.token_hex(4)}"
    env = cli_env(GAGGLE_REGISTRY_URL=registry.url, GAGGLE_API_KEY=operator_key)

    async def gaggle(*args: str, code: int = 0) -> Any:
        run = await run_cli(env, "--json", *args, code=code)
        return json.loads(run.out) if code == 0 else run.err

    created = await gaggle(
        "tenants",
        "set",
        name,
        "--polling-sleep",
        "00:00:07",
        "--max-updates-in-flight",
        "25",
        "--download-redirect",
    )
    assert (created["tenant"], created["polling_sleep"]) == (name, "00:00:07")
    assert created["max_updates_in_flight"] == 25
    assert created["download_redirect"] is True
    shown = await gaggle("tenants", "show", name)
    assert (shown["polling_sleep"], shown["max_updates_in_flight"]) == ("00:00:07", 25)
    assert shown["download_redirect"] is True
    refused = await gaggle("tenants", "set", name, "--max-updates-in-flight", "0", code=2)
    assert "--max-updates-in-flight" in refused
    async with httpx.AsyncClient(timeout=10) as client:
        r = await until_status(client, f"{gw.url}/{name}/controller/v1/dev-1", 200)
        assert r.json()["config"]["polling"]["sleep"] == "00:00:07"
