"""Rollouts' transactions: creation, the operators' commands and the engine's steps.

How two replicas (or two events) never decide twice:

- A rollout's phase changes (start, next wave, pause, abort, finish) happen under ``FOR UPDATE`` on
  its row; opening actions holds ``FOR SHARE`` on it, so a pause or abort waits for a batch being
  opened and no batch opens after it.
- Members waiting for their action are claimed with ``FOR UPDATE SKIP LOCKED``
  (:mod:`~gaggle_rollouts.rollout_members`).
- Counters are never stored: they are counted from ``rollout_devices`` in the transaction that
  reads them (no read-modify-write to lose).
- The partial unique index on open actions refuses a second open action for a device, whatever
  the path.
- Actions are counted against the tenant's cap on updates in flight and opened under the tenant's
  in-flight lock (:meth:`Membership.slots`), taken before the rollout's row.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from gaggle_rollouts.actions import Actions
from gaggle_rollouts.caps import Caps
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.decision import fits, same_version
from gaggle_rollouts.errors import NotKnown, Refused
from gaggle_rollouts.plan import (
    approval_after,
    approval_on_create,
    next_step,
    refusal,
    transition,
    wave_sizes,
)
from gaggle_rollouts.policies import device_view
from gaggle_rollouts.rollout_filter import NewRollout
from gaggle_rollouts.rollout_members import Membership
from gaggle_rollouts.rollout_phases import Phases, feed_key, progress_of, row_of
from gaggle_rollouts.rollout_reads import RolloutReads
from gaggle_rollouts.rollout_sql import (
    ACTIVE_IDS,
    FEED_DEVICES,
    FEED_KNOWN,
    INSERT_MEMBERS,
    INSERT_ROLLOUT,
    INSERT_WAVES,
    LOCK_FEED,
    LOCK_ROLLOUT,
    ROLLOUT_TENANT,
    RUNNING_OF_SAME_TENANTS,
    SELECT_ROLLOUT,
    SET_APPROVAL,
    SHARE_ROLLOUT,
    WAVES,
)
from gaggle_rollouts.untrusted import refuse_untrusted

log = logging.getLogger(__name__)


class RolloutStore:
    """Rollouts' transactions: creation, operators' commands, the engine's steps."""

    def __init__(self, repo: Actions, catalogue: Catalogue, caps: Caps) -> None:
        self.repo = repo
        self.catalogue = catalogue
        self.db = repo.db
        self.phases = Phases(repo)
        self.members = Membership(repo, catalogue, caps)
        self.reads = RolloutReads(repo.db, catalogue)

    async def create(self, tenant: str, new: NewRollout) -> dict[str, Any]:
        """Create a rollout with its waves (and start it if asked); the rollout's document."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_FEED, feed_key(tenant, new.feed))
            software = await self.catalogue.entry(conn, tenant, new.software_id)
            if software is None:
                raise NotKnown(f"software {new.software_id!r} is unknown", "software_id")
            if software.deleted:
                raise Refused(
                    "software_deleted", f"software {new.software_id!r} is deleted", "software_id"
                )
            if new.start:
                await refuse_untrusted(conn, tenant, new.software_id)
            devices = [device_view(r) for r in await conn.fetch(FEED_DEVICES, tenant, new.feed)]
            if (
                not devices
                and new.feed != "default"
                and not await conn.fetchval(FEED_KNOWN, tenant, new.feed)
            ):
                raise NotKnown(f"feed {new.feed!r} not found", "feed")
            chosen = [d for d in devices if new.device_filter.matches(d)]
            if not chosen:
                raise Refused(
                    "no_devices",
                    f"no device of feed {new.feed!r} matches the filter"
                    if devices
                    else f"feed {new.feed!r} has no device that reported its inventory",
                    "filter" if devices else "feed",
                )
            members = [d for d in chosen if fits(software.compatibility, d)]
            if not members:
                raise Refused(
                    "incompatible",
                    f"software {new.software_id!r} fits none of the {len(chosen)} devices",
                    "software_id",
                )
            rollout = await row_of(
                conn,
                INSERT_ROLLOUT,
                tenant,
                new.name,
                new.feed,
                new.software_id,
                new.device_filter.public(),
                new.action_type,
                new.confirmation_required,
                new.maintenance_window,
                new.success_threshold,
                new.error_threshold,
                new.error_action,
                new.forcetime,
                approval_on_create(new.approval_required),
                new.start and new.approval_required,
                new.created_by,
                new.report_timeout_s,
                new.action_timeout_s,
                new.soak_s,
            )
            sizes = wave_sizes(len(members), new.waves)
            waves = [w for w, size in enumerate(sizes, start=1) for _ in range(size)]
            await conn.execute(INSERT_WAVES, rollout["id"], list(range(1, len(sizes) + 1)), sizes)
            await conn.execute(
                INSERT_MEMBERS,
                rollout["id"],
                tenant,
                [d.controller_id for d in members],
                waves,
                [
                    "success" if same_version(software.version, d.sw_version) else "waiting"
                    for d in members
                ],
            )
            if new.start and rollout["approval"] is None:
                rollout = await self.phases.start(conn, rollout)
            await self.phases.progressed(conn, rollout)
            return await self.reads.document(conn, rollout)

    async def command(
        self,
        tenant: str,
        rollout_id: int,
        command: str,
        actor: str | None = None,
        remark: str | None = None,
    ) -> dict[str, Any]:
        """Start, pause, resume, abort, approve or deny; the rollout's document afterwards.

        ``actor`` and ``remark`` are kept with an approval or denial.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(SELECT_ROLLOUT, tenant, rollout_id)
            if row is None:
                raise NotKnown(f"rollout '{rollout_id}' not found")
            row = await row_of(conn, LOCK_ROLLOUT, rollout_id)
            target = transition(row["state"], command, row["approval"])
            if target is None:
                raise Refused("invalid_transition", refusal(row["state"], command, row["approval"]))
            if command in ("start", "resume") or (
                command == "approve" and row["start_on_approval"]
            ):
                await refuse_untrusted(conn, tenant, row["software_id"])
            if command in ("approve", "deny"):
                row = await row_of(
                    conn, SET_APPROVAL, rollout_id, approval_after(command), actor, remark
                )
                log.info(
                    "rollout approval tenant=%s rollout=%s approval=%s by=%s",
                    tenant,
                    rollout_id,
                    row["approval"],
                    actor,
                )
                if command == "deny":
                    row = await self.phases.abort(conn, row, f"approval denied by {actor}")
                elif row["start_on_approval"]:
                    row = await self.phases.start(conn, row)
            elif command == "start":
                row = await self.phases.start(conn, row)
            elif command == "pause":
                row = await self.phases.set_state(conn, row, "paused", "paused by an operator")
            elif command == "resume":
                progress = await progress_of(conn, rollout_id)
                forgiven = sum(progress.wave(w).failure for w in range(1, row["current_wave"] + 1))
                row = await self.phases.set_state(conn, row, "running", None, forgiven=forgiven)
            else:
                row = await self.phases.abort(conn, row, "aborted by an operator")
            await self.phases.progressed(conn, row)
            return await self.reads.document(conn, row)

    async def active_ids(self) -> list[int]:
        """Ids of running and paused rollouts (every tenant)."""
        return [r[0] for r in await self.db.pool.fetch(ACTIVE_IDS)]

    async def queued_elsewhere(self, rollout_ids: Collection[int]) -> list[int]:
        """Running rollouts with queued devices, of the tenants of ``rollout_ids``.

        A closed action frees a slot of its tenant, not of its rollout: whichever of the
        tenant's rollouts waits for one gets it.
        """
        rows = await self.db.pool.fetch(RUNNING_OF_SAME_TENANTS, list(rollout_ids))
        return [r[0] for r in rows]

    async def activate(self, rollout_id: int) -> int:
        """Open actions for queued devices of a running rollout, a chunk per transaction.

        As many as the tenant's cap on updates in flight leaves free; the others stay queued.
        Returns how many devices were settled (opened, or found done or gone).
        """
        first = await self.db.pool.fetchrow(ROLLOUT_TENANT, rollout_id)
        if first is None or first["state"] != "running":
            return 0
        settled = 0
        while True:
            async with self.db.pool.acquire() as conn, conn.transaction():
                free = await self.members.slots(conn, first["tenant"], wait=True)
                if free < 1:
                    return settled
                row = await conn.fetchrow(SHARE_ROLLOUT, rollout_id)
                if row is None or row["state"] != "running":
                    return settled
                decided = await self.members.open_pending(conn, row, None, free)
            if not decided:
                return settled
            settled += len(decided)

    async def evaluate(self, rollout_id: int) -> str | None:
        """Move a running rollout on (next wave, pause, abort, finish) as its counters say.

        Also publishes ``rollout.progressed`` when counters or phase changed since the last one
        this process published. Returns the step taken, if any.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await row_of(conn, LOCK_ROLLOUT, rollout_id)
            if row is None:
                return None
            taken = None
            wave_count = len(await conn.fetch(WAVES, rollout_id))
            progress = await progress_of(conn, rollout_id)
            while row["state"] == "running":
                step = next_step(
                    current_wave=row["current_wave"],
                    wave_count=wave_count,
                    progress=progress,
                    success_threshold=row["success_threshold"],
                    error_threshold=row["error_threshold"],
                    error_action=row["error_action"],
                    failures_forgiven=row["failures_forgiven"],
                )
                if step.kind == "none":
                    break
                taken = step.kind
                if step.kind == "next_wave":
                    row = await self.phases.start_wave(conn, row, row["current_wave"] + 1)
                elif step.kind == "pause":
                    row = await self.phases.set_state(conn, row, "paused", step.reason)
                elif step.kind == "abort":
                    row = await self.phases.abort(conn, row, step.reason or "error threshold")
                    progress = await progress_of(conn, rollout_id)
                else:
                    row = await self.phases.set_state(conn, row, "finished", step.reason)
                log.info(
                    "rollout step tenant=%s rollout=%s step=%s reason=%s",
                    row["tenant"],
                    rollout_id,
                    step.kind,
                    step.reason,
                )
            await self.phases.progressed(conn, row, progress)
            return taken
