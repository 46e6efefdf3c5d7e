"""The listing's fast lane answers exactly as the FastAPI route would, errors included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gaggle_contracts.events import DeviceSeen, Sighting
from gaggle_contracts.settings import CommonSettings
from gaggle_registry import fastlane
from gaggle_registry.app import build_app
from gaggle_registry.routes import list_body
from gaggle_registry.settings import RegistrySettings

pytestmark = pytest.mark.integration

T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)


def seen(cid: str, minutes: int, address: str | None) -> Sighting:
    return Sighting(controller_id=cid, seen_at=T0 + timedelta(minutes=minutes), address=address)


async def test_the_listing_fast_lane_answers_as_the_fastapi_route_does(
    common: CommonSettings,
    serve,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
    operator_auth: httpx.Auth,
) -> None:
    answered: list[Any] = []

    async def counted(repo: Any, tenant: str, params: Any) -> bytes:
        answered.append(params)
        return await list_body(repo, tenant, params)

    monkeypatch.setattr(fastlane, "list_body", counted)
    registry = await serve(build_app(common, RegistrySettings()))
    presence = registry.app.state.presence
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for i in range(12):
            created = await client.post(
                f"{registry.url}/api/v1/devices",
                params={"tenant": tenant},
                json={"controller_id": f"fl-{i:02d}", "name": f"Kitchen {i}", "tags": ["t"]},
            )
            assert created.status_code == 201
        await presence.touch_many(
            DeviceSeen(
                tenant=tenant, sightings=[seen(f"fl-{i:02d}", i % 5, "::1") for i in range(12)]
            )
        )
        url = f"{registry.url}/api/v1/devices"
        after = f"{(T0 + timedelta(minutes=2)):%Y-%m-%dT%H:%M:%S}"
        for params in (
            {},
            {"q": "kitchen 1", "sort": "-last_seen", "limit": "3"},
            {"tag": "t", "seen_after": f"{after}Z", "sort": "created"},
            {"state": "unknown", "limit": "5"},
            {"limit": "0"},
            {"seen_after": after},  # no zone: refused
            {"cursor": "nonsense"},
        ):
            answered.clear()
            lane = await client.get(url, params={"tenant": tenant, **params})
            by_lane = len(answered)
            # A repeated parameter is left to the FastAPI route.
            route = await client.get(
                url, params=[("tenant", tenant), ("tenant", tenant), *params.items()]
            )
            assert len(answered) == by_lane  # the route did not go through the lane
            if lane.status_code == 200:
                assert by_lane == 1  # a valid query: answered by the lane
            assert (lane.status_code, lane.json()) == (route.status_code, route.json()), params
            if lane.status_code == 200 and lane.json()["next"]:
                cursor = {"cursor": lane.json()["next"]}
                lane = await client.get(url, params={"tenant": tenant, **params, **cursor})
                route = await client.get(
                    url,
                    params=[
                        ("tenant", tenant),
                        ("tenant", tenant),
                        *params.items(),
                        *cursor.items(),
                    ],
                )
                assert lane.json() == route.json(), params
