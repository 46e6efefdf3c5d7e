"""A simulated fleet with A/B fallbacks: the rollout's threshold stops it in its first wave.

Registry, rollouts and the gateway run in the test's event loop (``e2e_stack``); ``gaggle_sim``
plays the fleet, a tenth of which falls back to its old version after a successful install
(seed-stable), and the operator creates and watches the rollout with the ``gaggle`` CLI. The
soak keeps the first wave's successes from counting before the fallbacks show, so the error
threshold stops the rollout before a second wave starts, and ``watch`` says why.

``GAGGLE_HEALTH_FLEET`` sets the fleet's size (200 by default, to keep the test short; the
rollouts README gives a 1,000-device run).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from gaggle_sim import Fleet, FleetConfig
from tests.e2e.conftest import BOARD, REVISION, E2EStack
from tests.e2e.test_cli import Gaggle

FLEET = int(os.environ.get("GAGGLE_HEALTH_FLEET", "200"))


async def wait_known(stack: E2EStack, count: int, timeout: float) -> None:
    """Until rollouts knows the inventory of ``count`` devices of the board."""
    deadline = time.monotonic() + timeout
    while True:
        r = await stack.client.put(
            f"{stack.rollouts.url}/api/v1/policies",
            params={"tenant": stack.tenant},
            json={"filter": {"hw_model": BOARD}, "policy": {}},
        )
        assert r.status_code == 200, r.text
        if r.json()["matched"] >= count:
            return
        assert time.monotonic() < deadline, f"rollouts knows {r.json()['matched']} of {count}"
        await asyncio.sleep(0.5)


@pytest.mark.timeout(240)
async def test_fallbacks_in_the_first_wave_trip_the_threshold_and_watch_says_why(
    e2e_stack: E2EStack, tmp_path: Path, operator_key: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAGGLE_")}
    env.update(
        {
            "GAGGLE_REGISTRY_URL": e2e_stack.registry.url,
            "GAGGLE_ROLLOUTS_URL": e2e_stack.rollouts.url,
            "GAGGLE_API_KEY": operator_key,
            "XDG_CONFIG_HOME": str(tmp_path / "no-config"),
            "COLUMNS": "200",
        }
    )
    gaggle = Gaggle(env, tmp_path)
    software = await e2e_stack.publish_software(
        os.urandom(4096), version="2.0.0", filename="image-2.0.0.swu"
    )
    config = FleetConfig(
        f"{e2e_stack.gateway_url}/{e2e_stack.tenant}",
        FLEET,
        id_prefix="ab-",
        hw_model=BOARD,
        hw_revision=REVISION,
        sw_version="1.0.0",
        poll="server",
        connections=32,
        timeout=10,
        ramp_up=1.0,
        fallback_share=0.1,
        seed=16,
    )
    fleet = Fleet(config)
    await fleet.start()
    try:
        await wait_known(e2e_stack, FLEET, timeout=60)
        created = await gaggle.until(
            "--json",
            "rollouts",
            "create",
            "--name",
            "ab fallbacks",
            "--software",
            software.software_id,
            "--waves",
            "50%,50%",
            "--error-threshold",
            "3",
            "--error-action",
            "abort",
            "--soak",
            "20s",
            "--report-timeout",
            "30s",
            "--start",
            timeout=30,
        )
        rollout: dict[str, Any] = created.json()
        assert rollout["soak"] == "20s" and rollout["report_timeout"] == "30s", rollout
        watched = await gaggle(
            "rollouts",
            "watch",
            rollout["id"],
            "--interval",
            "0.5",
            "--timeout",
            "120",
            timeout=130,
        )
    finally:
        await fleet.stop()
    # watch ends with exit 1 and says why: the threshold, with the rollbacks counted.
    assert watched.rc == 1, watched
    last = watched.err.strip().splitlines()[-1]
    assert last.startswith(f"gaggle: rollout {rollout['id']} aborted: error threshold exceeded")
    assert "rolled back" in last, watched
    assert "rolled back)" in watched.out, watched.out  # the counters line of the last change
    r = await e2e_stack.client.get(
        f"{e2e_stack.rollouts.url}/api/v1/rollouts/{rollout['id']}",
        params={"tenant": e2e_stack.tenant},
    )
    doc = r.json()
    assert doc["state"] == "aborted" and doc["current_wave"] == 1, doc
    assert doc["waves"][1]["started_at"] is None, doc
    wave1 = doc["waves"][0]["counters"]
    assert wave1["rolled_back"] * 100 > 3 * wave1["total"], wave1
    assert doc["waves"][1]["counters"]["success"] == 0, doc
    # Every device the simulator made fall back in the first wave was counted as rolled back.
    fell_back = fleet.stats.fell_back
    assert fell_back >= wave1["rolled_back"] > 0
    print(f"fleet {FLEET}: {watched.err.strip()}")  # noqa: T201 - the figure the README reports
    print(watched.out[-600:])  # noqa: T201
