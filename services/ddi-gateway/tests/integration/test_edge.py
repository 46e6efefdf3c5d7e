"""The gateway at its edges: NATS away, device authentication, tenant settings, S3 downloads."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_contracts import names
from gaggle_contracts.kv import (
    ArtifactDoc,
    DeviceEntry,
    TenantConfig,
)
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.domain import jitter_share, token_hash
from gaggle_gateway.settings import GatewaySettings
from gaggle_servers import NatsProcess
from gaggle_storage import StorageSettings, open_store
from gaggle_testing import ART, deployment, eventually, kv_put

pytestmark = pytest.mark.integration


async def test_while_nats_is_away_idle_polls_are_answered_and_the_rest_gets_429(
    tmp_path: Path, serve
) -> None:
    server = NatsProcess(tmp_path / "nats")
    server.start()
    common = CommonSettings(nats_url=server.url, log_json=False)
    key = names.kv_key("default", "dev-1")
    for cid in ("dev-1", "dev-2"):
        value = DeviceEntry().model_dump_json().encode()
        await kv_put(server.url, names.BUCKET_DEVICES, names.kv_key("default", cid), value)
    await kv_put(
        server.url, names.BUCKET_DEPLOYMENTS, key, deployment("5", ART).model_dump_json().encode()
    )
    gw = await serve(build_gateway(common, GatewaySettings(publish_timeout_s=1.0)))
    base = f"{gw.url}/DEFAULT/controller/v1/dev-1"
    feedback = {"status": {"execution": "proceeding", "result": {"finished": "none"}}}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            assert (
                await client.post(f"{base}/deploymentBase/5/feedback", json=feedback)
            ).status_code == 200
            server.stop()
            await asyncio.sleep(0.3)
            # An idle device is told to come back later; nothing is offered from a stale mirror.
            idle = await client.get(f"{gw.url}/DEFAULT/controller/v1/dev-2")
            assert idle.status_code == 200
            assert "deploymentBase" not in idle.json()["_links"]
            for r in (
                await client.get(base),
                await client.get(f"{base}/deploymentBase/5"),
                await client.post(f"{base}/deploymentBase/5/feedback", json=feedback),
                await client.put(f"{base}/configData", json={"data": {"a": "b"}}),
            ):
                assert r.status_code == 429
                assert r.headers["Retry-After"] == "5"
                assert r.json()["exceptionClass"] == "Busy"
                assert r.json()["errorCode"] == "hawkbit.server.error.tooManyRequests"
                assert "retry" in r.json()["message"]

            # NATS back on the same port and store: reports are taken again.
            server.start()

            async def accepted() -> bool:
                r = await client.post(f"{base}/deploymentBase/5/feedback", json=feedback)
                return r.status_code == 200

            await eventually(accepted, timeout=15)
            assert "deploymentBase" in (await client.get(base)).json()["_links"]
    finally:
        server.stop()


@pytest.fixture
async def locked_gateway(common: CommonSettings, serve, tenant: str) -> tuple[str, str]:
    """A tenant with anonymous access and auto-registration off, a gateway token, two devices."""
    config = TenantConfig(
        anonymous=False,
        auto_register=False,
        gateway_token_hash=token_hash("gw-secret"),
        polling_sleep="00:10:00",
    )
    await kv_put(common.nats_url, names.BUCKET_TENANTS, tenant, config.model_dump_json().encode())
    await kv_put(
        common.nats_url,
        names.BUCKET_DEVICES,
        names.kv_key(tenant, "tok-dev"),
        DeviceEntry(token_hash=token_hash("dev-secret"), config_requested=False)
        .model_dump_json()
        .encode(),
    )
    gw = await serve(build_gateway(common, GatewaySettings(poll_jitter=0)))
    return gw.url, tenant


@pytest.mark.parametrize(
    ("device", "header", "status"),
    [
        ("tok-dev", "TargetToken dev-secret", 200),
        ("tok-dev", "TargetToken wrong", 401),
        ("tok-dev", None, 401),
        ("tok-dev", "GatewayToken gw-secret", 200),
        ("tok-dev", "GatewayToken nope", 401),
        ("tok-dev", "Bearer dev-secret", 401),
        # Unknown device: the same 401 as a wrong token, never a hint that it does not exist.
        ("ghost", "TargetToken dev-secret", 401),
        ("ghost", None, 401),
    ],
)
async def test_device_authentication(
    locked_gateway: tuple[str, str], device: str, header: str | None, status: int
) -> None:
    url, tenant = locked_gateway
    headers = {"Authorization": header} if header is not None else {}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{url}/{tenant}/controller/v1/{device}", headers=headers)
        assert r.status_code == status
        if status == 401:
            assert r.content == b""
        else:
            assert r.json()["config"]["polling"]["sleep"] == "00:10:00"


async def test_a_token_is_needed_on_every_endpoint(locked_gateway: tuple[str, str]) -> None:
    url, tenant = locked_gateway
    base = f"{url}/{tenant}/controller/v1/tok-dev"
    async with httpx.AsyncClient(timeout=10) as client:
        for method, path in [
            ("put", "/configData"),
            ("get", "/deploymentBase/1"),
            ("post", "/deploymentBase/1/feedback"),
            ("get", "/cancelAction/1"),
            ("get", "/installedBase/1"),
            ("get", "/confirmationBase"),
            ("get", "/softwaremodules/1/artifacts/a.swu"),
        ]:
            r = await client.request(method, base + path, json={})
            assert r.status_code == 401, (method, path)


async def test_open_action_polling_interval_per_tenant(
    common: CommonSettings, serve, tenant: str
) -> None:
    config = TenantConfig(polling_sleep="00:05:00", polling_sleep_open_action="00:00:15")
    await kv_put(common.nats_url, names.BUCKET_TENANTS, tenant, config.model_dump_json().encode())
    await kv_put(
        common.nats_url,
        names.BUCKET_DEPLOYMENTS,
        names.kv_key(tenant, "busy"),
        deployment("9", ART).model_dump_json().encode(),
    )
    gw = await serve(build_gateway(common, GatewaySettings(poll_jitter=0)))
    async with httpx.AsyncClient(timeout=10) as client:
        idle = (await client.get(f"{gw.url}/{tenant}/controller/v1/idle")).json()
        busy = (await client.get(f"{gw.url}/{tenant}/controller/v1/busy")).json()
    assert idle["config"]["polling"]["sleep"] == "00:05:00"
    assert busy["config"]["polling"]["sleep"] == "00:00:15"


async def test_a_device_keeps_its_jitter_with_and_without_an_open_action(
    common: CommonSettings, serve, tenant: str
) -> None:
    config = TenantConfig(polling_sleep="00:16:40", polling_sleep_open_action="00:01:40")
    await kv_put(common.nats_url, names.BUCKET_TENANTS, tenant, config.model_dump_json().encode())
    gw = await serve(build_gateway(common, GatewaySettings(poll_jitter=0.1)))
    url = f"{gw.url}/{tenant}/controller/v1"
    async with httpx.AsyncClient(timeout=10) as client:
        idle = {}
        for cid in (f"dev-{n}" for n in range(20)):
            idle[cid] = seconds((await client.get(f"{url}/{cid}")).json())
            assert seconds((await client.get(f"{url}/{cid}")).json()) in around(1000, tenant, cid)
        assert all(900 <= s <= 1100 for s in idle.values()), idle
        assert len(set(idle.values())) > 10, idle
        for cid in idle:
            key = names.kv_key(tenant, cid)
            value = deployment("9", ART).model_dump_json().encode()
            await kv_put(common.nats_url, names.BUCKET_DEPLOYMENTS, key, value)

        async def open_sleeps() -> dict[str, int]:
            bodies = [(await client.get(f"{url}/{cid}")).json() for cid in idle]
            assert all("deploymentBase" in b["_links"] for b in bodies)
            return {cid: seconds(b) for cid, b in zip(idle, bodies, strict=True)}

        busy = await eventually(open_sleeps)
    # A tenth of the interval, moved by the same share: 1000 s ± 100 and 100 s ± 10.
    for cid, sleep in busy.items():
        assert idle[cid] in around(1000, tenant, cid)
        assert sleep in around(100, tenant, cid)


def around(interval: int, tenant: str, cid: str) -> set[int]:
    """The two sleeps a device may be handed for ``interval``: its target rounded down or up."""
    target = interval * (1 + jitter_share(tenant, cid) * 0.1)
    return {math.floor(target), math.ceil(target)}


def seconds(poll: dict[str, Any]) -> int:
    """The ``HH:MM:SS`` polling sleep of a poll answer, in seconds."""
    hours, minutes, secs = poll["config"]["polling"]["sleep"].split(":")
    return int(hours) * 3600 + int(minutes) * 60 + int(secs)


@pytest.mark.parametrize("presign", [True, False])
async def test_downloads_from_s3_stream_or_redirect_to_a_url_that_needs_no_token(
    common: CommonSettings, serve, tenant: str, s3_endpoint: str, presign: bool
) -> None:
    storage = StorageSettings(
        backend="s3",
        s3_endpoint=s3_endpoint,
        s3_bucket="gaggle-test",
        s3_access_key="testing",
        s3_secret_key="testing",
        presign=presign,
    )
    store = open_store(storage)
    await store.ensure_bucket()  # type: ignore[attr-defined]
    payload = os.urandom(200_000)

    async def chunks() -> AsyncIterator[bytes]:
        yield payload[:100_000]
        yield payload[100_000:]

    await store.write("obj/a.swu", chunks())
    art = ArtifactDoc(
        filename="a.swu",
        size=len(payload),
        md5=hashlib.md5(payload).hexdigest(),  # noqa: S324
        sha1=hashlib.sha1(payload).hexdigest(),  # noqa: S324
        sha256=hashlib.sha256(payload).hexdigest(),
        object_key="obj/a.swu",
    )
    key = names.kv_key(tenant, "s3-dev")
    await kv_put(
        common.nats_url,
        names.BUCKET_DEVICES,
        key,
        DeviceEntry(token_hash=token_hash("t0k")).model_dump_json().encode(),
    )
    await kv_put(
        common.nats_url,
        names.BUCKET_DEPLOYMENTS,
        key,
        deployment("3", art).model_dump_json().encode(),
    )
    await kv_put(
        common.nats_url, names.BUCKET_TENANTS, tenant, TenantConfig().model_dump_json().encode()
    )
    gw = await serve(build_gateway(common, GatewaySettings(), storage))
    url = f"{gw.url}/{tenant}/controller/v1/s3-dev/softwaremodules/7/artifacts/a.swu"
    auth = {"Authorization": "TargetToken t0k"}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url, headers=auth)
        if presign:
            assert r.status_code == 302
            target = r.headers["location"]
            assert target.startswith(f"http://{s3_endpoint}/gaggle-test/obj/a.swu?")
            # Clients drop Authorization when a redirect leaves the origin: none is needed.
            fetched = await client.get(target)
            assert fetched.status_code == 200
            assert fetched.content == payload
        else:
            assert r.status_code == 200
            assert r.content == payload
            part = await client.get(url, headers={**auth, "Range": "bytes=150000-"})
            assert part.status_code == 206
            assert part.content == payload[150_000:]
        assert (await client.get(url)).status_code == 401
