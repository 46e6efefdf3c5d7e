"""Registry subscribers: device and action events in, device rows (and KV, events) out.

Each subscriber is a plain function of the event and what it writes to; ``build_router``
subscribes each, bound to its part (``repo``, ``presence``, ``access`` or ``bursts``), with the
service's consumer options. The parts are bound rather than taken from FastStream's
``Context()``: fast_depends resolves a ``Context()`` parameter on a worker thread, one thread
hop per message, which was a tenth of the registry's CPU during a rollout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from faststream.exceptions import RejectMessage
from faststream.nats import NatsRouter

from gaggle_contracts.events import (
    ActionCreated,
    ActionFinished,
    ActionUpdated,
    ApiKeysUsed,
    AuditRecorded,
    DeviceConfigReported,
    DeviceDiscovered,
    DevicePolicyChanged,
    DeviceSeen,
    Event,
)
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.access import AccessStore
from gaggle_registry.domain import ACTION_STATE, Device, TooManyAttributesError, finished_state
from gaggle_registry.presence import PresenceRepo
from gaggle_registry.repository import Repo, StateChange
from gaggle_runtime.bus import consumer_options
from gaggle_runtime.coalesce import Coalescer

log = logging.getLogger(__name__)

SERVICE = "registry"
COALESCE = 64
"""Events of a first-contact burst pulled, and written, together."""


@dataclass(frozen=True)
class Bursts:
    """One transaction for the events of a pull, each acked once that has committed.

    A fleet's first contact is a burst of discoveries and reports, and a rollout's action
    events come in bursts too.
    """

    discoveries: Coalescer[DeviceDiscovered, Device | None]
    reports: Coalescer[DeviceConfigReported, Device]
    states: Coalescer[StateChange, Device | None]

    @classmethod
    def of(cls, repo: Repo) -> Bursts:
        """The bursts written through ``repo``."""
        return cls(
            discoveries=Coalescer(repo.register_discovered_many, max_batch=COALESCE),
            reports=Coalescer(repo.apply_config_many, max_batch=COALESCE),
            states=Coalescer(repo.set_state_many, max_batch=COALESCE),
        )


@dataclass(frozen=True)
class Parts:
    """What the subscribers write to."""

    repo: Repo
    presence: PresenceRepo
    access: AccessStore
    bursts: Bursts

    @classmethod
    def of(cls, repo: Repo, presence: PresenceRepo, access: AccessStore) -> Parts:
        """The parts, with the bursts written through ``repo``."""
        return cls(repo, presence, access, Bursts.of(repo))


async def on_audit_recorded(event: AuditRecorded, access: AccessStore) -> None:
    """ota.v1.*.audit.recorded -> one audit log entry."""
    await access.record(event)


async def on_keys_used(event: ApiKeysUsed, access: AccessStore) -> None:
    """ota.v1.*.auth.keys_used -> last_used_at advanced."""
    await access.mark_used(event)


async def on_device_discovered(event: DeviceDiscovered, bursts: Bursts) -> None:
    """ota.v1.*.device.discovered -> device row created once (redeliveries change nothing)."""
    device = await bursts.discoveries.submit(event)
    if device is not None:
        log.info("device registered tenant=%s controller_id=%s", event.tenant, event.controller_id)


async def on_config_reported(event: DeviceConfigReported, bursts: Bursts) -> None:
    """ota.v1.*.device.config_reported -> attributes merged, hw/sw columns lifted, KV."""
    try:
        await bursts.reports.submit(event)
    except TooManyAttributesError as exc:
        log.warning(
            "config report rejected tenant=%s controller_id=%s reason=%s",
            event.tenant,
            event.controller_id,
            exc,
        )
        raise RejectMessage from exc


async def on_device_seen(event: DeviceSeen, presence: PresenceRepo) -> None:
    """ota.v1.*.device.seen -> last seen and address advanced, one statement per batch."""
    await presence.touch_many(event)


async def on_action_created(event: ActionCreated, bursts: Bursts) -> None:
    """ota.v1.*.action.created -> update state pending."""
    await bursts.states.submit(
        StateChange(
            event.tenant, event.controller_id, "pending", event.occurred_at, event.action_id, None
        )
    )


async def on_action_updated(event: ActionUpdated, bursts: Bursts) -> None:
    """ota.v1.*.action.updated -> downloading / installing."""
    state = ACTION_STATE.get(event.status, "installing")
    await bursts.states.submit(
        StateChange(
            event.tenant, event.controller_id, state, event.occurred_at, event.action_id, None
        )
    )


async def on_action_finished(event: ActionFinished, bursts: Bursts) -> None:
    """ota.v1.*.action.finished -> success (with the installed version), error, or back."""
    installed = event.version if event.status == "finished" else None
    await bursts.states.submit(
        StateChange(
            event.tenant,
            event.controller_id,
            finished_state(event.status),
            event.occurred_at,
            event.action_id,
            installed,
        )
    )


async def on_policy_changed(event: DevicePolicyChanged, repo: Repo) -> None:
    """ota.v1.*.device.policy_changed -> the device's feed, for the feed filter."""
    await repo.set_feed(event.tenant, event.controller_id, event.feed)


Handler = Callable[..., Awaitable[None]]

SUBSCRIBERS: list[tuple[type[Event], Handler, str, int | None]] = [
    (AuditRecorded, on_audit_recorded, "access", None),
    (ApiKeysUsed, on_keys_used, "access", None),
    (DeviceDiscovered, on_device_discovered, "bursts", COALESCE),
    (DeviceConfigReported, on_config_reported, "bursts", COALESCE),
    # One sightings batch at a time: batches handled together share devices and lock their
    # rows in different orders, and PostgreSQL then breaks the deadlocks by failing one of them.
    (DeviceSeen, on_device_seen, "presence", 1),
    (ActionCreated, on_action_created, "bursts", COALESCE),
    (ActionUpdated, on_action_updated, "bursts", COALESCE),
    (ActionFinished, on_action_finished, "bursts", COALESCE),
    (DevicePolicyChanged, on_policy_changed, "repo", None),
]
"""Event, handler, the part it writes to, and how many events one pull fetches (None: the
common setting)."""


def bound(event_type: type[Event], handler: Handler, part: object) -> Handler:
    """``handler`` as a subscriber of ``event_type`` alone, ``part`` passed along.

    Name and docstring are the handler's (AsyncAPI, tests); the signature is the event's only,
    so FastStream has nothing but the message to resolve.
    """

    async def subscriber(event: Any) -> None:
        await handler(event, part)

    subscriber.__name__ = subscriber.__qualname__ = handler.__name__
    subscriber.__doc__ = handler.__doc__
    subscriber.__annotations__ = {"event": event_type, "return": None}
    return subscriber


def build_router(common: CommonSettings, parts: Parts) -> NatsRouter:
    """The registry's subscribers, each on its durable consumer, writing to ``parts``."""
    router = NatsRouter()
    for event, handler, part, batch in SUBSCRIBERS:
        options: dict[str, Any] = consumer_options(SERVICE, event.kind, common, batch=batch)
        router.subscriber(**options)(bound(event, handler, getattr(parts, part)))
    return router
