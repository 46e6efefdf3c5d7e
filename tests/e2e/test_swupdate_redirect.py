"""Real clients download their images from S3 through the gateway's presigned redirect.

The tenant has ``download_redirect`` on and the gateway stores on S3 (moto's server). Devices
reach the bucket through a proxy (``GAGGLE_STORAGE_S3_PUBLIC_ENDPOINT`` names it, as it would
name a CDN or a public host) that cuts the first image download after ``CUT_AT`` bytes:
SWUpdate asks the gateway again with ``Range: bytes=N-``, follows the new redirect and gets the
rest as 206. The device sends its ``TargetToken`` to the gateway only. rauc-hawkbit (which does
not resume) follows the redirect too, its ``Authorization`` header left behind.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker
from gaggle_storage import StorageSettings, open_store
from gaggle_testing.proxy import TcpProxy
from tests.e2e.conftest import CLOSED_STATUSES, E2EStack, format_action, has_detail, random_id
from tests.e2e.test_swupdate import device_run, make_device, make_image

pytestmark = pytest.mark.e2e

CUT_AT = 100_000
"""Bytes of the first image download let through before the connection is cut."""


@pytest.fixture
async def s3_stack(
    common: CommonSettings,
    serve: Any,
    tenant: str,
    s3_endpoint: str,
    operator_auth: httpx.Auth,
) -> AsyncIterator[tuple[E2EStack, TcpProxy]]:
    """Registry, rollouts and a gateway on S3 whose presigned URLs name a cutting proxy."""
    proxy = TcpProxy(
        ("127.0.0.1", int(s3_endpoint.rsplit(":", 1)[1])), record=True, cut_after=CUT_AT
    )
    await proxy.start()
    storage = StorageSettings(
        backend="s3",
        s3_endpoint=s3_endpoint,
        s3_public_endpoint=f"127.0.0.1:{proxy.port}",
        s3_bucket="gaggle-e2e",
        s3_access_key="testing",
        s3_secret_key="testing",
    )
    store = open_store(storage)
    await store.ensure_bucket()  # type: ignore[attr-defined]
    registry = await serve(build_registry(common, RegistrySettings()))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(polling_sleep="00:00:01"), storage))
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        async with httpx.AsyncClient(timeout=15, auth=operator_auth) as client:
            stack = E2EStack(
                tenant=tenant,
                gateway=gateway,
                registry=registry,
                rollouts=rollouts,
                store=cast(Any, store),
                client=client,
                broker=broker,
            )
            r = await client.put(
                f"{registry.url}/api/v1/tenants/{tenant}",
                json={"download_redirect": True, "polling_sleep": "00:00:01"},
            )
            assert r.status_code in (200, 201), r.text
            yield stack, proxy
    finally:
        await broker.stop()
        await proxy.stop()


@pytest.mark.timeout(240)
async def test_swupdate_follows_the_redirect_and_resumes_a_cut_download_with_range(
    s3_stack: tuple[E2EStack, TcpProxy],
    tmp_path: Path,
    signing_cert: tuple[Path, Path],
    swupdate_bin: str,
) -> None:
    stack, proxy = s3_stack
    version = "2.0.1"
    swu, payload, install_path = make_image(tmp_path, signing_cert, version)
    assert len(swu) > 2 * CUT_AT
    filename = f"e2e-image-{version}.swu"
    software = await stack.publish_software(swu, version=version, filename=filename)
    cid = random_id("swu-s3")
    r = await stack.client.post(
        f"{stack.registry.url}/api/v1/devices",
        params={"tenant": stack.tenant},
        json={"controller_id": cid},
    )
    assert r.status_code == 201, r.text
    device_token = r.json()["token"]
    action = await stack.create_action(cid, software.software_id, "forced")
    action_id = action["id"]
    download = (
        f"{stack.gateway_url}/{stack.tenant}/controller/v1/{cid}"
        f"/softwaremodules/{software.software_id}/artifacts/{filename}"
    )

    async def redirected() -> bool:
        auth = {"Authorization": f"TargetToken {device_token}"}
        answer = await stack.client.head(download, headers=auth)
        return answer.status_code == 302

    # The action is in the gateway's mirror, and the tenant's setting with it.
    deadline = asyncio.get_running_loop().time() + 10
    while not await redirected():
        assert asyncio.get_running_loop().time() < deadline, "the gateway never redirected"
        await asyncio.sleep(0.1)
    dev = make_device(stack, tmp_path, signing_cert, swupdate_bin, cid)
    dev.target_token = device_token

    with dev:
        await device_run(
            stack,
            action_id,
            dev.run_phase1_async(
                install_path,
                expected_payload=payload,
                until=stack.action_condition(
                    action_id, lambda a: has_detail(a, "All Chunks Installed.")
                ),
                timeout=90,
            ),
        )
        assert install_path.read_bytes() == payload
        log = dev.log_tail("phase1")
        requests = proxy.requests
        context = f"requests={[(m, p[:80], h.get('range')) for m, p, h in requests]}\n{log}"
        # Every request reached the bucket on a presigned URL, without the device's token.
        assert requests, context
        assert all("X-Amz-Signature=" in path for _, path, _ in requests), context
        assert all("authorization" not in headers for _, _, headers in requests), context
        assert {m for m, _, _ in requests} >= {"HEAD", "GET"}, context
        # The first GET was cut; the download went on from where it stopped, as 206.
        assert proxy.cut, context
        resumed = [
            int(m.group(1))
            for _, _, headers in requests
            if (m := re.fullmatch(r"bytes=(\d+)-", headers.get("range", "")))
        ]
        assert resumed, context
        assert 0 < resumed[0] <= CUT_AT, context
        # The resume went through the gateway again: a URL signed later (X-Amz-Date), not the
        # first one reused (SWUpdate waits its retrywait, 1 s here, before it resumes).
        gets = [(path, headers) for method, path, headers in requests if method == "GET"]
        first = next(path for path, headers in gets if "range" not in headers)
        again = next(path for path, headers in gets if "range" in headers)
        assert again != first, context
        assert 206 in proxy.statuses, context

        await device_run(
            stack,
            action_id,
            dev.run_phase2_async(
                stack.action_condition(action_id, lambda a: a["status"] in CLOSED_STATUSES),
                sw_version=version,
                timeout=45,
            ),
        )
    final = await stack.wait_action(
        action_id, "finished", timeout=10, diagnostics=lambda: dev.log_tail("phase2")
    )
    assert final["history"][-1]["finished"] == "success", format_action(final)


@pytest.mark.timeout(240)  # the first run builds the client venv
async def test_rauc_hawkbit_follows_the_redirect_without_its_token(
    s3_stack: tuple[E2EStack, TcpProxy], rauc_python: Path, tmp_path: Path
) -> None:
    from tests.e2e.test_rauc_hawkbit import ATTRIBUTES, assign_bundle, report, run_rauc

    stack, proxy = s3_stack
    proxy.cut = True  # rauc-hawkbit does not resume: no cut for it
    cid = random_id("rauc-s3")
    client = asyncio.create_task(run_rauc(stack, rauc_python, cid, "success", tmp_path / "dl"))
    try:
        await stack.wait_device(
            cid, lambda d: d["attributes"].get("client") == ATTRIBUTES["client"]
        )
        bundle, action_id = await assign_bundle(stack, cid, "2.0.2")
        res = await client
    finally:
        if not client.done():
            client.cancel()
    context = report(res)
    assert res.returncode == 0, context
    (download,) = res.step("download")
    assert download["md5_ok"] and download["sha1_ok"] and download["sha256_ok"], context
    assert Path(download["path"]).read_bytes() == bundle, context
    # The bytes came from the bucket, on a presigned URL, and the client's Authorization header
    # (rauc-hawkbit always sends one, if empty) stayed with the gateway.
    gets = [(path, headers) for method, path, headers in proxy.requests if method == "GET"]
    assert gets, context
    assert all("X-Amz-Signature=" in path for path, _ in gets), context
    assert all("authorization" not in headers for _, headers in gets), context
    final = await stack.wait_action(action_id, "finished", diagnostics=lambda: context)
    assert final["history"][-1]["finished"] == "success", format_action(final)
