"""The fleet simulator against the real stack: registry, rollouts and gateway (``e2e_stack``).

Hundreds of virtual devices poll the gateway at its 1 s interval, take updates through the DDI
flow, misbehave in the configured shares, and the server's view (actions, registry) must match
what the simulator did.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gaggle_sim import Fleet, FleetConfig, FleetStats, run_fleet
from tests.e2e.conftest import BOARD, REVISION, E2EStack, format_action, has_detail

NEW_VERSION = "2.0.0"


def fleet_config(stack: E2EStack, count: int, prefix: str, **kwargs: Any) -> FleetConfig:
    """Devices of this test's tenant (written upper-case, as SWUpdate's default tenant is)."""
    return FleetConfig(
        f"{stack.gateway_url}/{stack.tenant.upper()}",
        count,
        id_prefix=prefix,
        hw_model=BOARD,
        hw_revision=REVISION,
        connections=32,
        timeout=10,
        **kwargs,
    )


async def bounded(calls: Iterable[Awaitable[Any]], limit: int = 16) -> list[Any]:
    """Await ``calls`` with at most ``limit`` running at once."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


def client_errors(stats: FleetStats) -> list[str]:
    """Requests the gateway refused as malformed (4xx): a protocol bug, not a slow machine."""
    return [e for e in stats.error_samples if "HTTP 4" in e]


def diagnostics(fleet_or_stats: Fleet | FleetStats) -> Callable[[], str]:
    stats = fleet_or_stats.stats if isinstance(fleet_or_stats, Fleet) else fleet_or_stats
    return lambda: f"simulator: {stats.snapshot()}"


async def run_until(fleet: Fleet, predicate: Callable[[FleetStats], bool], timeout: float) -> None:
    if not await fleet.wait(predicate, timeout=timeout):
        raise AssertionError(f"fleet did not get there in {timeout:.0f}s: {fleet.stats.snapshot()}")


async def test_first_contact_of_300_devices_registers_them_all(e2e_stack: E2EStack) -> None:
    cfg = fleet_config(e2e_stack, 300, "fc-", poll="once", sw_version="1.0.0")
    stats = await run_fleet(cfg)
    assert stats.polls == 300, stats.snapshot()
    assert stats.config_sent == 300, stats.snapshot()
    assert not client_errors(stats), stats.error_samples

    def registered(device: dict[str, Any]) -> bool:
        return (device["hw_model"], device["hw_revision"], device["sw_version"]) == (
            BOARD,
            REVISION,
            "1.0.0",
        )

    devices = await bounded(
        e2e_stack.wait_device(cid, registered, diagnostics=diagnostics(stats))
        for cid in cfg.controller_ids()
    )
    assert sorted(d["controller_id"] for d in devices) == cfg.controller_ids()
    assert {d["update_state"] for d in devices} == {"unknown"}


async def test_update_of_100_devices_with_cut_slow_offline_and_failing_ones(
    e2e_stack: E2EStack,
) -> None:
    cfg = fleet_config(
        e2e_stack,
        100,
        "up-",
        poll="server",
        jitter=0.3,
        fail_share=0.1,
        cut_share=0.2,
        slow_share=0.1,
        slow_rate=1_000_000,
        slow_install_seconds=1.0,
        offline_share=0.1,
        offline_within=4.0,
        offline_seconds=2.0,
        seed=5,
    )
    fleet = Fleet(cfg)
    await fleet.start()
    try:
        # First contact: every device reports its attributes when the gateway asks.
        await run_until(fleet, lambda s: s.config_sent >= 100, timeout=15)
        software = await e2e_stack.publish_software(
            os.urandom(256 * 1024), version=NEW_VERSION, filename=f"e2e-{NEW_VERSION}.swu"
        )
        actions = await bounded(
            e2e_stack.create_action(cid, software.software_id) for cid in cfg.controller_ids()
        )
        await run_until(fleet, lambda s: s.successes + s.failures >= 100, timeout=30)
        # Every successful device then reports its new version through configData.
        await run_until(fleet, lambda s: s.config_sent >= 100 + 90, timeout=10)
        await run_until(fleet, lambda s: s.went_offline >= 10, timeout=10)
        stats = fleet.stats
        assert (stats.successes, stats.failures) == (90, 10), stats.snapshot()
        assert stats.resumed == 20, stats.snapshot()
        assert stats.downloads == 100, stats.snapshot()
        assert stats.verify_failures == 0
        assert stats.went_offline == 10
        assert not client_errors(stats), stats.error_samples
    finally:
        await fleet.stop()

    by_id = {d.controller_id: d for d in fleet.devices}
    closed = await bounded(
        e2e_stack.wait_action(
            a["id"],
            "error" if by_id[a["controller_id"]].behaviour.fails else "finished",
            diagnostics=diagnostics(fleet),
        )
        for a in actions
    )
    for action in closed:
        device = by_id[action["controller_id"]]
        executions = [h["execution"] for h in action["history"] if h["execution"]]
        assert executions[-1] == "closed", format_action(action)
        assert "proceeding" in executions, format_action(action)
        if device.behaviour.fails:
            assert has_detail(action, "Installation failed"), format_action(action)
            assert device.sw_version == "1.0.0"
        else:
            assert has_detail(action, "Update Installed."), format_action(action)
            assert device.sw_version == NEW_VERSION

    def reported(device: Any) -> Callable[[dict[str, Any]], bool]:
        if device.behaviour.fails:
            return lambda d: d["update_state"] == "error" and d["sw_version"] == "1.0.0"
        return lambda d: (
            d["update_state"] == "success"
            and d["sw_version"] == NEW_VERSION
            and d["attributes"].get("sw_version") == NEW_VERSION
        )

    await bounded(
        e2e_stack.wait_device(d.controller_id, reported(d), diagnostics=diagnostics(fleet))
        for d in fleet.devices
    )


async def test_tampered_artifact_fails_the_sha256_check(e2e_stack: E2EStack) -> None:
    data = os.urandom(200_000)
    software = await e2e_stack.publish_software(data, version="3.0.0", filename="bad-3.0.0.swu")
    tampered = bytearray(data)
    tampered[100_000] ^= 0xFF

    async def chunks() -> Any:
        yield bytes(tampered)

    await e2e_stack.store.write(software.object_key, chunks())
    cfg = fleet_config(e2e_stack, 3, "sha-", poll="server", cut_share=1 / 3)
    actions = [
        await e2e_stack.create_action(cid, software.software_id) for cid in cfg.controller_ids()
    ]
    fleet = Fleet(cfg)
    await fleet.start()
    try:
        await run_until(fleet, lambda s: s.successes + s.failures >= 3, timeout=20)
    finally:
        await fleet.stop()
    stats = fleet.stats
    assert (stats.failures, stats.verify_failures, stats.successes) == (3, 3, 0), stats.snapshot()
    assert stats.resumed == 1
    for action in actions:
        done = await e2e_stack.wait_action(action["id"], "error", diagnostics=diagnostics(fleet))
        assert has_detail(done, "Checksum mismatch (sha256)"), format_action(done)
        assert has_detail(done, software.sha256), format_action(done)
    assert {d.sw_version for d in fleet.devices} == {"1.0.0"}


async def test_canceled_actions_are_acknowledged(e2e_stack: E2EStack) -> None:
    software = await e2e_stack.publish_software(
        os.urandom(10_000), version="4.0.0", filename="c-4.0.0.swu"
    )
    cfg = fleet_config(e2e_stack, 2, "cx-", poll="server")
    actions = [
        await e2e_stack.create_action(cid, software.software_id) for cid in cfg.controller_ids()
    ]
    for action in actions:
        await e2e_stack.cancel_action(action["id"])
    for cid in cfg.controller_ids():
        await e2e_stack.wait_offered(
            cid, lambda links: "cancelAction" in links, what="no cancelAction link"
        )
    fleet = Fleet(cfg)
    await fleet.start()
    try:
        await run_until(fleet, lambda s: s.cancels >= 2, timeout=15)
        for action in actions:
            await e2e_stack.wait_action(action["id"], "canceled", diagnostics=diagnostics(fleet))
    finally:
        await fleet.stop()
    assert fleet.stats.downloads == 0
    assert not client_errors(fleet.stats), fleet.stats.error_samples
