"""Rollout health checks against the tables: time-outs, soaks, rollbacks, blocked software.

The rules are :mod:`gaggle_rollouts.health`'s; here they are run. A sweep (the engine's
``health`` loop) times out actions past their limits and judges soaks that ended; the
``device.seen`` and ``device.updated`` consumers tell soaking actions that their device came
back, and compare the versions devices report with what their last successful action installed.
A time-out or a rollback is applied to the action like a device's report
(:func:`~gaggle_rollouts.domain.apply_reports`): history note, status, rollout membership, events
and the device's KV ``deployments`` entry in one transaction, so the gateway stops offering a
timed-out action at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from gaggle_contracts.events import DeviceSeen, DeviceUpdated
from gaggle_rollouts import health
from gaggle_rollouts.actions import Actions
from gaggle_rollouts.domain import Action, Report, apply_reports
from gaggle_runtime.db import Conn

log = logging.getLogger(__name__)

SWEEP_LIMIT = 1000
"""Actions timed out (or soaks judged) per transaction."""

# Finished actions get their soak (their rollout's) or none; the soak counts from the success.
JUDGE_FINISHED = """
UPDATE rollouts.actions a
SET health = CASE WHEN s.soak_s > 0 THEN 'soaking' ELSE 'none' END,
    soak_until = CASE WHEN s.soak_s > 0 THEN a.closed_at + make_interval(secs => s.soak_s) END
FROM (SELECT f.id, coalesce(r.soak_s, 0) AS soak_s FROM rollouts.actions f
      LEFT JOIN rollouts.rollouts r ON r.id = f.rollout_id
      WHERE f.health IS NULL AND NOT f.active AND f.status = 'finished') s
WHERE a.id = s.id"""
# Open actions past a limit (the rule itself is health.timeout_reason). Those whose clock
# started within the shorter limit cannot be past either: their reports are not looked up.
OVERDUE = """
SELECT * FROM (
    SELECT a.*, (SELECT max(s.at) FROM rollouts.action_status s
                 WHERE s.action_id = a.id AND s.event_id IS NOT NULL) AS reported_at
    FROM rollouts.actions a
    WHERE a.active AND a.status <> 'wait_for_confirmation' AND a.window_open IS NOT FALSE
      AND a.clock_from < $1::timestamptz - make_interval(
          secs => least(coalesce(a.action_timeout_s, $2), coalesce(a.report_timeout_s, $3)))) o
WHERE o.clock_from < $1::timestamptz - make_interval(secs => coalesce(o.action_timeout_s, $2))
   OR greatest(o.clock_from, o.reported_at)
      < $1::timestamptz - make_interval(secs => coalesce(o.report_timeout_s, $3))
ORDER BY o.id LIMIT $4"""
# Successes whose device reported its version after them before they were judged (its report
# was handled before its success).
REPORTED_SINCE = """
SELECT a.*, d.reported_version, d.reported_at FROM rollouts.actions a
JOIN rollouts.devices d ON d.tenant = a.tenant AND d.controller_id = a.controller_id
WHERE a.health IS NULL AND NOT a.active AND a.status = 'finished'
  AND d.reported_at > coalesce(a.status_at, a.closed_at)
ORDER BY a.id LIMIT $1"""
REPORTED = """
INSERT INTO rollouts.devices AS d (tenant, controller_id, reported_version, reported_at,
                                   updated_at)
SELECT $1, u.controller_id, u.version, u.at, '-infinity'
FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS u(controller_id, version, at)
ON CONFLICT (tenant, controller_id) DO UPDATE
SET reported_version = EXCLUDED.reported_version, reported_at = EXCLUDED.reported_at
WHERE d.reported_at IS NULL OR d.reported_at <= EXCLUDED.reported_at"""
SOAKED = """
SELECT a.*, r.soak_s FROM rollouts.actions a
LEFT JOIN rollouts.rollouts r ON r.id = a.rollout_id
WHERE a.health = 'soaking' AND a.soak_until <= $1
ORDER BY a.soak_until, a.id LIMIT $2"""
SET_HEALTH = """
UPDATE rollouts.actions SET health = $2, updated_at = now() WHERE id = ANY($1::bigint[])"""
SEEN = """
UPDATE rollouts.actions a SET seen_at = greatest(a.seen_at, u.at)
FROM unnest($2::text[], $3::timestamptz[]) AS u(controller_id, at)
WHERE a.tenant = $1 AND a.controller_id = u.controller_id AND NOT a.active
  AND a.status = 'finished' AND coalesce(a.health, 'soaking') = 'soaking' AND u.at > a.closed_at"""
LAST_SUCCESS = """
SELECT DISTINCT ON (controller_id) * FROM rollouts.actions
WHERE tenant = $1 AND controller_id = ANY($2::text[]) AND NOT active AND status = 'finished'
ORDER BY controller_id, id DESC"""
NOTE_ONCE = """
INSERT INTO rollouts.action_status (action_id, status, details)
SELECT $1, $2, jsonb_build_array($3::text)
WHERE NOT EXISTS (SELECT 1 FROM rollouts.action_status
                  WHERE action_id = $1 AND details = jsonb_build_array($3::text))"""
BLOCK = """
INSERT INTO rollouts.blocked_software (tenant, controller_id, software_id, version, action_id,
                                       reason)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
ON CONFLICT (tenant, controller_id, software_id) DO UPDATE
SET version = EXCLUDED.version, action_id = EXCLUDED.action_id, reason = EXCLUDED.reason,
    blocked_at = now()"""
BLOCKED = """
SELECT controller_id, software_id FROM rollouts.blocked_software
WHERE tenant = $1 AND controller_id = ANY($2::text[])"""
BLOCKED_OF = """
SELECT software_id, version, action_id, reason, blocked_at FROM rollouts.blocked_software
WHERE tenant = $1 AND controller_id = $2 ORDER BY blocked_at, software_id"""
UNBLOCK = """
DELETE FROM rollouts.blocked_software WHERE tenant = $1 AND controller_id = $2
  AND software_id = $3 RETURNING software_id"""


def _action(row: asyncpg.Record) -> Action:
    return Action(**{f: row[f] for f in Action.__dataclass_fields__})


def _limits(row: asyncpg.Record) -> health.Limits:
    return health.Limits(row["report_timeout_s"], row["action_timeout_s"])


async def blocked_software(
    conn: Conn, tenant: str, controller_ids: Sequence[str]
) -> dict[str, set[str]]:
    """Software each of the devices must not be offered (rolled back there), by device."""
    out: dict[str, set[str]] = {}
    for r in await conn.fetch(BLOCKED, tenant, list(controller_ids)):
        out.setdefault(r["controller_id"], set()).add(r["software_id"])
    return out


class AfterChanged(Protocol):
    """What follows once actions changed (their rollouts poked, their devices chosen for)."""

    async def __call__(self, actions: Sequence[Action]) -> dict[int, Exception]:
        """Follow-ups of ``actions``; the failures by action id."""


@dataclass
class Swept:
    """What one health sweep did."""

    timed_out: int = 0
    healthy: int = 0
    silent: int = 0


class Health:
    """Runs the health rules over ``rollouts.actions``."""

    def __init__(self, actions: Actions) -> None:
        self.actions = actions
        self.db = actions.db
        self.after: AfterChanged | None = None
        """Set by the wiring: the use cases' follow-ups of changed actions."""

    async def _apply(self, reports: list[Report]) -> list[Action]:
        """Apply health reports to the actions still open to them; the actions they changed."""
        if not reports:
            return []
        async with self.db.pool.acquire() as conn, conn.transaction():
            current = await self.actions.lock(conn, reports)
            applied = apply_reports(current, reports, set())
            await self.actions.record(conn, applied)
            rolled = [a for a, _ in applied.moved if a.status == health.ROLLED_BACK]
            if rolled:
                await conn.execute(
                    BLOCK,
                    [a.tenant for a in rolled],
                    [a.controller_id for a in rolled],
                    [a.software_id for a in rolled],
                    [a.version for a in rolled],
                    [a.id for a in rolled],
                    [health.rolled_back_reason(a.version, a.from_version or "?") for a in rolled],
                )
            changed = [a for a, _ in applied.moved]
        if self.after is not None and changed:
            await self.after(changed)
        return changed

    async def sweep(self, now: datetime) -> Swept:
        """Time out overdue actions and judge the soaks that ended at ``now``."""
        swept = Swept()
        rollbacks: list[Report] = []
        async with self.db.pool.acquire() as conn, conn.transaction():
            for row in await conn.fetch(REPORTED_SINCE, SWEEP_LIMIT):
                rollbacks += await self._version(
                    conn, row, row["reported_version"], row["reported_at"]
                )
        await self._apply(rollbacks)
        async with self.db.pool.acquire() as conn:
            await conn.execute(JUDGE_FINISHED)
            overdue = await conn.fetch(
                OVERDUE,
                now,
                health.DEFAULT_ACTION_TIMEOUT_S,
                health.DEFAULT_REPORT_TIMEOUT_S,
                SWEEP_LIMIT,
            )
            soaked = await conn.fetch(SOAKED, now, SWEEP_LIMIT)
        reports: list[Report] = []
        for row in overdue:
            reason = health.timeout_reason(
                now=now,
                status=row["status"],
                active=row["active"],
                window_open=row["window_open"],
                clock_from=row["clock_from"],
                reported_at=row["reported_at"],
                limits=_limits(row),
            )
            if reason is not None:
                log.info("action timed out tenant=%s action=%s", row["tenant"], row["id"])
                reports.append(
                    Report(row["tenant"], row["id"], None, now, None, "timed_out", [reason])
                )
        swept.timed_out = len(reports)
        healthy: list[asyncpg.Record] = []
        done: list[int] = []
        for row in soaked:
            if row["status"] != "finished":  # rolled back or timed out meanwhile
                done.append(row["id"])
                continue
            verdict = health.soak_verdict(
                now=now,
                succeeded_at=row["closed_at"],
                soak_until=row["soak_until"],
                seen_at=row["seen_at"],
                report_timeout_s=_limits(row).report_s,
            )
            if verdict == "healthy":
                healthy.append(row)
            elif verdict == "silent":
                log.info("silent in its soak tenant=%s action=%s", row["tenant"], row["id"])
                done.append(row["id"])
                note = health.silent_reason(row["soak_s"] or 0.0)
                reports.append(
                    Report(row["tenant"], row["id"], None, now, None, "timed_out", [note])
                )
                swept.silent += 1
        swept.healthy = len(healthy)
        # The verdicts first, then the soaks closed: a crash in between judges them again.
        await self._apply(reports)
        if healthy or done:
            async with self.db.pool.acquire() as conn, conn.transaction():
                await conn.execute(SET_HEALTH, [r["id"] for r in healthy], "healthy")
                await conn.execute(SET_HEALTH, done, "none")
            if healthy and self.after is not None:
                # Their successes count now: their rollouts may start the next wave.
                await self.after([_action(r) for r in healthy])
        return swept

    async def seen(self, event: DeviceSeen) -> None:
        """A sightings batch: soaking actions of those devices learn they came back."""
        newest: dict[str, datetime] = {}
        for s in event.sightings:
            if s.controller_id not in newest or s.seen_at > newest[s.controller_id]:
                newest[s.controller_id] = s.seen_at
        if newest:
            await self.db.pool.execute(SEEN, event.tenant, list(newest), list(newest.values()))

    async def versions(self, events: list[DeviceUpdated]) -> list[None]:
        """Devices' reports of their running version, compared with their last success.

        A report of the installed version confirms it (the device is seen back); of the version
        it ran before, a rollback (the action ``rolled_back``, the software blocked for the
        device); of any other, an out-of-band change noted in the action's history.
        """
        reports = [
            e
            for e in events
            if e.change in ("attributes", "registered") and e.sw_version is not None
        ]
        by_tenant: dict[str, list[DeviceUpdated]] = {}
        for e in reports:
            by_tenant.setdefault(e.tenant, []).append(e)
        rollbacks: list[Report] = []
        for tenant, of_tenant in by_tenant.items():
            ids = sorted({e.controller_id for e in of_tenant})
            newest: dict[str, DeviceUpdated] = {}
            for e in of_tenant:
                seen = newest.get(e.controller_id)
                if seen is None or (e.reported_at or e.occurred_at) >= (
                    seen.reported_at or seen.occurred_at
                ):
                    newest[e.controller_id] = e
            async with self.db.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    REPORTED,
                    tenant,
                    list(newest),
                    [e.sw_version for e in newest.values()],
                    [e.reported_at or e.occurred_at for e in newest.values()],
                )
                last = {r["controller_id"]: r for r in await conn.fetch(LAST_SUCCESS, tenant, ids)}
                for e in sorted(of_tenant, key=lambda e: e.reported_at or e.occurred_at):
                    row = last.get(e.controller_id)
                    if row is None or e.sw_version is None:
                        continue
                    at = e.reported_at or e.occurred_at
                    rollbacks += await self._version(conn, row, e.sw_version, at)
        await self._apply(rollbacks)
        return [None] * len(events)

    async def _version(
        self, conn: Conn, row: asyncpg.Record, reported: str, at: datetime
    ) -> list[Report]:
        verdict = health.version_verdict(
            reported=reported,
            reported_at=at,
            installed=row["version"],
            previous=row["from_version"],
            # When the gateway received the success (the device's reports are timed so too).
            succeeded_at=row["status_at"] or row["closed_at"],
        )
        if verdict == "earlier":
            return []
        await conn.execute(SEEN, row["tenant"], [row["controller_id"]], [at])
        if verdict == "rolled_back":
            log.warning(
                "rollback detected tenant=%s controller_id=%s action=%s reported=%s",
                row["tenant"],
                row["controller_id"],
                row["id"],
                reported,
            )
            note = health.rolled_back_reason(row["version"], reported)
            return [Report(row["tenant"], row["id"], None, at, None, "rolled_back", [note])]
        if verdict == "out_of_band":
            note = health.out_of_band_reason(row["version"], reported)
            await conn.execute(NOTE_ONCE, row["id"], row["status"], note)
        return []

    async def blocked(self, tenant: str, controller_id: str) -> list[dict[str, Any]]:
        """The software a device is not offered (it rolled back there), oldest first."""
        rows = await self.db.pool.fetch(BLOCKED_OF, tenant, controller_id)
        return [
            {
                "software_id": r["software_id"],
                "version": r["version"],
                "action_id": str(r["action_id"]),
                "reason": r["reason"],
                "blocked_at": r["blocked_at"],
            }
            for r in rows
        ]

    async def unblock(self, tenant: str, controller_id: str, software_id: str) -> bool:
        """Clear a block (an operator's call); whether there was one."""
        return await self.db.pool.fetchval(UNBLOCK, tenant, controller_id, software_id) is not None
