"""The gateway's fast lane answers each request it takes exactly as its FastAPI route does."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware

from gaggle_contracts import names
from gaggle_contracts.kv import ArtifactDoc, DeviceEntry, TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app
from gaggle_gateway.domain import token_hash
from gaggle_gateway.fastlane import PollFastLane
from gaggle_gateway.settings import GatewaySettings
from gaggle_storage import StorageSettings, open_store
from gaggle_testing import ART, deployment, eventually, kv_put

pytestmark = pytest.mark.integration


def without_lane(app: Any) -> Any:
    """``app`` with every request left to its FastAPI routes."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not PollFastLane]
    return app


def without_feedback_lane(app: Any) -> Any:
    """``app`` with deploymentBase feedback left to its FastAPI route (as with tracing on)."""
    app.user_middleware = [
        Middleware(PollFastLane, gateway=m.kwargs["gateway"], feedback=False)
        if m.cls is PollFastLane
        else m
        for m in app.user_middleware
    ]
    return app


async def test_feedback_is_answered_alike_with_and_without_the_fast_lane(
    common: CommonSettings, serve, tenant: str
) -> None:
    config = TenantConfig(anonymous=False, auto_register=False, polling_sleep="00:10:00")
    await kv_put(common.nats_url, names.BUCKET_TENANTS, tenant, config.model_dump_json().encode())
    for cid, value in {
        "dev-1": deployment("5", ART, closed=["4"]),
        "dev-2": deployment("9", ART, state="wait_for_confirmation"),
    }.items():
        key = names.kv_key(tenant, cid)
        device = DeviceEntry(token_hash=token_hash(f"tok-{cid}"))
        await kv_put(common.nats_url, names.BUCKET_DEVICES, key, device.model_dump_json().encode())
        await kv_put(
            common.nats_url, names.BUCKET_DEPLOYMENTS, key, value.model_dump_json().encode()
        )
    settings = GatewaySettings(max_feedback_bytes=2048)
    fast = await serve(build_app(common, settings))
    slow = await serve(without_feedback_lane(build_app(common, settings)))

    ok = {"status": {"execution": "proceeding", "result": {"finished": "none"}}}
    token = {"Authorization": "TargetToken tok-dev-1"}
    cases: list[tuple[str, str, dict[str, str], Any]] = [
        ("dev-1", "5", token, ok),  # accepted
        ("dev-1", "5", {}, ok),  # no credentials
        ("dev-1", "5", {"Authorization": "TargetToken wrong"}, ok),
        ("dev-1", "4", token, ok),  # closed: 410
        ("dev-1", "6", token, ok),  # not the device's action
        ("dev-1", "x%20y", token, ok),  # malformed id
        ("dev-1", "5", token, b"{not json"),
        ("dev-1", "5", token, {"status": {"execution": "dancing"}}),
        ("dev-1", "5", token, {"status": {"execution": "closed", "details": "x" * 4000}}),
        ("dev-2", "9", {"Authorization": "TargetToken tok-dev-2"}, ok),  # awaits confirmation
        ("nobody", "5", token, ok),
        ("bad id!", "5", token, ok),
    ]

    async def answers(url: str) -> list[tuple[int, Any]]:
        out = []
        async with httpx.AsyncClient(timeout=10) as client:
            for cid, action, headers, body in cases:
                r = await client.post(
                    f"{url}/{tenant}/controller/v1/{cid}/deploymentBase/{action}/feedback",
                    headers={"Content-Type": "application/json", **headers},
                    content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                )
                out.append((r.status_code, r.json() if r.content else None))
        return out

    async def mirrored() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{fast.url}/{tenant}/controller/v1/dev-1", headers=token)
            s = await client.get(f"{slow.url}/{tenant}/controller/v1/dev-1", headers=token)
        return r.status_code == s.status_code == 200

    await eventually(mirrored, timeout=10)
    through_lane, through_route = await answers(fast.url), await answers(slow.url)
    assert through_lane == through_route
    # And they did take different paths: only the FastAPI route is timed.
    async with httpx.AsyncClient(timeout=10) as client:
        timed = [(await client.get(f"{u}/metrics")).text for u in (fast.url, slow.url)]
    route = 'route="/{tenant}/controller/v1/{controller_id}/deploymentBase/{action_id}/feedback"'
    assert route not in timed[0]
    assert route in timed[1]
    assert [status for status, _ in through_lane] == [
        200, 401, 401, 410, 404, 404, 400, 400, 413, 404, 401, 400
    ]  # fmt: skip


async def test_deployment_base_and_downloads_are_answered_alike_with_and_without_the_lane(
    common: CommonSettings, serve, tenant: str, tmp_path
) -> None:
    storage = StorageSettings(dir=tmp_path / "objects")
    payload = bytes(range(256)) * 40

    async def chunks():  # type: ignore[no-untyped-def]
        yield payload

    await open_store(storage).write("obj/a.swu", chunks())
    stored = ArtifactDoc(
        filename="a.swu",
        size=len(payload),
        md5="m" * 32,
        sha1="s" * 40,
        sha256="h" * 64,
        object_key="obj/a.swu",
    )
    external = ArtifactDoc(
        filename="e.swu",
        size=3,
        md5="m" * 32,
        sha1="s" * 40,
        sha256="h" * 64,
        external_url="https://cdn.example/e.swu",
    )
    missing = ArtifactDoc(
        filename="m.swu", size=3, md5="m" * 32, sha1="s" * 40, sha256="h" * 64, object_key="gone"
    )
    config = TenantConfig(anonymous=False, auto_register=False, polling_sleep="00:10:00")
    await kv_put(common.nats_url, names.BUCKET_TENANTS, tenant, config.model_dump_json().encode())
    for cid, art in {"dev-1": stored, "dev-2": external, "dev-3": missing}.items():
        key = names.kv_key(tenant, cid)
        device = DeviceEntry(token_hash=token_hash(f"tok-{cid}"))
        await kv_put(common.nats_url, names.BUCKET_DEVICES, key, device.model_dump_json().encode())
        value = deployment("5", art).model_dump_json().encode()
        await kv_put(common.nats_url, names.BUCKET_DEPLOYMENTS, key, value)
    settings = GatewaySettings()
    fast = await serve(build_app(common, settings, storage))
    slow = await serve(without_lane(build_app(common, settings, storage)))

    def auth(cid: str) -> dict[str, str]:
        return {"Authorization": f"TargetToken tok-{cid}"}

    artifacts = "softwaremodules/7/artifacts"
    cases: list[tuple[str, str, str, dict[str, str]]] = [
        ("GET", "dev-1", "deploymentBase/5?c=1", auth("dev-1")),
        ("GET", "dev-1", "deploymentBase/5?c=1&actionHistory=3", auth("dev-1")),
        ("GET", "dev-1", "deploymentBase/5", {}),  # no credentials
        ("GET", "dev-1", "deploymentBase/6", auth("dev-1")),  # not the device's action
        ("GET", "dev-1", "deploymentBase/x%20y", auth("dev-1")),  # malformed id
        ("GET", "nobody", "deploymentBase/5", auth("dev-1")),
        ("GET", "dev-1", f"{artifacts}/a.swu", auth("dev-1")),
        ("HEAD", "dev-1", f"{artifacts}/a.swu", auth("dev-1")),
        ("GET", "dev-1", f"{artifacts}/a.swu", {**auth("dev-1"), "Range": "bytes=100-199"}),
        ("GET", "dev-1", f"{artifacts}/a.swu", {**auth("dev-1"), "If-Match": '"nope"'}),
        ("GET", "dev-1", f"{artifacts}/a.swu.MD5SUM", auth("dev-1")),
        ("GET", "dev-1", f"{artifacts}/other.swu", auth("dev-1")),
        ("GET", "dev-1", "softwaremodules/8/artifacts/a.swu", auth("dev-1")),
        ("GET", "dev-1", f"{artifacts}/a.swu", {}),
        ("GET", "dev-2", f"{artifacts}/e.swu", auth("dev-2")),  # redirected
        ("GET", "dev-3", f"{artifacts}/m.swu", auth("dev-3")),  # not in the store
    ]

    async def answers(url: str) -> list[tuple[int, dict[str, str], bytes]]:
        out = []
        async with httpx.AsyncClient(timeout=10) as client:
            for method, cid, path, headers in cases:
                r = await client.request(
                    method, f"{url}/{tenant}/controller/v1/{cid}/{path}", headers=headers
                )
                kept = {
                    k: v.replace(url, "URL")
                    for k, v in r.headers.items()
                    if k not in ("date", "server")
                }
                out.append((r.status_code, kept, r.content.replace(url.encode(), b"URL")))
        return out

    async def mirrored() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            for url in (fast.url, slow.url):
                r = await client.get(f"{url}/{tenant}/controller/v1/dev-3", headers=auth("dev-3"))
                if r.status_code != 200 or "deploymentBase" not in r.text:
                    return False
        return True

    await eventually(mirrored, timeout=10)
    through_lane, through_routes = await answers(fast.url), await answers(slow.url)
    for case, lane, route in zip(cases, through_lane, through_routes, strict=True):
        assert lane == route, case
    assert [status for status, _, _ in through_lane] == [
        200, 200, 401, 404, 404, 401, 200, 200, 206, 412, 200, 404, 404, 401, 302, 404
    ]  # fmt: skip
    assert through_lane[6][2] == payload
    assert through_lane[8][2] == payload[100:200]
    # And they did take different paths: only the FastAPI routes are timed.
    async with httpx.AsyncClient(timeout=10) as client:
        timed = [(await client.get(f"{u}/metrics")).text for u in (fast.url, slow.url)]
    for route in ('/deploymentBase/{action_id}"', '/artifacts/{filename}"'):
        assert route not in timed[0]
        assert route in timed[1]
