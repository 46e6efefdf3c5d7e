"""In-memory stand-ins for the registry's stores, and its subscribers wired to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from faststream.nats import NatsBroker

from gaggle_contracts.events import (
    ApiKeysUsed,
    AuditRecorded,
    DeviceConfigReported,
    DeviceDiscovered,
    DeviceSeen,
    Event,
)
from gaggle_registry.domain import Device, TooManyAttributesError, merge_attributes
from gaggle_registry.repository import StateChange


@dataclass
class FakeRepo:
    """The device writes the subscribers make, kept in memory."""

    devices: dict[tuple[str, str], Device] = field(default_factory=dict)
    states: list[StateChange] = field(default_factory=list)
    feeds: dict[tuple[str, str], str] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    """Size of each batch written, in order."""

    async def register_discovered_many(self, events: list[DeviceDiscovered]) -> list[Device | None]:
        self.batches.append(len(events))
        results: list[Device | None] = []
        for e in events:
            key = (e.tenant, e.controller_id)
            if key in self.devices:
                results.append(None)
            else:
                self.devices[key] = Device(e.tenant, e.controller_id)
                results.append(self.devices[key])
        return results

    async def apply_config_many(
        self, events: list[DeviceConfigReported]
    ) -> list[Device | Exception]:
        self.batches.append(len(events))
        results: list[Device | Exception] = []
        for e in events:
            key = (e.tenant, e.controller_id)
            device = self.devices.get(key, Device(e.tenant, e.controller_id))
            try:
                attributes = merge_attributes(device.attributes, e.mode, e.data)
            except TooManyAttributesError as exc:
                results.append(exc)
                continue
            self.devices[key] = Device(e.tenant, e.controller_id, attributes=attributes)
            results.append(self.devices[key])
        return results

    async def set_state_many(self, changes: Sequence[StateChange]) -> list[Device | None]:
        self.batches.append(len(changes))
        self.states.extend(changes)
        return [self.devices.get((c.tenant, c.controller_id)) for c in changes]

    async def set_feed(self, tenant: str, controller_id: str, feed: str) -> Device:
        self.feeds[(tenant, controller_id)] = feed
        return Device(tenant, controller_id, feed=feed)


@dataclass
class FakePresence:
    """The sightings the subscribers wrote, kept in memory."""

    seen: list[DeviceSeen] = field(default_factory=list)

    async def touch_many(self, event: DeviceSeen) -> None:
        self.seen.append(event)


@dataclass
class FakeAccess:
    """The access writes the subscribers make, kept in memory."""

    audit: list[AuditRecorded] = field(default_factory=list)
    used: list[ApiKeysUsed] = field(default_factory=list)

    async def record(self, event: AuditRecorded) -> None:
        self.audit.append(event)

    async def mark_used(self, event: ApiKeysUsed) -> None:
        self.used.append(event)


@dataclass
class Wired:
    """The registry's subscribers under a test broker, with the fakes they write to."""

    broker: NatsBroker
    repo: FakeRepo
    presence: FakePresence
    access: FakeAccess

    async def deliver(self, event: Event) -> None:
        """``event`` as JetStream would hand it to the subscriber of its kind."""
        await self.broker.publish(
            event.encode(), event.subject, headers={"content-type": "application/json"}
        )

    def handler(self, name: str) -> Any:
        """The subscribed wrapper of the handler called ``name`` (for ``.mock``)."""
        for subscriber in self.broker.subscribers:
            for call in subscriber.calls:
                if call.handler._declared_call.__name__ == name:
                    return call.handler
        raise LookupError(name)
