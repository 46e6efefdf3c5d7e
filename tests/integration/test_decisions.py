"""Update modes through the gateway: latest, assigned, pinned, and hardware compatibility."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gaggle_contracts.settings import CommonSettings
from gaggle_testing import publish_software
from tests.integration.support import Stack, device, policy

pytestmark = pytest.mark.integration


async def offered_version(
    client: httpx.AsyncClient, s: Stack, cid: str, timeout: float = 10
) -> str | None:
    """The version the gateway offers the device once things settle (None: nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        links = (await client.get(s.dev(cid))).json()["_links"]
        if "deploymentBase" in links:
            body = (await client.get(links["deploymentBase"]["href"])).json()
            return str(body["deployment"]["chunks"][0]["version"])
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.1)


async def test_latest_offers_the_highest_fitting_version(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    t = stack.tenant
    await publish_software(common, t, "1", "1.9.0", [("board", "*")])
    await publish_software(common, t, "2", "1.10.0", [("board", "1.0")])
    await publish_software(common, t, "3", "2.0.0", [("board", "2.0")])  # other revision
    await publish_software(common, t, "4", "9.0.0", [("other", "*")])  # other board
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "lat-1", "board", "1.0", "1.0.0")
        answer = await policy(client, stack, "lat-1", {"mode": "latest"})
        assert answer["mode"] == "latest"
        assert await offered_version(client, stack, "lat-1") == "1.10.0"


async def test_latest_does_nothing_when_the_device_runs_it(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "1", "1.2.0", [("*", "*")])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "cur-1", "board", "1.0", "1.2")  # 1.2 is 1.2.0
        answer = await policy(client, stack, "cur-1", {"mode": "latest"})
        assert await offered_version(client, stack, "cur-1", timeout=2) is None
        assert answer["decision"]["software_id"] in (None, "1")


async def test_assigned_offers_exactly_that_software_and_pinned_nothing(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    t = stack.tenant
    await publish_software(common, t, "1", "1.0.0", [("board", "*")])
    await publish_software(common, t, "2", "3.0.0", [("board", "*")])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "asg-1", "board", "1.0", "0.1.0")
        await policy(client, stack, "asg-1", {"mode": "assigned", "software_id": "1"})
        assert await offered_version(client, stack, "asg-1") == "1.0.0"

        await device(client, stack, "pin-1", "board", "1.0", "0.1.0")
        answer = await policy(client, stack, "pin-1", {"mode": "pinned"})
        assert answer["decision"] == {"software_id": None, "reason": "pinned"}
        assert await offered_version(client, stack, "pin-1", timeout=2) is None


async def test_software_that_does_not_fit_is_never_offered(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "1", "5.0.0", [("board", "2.0")])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "cmp-1", "board", "1.0", "0.1.0")
        answer = await policy(client, stack, "cmp-1", {"mode": "assigned", "software_id": "1"})
        assert await offered_version(client, stack, "cmp-1", timeout=2) is None
        assert answer["decision"]["software_id"] is None
