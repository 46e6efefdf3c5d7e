"""What rollouts does with each event it consumes and each change an operator asks for.

One method per use case, which owns its transaction. The subscribers
(:mod:`gaggle_rollouts.handlers`) and the routes only translate an event or a request into a call
here; the rules themselves are the pure functions of :mod:`~gaggle_rollouts.domain` and
:mod:`~gaggle_rollouts.decision`, and the repositories run their SQL on the connection they are
given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gaggle_contracts import names
from gaggle_contracts.events import (
    ActionFeedback,
    AutoConfirmChanged,
    CancelFeedback,
    ConfirmationFeedback,
    DeviceSeen,
    DeviceUpdated,
    FeedbackStatus,
    SoftwareCreated,
    SoftwareDeleted,
    utcnow,
)
from gaggle_rollouts.actions import Actions, ActionSpec
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.choosing import Chooser
from gaggle_rollouts.decision import Decision
from gaggle_rollouts.domain import Action, Report, ReportKind, Software, apply_reports
from gaggle_rollouts.health_store import Health
from gaggle_rollouts.policies import Policies, Policy, PolicyMatch
from gaggle_runtime.coalesce import Coalescer, run_each
from gaggle_runtime.service import Database

log = logging.getLogger(__name__)

INVENTORY_BATCH = 64
FEEDBACK_BATCH = 64
"""Reports of cancel and confirmation feedback applied in one transaction at most."""
FEEDBACK_PULL = 320
"""deploymentBase feedback events fetched, applied and acked together (one transaction)."""
FEEDBACK_IN_FLIGHT = 3
"""Pulls of deploymentBase feedback applied at once, each in its own transaction.

JetStream stops delivering to a consumer with 1,000 events unacked (its default
``max_ack_pending``): ``FEEDBACK_PULL * FEEDBACK_IN_FLIGHT`` stays below it.
"""


class Poke(Protocol):
    """Where a changed rollout is handed to be moved on (the engine)."""

    def poke(self, rollout_id: int | None) -> None:
        """Look at ``rollout_id`` soon (None: nothing to do)."""


@dataclass
class UseCases:
    """The use cases over the repositories; the consumers' bursts are coalesced per transaction."""

    db: Database
    actions: Actions
    catalogue: Catalogue
    policies: Policies
    chooser: Chooser
    engine: Poke
    health: Health | None = None
    """The health checks (time-outs, soaks, rollbacks); None: not run."""

    def __post_init__(self) -> None:
        # A rollout's feedback is a burst: the reports of one pull are applied in one
        # transaction.
        self.reports = Coalescer(self.apply_many, max_batch=FEEDBACK_BATCH)
        # A fleet's first contact is a burst of inventories: those of a pull are written at
        # once, and their devices chosen for together.
        self.inventory = Coalescer(self.policies.record_devices, max_batch=INVENTORY_BATCH)
        self.choices = Coalescer(self.choose_many, max_batch=INVENTORY_BATCH)
        if self.health is not None:
            self.health.after = self.after_changed
            # Versions reported are compared with the devices' last successes before the
            # devices are chosen for, so a rolled-back device is not offered the same again.
            self.versions = Coalescer(self.health.versions, max_batch=INVENTORY_BATCH)

    async def software_created(self, event: SoftwareCreated) -> None:
        """Catalogue upsert; devices in mode ``latest`` chosen for again."""
        await self.catalogue.upsert_software(event)
        await self.chooser.choose_chunked(
            event.tenant, await self.policies.latest_mode_devices(event.tenant)
        )

    async def software_deleted(self, event: SoftwareDeleted) -> None:
        """No new actions for that software."""
        await self.catalogue.delete_software(event)

    async def report(
        self,
        event: ActionFeedback | CancelFeedback | ConfirmationFeedback,
        kind: ReportKind,
        fb: FeedbackStatus | None,
        note: list[str] | None = None,
    ) -> Action | None:
        """A device's report applied to its action (batched); the action as it is now."""
        action_id = names.parse_row_id(event.action_id)
        action = None
        if action_id is not None:
            action = await self.reports.submit(
                Report(event.tenant, action_id, event.event_id, event.occurred_at, fb, kind, note)
            )
        _log_outcome(event, action)
        await self._after(action)
        return action

    async def feedback_batch(self, events: Sequence[ActionFeedback]) -> list[Exception | None]:
        """A pull's deploymentBase feedback applied in one transaction; each event's outcome.

        The reports go through :meth:`apply_many` together (a report that fails for good is
        applied alone, see :func:`~gaggle_runtime.coalesce.run_each`), then the follow-ups of
        the actions they changed run once for the batch (:meth:`after_changed`). An event's
        outcome is None when it is done (its action unknown included), else its exception.
        """
        outcomes: list[Exception | None] = [None] * len(events)
        debug = log.isEnabledFor(logging.DEBUG)
        reports: list[Report] = []
        at: list[int] = []
        for i, event in enumerate(events):
            action_id = names.parse_row_id(event.action_id)
            if action_id is None:
                _log_outcome(event, None)
                continue
            reports.append(
                Report(
                    event.tenant,
                    action_id,
                    event.event_id,
                    event.occurred_at,
                    event.status,
                    "feedback",
                )
            )
            at.append(i)
        if not reports:
            return outcomes
        results = await run_each(self.apply_many, reports)
        changed: dict[int, Action] = {}
        closed: dict[str, int] = {}
        for i, result in zip(at, results, strict=True):
            if isinstance(result, Exception):
                outcomes[i] = result
                continue
            if result is None or debug:
                _log_outcome(events[i], result, logging.DEBUG)
            if result is not None:
                changed[result.id] = result
                if not result.active:
                    closed[result.status] = closed.get(result.status, 0) + 1
        if closed:
            # One line per pull: a line per closed action cost as much as applying its report.
            log.info(
                "actions closed count=%d %s",
                sum(closed.values()),
                " ".join(f"{status}={n}" for status, n in sorted(closed.items())),
            )
        failed = await self.after_changed(list(changed.values()))
        for i, result in zip(at, results, strict=True):
            if isinstance(result, Action) and result.id in failed:
                outcomes[i] = failed[result.id]
        return outcomes

    async def _after(self, action: Action | None) -> None:
        if action is None:
            return
        failed = await self.after_changed([action])
        if action.id in failed:
            raise failed[action.id]

    async def after_changed(self, actions: Sequence[Action]) -> dict[int, Exception]:
        """Follow-ups once reports changed ``actions``; the failures, by action id.

        Their rollouts are poked; for the closed ones whose device may want more (see
        :meth:`Actions.may_want_more_many`), whatever waited for them (a started rollout wave, a
        newer software) is chosen now. Runs once per batch of reports, not once per report.
        """
        for rollout_id in {a.rollout_id for a in actions}:
            self.engine.poke(rollout_id)
        closed = [a for a in actions if not a.active]
        if not closed:
            return {}
        wanting = await self.actions.may_want_more_many(closed)
        if not wanting:
            return {}
        devices = list(dict.fromkeys((a.tenant, a.controller_id) for a in wanting))
        decided = dict(zip(devices, await self.choose_many(devices), strict=True))
        return {
            a.id: outcome
            for a in wanting
            if isinstance(outcome := decided[(a.tenant, a.controller_id)], Exception)
        }

    async def device_updated(self, event: DeviceUpdated) -> None:
        """Inventory kept and the device chosen for again; deleted: its open action canceled."""
        if event.change != "deleted":
            if self.health is not None and event.sw_version is not None:
                await self.versions.submit(event)
            await self.inventory.submit(event)
            await self.choices.submit((event.tenant, event.controller_id))
            return
        await self.policies.record_device(event)
        action = await self.actions.open_action_of(event.tenant, event.controller_id)
        if action is not None:
            closed = await self.apply(
                event.tenant,
                action.id,
                event.event_id,
                event.occurred_at,
                None,
                "device_deleted",
                note=["Device deleted."],
            )
            self.engine.poke(closed.rollout_id if closed else None)

    async def device_seen(self, event: DeviceSeen) -> None:
        """Devices polled: those in a soak after their success are seen back."""
        if self.health is not None:
            await self.health.seen(event)

    async def auto_confirm(self, event: AutoConfirmChanged) -> None:
        """Kept; switched on, a waiting action is confirmed."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            await self.actions.set_auto_confirm(
                conn, event.tenant, event.controller_id, event.active
            )
        action = await self.actions.open_action_of(event.tenant, event.controller_id)
        if event.active and action is not None and action.status == "wait_for_confirmation":
            await self.apply(
                event.tenant,
                action.id,
                event.event_id,
                event.occurred_at,
                None,
                "confirmed",
                note=[f"Confirmed automatically ({event.initiator or 'device'})."],
            )

    async def assign(
        self, tenant: str, controller_id: str, software: Software, spec: ActionSpec
    ) -> Action:
        """An operator assigns a software to a device: its action, opened.

        Raises:
            ActionExistsError: the device has an open action already.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            return await self.actions.open_one(
                conn, tenant, controller_id, software, spec, "Assigned by an operator."
            )

    async def set_policy(self, tenant: str, controller_id: str, policy: Policy) -> Decision:
        """A device's policy stored and announced; the decision it leads to, taken at once."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            await self.policies.set_policy(conn, tenant, controller_id, policy)
        return await self.chooser.choose(tenant, controller_id)

    async def set_policies(self, tenant: str, match: PolicyMatch, policy: Policy) -> list[str]:
        """One policy for every known device ``match`` selects; their ids, chosen for later."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            ids = await self.policies.set_policies(conn, tenant, match, policy)
        self.chooser.choose_later(tenant, ids)
        return ids

    async def apply(
        self,
        tenant: str,
        action_id: int,
        event_id: Any,
        at: datetime,
        fb: FeedbackStatus | None,
        kind: ReportKind,
        note: list[str] | None = None,
    ) -> Action | None:
        """Apply one report (see :meth:`apply_many`); the action as it is now, None: no such."""
        (result,) = await self.apply_many([Report(tenant, action_id, event_id, at, fb, kind, note)])
        return result

    async def apply_many(self, reports: Sequence[Report]) -> list[Action | None]:
        """Apply many reports in one transaction; for each, its action as it is after it.

        The actions are locked, so reports for one action are applied one after the other, also
        across batches and replicas. What each report does is :func:`domain.apply_reports`.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            current = await self.actions.lock(conn, reports)
            seen = await self.actions.seen(conn, reports)
            applied = apply_reports(current, reports, seen)
            await self.actions.record(conn, applied)
            return applied.results

    async def choose_many(self, devices: list[tuple[str, str]]) -> list[Decision | Exception]:
        """Choose for many ``(tenant, controller_id)`` at once; each device's decision."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, controller_id in devices:
            by_tenant.setdefault(tenant, []).append(controller_id)
        try:
            decided = {
                (tenant, controller_id): decision
                for tenant, ids in by_tenant.items()
                for controller_id, decision in (
                    await self.chooser.choose_batch(tenant, ids)
                ).items()
            }
            return [decided[d] for d in devices]
        except Exception:
            # One device's failure must not fail the others: each is chosen for on its own,
            # and only what fails again is redelivered.
            log.warning("choosing for %d devices together failed; one by one", len(devices))
            return [await self._alone(tenant, controller_id) for tenant, controller_id in devices]

    async def _alone(self, tenant: str, controller_id: str) -> Decision | Exception:
        try:
            return await self.chooser.choose(tenant, controller_id)
        except Exception as exc:
            return exc


def _log_outcome(
    event: ActionFeedback | CancelFeedback | ConfirmationFeedback,
    action: Action | None,
    level: int = logging.INFO,
) -> None:
    if action is None:
        log.warning(
            "%s for unknown action tenant=%s action=%s",
            event.kind,
            event.tenant,
            event.action_id,
        )
    elif not action.active:
        log.log(
            level,
            "action closed tenant=%s action=%s status=%s",
            event.tenant,
            action.id,
            action.status,
        )


async def check_health(health: Health) -> None:
    """One health sweep: actions past their limits timed out, ended soaks judged."""
    swept = await health.sweep(utcnow())
    if swept.timed_out or swept.silent or swept.healthy:
        log.info(
            "health sweep timed_out=%d silent=%d healthy=%d",
            swept.timed_out,
            swept.silent,
            swept.healthy,
        )


async def refresh_windows(db: Database, actions: Actions, *, windows: bool = True) -> int:
    """Actions whose force time came, or whose window opened or closed: stored, re-rendered.

    Windows are looked at only with ``windows``.

    Returns:
        How many actions changed, at ``actions.clock()``.
    """
    now = actions.clock()
    async with db.pool.acquire() as conn, conn.transaction():
        changed = await actions.refresh_forced(conn, now)
        if windows:
            changed += await actions.refresh_windows(conn, now)
        return changed
