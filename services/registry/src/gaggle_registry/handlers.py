"""Registry subscribers: device and action events in, device rows (and KV, events) out.

Each subscriber is a plain function; ``build_router`` subscribes them with the service's
consumer options, and ``provide`` puts what they use (``repo``, ``presence``, ``access``,
``bursts``) in the
broker's context.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from faststream import Context
from faststream.exceptions import RejectMessage
from faststream.nats import NatsBroker, NatsRouter

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


Access = Annotated[AccessStore, Context("access")]
Devices = Annotated[Repo, Context("repo")]
Presence = Annotated[PresenceRepo, Context("presence")]
Batched = Annotated[Bursts, Context("bursts")]


async def on_audit_recorded(event: AuditRecorded, access: Access) -> None:
    """ota.v1.*.audit.recorded -> one audit log entry."""
    await access.record(event)


async def on_keys_used(event: ApiKeysUsed, access: Access) -> None:
    """ota.v1.*.auth.keys_used -> last_used_at advanced."""
    await access.mark_used(event)


async def on_device_discovered(event: DeviceDiscovered, bursts: Batched) -> None:
    """ota.v1.*.device.discovered -> device row created once (redeliveries change nothing)."""
    device = await bursts.discoveries.submit(event)
    if device is not None:
        log.info("device registered tenant=%s controller_id=%s", event.tenant, event.controller_id)


async def on_config_reported(event: DeviceConfigReported, bursts: Batched) -> None:
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


async def on_device_seen(event: DeviceSeen, presence: Presence) -> None:
    """ota.v1.*.device.seen -> last seen and address advanced, one statement per batch."""
    await presence.touch_many(event)


async def on_action_created(event: ActionCreated, bursts: Batched) -> None:
    """ota.v1.*.action.created -> update state pending."""
    await bursts.states.submit(
        StateChange(
            event.tenant, event.controller_id, "pending", event.occurred_at, event.action_id, None
        )
    )


async def on_action_updated(event: ActionUpdated, bursts: Batched) -> None:
    """ota.v1.*.action.updated -> downloading / installing."""
    state = ACTION_STATE.get(event.status, "installing")
    await bursts.states.submit(
        StateChange(
            event.tenant, event.controller_id, state, event.occurred_at, event.action_id, None
        )
    )


async def on_action_finished(event: ActionFinished, bursts: Batched) -> None:
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


async def on_policy_changed(event: DevicePolicyChanged, repo: Devices) -> None:
    """ota.v1.*.device.policy_changed -> the device's feed, for the feed filter."""
    await repo.set_feed(event.tenant, event.controller_id, event.feed)


Handler = Callable[..., Awaitable[None]]

SUBSCRIBERS: list[tuple[type[Event], Handler, int | None]] = [
    (AuditRecorded, on_audit_recorded, None),
    (ApiKeysUsed, on_keys_used, None),
    (DeviceDiscovered, on_device_discovered, COALESCE),
    (DeviceConfigReported, on_config_reported, COALESCE),
    # One sightings batch at a time: batches handled together share devices and lock their
    # rows in different orders, and PostgreSQL then breaks the deadlocks by failing one of them.
    (DeviceSeen, on_device_seen, 1),
    (ActionCreated, on_action_created, COALESCE),
    (ActionUpdated, on_action_updated, COALESCE),
    (ActionFinished, on_action_finished, COALESCE),
    (DevicePolicyChanged, on_policy_changed, None),
]
"""Event, handler and how many events one pull fetches (None: the common setting)."""


def provide(broker: NatsBroker, repo: Repo, presence: PresenceRepo, access: AccessStore) -> None:
    """Put what the subscribers use in ``broker``'s context."""
    parts = {"repo": repo, "presence": presence, "access": access, "bursts": Bursts.of(repo)}
    for name, part in parts.items():
        broker.context.set_global(name, part)


def build_router(common: CommonSettings) -> NatsRouter:
    """The registry's subscribers, each on its durable consumer."""
    router = NatsRouter()
    for event, handler, batch in SUBSCRIBERS:
        options: dict[str, Any] = consumer_options(SERVICE, event.kind, common, batch=batch)
        router.subscriber(**options)(handler)
    return router
