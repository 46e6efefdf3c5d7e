"""Actions and their status history, and the KV ``deployments`` documents rendered from them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel

from gaggle_contracts import names
from gaggle_contracts.events import (
    ActionCreated,
    utcnow,
)
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.domain import (
    KV_CLOSED_IDS,
    KV_HISTORY,
    Action,
    ActionType,
    Applied,
    Docs,
    Report,
    Software,
    deployment_entry,
)
from gaggle_rollouts.errors import ActionExistsError
from gaggle_rollouts.schedule import ScheduleError, Window
from gaggle_runtime.db import Conn
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

log = logging.getLogger(__name__)

INSERT_ACTIONS = """
INSERT INTO rollouts.actions (tenant, controller_id, software_id, version, type, status,
                              rollout_id, maintenance_window, window_open, forcetime, force_due,
                              report_timeout_s, action_timeout_s, from_version)
SELECT $1, u.controller_id, $2, $3, $4, u.status, $5, $6::jsonb, $7, $10, $11, $12, $13,
       (SELECT d.sw_version FROM rollouts.devices d
        WHERE d.tenant = $1 AND d.controller_id = u.controller_id)
FROM unnest($8::text[], $9::text[]) AS u(controller_id, status)
ON CONFLICT (tenant, controller_id) WHERE active DO NOTHING
RETURNING *"""

INSERT_NOTES = """
INSERT INTO rollouts.action_status (action_id, status, details)
SELECT u.id, u.status, jsonb_build_array(u.note)
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, status, note)"""

AUTO_CONFIRM = """
SELECT controller_id FROM rollouts.devices
WHERE tenant = $1 AND controller_id = ANY($2::text[]) AND auto_confirm"""

SELECT_ACTION = "SELECT * FROM rollouts.actions WHERE tenant = $1 AND id = $2"
# The reports' actions, locked in id order (two batches sharing actions cannot deadlock).
LOCK_ACTIONS = """
SELECT a.* FROM rollouts.actions AS a
JOIN unnest($1::text[], $2::bigint[]) AS k(tenant, id) ON a.tenant = k.tenant AND a.id = k.id
ORDER BY a.id
FOR UPDATE OF a"""

KNOWN_EVENTS = "SELECT event_id FROM rollouts.action_status WHERE event_id = ANY($1::uuid[])"

CLOSE_MEMBERS = """
UPDATE rollouts.rollout_devices AS m SET state = u.outcome
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[])
    AS u(rollout_id, controller_id, action_id, outcome)
WHERE m.rollout_id = u.rollout_id AND m.controller_id = u.controller_id
  AND m.action_id = u.action_id
  AND (m.state = 'running' OR (m.state, u.outcome) IN (
      ('success', 'rolled_back'), ('success', 'timed_out'), ('timed_out', 'success'),
      ('timed_out', 'failure'), ('timed_out', 'canceled')))"""
MEMBER_OUTCOME = {
    "finished": "success",
    "downloaded": "success",
    "canceled": "canceled",
    "timed_out": "timed_out",
    "rolled_back": "rolled_back",
}
"""How a closed action counts in its rollout; anything else (``error``) is a failure.

A member's outcome changes later only as :mod:`~gaggle_rollouts.health` says: a success that
rolls back or goes silent in its soak, a time-out whose final report had come in time."""

UPDATE_STATUSES = """
UPDATE rollouts.actions AS a
SET status = u.status, active = u.active, updated_at = now(),
    status_at = greatest(a.status_at, u.at),
    clock_from = CASE WHEN a.status = 'wait_for_confirmation' AND u.status <> a.status
                      THEN now() ELSE a.clock_from END,
    closed_at = CASE WHEN u.active THEN NULL ELSE coalesce(a.closed_at, now()) END
FROM unnest($1::bigint[], $2::text[], $3::boolean[], $4::timestamptz[]) AS u(id, status, active, at)
WHERE a.id = u.id"""

# History entries in report order (ids ascending), so entries of one instant keep that order.
INSERT_STATUSES = """
INSERT INTO rollouts.action_status (action_id, event_id, at, status, execution, finished, code,
                                    details)
SELECT u.action_id, u.event_id, u.at, u.status, u.execution, u.finished, u.code, u.details::jsonb
FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
            $7::integer[], $8::text[])
    WITH ORDINALITY AS u(action_id, event_id, at, status, execution, finished, code, details, n)
ORDER BY u.n
ON CONFLICT (event_id) DO NOTHING"""

SELECT_HISTORY = """
SELECT at, status, execution, finished, code, details FROM rollouts.action_status
WHERE action_id = $1 ORDER BY at, id"""

SELECT_DEVICE_ACTIONS = """
SELECT * FROM rollouts.actions WHERE tenant = $1 AND controller_id = $2 ORDER BY id DESC LIMIT $3"""

OPEN_ACTION = """
SELECT * FROM rollouts.actions WHERE tenant = $1 AND controller_id = $2 AND active"""
OPEN_ACTIONS = """
SELECT * FROM rollouts.actions WHERE tenant = $1 AND controller_id = ANY($2::text[]) AND active"""
LAST_INSTALLED = """
SELECT DISTINCT ON (controller_id) * FROM rollouts.actions
WHERE tenant = $1 AND controller_id = ANY($2::text[]) AND NOT active
  AND status IN ('finished', 'downloaded')
ORDER BY controller_id, id DESC"""
RECENT_CLOSED = """
SELECT controller_id, id FROM (
    SELECT controller_id, id,
           row_number() OVER (PARTITION BY controller_id ORDER BY id DESC) AS n
    FROM rollouts.actions
    WHERE tenant = $1 AND controller_id = ANY($2::text[]) AND NOT active) recent
WHERE n <= $3 ORDER BY controller_id, id DESC"""
RECENT_MESSAGES = """
SELECT action_id, details FROM (
    SELECT action_id, id, details,
           row_number() OVER (PARTITION BY action_id ORDER BY at DESC, id DESC) AS n
    FROM rollouts.action_status WHERE action_id = ANY($1::bigint[])) recent
WHERE n <= $2 ORDER BY action_id, n"""
IN_WINDOWS = """
SELECT id, tenant, controller_id, maintenance_window, window_open FROM rollouts.actions
WHERE active AND maintenance_window IS NOT NULL FOR UPDATE"""
SET_WINDOWS = """
UPDATE rollouts.actions a SET window_open = u.is_open, updated_at = now(),
    clock_from = CASE WHEN u.is_open THEN now() ELSE a.clock_from END
FROM unnest($1::bigint[], $2::boolean[]) AS u(id, is_open) WHERE a.id = u.id"""
FORCE_DUE = """
UPDATE rollouts.actions SET force_due = true, updated_at = now()
WHERE active AND type = 'timeforced' AND NOT force_due AND forcetime <= $1
RETURNING tenant, controller_id"""
SET_AUTO_CONFIRM = """
INSERT INTO rollouts.devices (tenant, controller_id, auto_confirm, updated_at)
VALUES ($1, $2, $3, '-infinity')
ON CONFLICT (tenant, controller_id) DO UPDATE SET auto_confirm = EXCLUDED.auto_confirm"""
MAY_WANT_MORE = """
SELECT EXISTS (SELECT 1 FROM rollouts.rollout_devices
               WHERE tenant = $1 AND controller_id = $2 AND state = 'pending')
    OR EXISTS (SELECT 1 FROM rollouts.policies
               WHERE tenant = $1 AND controller_id = $2 AND mode <> 'rollout')"""
WANT_MORE = """
SELECT k.controller_id FROM unnest($2::text[]) AS k(controller_id)
WHERE EXISTS (SELECT 1 FROM rollouts.rollout_devices AS m
              WHERE m.tenant = $1 AND m.controller_id = k.controller_id AND m.state = 'pending')
   OR EXISTS (SELECT 1 FROM rollouts.policies AS p
              WHERE p.tenant = $1 AND p.controller_id = k.controller_id AND p.mode <> 'rollout')"""
OPEN_ACTION_DEVICES = """
SELECT controller_id FROM rollouts.actions
WHERE tenant = $1 AND controller_id = ANY($2::text[]) AND active"""
FAILED_SOFTWARE = """
SELECT software_id FROM (
    SELECT DISTINCT ON (software_id) software_id, status FROM rollouts.actions
    WHERE tenant = $1 AND controller_id = $2 AND NOT active
    ORDER BY software_id, id DESC) last
WHERE status = 'error'"""


def _window_open(raw: dict[str, Any], now: datetime) -> bool | None:
    """Whether a stored window is open at ``now``; None (and a warning) if it cannot be read."""
    try:
        window = Window.parse(raw)
    except ScheduleError:
        log.warning("unreadable maintenance window left as it was window=%s", raw, exc_info=True)
        return None
    return window is not None and window.is_open(now)


_ACTION_FIELDS = tuple(f.name for f in fields(Action) if f.init)
"""The columns that make an :class:`Action`, in the order its constructor takes them."""


def _action(row: asyncpg.Record) -> Action:
    return Action(*[row[name] for name in _ACTION_FIELDS])


@dataclass(frozen=True)
class ActionSpec:
    """How actions are opened: their type, window, confirmation, and rollout if any."""

    type: ActionType = "forced"
    maintenance_window: dict[str, Any] | None = None
    confirmation_required: bool = False
    rollout_id: int | None = None
    forcetime: datetime | None = None
    """When a ``timeforced`` action turns forced."""
    report_timeout_s: float | None = None
    """Limits of the actions (None: the defaults of :mod:`~gaggle_rollouts.health`)."""
    action_timeout_s: float | None = None


class Actions:
    """The ``rollouts.actions`` and ``rollouts.action_status`` tables."""

    def __init__(self, db: Database, outbox: Outbox, catalogue: Catalogue) -> None:
        self.db = db
        self.outbox = outbox
        self.catalogue = catalogue
        self.clock: Callable[[], datetime] = utcnow
        """Now, for maintenance windows and force times (a test may set another clock)."""

    async def busy(self, conn: Conn, tenant: str, controller_ids: Sequence[str]) -> set[str]:
        """Those of the devices with an open action."""
        return {r[0] for r in await conn.fetch(OPEN_ACTION_DEVICES, tenant, list(controller_ids))}

    async def failed_software(self, conn: Conn, tenant: str, controller_id: str) -> frozenset[str]:
        """Software whose last action on the device ended in error."""
        rows = await conn.fetch(FAILED_SOFTWARE, tenant, controller_id)
        return frozenset(r["software_id"] for r in rows)

    async def open_one(
        self,
        conn: Conn,
        tenant: str,
        controller_id: str,
        software: Software,
        spec: ActionSpec,
        note: str,
    ) -> Action:
        """Open an action for one device in the caller's transaction.

        Raises:
            ActionExistsError: the device has an open action already.
        """
        opened = await self.open_actions(conn, tenant, [controller_id], software, spec, note)
        if not opened:
            raise ActionExistsError(controller_id)
        return opened[0]

    async def open_actions(
        self,
        conn: Conn,
        tenant: str,
        controller_ids: Sequence[str],
        software: Software,
        spec: ActionSpec,
        note: str,
    ) -> list[Action]:
        """Open actions for devices that have none open, in a few statements; return them.

        Each gets its status note, an ``action.created`` event and its KV document, all in the
        caller's transaction. Devices with an open action already are skipped (the partial unique
        index on open actions decides, so concurrent openers can never create two).
        """
        if not controller_ids:
            return []
        waiting = set()
        if spec.confirmation_required:
            auto = {r[0] for r in await conn.fetch(AUTO_CONFIRM, tenant, list(controller_ids))}
            waiting = {c for c in controller_ids if c not in auto}
        statuses = ["wait_for_confirmation" if c in waiting else "running" for c in controller_ids]
        window = Window.parse(spec.maintenance_window)
        now = self.clock()
        rows = await conn.fetch(
            INSERT_ACTIONS,
            tenant,
            software.software_id,
            software.version,
            spec.type,
            spec.rollout_id,
            spec.maintenance_window,
            None if window is None else window.is_open(now),
            list(controller_ids),
            statuses,
            spec.forcetime,
            spec.forcetime is not None and spec.forcetime <= now,
            spec.report_timeout_s,
            spec.action_timeout_s,
        )
        actions = [_action(r) for r in rows]
        if not actions:
            return []
        await conn.execute(
            INSERT_NOTES,
            [a.id for a in actions],
            [a.status for a in actions],
            [note] * len(actions),
        )
        events = [
            ActionCreated(
                tenant=tenant,
                controller_id=a.controller_id,
                action_id=str(a.id),
                software_id=software.software_id,
                version=software.version,
                rollout_id=None if a.rollout_id is None else str(a.rollout_id),
            )
            for a in actions
        ]
        await self.outbox.many(conn, events=events)
        await self.publish_deployments(conn, tenant, [a.controller_id for a in actions])
        return actions

    # --- decisions ----------------------------------------------------------------------------

    async def refresh_windows(self, conn: Conn, now: datetime) -> int:
        """Open actions whose maintenance window opened or closed at ``now``: stored, re-rendered.

        Returns:
            How many actions changed.
        """
        changed: dict[str, list[tuple[int, str, bool]]] = {}
        known: dict[str, bool | None] = {}  # a rollout's actions share one window
        for r in await conn.fetch(IN_WINDOWS):
            raw = r["maintenance_window"]
            text = json.dumps(raw, sort_keys=True)
            if text not in known:
                known[text] = _window_open(raw, now)
            is_open = known[text]
            if is_open is not None and is_open != r["window_open"]:
                changed.setdefault(r["tenant"], []).append((r["id"], r["controller_id"], is_open))
        for tenant, items in changed.items():
            await conn.execute(SET_WINDOWS, [i[0] for i in items], [i[2] for i in items])
            await self.publish_deployments(conn, tenant, [i[1] for i in items])
        return sum(len(v) for v in changed.values())

    async def refresh_forced(self, conn: Conn, now: datetime) -> int:
        """Time-forced actions whose force time came by ``now``: turned forced, re-rendered.

        Returns:
            How many actions turned forced.
        """
        by_tenant: dict[str, list[str]] = {}
        for r in await conn.fetch(FORCE_DUE, now):
            by_tenant.setdefault(r["tenant"], []).append(r["controller_id"])
        for tenant, controller_ids in by_tenant.items():
            await self.publish_deployments(conn, tenant, controller_ids)
        return sum(len(v) for v in by_tenant.values())

    async def set_auto_confirm(
        self, conn: Conn, tenant: str, controller_id: str, active: bool
    ) -> None:
        """The device switched auto-confirmation: kept, and its KV document re-rendered."""
        await conn.execute(SET_AUTO_CONFIRM, tenant, controller_id, active)
        await self.publish_deployment(conn, tenant, controller_id)

    async def may_want_more(self, action: Action) -> bool:
        """Whether a decision may open something now that ``action`` closed.

        Always for an action outside rollouts; for a rollout's action only when the device waits
        in a rollout (a newer one, say) or left mode ``rollout``. Spares most of a rollout's
        feedback a full decision.
        """
        if action.rollout_id is None:
            return True
        return bool(await self.db.pool.fetchval(MAY_WANT_MORE, action.tenant, action.controller_id))

    async def may_want_more_many(self, actions: Sequence[Action]) -> list[Action]:
        """The closed ``actions`` for which :meth:`may_want_more` holds; one query per tenant."""
        wanting = [a for a in actions if a.rollout_id is None]
        by_tenant: dict[str, list[Action]] = {}
        for a in actions:
            if a.rollout_id is not None:
                by_tenant.setdefault(a.tenant, []).append(a)
        for tenant, of_tenant in by_tenant.items():
            ids = sorted({a.controller_id for a in of_tenant})
            rows = await self.db.pool.fetch(WANT_MORE, tenant, ids)
            want = {r[0] for r in rows}
            wanting += [a for a in of_tenant if a.controller_id in want]
        return wanting

    async def open_action_of(self, tenant: str, controller_id: str) -> Action | None:
        """The device's open action, if any."""
        return await self._one(OPEN_ACTION, tenant, controller_id)

    async def get_action(self, tenant: str, action_id: int) -> Action | None:
        """One action, or None."""
        return await self._one(SELECT_ACTION, tenant, action_id)

    async def _one(self, query: str, *args: object) -> Action | None:
        row = await self.db.pool.fetchrow(query, *args)
        return _action(row) if row else None

    async def history(self, action_id: int) -> list[dict[str, Any]]:
        """Status entries of an action, oldest first."""
        rows = await self.db.pool.fetch(SELECT_HISTORY, action_id)
        return [dict(r) for r in rows]

    async def device_actions(self, tenant: str, controller_id: str, limit: int) -> list[Action]:
        """A device's actions, newest first."""
        rows = await self.db.pool.fetch(SELECT_DEVICE_ACTIONS, tenant, controller_id, limit)
        return [_action(r) for r in rows]

    async def lock(
        self, conn: Conn, reports: Sequence[Report]
    ) -> dict[tuple[str, int], tuple[Action, datetime | None]]:
        """The reports' actions with their status time, locked in id order until commit.

        Concurrent reports for one action are so applied one after the other, also across
        batches and replicas; two batches sharing actions cannot deadlock.
        """
        keys = sorted({(r.tenant, r.action_id) for r in reports}, key=lambda k: (k[1], k[0]))
        rows = await conn.fetch(LOCK_ACTIONS, [t for t, _ in keys], [a for _, a in keys])
        return {(r["tenant"], r["id"]): (_action(r), r["status_at"]) for r in rows}

    async def seen(self, conn: Conn, reports: Sequence[Report]) -> set[object]:
        """The reports' event ids that are in some action's history already (redeliveries)."""
        event_ids = [r.event_id for r in reports if r.event_id is not None]
        if not event_ids:
            return set()
        return {r[0] for r in await conn.fetch(KNOWN_EVENTS, event_ids)}

    async def record(self, conn: Conn, applied: Applied) -> None:
        """Store what applying reports did: history, new statuses, events, KV documents."""
        if applied.entries:
            await conn.execute(
                INSERT_STATUSES, *(list(c) for c in zip(*applied.rows(), strict=True))
            )
        if applied.moved:
            await self._moved(conn, applied.moved)
        puts: list[tuple[str, str, BaseModel]] = []
        deletes: list[tuple[str, str]] = []
        for tenant, controller_ids in applied.rendered.items():
            rendered = await self.render_deployments(conn, tenant, sorted(controller_ids))
            puts += rendered[0]
            deletes += rendered[1]
        # The events and the KV writes in one statement (events first, as they were).
        await self.outbox.many(conn, applied.events, kv_puts=puts, kv_deletes=deletes)

    async def _moved(self, conn: Conn, moved: Sequence[tuple[Action, datetime]]) -> None:
        """Store the actions' new status; a rollout's closed action closes its membership."""
        await conn.execute(
            UPDATE_STATUSES,
            [a.id for a, _ in moved],
            [a.status for a, _ in moved],
            [a.active for a, _ in moved],
            [at for _, at in moved],
        )
        closed = [a for a, _ in moved if not a.active and a.rollout_id is not None]
        if closed:
            await conn.execute(
                CLOSE_MEMBERS,
                [a.rollout_id for a in closed],
                [a.controller_id for a in closed],
                [a.id for a in closed],
                [MEMBER_OUTCOME.get(a.status, "failure") for a in closed],
            )

    async def publish_deployment(self, conn: Conn, tenant: str, controller_id: str) -> None:
        """Render the device's KV ``deployments`` entry from the tables, via the outbox."""
        await self.publish_deployments(conn, tenant, [controller_id])

    async def publish_deployments(
        self, conn: Conn, tenant: str, controller_ids: Sequence[str]
    ) -> None:
        """Render the KV ``deployments`` entries of many devices, in a fixed number of queries."""
        puts, deletes = await self.render_deployments(conn, tenant, controller_ids)
        await self.outbox.many(conn, kv_puts=puts, kv_deletes=deletes)

    async def render_deployments(
        self, conn: Conn, tenant: str, controller_ids: Sequence[str]
    ) -> tuple[list[tuple[str, str, BaseModel]], list[tuple[str, str]]]:
        """The KV ``deployments`` puts and deletes of many devices, from the tables."""
        ids = list(dict.fromkeys(controller_ids))
        open_rows = {
            r["controller_id"]: _action(r) for r in await conn.fetch(OPEN_ACTIONS, tenant, ids)
        }
        installed = {
            r["controller_id"]: _action(r) for r in await conn.fetch(LAST_INSTALLED, tenant, ids)
        }
        closed: dict[str, list[int]] = {}
        for r in await conn.fetch(RECENT_CLOSED, tenant, ids, KV_CLOSED_IDS):
            closed.setdefault(r["controller_id"], []).append(r["id"])
        messages: dict[int, list[str]] = {}
        # A pull of final feedback leaves none of its devices an open action: no query then.
        open_ids = [a.id for a in open_rows.values()]
        for r in await conn.fetch(RECENT_MESSAGES, open_ids, KV_HISTORY) if open_ids else ():
            messages.setdefault(r["action_id"], []).extend(reversed(list(r["details"])))
        wanted = {a.software_id for a in open_rows.values()} | {
            a.software_id for a in installed.values()
        }
        catalogue = await self.catalogue.many(conn, tenant, list(wanted))
        auto = {r[0] for r in await conn.fetch(AUTO_CONFIRM, tenant, ids)}
        puts: list[tuple[str, str, BaseModel]] = []
        deletes: list[tuple[str, str]] = []
        docs = Docs()
        for controller_id in ids:
            action = open_rows.get(controller_id)
            open_part = None
            if action is not None and action.software_id in catalogue:
                open_part = (action, catalogue[action.software_id], messages.get(action.id, []))
            done = installed.get(controller_id)
            installed_part = None
            if done is not None and done.software_id in catalogue:
                installed_part = (done, catalogue[done.software_id])
            entry = deployment_entry(
                open_part,
                installed_part,
                closed.get(controller_id, []),
                controller_id in auto,
                docs,
            )
            key = names.kv_key(tenant, controller_id)
            if entry is None:
                deletes.append((names.BUCKET_DEPLOYMENTS, key))
            else:
                puts.append((names.BUCKET_DEPLOYMENTS, key, entry))
        return puts, deletes
