"""Registry subscribers: device and action events in, device rows (and KV, events) out."""

from __future__ import annotations

import logging

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
)
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.access import AccessStore
from gaggle_registry.domain import ACTION_STATE, TooManyAttributesError, finished_state
from gaggle_registry.repository import Repo, StateChange
from gaggle_runtime.bus import consumer_options
from gaggle_runtime.coalesce import Coalescer

log = logging.getLogger(__name__)

SERVICE = "registry"
COALESCE = 64
"""Events of a first-contact burst pulled, and written, together."""


def make_router(repo: Repo, common: CommonSettings, access: AccessStore) -> NatsRouter:
    """The registry's subscribers, bound to ``repo`` and ``access``."""
    router = NatsRouter()

    @router.subscriber(**consumer_options(SERVICE, AuditRecorded.kind, common))
    async def on_audit_recorded(event: AuditRecorded) -> None:
        """ota.v1.*.audit.recorded -> one audit log entry."""
        await access.record(event)

    @router.subscriber(**consumer_options(SERVICE, ApiKeysUsed.kind, common))
    async def on_keys_used(event: ApiKeysUsed) -> None:
        """ota.v1.*.auth.keys_used -> last_used_at advanced."""
        await access.mark_used(event)

    # A fleet's first contact is a burst of discoveries and reports: the events of a pull are
    # written together, one transaction for all of them, each acked once that has committed.
    discoveries = Coalescer(repo.register_discovered_many, max_batch=COALESCE)
    reports = Coalescer(repo.apply_config_many, max_batch=COALESCE)

    @router.subscriber(**consumer_options(SERVICE, DeviceDiscovered.kind, common, batch=COALESCE))
    async def on_device_discovered(event: DeviceDiscovered) -> None:
        """ota.v1.*.device.discovered -> device row created once (redeliveries change nothing)."""
        device = await discoveries.submit(event)
        if device is not None:
            log.info(
                "device registered tenant=%s controller_id=%s", event.tenant, event.controller_id
            )

    @router.subscriber(
        **consumer_options(SERVICE, DeviceConfigReported.kind, common, batch=COALESCE)
    )
    async def on_config_reported(event: DeviceConfigReported) -> None:
        """ota.v1.*.device.config_reported -> attributes merged, hw/sw columns lifted, KV."""
        try:
            await reports.submit(event)
        except TooManyAttributesError as exc:
            log.warning(
                "config report rejected tenant=%s controller_id=%s reason=%s",
                event.tenant,
                event.controller_id,
                exc,
            )
            raise RejectMessage from exc

    # One sightings batch at a time: batches handled together share devices and lock their rows
    # in different orders, and PostgreSQL then breaks the deadlocks by failing one of them.
    @router.subscriber(**consumer_options(SERVICE, DeviceSeen.kind, common, batch=1))
    async def on_device_seen(event: DeviceSeen) -> None:
        """ota.v1.*.device.seen -> last seen and address advanced, one statement per batch."""
        await repo.touch_many(event)

    # A rollout's action events come in bursts: the states of a pull are written at once.
    states = Coalescer(repo.set_state_many, max_batch=COALESCE)

    @router.subscriber(**consumer_options(SERVICE, ActionCreated.kind, common, batch=COALESCE))
    async def on_action_created(event: ActionCreated) -> None:
        """ota.v1.*.action.created -> update state pending."""
        await states.submit(
            StateChange(
                event.tenant,
                event.controller_id,
                "pending",
                event.occurred_at,
                event.action_id,
                None,
            )
        )

    @router.subscriber(**consumer_options(SERVICE, ActionUpdated.kind, common, batch=COALESCE))
    async def on_action_updated(event: ActionUpdated) -> None:
        """ota.v1.*.action.updated -> downloading / installing."""
        state = ACTION_STATE.get(event.status, "installing")
        await states.submit(
            StateChange(
                event.tenant, event.controller_id, state, event.occurred_at, event.action_id, None
            )
        )

    @router.subscriber(**consumer_options(SERVICE, ActionFinished.kind, common, batch=COALESCE))
    async def on_action_finished(event: ActionFinished) -> None:
        """ota.v1.*.action.finished -> success (with the installed version), error, or back."""
        installed = event.version if event.status == "finished" else None
        await states.submit(
            StateChange(
                event.tenant,
                event.controller_id,
                finished_state(event.status),
                event.occurred_at,
                event.action_id,
                installed,
            )
        )

    @router.subscriber(**consumer_options(SERVICE, DevicePolicyChanged.kind, common))
    async def on_policy_changed(event: DevicePolicyChanged) -> None:
        """ota.v1.*.device.policy_changed -> the device's feed, for the feed filter."""
        await repo.set_feed(event.tenant, event.controller_id, event.feed)

    return router
