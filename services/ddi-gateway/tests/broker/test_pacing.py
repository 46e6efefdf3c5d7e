"""The polling sleep a device is handed: its own jitter, stretched while the gateway is busy."""

from __future__ import annotations

import asyncio
import time

from gaggle_contracts import names
from gaggle_contracts.events import Event
from gaggle_contracts.kv import DeploymentDoc, DeploymentEntry, DeviceEntry, OpenAction
from gaggle_gateway.counters import Strain

from ..publishing import refuse_all
from .fakes import Bus

BASE = "/default/controller/v1"
ENTRIES = ["lane", "routes"]


async def sleeps(bus: Bus, cid: str) -> list[int]:
    """The sleep, in seconds, of a poll of ``cid`` through each entry point."""
    found = []
    for entry in ENTRIES:
        async with bus.client(entry) as client:
            r = await client.get(f"{BASE}/{cid}")
        assert r.status_code == 200, r.text
        hours, minutes, seconds = r.json()["config"]["polling"]["sleep"].split(":")
        found.append(int(hours) * 3600 + int(minutes) * 60 + int(seconds))
    return found


def alike(found: list[int], normal: list[int]) -> bool:
    """The same sleep but for the rounding: within a second of the normal ones."""
    return max(found) - min(normal) <= 1 and max(normal) - min(found) <= 1


def factor(bus: Bus) -> float:
    [family] = bus.gateway.strain.collect()
    [sample] = family.samples
    return sample.value


async def test_polls_are_stretched_while_reports_are_refused_and_normal_once_that_clears(
    bus: Bus,
) -> None:
    bus.gateway.strain = Strain(window_s=1.0, threshold=5, max_factor=4.0)
    normal = await sleeps(bus, "d-1")
    # The tenant's minute, moved by at most a tenth, alike on both entry points (but for the
    # rounding, down or up by turns).
    assert abs(normal[0] - normal[1]) <= 1
    assert min(normal) >= 54 and max(normal) <= 66
    assert factor(bus) == 1.0

    refuse_all(bus.gateway)
    for n in range(4):
        async with bus.client(ENTRIES[n % 2]) as client:
            r = await client.put(f"{BASE}/d-1/configData", json={"data": {"n": str(n)}})
        assert r.status_code == 429, r.text
    assert alike(await sleeps(bus, "d-1"), normal)  # below the threshold
    for n in range(6):
        async with bus.client(ENTRIES[n % 2]) as client:
            r = await client.put(f"{BASE}/d-1/configData", json={"data": {"n": str(n)}})
        assert r.status_code == 429, r.text

    # Ten refusals, twice the threshold: three times the interval, the same share of jitter.
    stretched = await sleeps(bus, "d-1")
    assert abs(stretched[0] - stretched[1]) <= 1
    assert min(stretched) >= 162 and max(stretched) <= 198
    assert abs(stretched[0] - 3 * normal[0]) <= 4
    assert factor(bus) == 3.0

    await asyncio.sleep(1.1)
    assert alike(await sleeps(bus, "d-1"), normal)
    assert factor(bus) == 1.0


def slow_acks(bus: Bus, seconds: float) -> None:
    """Make the bus acknowledge every report ``seconds`` late."""
    publish = bus.gateway.publish_event

    async def slow(event: Event) -> None:
        await asyncio.sleep(seconds)
        await publish(event)

    bus.gateway.publish_event = slow


async def test_slow_acks_stretch_the_sleep_of_devices_that_just_finished_only(bus: Bus) -> None:
    bus.gateway.strain = Strain(window_s=2.0, threshold=5, max_factor=4.0, latency_s=0.02)
    busy_key = names.kv_key("default", "d-busy")
    bus.gateway.mirror.devices.values[busy_key] = DeviceEntry(config_requested=False)
    bus.gateway.mirror.deployments.values[busy_key] = DeploymentEntry(
        open=OpenAction.model_validate(
            {"action_id": "4", "state": "deployment", "deployment": DeploymentDoc(chunks=[])}
        )
    )
    # d-done's final report was acknowledged here a moment ago; d-1 has had no action.
    bus.gateway.acks.acknowledged(names.kv_key("default", "d-done"), "3", b"f", time.monotonic())
    done, idle = await sleeps(bus, "d-done"), await sleeps(bus, "d-1")
    busy = await sleeps(bus, "d-busy")

    slow_acks(bus, 0.06)  # three times the threshold
    for n in range(2):
        async with bus.client(ENTRIES[n]) as client:
            r = await client.put(f"{BASE}/d-1/configData", json={"data": {"n": str(n)}})
        assert r.status_code == 200, r.text
    assert 3.0 <= factor(bus) <= 4.0  # the ack time, as the loop saw it: a little more

    stretched = await sleeps(bus, "d-done")
    assert min(stretched) >= 3 * min(done) - 1
    # A device without an action may be queued for a rollout's slot; one with an open action
    # has work to finish: their sleep is the tenant's.
    assert alike(await sleeps(bus, "d-1"), idle)
    assert alike(await sleeps(bus, "d-busy"), busy)
