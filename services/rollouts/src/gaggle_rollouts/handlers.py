"""Rollouts subscribers: software announcements and device feedback in, actions moved forward."""

from __future__ import annotations

import logging
from collections.abc import Callable

from faststream.nats import NatsRouter

from gaggle_contracts.events import (
    ActionFeedback,
    CancelFeedback,
    DeviceUpdated,
    FeedbackStatus,
    SoftwareCreated,
    SoftwareDeleted,
)
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.domain import (
    Action,
    cancel_feedback_status,
    close_for_deleted_device,
    feedback_status,
)
from gaggle_rollouts.repository import Repo
from gaggle_runtime.bus import consumer_options

log = logging.getLogger(__name__)

SERVICE = "rollouts"

Decide = Callable[[Action, FeedbackStatus], tuple[str, bool]]


def _action_id(raw: str) -> int | None:
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def make_router(repo: Repo, common: CommonSettings) -> NatsRouter:
    """The rollouts service's subscribers, bound to ``repo``."""
    router = NatsRouter()

    @router.subscriber(**consumer_options(SERVICE, SoftwareCreated.kind, common))
    async def on_software_created(event: SoftwareCreated) -> None:
        """ota.v1.*.software.created -> catalogue upsert; devices in ``latest`` re-decided."""
        await repo.upsert_software(event)
        for controller_id in await repo.latest_mode_devices(event.tenant):
            await repo.redecide(event.tenant, controller_id)

    @router.subscriber(**consumer_options(SERVICE, SoftwareDeleted.kind, common))
    async def on_software_deleted(event: SoftwareDeleted) -> None:
        """ota.v1.*.software.deleted -> no new actions for that software."""
        await repo.delete_software(event)

    async def apply(event: ActionFeedback | CancelFeedback, decide: Decide) -> None:
        action_id = _action_id(event.action_id)
        action = None
        if action_id is not None:
            action = await repo.apply(
                event.tenant, action_id, event.event_id, event.occurred_at, event.status, decide
            )
        if action is None:
            log.warning(
                "%s for unknown action tenant=%s action=%s",
                event.kind,
                event.tenant,
                event.action_id,
            )
        elif not action.active:
            log.info(
                "action closed tenant=%s action=%s status=%s",
                event.tenant,
                action.id,
                action.status,
            )

    @router.subscriber(**consumer_options(SERVICE, DeviceUpdated.kind, common))
    async def on_device_updated(event: DeviceUpdated) -> None:
        """ota.v1.*.device.updated -> inventory kept; re-decided; deleted: open action canceled."""
        await repo.record_device(event)
        if event.change != "deleted":
            await repo.redecide(event.tenant, event.controller_id)
            return
        action = await repo.open_action_of(event.tenant, event.controller_id)
        if action is not None:
            await repo.apply(
                event.tenant,
                action.id,
                event.event_id,
                event.occurred_at,
                None,
                close_for_deleted_device,
                note=["Device deleted."],
            )

    # Feedback is consumed one event at a time: events fetched together would be handled
    # concurrently, and a device's reports must enter its history in the order it sent them.
    @router.subscriber(**consumer_options(SERVICE, ActionFeedback.kind, common, batch=1))
    async def on_action_feedback(event: ActionFeedback) -> None:
        """ota.v1.*.action.feedback -> history entry; status moved forward; KV refreshed."""
        await apply(event, feedback_status)

    @router.subscriber(**consumer_options(SERVICE, CancelFeedback.kind, common, batch=1))
    async def on_cancel_feedback(event: CancelFeedback) -> None:
        """ota.v1.*.cancel.feedback -> canceled, or back to running if the device refused."""
        await apply(event, cancel_feedback_status)

    return router
