"""An operator caps a tenant's updates in flight with the CLI and watches a rollout queue the rest.

Registry publishes the cap in KV ``tenants``; rollouts reads it from there; ``gaggle`` runs as a
separate process against both, as an operator would run it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest

from gaggle_contracts.events import DeviceUpdated
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_testing import eventually, publish_software
from tests.integration.support import cli_env, run_cli

pytestmark = pytest.mark.integration


async def test_the_cli_sets_the_cap_and_shows_the_queued_devices(
    common: CommonSettings, serve: Any, tenant: str, operator_key: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    rollouts = await serve(build_rollouts(common, RolloutsSettings(sweep_s=0.5)))
    env = cli_env(
        GAGGLE_REGISTRY_URL=registry.url,
        GAGGLE_ROLLOUTS_URL=rollouts.url,
        GAGGLE_API_KEY=operator_key,
        COLUMNS="200",
    )

    async def gaggle(*args: str, code: int = 0) -> str:
        return (await run_cli(env, *args, code=code)).out

    await gaggle("tenants", "set", tenant, "--max-updates-in-flight", "3")
    caps = rollouts.app.state.store.members.caps
    await eventually(lambda: caps.cap(tenant) == 3)
    await publish_software(common, tenant, "s1", "2.0.0", [("board", "*")])
    await rollouts.app.state.policies.record_devices(
        [
            DeviceUpdated(
                tenant=tenant,
                controller_id=f"dev-{i}",
                change="registered",
                hw_model="board",
                hw_revision="1",
                sw_version="1.0.0",
            )
            for i in range(10)
        ]
    )
    async with httpx.AsyncClient(timeout=10) as client:

        async def created() -> str:
            r = await client.post(
                f"{rollouts.url}/api/v1/rollouts",
                headers={"Authorization": f"Bearer {operator_key}"},
                params={"tenant": tenant},
                json={"name": f"capped-{secrets.token_hex(2)}", "software_id": "s1", "start": True},
            )
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        rid: str = await eventually(created, timeout=20)

    async def capped() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await gaggle("--json", "rollouts", "show", rid))
        assert (doc["counters"]["running"], doc["counters"]["queued"]) == (3, 7), doc
        return doc

    await eventually(capped, timeout=15)
    # Not a terminal: watch prints a line per change; it gives up after --timeout (exit 3).
    watched = await gaggle("rollouts", "watch", rid, "--timeout", "0.5", code=3)
    assert "0/10 success, 0 failure, 3 running, 7 pending (7 queued)" in watched
    shown = await gaggle("rollouts", "show", rid)
    header = next(line for line in shown.splitlines() if "QUEUED" in line).split()
    row = next(line for line in shown.splitlines() if line.split()[:2] == ["1", "10"]).split()
    assert row[header.index("QUEUED") + 1] == "7"  # STARTED spans two words (date and time)
    assert row[header.index("RUNNING") + 1] == "3"
