"""Downloads off the edge: a tenant's ``download_redirect`` sends devices to presigned S3 URLs.

The gateway still authorises the device and checks the artifact is one of its action's; only
then does it answer 302 with a URL of the object store that needs no credentials of ours. The
S3 API is moto's server (``s3_endpoint``): it refuses an unsigned request for a private object
(403) and accepts a presigned one; it does not verify the signature's HMAC or expiry.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from gaggle_contracts import names
from gaggle_contracts.kv import ArtifactDoc, DeviceEntry, TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.domain import token_hash
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_storage import ObjectStore, StorageSettings, open_store
from gaggle_testing import deployment, eventually, kv_put

pytestmark = pytest.mark.integration

BUCKET = "gaggle-redirect"
PAYLOAD = os.urandom(300_000)


def s3_storage(s3_endpoint: str, **overrides: Any) -> StorageSettings:
    """Settings of moto's S3 API (any credentials are accepted)."""
    return StorageSettings(
        backend="s3",
        s3_endpoint=s3_endpoint,
        s3_bucket=BUCKET,
        s3_access_key="testing",
        s3_secret_key="testing",
        **overrides,
    )


async def store_payload(store: ObjectStore, key: str) -> ArtifactDoc:
    """Write ``PAYLOAD`` under ``key``; its artifact document."""

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(PAYLOAD), 64 * 1024):
            yield PAYLOAD[i : i + 64 * 1024]

    await store.write(key, chunks())
    return ArtifactDoc(
        filename="a.swu",
        size=len(PAYLOAD),
        md5=hashlib.md5(PAYLOAD).hexdigest(),  # noqa: S324
        sha1=hashlib.sha1(PAYLOAD).hexdigest(),  # noqa: S324
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        object_key=key,
    )


async def give_action(nats_url: str, tenant: str, cid: str, art: ArtifactDoc) -> None:
    """Device ``cid`` (token ``t-<cid>``) with an open action of one artifact."""
    key = names.kv_key(tenant, cid)
    device = DeviceEntry(token_hash=token_hash(f"t-{cid}")).model_dump_json().encode()
    await kv_put(nats_url, names.BUCKET_DEVICES, key, device)
    entry = deployment("3", art).model_dump_json().encode()
    await kv_put(nats_url, names.BUCKET_DEPLOYMENTS, key, entry)


async def set_tenant(nats_url: str, tenant: str, redirect: bool | None) -> None:
    """The tenant's entry in KV ``tenants``, as registry writes it."""
    config = TenantConfig(download_redirect=redirect).model_dump_json().encode()
    await kv_put(nats_url, names.BUCKET_TENANTS, tenant, config)


def artifact_url(gw_url: str, tenant: str, cid: str, name: str = "a.swu") -> str:
    return f"{gw_url}/{tenant}/controller/v1/{cid}/softwaremodules/7/artifacts/{name}"


def token(cid: str) -> dict[str, str]:
    return {"Authorization": f"TargetToken t-{cid}"}


async def redirected(client: httpx.AsyncClient, url: str, cid: str) -> bool:
    """Whether the gateway answers the device's download with a redirect (else it streams)."""
    r = await client.get(url, headers=token(cid))
    assert r.status_code in (200, 302), (r.status_code, r.text)
    if r.status_code == 200:
        assert r.content == PAYLOAD
    return r.status_code == 302


@pytest.fixture
async def s3_store(s3_endpoint: str) -> ObjectStore:
    store = open_store(s3_storage(s3_endpoint))
    await store.ensure_bucket()  # type: ignore[attr-defined]
    return store


async def test_the_gateway_redirects_only_for_tenants_with_download_redirect_on(
    common: CommonSettings, serve: Any, tenant: str, s3_endpoint: str, s3_store: ObjectStore
) -> None:
    art = await store_payload(s3_store, f"{tenant}/1/a.swu")
    await give_action(common.nats_url, tenant, "dev-1", art)
    await set_tenant(common.nats_url, tenant, None)
    gw = await serve(build_gateway(common, GatewaySettings(), s3_storage(s3_endpoint)))
    url = artifact_url(gw.url, tenant, "dev-1")
    async with httpx.AsyncClient(timeout=10) as client:
        # Not set, and the deployment's default (GAGGLE_STORAGE_PRESIGN) off: streamed.
        assert not await redirected(client, url, "dev-1")
        await set_tenant(common.nats_url, tenant, True)
        await eventually(lambda: redirected(client, url, "dev-1"), timeout=5)
        await set_tenant(common.nats_url, tenant, False)

        async def streamed() -> bool:
            return not await redirected(client, url, "dev-1")

        await eventually(streamed, timeout=5)


async def test_a_tenant_can_turn_off_the_deployments_default_redirect(
    common: CommonSettings, serve: Any, tenant: str, s3_endpoint: str, s3_store: ObjectStore
) -> None:
    art = await store_payload(s3_store, f"{tenant}/1/a.swu")
    await give_action(common.nats_url, tenant, "dev-1", art)
    await set_tenant(common.nats_url, tenant, False)
    other = f"t{secrets.token_hex(5)}"
    await give_action(common.nats_url, other, "dev-1", art)
    await set_tenant(common.nats_url, other, None)
    storage = s3_storage(s3_endpoint, presign=True)
    gw = await serve(build_gateway(common, GatewaySettings(), storage))
    async with httpx.AsyncClient(timeout=10) as client:
        assert not await redirected(client, artifact_url(gw.url, tenant, "dev-1"), "dev-1")
        assert await redirected(client, artifact_url(gw.url, other, "dev-1"), "dev-1")


async def test_the_redirect_points_at_storage_needs_no_token_and_serves_ranges(
    common: CommonSettings, serve: Any, tenant: str, s3_endpoint: str, s3_store: ObjectStore
) -> None:
    art = await store_payload(s3_store, f"{tenant}/1/a.swu")
    await give_action(common.nats_url, tenant, "dev-1", art)
    await set_tenant(common.nats_url, tenant, True)
    gw = await serve(build_gateway(common, GatewaySettings(), s3_storage(s3_endpoint)))
    url = artifact_url(gw.url, tenant, "dev-1")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url, headers=token("dev-1"))
        assert r.status_code == 302, r.text
        assert r.headers["cache-control"] == "no-store"
        location = r.headers["location"]
        parts = urlsplit(location)
        assert (parts.scheme, parts.netloc, parts.path) == (
            "http",
            s3_endpoint,
            f"/{BUCKET}/{tenant}/1/a.swu",
        )
        assert "X-Amz-Signature=" in parts.query
        assert "X-Amz-Expires=300" in parts.query
        # No Authorization (clients drop it on a redirect to another origin): the URL is enough.
        whole = await client.get(location)
        assert whole.status_code == 200
        assert whole.content == PAYLOAD
        # The same object without the signature is refused: the bucket is not public.
        unsigned = await client.get(urlunsplit((*parts[:3], "", "")))
        assert unsigned.status_code == 403
        # A resume: the device asks the gateway again with Range, and sends it on to storage.
        again = await client.get(url, headers={**token("dev-1"), "Range": "bytes=200000-"})
        assert again.status_code == 302
        part = await client.get(again.headers["location"], headers={"Range": "bytes=200000-"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 200000-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
        assert part.content == PAYLOAD[200_000:]
        # HEAD (SWUpdate's first request) gets a URL signed for HEAD, with the length.
        head = await client.head(url, headers=token("dev-1"))
        assert head.status_code == 302
        assert head.headers["location"] != location
        there = await client.head(head.headers["location"])
        assert there.status_code == 200
        assert int(there.headers["content-length"]) == len(PAYLOAD)
        # Following redirects as the real clients do, Authorization dropped on the way.
        followed = await client.get(url, headers=token("dev-1"), follow_redirects=True)
        assert followed.status_code == 200
        assert followed.content == PAYLOAD
        assert followed.history[0].status_code == 302
        assert "authorization" not in followed.request.headers
        # The .MD5SUM link is answered by the gateway itself.
        md5 = await client.get(f"{url}.MD5SUM", headers=token("dev-1"))
        assert md5.status_code == 200
        assert md5.text == f"{art.md5}  a.swu"


async def test_no_redirect_without_the_device_token_or_the_action(
    common: CommonSettings, serve: Any, tenant: str, s3_endpoint: str, s3_store: ObjectStore
) -> None:
    art = await store_payload(s3_store, f"{tenant}/1/a.swu")
    await give_action(common.nats_url, tenant, "dev-1", art)
    # dev-2 is known, with a token, and has no action.
    idle = DeviceEntry(token_hash=token_hash("t-dev-2")).model_dump_json().encode()
    await kv_put(common.nats_url, names.BUCKET_DEVICES, names.kv_key(tenant, "dev-2"), idle)
    await set_tenant(common.nats_url, tenant, True)
    gw = await serve(build_gateway(common, GatewaySettings(), s3_storage(s3_endpoint)))
    async with httpx.AsyncClient(timeout=10) as client:
        # Another device asking for dev-1's artifact under its own id: it has no action.
        r = await client.get(artifact_url(gw.url, tenant, "dev-2"), headers=token("dev-2"))
        assert r.status_code == 404, r.text
        assert "location" not in r.headers
        # dev-1's path with dev-2's token, or with none: refused before any URL is signed.
        for headers in (token("dev-2"), {}):
            r = await client.get(artifact_url(gw.url, tenant, "dev-1"), headers=headers)
            assert r.status_code == 401, r.text
            assert "location" not in r.headers
        # An artifact the action does not have.
        r = await client.get(artifact_url(gw.url, tenant, "dev-1", "b.swu"), headers=token("dev-1"))
        assert r.status_code == 404, r.text
        assert "location" not in r.headers


async def test_a_local_folder_store_streams_even_with_download_redirect_on(
    common: CommonSettings, serve: Any, tenant: str, tmp_path: Path
) -> None:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    art = await store_payload(open_store(storage), f"{tenant}/1/a.swu")
    await give_action(common.nats_url, tenant, "dev-1", art)
    await set_tenant(common.nats_url, tenant, True)
    gw = await serve(build_gateway(common, GatewaySettings(), storage))
    url = artifact_url(gw.url, tenant, "dev-1")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url, headers=token("dev-1"))
        assert r.status_code == 200
        assert r.content == PAYLOAD
        part = await client.get(url, headers={**token("dev-1"), "Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.content == PAYLOAD[100:200]


async def test_registry_sets_download_redirect_and_the_gateway_follows_it(
    common: CommonSettings,
    serve: Any,
    tenant: str,
    operator_key: str,
    s3_endpoint: str,
    s3_store: ObjectStore,
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    art = await store_payload(s3_store, f"{tenant}/1/a.swu")
    await give_action(common.nats_url, tenant, "dev-1", art)
    gw = await serve(build_gateway(common, GatewaySettings(), s3_storage(s3_endpoint)))
    url = artifact_url(gw.url, tenant, "dev-1")
    admin = {"Authorization": f"Bearer {operator_key}"}
    settings_url = f"{registry.url}/api/v1/tenants/{tenant}"
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.put(settings_url, json={"download_redirect": True}, headers=admin)
        assert r.status_code in (200, 201), r.text
        assert r.json()["download_redirect"] is True
        await eventually(lambda: redirected(client, url, "dev-1"), timeout=5)
        r = await client.put(settings_url, json={}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["download_redirect"] is None

        async def streamed() -> bool:
            return not await redirected(client, url, "dev-1")

        await eventually(streamed, timeout=5)
        r = await client.put(settings_url, json={"download_redirect": "soon"}, headers=admin)
        assert r.status_code == 400
        assert "download_redirect" in r.text
