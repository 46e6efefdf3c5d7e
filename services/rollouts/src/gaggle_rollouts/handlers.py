"""Rollouts subscribers: software announcements and device feedback in, actions moved forward."""

from __future__ import annotations

import logging

from faststream.nats import NatsRouter

from gaggle_contracts import names
from gaggle_contracts.events import (
    ActionFeedback,
    AutoConfirmChanged,
    CancelFeedback,
    ConfirmationFeedback,
    DeviceUpdated,
    FeedbackStatus,
    SoftwareCreated,
    SoftwareDeleted,
)
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.decision import Decision
from gaggle_rollouts.domain import (
    Action,
    cancel_feedback_status,
    close_for_deleted_device,
    confirmation_status,
    feedback_status,
)
from gaggle_rollouts.engine import Engine
from gaggle_rollouts.repository import Decide, Repo, Report
from gaggle_runtime.bus import consumer_options
from gaggle_runtime.coalesce import Coalescer

log = logging.getLogger(__name__)

SERVICE = "rollouts"
INVENTORY_BATCH = 64
FEEDBACK_BATCH = 64


def _action_id(raw: str) -> int | None:
    return names.parse_row_id(raw)


def make_router(repo: Repo, common: CommonSettings, engine: Engine) -> NatsRouter:
    """The rollouts service's subscribers; the rollouts they touch are handed to ``engine``."""
    router = NatsRouter()

    async def after(action: Action | None) -> None:
        if action is None:
            return
        engine.poke(action.rollout_id)
        if not action.active and await repo.may_want_more(action):
            # Whatever waited for this action (a started rollout wave, a newer software) now may.
            await repo.redecide(action.tenant, action.controller_id)

    @router.subscriber(**consumer_options(SERVICE, SoftwareCreated.kind, common))
    async def on_software_created(event: SoftwareCreated) -> None:
        """ota.v1.*.software.created -> catalogue upsert; devices in ``latest`` re-decided."""
        await repo.upsert_software(event)
        await repo.redecide_many(event.tenant, await repo.latest_mode_devices(event.tenant))

    @router.subscriber(**consumer_options(SERVICE, SoftwareDeleted.kind, common))
    async def on_software_deleted(event: SoftwareDeleted) -> None:
        """ota.v1.*.software.deleted -> no new actions for that software."""
        await repo.delete_software(event)

    # A rollout's feedback is a burst: the reports of one pull are applied in one transaction.
    reports = Coalescer(repo.apply_many, max_batch=FEEDBACK_BATCH)

    async def apply(
        event: ActionFeedback | CancelFeedback | ConfirmationFeedback,
        decide: Decide,
        status: FeedbackStatus | None,
        note: list[str] | None = None,
    ) -> None:
        action_id = _action_id(event.action_id)
        action = None
        if action_id is not None:
            action = await reports.submit(
                Report(
                    event.tenant,
                    action_id,
                    event.event_id,
                    event.occurred_at,
                    status,
                    decide,
                    note,
                )
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
        await after(action)

    # A fleet's first contact is a burst of these: the inventory of a pull is written at once,
    # and its devices are decided together.
    inventory = Coalescer(repo.record_devices, max_batch=INVENTORY_BATCH)

    async def decide_all(devices: list[tuple[str, str]]) -> list[Decision | Exception]:
        by_tenant: dict[str, list[str]] = {}
        for tenant, controller_id in devices:
            by_tenant.setdefault(tenant, []).append(controller_id)
        try:
            decided = {
                (tenant, controller_id): decision
                for tenant, ids in by_tenant.items()
                for controller_id, decision in (await repo.decide_batch(tenant, ids)).items()
            }
            return [decided[d] for d in devices]
        except Exception:
            # One device's failure must not fail the others: each is decided on its own, and
            # only what fails again is redelivered.
            log.warning("deciding %d devices together failed; one by one", len(devices))
            return [await _alone(tenant, controller_id) for tenant, controller_id in devices]

    async def _alone(tenant: str, controller_id: str) -> Decision | Exception:
        try:
            return await repo.redecide(tenant, controller_id)
        except Exception as exc:
            return exc

    decisions = Coalescer(decide_all, max_batch=INVENTORY_BATCH)

    @router.subscriber(
        **consumer_options(SERVICE, DeviceUpdated.kind, common, batch=INVENTORY_BATCH)
    )
    async def on_device_updated(event: DeviceUpdated) -> None:
        """ota.v1.*.device.updated -> inventory kept; re-decided; deleted: open action canceled."""
        if event.change != "deleted":
            await inventory.submit(event)
            await decisions.submit((event.tenant, event.controller_id))
            return
        await repo.record_device(event)
        action = await repo.open_action_of(event.tenant, event.controller_id)
        if action is not None:
            closed = await repo.apply(
                event.tenant,
                action.id,
                event.event_id,
                event.occurred_at,
                None,
                close_for_deleted_device,
                note=["Device deleted."],
            )
            engine.poke(closed.rollout_id if closed else None)

    # Events fetched together are handled concurrently, so two reports of one device may be
    # applied in either order: the history is ordered by when the gateway received them, and a
    # report older than the one that set the action's status does not change it (Repo.apply).
    @router.subscriber(
        **consumer_options(SERVICE, ActionFeedback.kind, common, batch=FEEDBACK_BATCH)
    )
    async def on_action_feedback(event: ActionFeedback) -> None:
        """ota.v1.*.action.feedback -> history entry; status moved forward; KV refreshed."""
        await apply(event, feedback_status, event.status)

    @router.subscriber(**consumer_options(SERVICE, CancelFeedback.kind, common))
    async def on_cancel_feedback(event: CancelFeedback) -> None:
        """ota.v1.*.cancel.feedback -> canceled, or back to running if the device refused."""
        await apply(event, cancel_feedback_status, event.status)

    @router.subscriber(**consumer_options(SERVICE, ConfirmationFeedback.kind, common))
    async def on_confirmation(event: ConfirmationFeedback) -> None:
        """ota.v1.*.confirmation.feedback -> confirmed: the action runs; denied: it waits on."""
        confirmed = event.confirmation == "confirmed"
        text = "Confirmed by the device." if confirmed else "Denied by the device."
        await apply(
            event,
            lambda action, _: confirmation_status(action, confirmed),
            None,
            note=[text, *event.details],
        )

    @router.subscriber(**consumer_options(SERVICE, AutoConfirmChanged.kind, common))
    async def on_auto_confirm(event: AutoConfirmChanged) -> None:
        """ota.v1.*.device.auto_confirm -> kept; switched on, a waiting action is confirmed."""
        await repo.set_auto_confirm(event.tenant, event.controller_id, event.active)
        action = await repo.open_action_of(event.tenant, event.controller_id)
        if event.active and action is not None and action.status == "wait_for_confirmation":
            await repo.apply(
                event.tenant,
                action.id,
                event.event_id,
                event.occurred_at,
                None,
                lambda a, _: confirmation_status(a, True),
                note=[f"Confirmed automatically ({event.initiator or 'device'})."],
            )

    return router
