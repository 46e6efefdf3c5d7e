"""The gateway's fast lane answers deploymentBase feedback exactly as its FastAPI route does."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware

from gaggle_contracts import names
from gaggle_contracts.kv import DeviceEntry, TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app
from gaggle_gateway.domain import token_hash
from gaggle_gateway.fastlane import PollFastLane
from gaggle_gateway.settings import GatewaySettings
from gaggle_testing import ART, deployment, eventually, kv_put

pytestmark = pytest.mark.integration


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
