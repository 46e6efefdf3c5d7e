"""The registry's subscribers: an event in, the store calls it makes out."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from faststream.exceptions import RejectMessage

from gaggle_contracts import events
from gaggle_contracts.events import Sighting, utcnow
from gaggle_registry.domain import MAX_STORED_ATTRIBUTES, Device
from gaggle_registry.handlers import Bursts, on_config_reported
from gaggle_registry.repository import StateChange

from .fakes import FakeRepo, Wired


async def test_audit_recorded_is_written_to_the_audit_log(registry: Wired) -> None:
    event = events.AuditRecorded(
        tenant="acme",
        actor="key:abc",
        service="rollouts",
        action="rollout.start",
        method="POST",
        resource="rollouts/3/start",
        status=200,
        outcome="success",
    )
    await registry.deliver(event)
    assert registry.access.audit == [event]
    registry.handler("on_audit_recorded").mock.assert_called_once()


async def test_keys_used_advance_the_keys_last_use(registry: Wired) -> None:
    event = events.ApiKeysUsed(tenant="acme", last_used={"abcdefabcdef": utcnow()})
    await registry.deliver(event)
    assert registry.access.used == [event]


async def test_discovery_registers_the_device_once(registry: Wired) -> None:
    event = events.DeviceDiscovered(tenant="acme", controller_id="dev-1")
    await registry.deliver(event)
    await registry.deliver(event)  # a redelivery changes nothing
    assert list(registry.repo.devices) == [("acme", "dev-1")]
    assert registry.handler("on_device_discovered").mock.call_count == 2


async def test_discoveries_of_one_moment_are_written_together(registry: Wired) -> None:
    discovered = [
        events.DeviceDiscovered(tenant="acme", controller_id=f"dev-{i}") for i in range(5)
    ]
    await asyncio.gather(*(registry.deliver(e) for e in discovered))
    assert sum(registry.repo.batches) == len(discovered)
    assert len(registry.repo.batches) < len(discovered)
    assert len(registry.repo.devices) == 5


async def test_config_report_merges_the_attributes(registry: Wired) -> None:
    await registry.deliver(
        events.DeviceConfigReported(
            tenant="acme", controller_id="dev-1", data={"hw_boardname": "b1"}
        )
    )
    await registry.deliver(
        events.DeviceConfigReported(
            tenant="acme", controller_id="dev-1", data={"sw_version": "1.0"}
        )
    )
    device = registry.repo.devices[("acme", "dev-1")]
    assert device.attributes == {"hw_boardname": "b1", "sw_version": "1.0"}


async def test_config_report_past_the_quota_is_rejected_and_changes_nothing() -> None:
    repo = FakeRepo()
    repo.devices[("acme", "dev-1")] = Device("acme", "dev-1", attributes={"a": "1"})
    bursts = Bursts.of(repo)  # type: ignore[arg-type]
    too_many = {f"k{i}": "v" for i in range(MAX_STORED_ATTRIBUTES + 1)}
    with pytest.raises(RejectMessage):
        await on_config_reported(
            events.DeviceConfigReported(tenant="acme", controller_id="dev-1", data=too_many), bursts
        )
    assert repo.devices[("acme", "dev-1")].attributes == {"a": "1"}


async def test_sightings_batch_is_written_as_it_came(registry: Wired) -> None:
    now = utcnow()
    event = events.DeviceSeen(
        tenant="acme",
        sightings=[
            Sighting(controller_id="dev-1", seen_at=now, address="10.0.0.1"),
            Sighting(controller_id="dev-2", seen_at=now - timedelta(seconds=5)),
        ],
    )
    await registry.deliver(event)
    assert registry.presence.seen == [event]


async def test_action_created_makes_the_device_pending(registry: Wired) -> None:
    event = events.ActionCreated(
        tenant="acme", controller_id="dev-1", action_id="7", software_id="3", version="1.2"
    )
    await registry.deliver(event)
    assert registry.repo.states == [
        StateChange("acme", "dev-1", "pending", event.occurred_at, "7", None)
    ]


@pytest.mark.parametrize(
    ("status", "state"),
    [("retrieved", "downloading"), ("running", "installing"), ("scheduled", "pending")],
)
async def test_action_updated_moves_the_device_state(
    registry: Wired, status: str, state: str
) -> None:
    event = events.ActionUpdated(tenant="acme", controller_id="dev-1", action_id="7", status=status)  # type: ignore[arg-type]
    await registry.deliver(event)
    assert registry.repo.states == [
        StateChange("acme", "dev-1", state, event.occurred_at, "7", None)
    ]


@pytest.mark.parametrize(
    ("status", "state", "installed"),
    [
        ("finished", "success", "1.2"),
        ("downloaded", "success", None),
        ("error", "error", None),
        ("canceled", "revert", None),
    ],
)
async def test_action_finished_records_its_outcome_and_what_it_installed(
    registry: Wired, status: str, state: str, installed: str | None
) -> None:
    event = events.ActionFinished(
        tenant="acme",
        controller_id="dev-1",
        action_id="7",
        status=status,  # type: ignore[arg-type]
        software_id="3",
        version="1.2",
    )
    await registry.deliver(event)
    assert registry.repo.states == [
        StateChange("acme", "dev-1", state, event.occurred_at, "7", installed)
    ]


async def test_policy_change_records_the_devices_feed(registry: Wired) -> None:
    await registry.deliver(
        events.DevicePolicyChanged(tenant="acme", controller_id="dev-1", mode="latest", feed="beta")
    )
    assert registry.repo.feeds == {("acme", "dev-1"): "beta"}
