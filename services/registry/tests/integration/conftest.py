"""Fixtures of the registry's own integration tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

CreateDevices = Callable[[str, str, list[str]], Awaitable[None]]


@pytest.fixture
def create_devices(operator_auth: httpx.Auth) -> CreateDevices:
    """``await create_devices(registry_url, tenant, ids)``: devices made through the API."""

    async def create(url: str, tenant: str, ids: list[str]) -> None:
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
            for cid in ids:
                created = await client.post(
                    f"{url}/api/v1/devices", params={"tenant": tenant}, json={"controller_id": cid}
                )
                assert created.status_code == 201, created.text

    return create
