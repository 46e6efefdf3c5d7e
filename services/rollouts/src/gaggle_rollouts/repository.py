"""Rollouts persistence: software catalogue, actions and their status history; KV via outbox."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import asyncpg
from pydantic import BaseModel

from gaggle_contracts import names
from gaggle_contracts.events import (
    ActionCreated,
    ActionFinished,
    ActionUpdated,
    DevicePolicyChanged,
    DeviceUpdated,
    Event,
    FeedbackStatus,
    SoftwareCreated,
    SoftwareDeleted,
    utcnow,
)
from gaggle_rollouts.decision import (
    Candidate,
    Decision,
    DeviceView,
    PolicyView,
    choose_software,
)
from gaggle_rollouts.domain import (
    KV_CLOSED_IDS,
    KV_HISTORY,
    Action,
    ActionType,
    Report,
    ReportKind,
    Software,
    apply_report,
    deployment_entry,
    with_status,
)
from gaggle_rollouts.plan import Window
from gaggle_runtime.db import Conn
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

UPSERT_SOFTWARE = """
INSERT INTO rollouts.software (tenant, software_id, name, version, filename, size, md5, sha1,
                               sha256, object_key, external_url, compatibility)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (tenant, software_id) DO UPDATE SET
    name = EXCLUDED.name, version = EXCLUDED.version, filename = EXCLUDED.filename,
    size = EXCLUDED.size, md5 = EXCLUDED.md5, sha1 = EXCLUDED.sha1, sha256 = EXCLUDED.sha256,
    object_key = EXCLUDED.object_key, external_url = EXCLUDED.external_url,
    compatibility = EXCLUDED.compatibility"""

DELETE_SOFTWARE = """
UPDATE rollouts.software SET deleted = true WHERE tenant = $1 AND software_id = $2"""

SELECT_SOFTWARE = """
SELECT * FROM rollouts.software WHERE tenant = $1 AND software_id = $2"""

INSERT_ACTIONS = """
INSERT INTO rollouts.actions (tenant, controller_id, software_id, version, type, status,
                              rollout_id, maintenance_window, window_open)
SELECT $1, u.controller_id, $2, $3, $4, u.status, $5, $6::jsonb, $7
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
  AND m.action_id = u.action_id AND m.state = 'running'"""
MEMBER_OUTCOME = {"finished": "success", "downloaded": "success", "canceled": "canceled"}
"""How a closed action counts in its rollout; anything else (``error``) is a failure."""

UPDATE_STATUSES = """
UPDATE rollouts.actions AS a
SET status = u.status, active = u.active, updated_at = now(),
    status_at = greatest(a.status_at, u.at),
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
UPDATE rollouts.actions a SET window_open = u.is_open, updated_at = now()
FROM unnest($1::bigint[], $2::boolean[]) AS u(id, is_open) WHERE a.id = u.id"""
SET_AUTO_CONFIRM = """
INSERT INTO rollouts.devices (tenant, controller_id, auto_confirm, updated_at)
VALUES ($1, $2, $3, '-infinity')
ON CONFLICT (tenant, controller_id) DO UPDATE SET auto_confirm = EXCLUDED.auto_confirm"""
MAY_WANT_MORE = """
SELECT EXISTS (SELECT 1 FROM rollouts.rollout_devices
               WHERE tenant = $1 AND controller_id = $2 AND state = 'pending')
    OR EXISTS (SELECT 1 FROM rollouts.policies
               WHERE tenant = $1 AND controller_id = $2 AND mode <> 'rollout')"""
SOFTWARE_MANY = """
SELECT * FROM rollouts.software WHERE tenant = $1 AND software_id = ANY($2::text[])"""


def _action(row: asyncpg.Record) -> Action:
    return Action(
        id=row["id"],
        tenant=row["tenant"],
        controller_id=row["controller_id"],
        software_id=row["software_id"],
        version=row["version"],
        type=cast(ActionType, row["type"]),
        status=row["status"],
        active=row["active"],
        created_at=row["created_at"],
        closed_at=row["closed_at"],
        rollout_id=row["rollout_id"],
        window_open=row["window_open"],
    )


def _announcement(action: Action, fb: FeedbackStatus | None) -> Event:
    """``action.updated`` for an open action (with the report's details), else ``finished``."""
    if action.active:
        return ActionUpdated(
            tenant=action.tenant,
            controller_id=action.controller_id,
            action_id=str(action.id),
            status=action.status,
            details=fb.details if fb else [],
        )
    return ActionFinished(
        tenant=action.tenant,
        controller_id=action.controller_id,
        action_id=str(action.id),
        status=action.status,
        software_id=action.software_id,
        version=action.version,
    )


def device_view(row: asyncpg.Record) -> DeviceView:
    """A ``rollouts.devices`` row as decisions see it."""
    return DeviceView(row["controller_id"], row["hw_model"], row["hw_revision"], row["sw_version"])


def candidate(row: asyncpg.Record) -> Candidate:
    """A ``rollouts.software`` row as decisions see it."""
    return Candidate(
        row["software_id"],
        row["version"],
        tuple((c["hw_model"], c["hw_revision"]) for c in row["compatibility"]),
        row["deleted"],
    )


def _software(row: asyncpg.Record) -> Software:
    return Software(
        tenant=row["tenant"],
        software_id=row["software_id"],
        name=row["name"],
        version=row["version"],
        filename=row["filename"],
        size=row["size"],
        md5=row["md5"],
        sha1=row["sha1"],
        sha256=row["sha256"],
        object_key=row["object_key"],
        external_url=row["external_url"],
        deleted=row["deleted"],
    )


UPSERT_POLICY = """
INSERT INTO rollouts.policies (tenant, controller_id, mode, feed, software_id)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant, controller_id) DO UPDATE SET
    mode = EXCLUDED.mode, feed = EXCLUDED.feed, software_id = EXCLUDED.software_id,
    updated_at = now()
RETURNING *"""

MATCH_DEVICES = """
SELECT d.controller_id FROM rollouts.devices d
LEFT JOIN rollouts.policies p ON p.tenant = d.tenant AND p.controller_id = d.controller_id
WHERE d.tenant = $1 AND ($2::text IS NULL OR d.hw_model = $2)
  AND ($3::text IS NULL OR d.hw_revision = $3) AND ($4::text IS NULL OR d.sw_version = $4)
  AND ($5::text IS NULL OR coalesce(p.feed, 'default') = $5)
  AND ($6::text IS NULL OR coalesce(p.mode, 'rollout') = $6)
  AND ($7::text[] IS NULL OR d.controller_id = ANY($7::text[]))
ORDER BY d.controller_id"""
UPSERT_POLICIES = """
INSERT INTO rollouts.policies (tenant, controller_id, mode, feed, software_id)
SELECT $1, c, $3, $4, $5 FROM unnest($2::text[]) AS c
ON CONFLICT (tenant, controller_id) DO UPDATE SET
    mode = EXCLUDED.mode, feed = EXCLUDED.feed, software_id = EXCLUDED.software_id,
    updated_at = now()"""

SELECT_POLICY = "SELECT * FROM rollouts.policies WHERE tenant = $1 AND controller_id = $2"
SELECT_POLICIES = """
SELECT * FROM rollouts.policies WHERE tenant = $1 AND controller_id = ANY($2::text[])"""
SELECT_DEVICES = """
SELECT * FROM rollouts.devices WHERE tenant = $1 AND controller_id = ANY($2::text[])"""
OPEN_ACTION_DEVICES = """
SELECT controller_id FROM rollouts.actions
WHERE tenant = $1 AND controller_id = ANY($2::text[]) AND active"""
# In key order, so two batches sharing devices cannot deadlock.
LOCK_DEVICES = """
SELECT pg_advisory_xact_lock(hashtext(k)) FROM (SELECT unnest($1::text[]) AS k ORDER BY k) AS o"""

UPSERT_DEVICES = """
INSERT INTO rollouts.devices (tenant, controller_id, hw_model, hw_revision, sw_version,
                              updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[])
ON CONFLICT (tenant, controller_id) DO UPDATE SET
    hw_model = EXCLUDED.hw_model, hw_revision = EXCLUDED.hw_revision,
    sw_version = EXCLUDED.sw_version, updated_at = EXCLUDED.updated_at
WHERE rollouts.devices.updated_at <= EXCLUDED.updated_at"""
DELETE_DEVICE = "DELETE FROM rollouts.devices WHERE tenant = $1 AND controller_id = $2"
KNOWN_DEVICES = """
SELECT controller_id FROM rollouts.devices WHERE tenant = $1 AND controller_id = ANY($2::text[])"""
SELECT_CATALOGUE = "SELECT * FROM rollouts.software WHERE tenant = $1"
FAILED_SOFTWARE = """
SELECT software_id FROM (
    SELECT DISTINCT ON (software_id) software_id, status FROM rollouts.actions
    WHERE tenant = $1 AND controller_id = $2 AND NOT active
    ORDER BY software_id, id DESC) last
WHERE status = 'error'"""
LATEST_MODE_DEVICES = """
SELECT controller_id FROM rollouts.policies WHERE tenant = $1 AND mode = 'latest'"""


@dataclass(frozen=True)
class Policy:
    """How a device gets its software."""

    mode: str = "rollout"
    feed: str = "default"
    software_id: str | None = None

    def public(self) -> dict[str, Any]:
        """The operator's view."""
        return {"mode": self.mode, "feed": self.feed, "software_id": self.software_id}


@dataclass
class BatchReads:
    """What the devices decided in one transaction share, read at most once for them all."""

    catalogue: dict[str, tuple[Software, Candidate]] | None = None
    feeds: dict[str, asyncpg.Record | None] = field(default_factory=dict)
    """A feed's newest active rollout (None: none), its feed lock taken."""


RolloutMode = Callable[[Conn, str, DeviceView, PolicyView, BatchReads], Awaitable[Decision]]
"""Decides a locked device in mode ``rollout``."""


@dataclass(frozen=True)
class ActionSpec:
    """How actions are opened: their type, window, confirmation, and rollout if any."""

    type: ActionType = "forced"
    maintenance_window: dict[str, str] | None = None
    confirmation_required: bool = False
    rollout_id: int | None = None


@dataclass(frozen=True)
class PolicyMatch:
    """Which known devices a bulk policy change is for; every part is optional."""

    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    feed: str | None = None
    mode: str | None = None
    controller_ids: frozenset[str] | None = None


class ActionExistsError(Exception):
    """The device already has an open action."""


class Repo:
    """The ``rollouts`` schema."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox
        self.rollout_mode: RolloutMode | None = None
        """Decides devices in mode ``rollout`` (set by the rollouts store)."""

    # --- software catalogue ---------------------------------------------------------------

    async def upsert_software(self, ev: SoftwareCreated) -> None:
        """Record (or refresh) a software announced by artifacts."""
        await self.db.pool.execute(
            UPSERT_SOFTWARE,
            ev.tenant,
            ev.software_id,
            ev.name,
            ev.version,
            ev.filename,
            ev.size,
            ev.md5,
            ev.sha1,
            ev.sha256,
            ev.object_key,
            ev.external_url,
            [c.model_dump() for c in ev.compatibility],
        )

    async def delete_software(self, ev: SoftwareDeleted) -> None:
        """Mark a software deleted: no new actions for it."""
        await self.db.pool.execute(DELETE_SOFTWARE, ev.tenant, ev.software_id)

    async def software(
        self, tenant: str, software_id: str, conn: Conn | None = None
    ) -> Software | None:
        """One software, or None."""
        row = await (conn or self.db.pool).fetchrow(SELECT_SOFTWARE, tenant, software_id)
        return _software(row) if row else None

    # --- policies -----------------------------------------------------------------------------

    async def policy(self, tenant: str, controller_id: str) -> Policy:
        """A device's policy (the default when none was set)."""
        row = await self.db.pool.fetchrow(SELECT_POLICY, tenant, controller_id)
        if row is None:
            return Policy()
        return Policy(row["mode"], row["feed"], row["software_id"])

    async def set_policy(self, tenant: str, controller_id: str, policy: Policy) -> Policy:
        """Store a policy and announce it (``device.policy_changed``) in one transaction."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                UPSERT_POLICY, tenant, controller_id, policy.mode, policy.feed, policy.software_id
            )
            await self._emit(
                conn,
                DevicePolicyChanged(
                    tenant=tenant,
                    controller_id=controller_id,
                    mode=policy.mode,
                    feed=policy.feed,
                    software_id=policy.software_id,
                ),
            )
        return policy

    async def set_policies(self, tenant: str, match: PolicyMatch, policy: Policy) -> list[str]:
        """Store ``policy`` for every known device ``match`` selects, announced; their ids."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            ids = [
                r[0]
                for r in await conn.fetch(
                    MATCH_DEVICES,
                    tenant,
                    match.hw_model,
                    match.hw_revision,
                    match.sw_version,
                    match.feed,
                    match.mode,
                    None if match.controller_ids is None else list(match.controller_ids),
                )
            ]
            if not ids:
                return []
            await conn.execute(
                UPSERT_POLICIES, tenant, ids, policy.mode, policy.feed, policy.software_id
            )
            await self.outbox.many(
                conn,
                events=[
                    DevicePolicyChanged(
                        tenant=tenant,
                        controller_id=c,
                        mode=policy.mode,
                        feed=policy.feed,
                        software_id=policy.software_id,
                    )
                    for c in ids
                ],
            )
            return ids

    # --- actions --------------------------------------------------------------------------

    async def create_action(
        self, tenant: str, controller_id: str, software: Software, spec: ActionSpec
    ) -> Action:
        """Open an action for a device.

        Raises:
            ActionExistsError: the device has an open action already.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            return await self._open_action(
                conn, tenant, controller_id, software, spec, "Assigned by an operator."
            )

    async def _open_action(
        self,
        conn: Conn,
        tenant: str,
        controller_id: str,
        software: Software,
        spec: ActionSpec,
        note: str,
    ) -> Action:
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
        rows = await conn.fetch(
            INSERT_ACTIONS,
            tenant,
            software.software_id,
            software.version,
            spec.type,
            spec.rollout_id,
            spec.maintenance_window,
            None if window is None else window.is_open(utcnow()),
            list(controller_ids),
            statuses,
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

    async def record_device(self, event: DeviceUpdated) -> None:
        """Keep the inventory decisions read (a deleted device is forgotten)."""
        if event.change == "deleted":
            await self.db.pool.execute(DELETE_DEVICE, event.tenant, event.controller_id)
            return
        await self.record_devices([event])

    async def record_devices(self, events: list[DeviceUpdated]) -> list[None]:
        """The inventory of many devices in one statement (none of them deleted).

        An older report than the one recorded changes nothing; of one device's reports here, the
        newest counts.
        """
        newest: dict[tuple[str, str], DeviceUpdated] = {}
        for e in events:
            key = (e.tenant, e.controller_id)
            if key not in newest or e.occurred_at >= newest[key].occurred_at:
                newest[key] = e
        rows = [newest[k] for k in sorted(newest)]
        await self.db.pool.execute(
            UPSERT_DEVICES,
            [e.tenant for e in rows],
            [e.controller_id for e in rows],
            [e.hw_model for e in rows],
            [e.hw_revision for e in rows],
            [e.sw_version for e in rows],
            [e.occurred_at for e in rows],
        )
        return [None] * len(events)

    async def known_devices(self, tenant: str, controller_ids: Sequence[str]) -> set[str]:
        """Those of the devices that a ``device.updated`` (or the registry) told of."""
        rows = await self.db.pool.fetch(KNOWN_DEVICES, tenant, list(controller_ids))
        return {r["controller_id"] for r in rows}

    async def redecide(self, tenant: str, controller_id: str) -> Decision:
        """Decide what the device should run and open an action for it if needed."""
        return (await self.decide_batch(tenant, [controller_id]))[controller_id]

    async def decide_batch(self, tenant: str, controller_ids: Sequence[str]) -> dict[str, Decision]:
        """Decide many devices of one tenant in one transaction; each device's decision.

        The transaction holds each device's advisory lock (taken in key order): two replicas,
        or two events for the same device, decide one after the other, and the second sees the
        first's action (the partial unique index on open actions is the last line of defence).
        Devices in mode ``rollout`` are decided by the rollout they belong to
        (``rollout_mode``); what the devices share (the catalogue, a feed's rollout) is read
        once for the batch.
        """
        ids = sorted(set(controller_ids))
        decisions: dict[str, Decision] = {}
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_DEVICES, [f"{tenant}/{c}" for c in ids])
            busy = {r[0] for r in await conn.fetch(OPEN_ACTION_DEVICES, tenant, ids)}
            policies = {
                r["controller_id"]: PolicyView(r["mode"], r["feed"], r["software_id"])
                for r in await conn.fetch(SELECT_POLICIES, tenant, ids)
            }
            rows = {r["controller_id"]: r for r in await conn.fetch(SELECT_DEVICES, tenant, ids)}
            shared = BatchReads()
            for controller_id in ids:
                decisions[controller_id] = await self._decide_locked(
                    conn,
                    tenant,
                    controller_id,
                    controller_id in busy,
                    policies.get(controller_id, PolicyView()),
                    rows.get(controller_id),
                    shared,
                )
        return decisions

    async def _decide_locked(
        self,
        conn: Conn,
        tenant: str,
        controller_id: str,
        busy: bool,
        policy: PolicyView,
        row: asyncpg.Record | None,
        shared: BatchReads,
    ) -> Decision:
        if busy:
            return Decision(None, "an action is open")
        if policy.mode == "pinned":
            return Decision(None, "pinned")
        if row is None or (row["hw_model"] is None and row["sw_version"] is None):
            # As in gooseBit, nothing is decided before the device reported what it is and
            # runs (configData); that report's device.updated decides again.
            return Decision(None, "waiting for the device's inventory")
        device = device_view(row)
        if policy.mode == "rollout":
            if self.rollout_mode is None:  # pragma: no cover - wired in app.py
                return Decision(None, "no rollouts here")
            return await self.rollout_mode(conn, tenant, device, policy, shared)
        if shared.catalogue is None:
            shared.catalogue = {
                r["software_id"]: (_software(r), candidate(r))
                for r in await conn.fetch(SELECT_CATALOGUE, tenant)
            }
        catalogue = shared.catalogue
        failed = frozenset(
            r["software_id"] for r in await conn.fetch(FAILED_SOFTWARE, tenant, controller_id)
        )
        decision = choose_software(
            device, policy, {k: v[1] for k, v in catalogue.items()}, (), failed
        )
        if decision.software_id is not None:
            software = catalogue[decision.software_id][0]
            await self._open_action(
                conn,
                tenant,
                controller_id,
                software,
                ActionSpec("forced"),
                f"Decided: {decision.reason} ({software.version}).",
            )
        return decision

    async def refresh_windows(self) -> int:
        """Open actions whose maintenance window opened or closed: stored and re-rendered."""
        now = utcnow()
        async with self.db.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(IN_WINDOWS)
            changed: dict[str, list[tuple[int, str, bool]]] = {}
            for r in rows:
                window = Window.parse(r["maintenance_window"])
                is_open = window is not None and window.is_open(now)
                if is_open != r["window_open"]:
                    changed.setdefault(r["tenant"], []).append(
                        (r["id"], r["controller_id"], is_open)
                    )
            for tenant, items in changed.items():
                await conn.execute(SET_WINDOWS, [i[0] for i in items], [i[2] for i in items])
                await self.publish_deployments(conn, tenant, [i[1] for i in items])
            return sum(len(v) for v in changed.values())

    async def set_auto_confirm(self, tenant: str, controller_id: str, active: bool) -> None:
        """The device switched auto-confirmation: kept, and its KV document re-rendered."""
        async with self.db.pool.acquire() as conn, conn.transaction():
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

    async def redecide_many(
        self, tenant: str, controller_ids: Sequence[str], chunk: int = 64
    ) -> None:
        """Re-decide many devices, ``chunk`` per transaction."""
        ids = list(dict.fromkeys(controller_ids))
        for i in range(0, len(ids), chunk):
            await self.decide_batch(tenant, ids[i : i + chunk])

    async def latest_mode_devices(self, tenant: str) -> list[str]:
        """Devices whose policy is ``latest`` (a new software may concern them)."""
        rows = await self.db.pool.fetch(LATEST_MODE_DEVICES, tenant)
        return [r["controller_id"] for r in rows]

    async def open_action_of(self, tenant: str, controller_id: str) -> Action | None:
        """The device's open action, if any."""
        row = await self.db.pool.fetchrow(OPEN_ACTION, tenant, controller_id)
        return _action(row) if row else None

    async def get_action(self, tenant: str, action_id: int) -> Action | None:
        """One action, or None."""
        row = await self.db.pool.fetchrow(SELECT_ACTION, tenant, action_id)
        return _action(row) if row else None

    async def history(self, action_id: int) -> list[dict[str, Any]]:
        """Status entries of an action, oldest first."""
        rows = await self.db.pool.fetch(SELECT_HISTORY, action_id)
        return [dict(r) for r in rows]

    async def device_actions(self, tenant: str, controller_id: str, limit: int) -> list[Action]:
        """A device's actions, newest first."""
        rows = await self.db.pool.fetch(SELECT_DEVICE_ACTIONS, tenant, controller_id, limit)
        return [_action(r) for r in rows]

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
        """Record a status entry and move the action as ``apply_report`` says.

        Returns the action as it is now, or None if it does not exist (see ``apply_many``).
        """
        (result,) = await self.apply_many([Report(tenant, action_id, event_id, at, fb, kind, note)])
        return result

    async def apply_many(self, reports: Sequence[Report]) -> list[Action | None]:
        """Apply many reports in one transaction; for each, its action as it is after it.

        The actions are locked (in id order), so concurrent reports for one action are applied
        one after the other, also across batches and replicas. A redelivered report (an
        ``event_id`` already recorded) changes nothing. A report received before the one that
        set an open action's current status only joins the history; closing always applies.
        Reports of one action within the batch are applied in their order.
        """
        keys = sorted({(r.tenant, r.action_id) for r in reports}, key=lambda k: (k[1], k[0]))
        async with self.db.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(LOCK_ACTIONS, [t for t, _ in keys], [a for _, a in keys])
            current = {(r["tenant"], r["id"]): (_action(r), r["status_at"]) for r in rows}
            event_ids = [r.event_id for r in reports if r.event_id is not None]
            seen = {r[0] for r in await conn.fetch(KNOWN_EVENTS, event_ids)} if event_ids else set()
            history: list[tuple[Any, ...]] = []  # INSERT_STATUSES' columns, a row per entry
            results: list[Action | None] = []
            events: list[Event] = []
            rendered: dict[str, set[str]] = {}
            changed: set[tuple[str, int]] = set()
            for report in reports:
                key = (report.tenant, report.action_id)
                if key not in current:
                    results.append(None)
                    continue
                action, status_at = current[key]
                if report.event_id is not None:
                    if report.event_id in seen:
                        results.append(action)  # seen before
                        continue
                    seen.add(report.event_id)
                fb = report.fb
                status, active = apply_report(action, report.kind, fb)
                if active and status_at is not None and report.at < status_at:
                    status = action.status
                history.append(
                    (
                        action.id,
                        report.event_id,
                        report.at,
                        status,
                        fb.execution if fb else None,
                        fb.finished if fb else None,
                        fb.code if fb else None,
                        json.dumps((fb.details if fb else report.note) or []),
                    )
                )
                if (status, active) == (action.status, action.active):
                    results.append(action)
                    if not active:
                        continue
                    if fb is not None:
                        # The device is at work (a first "proceeding" leaves the action
                        # "running"): say so, for the registry's update state and for watchers.
                        events.append(_announcement(action, fb))
                else:
                    action = with_status(action, status, active)
                    status_at = report.at if status_at is None else max(status_at, report.at)
                    current[key] = (action, status_at)
                    changed.add(key)
                    results.append(action)
                    events.append(_announcement(action, fb))
                rendered.setdefault(report.tenant, set()).add(action.controller_id)
            if history:
                await conn.execute(INSERT_STATUSES, *(list(c) for c in zip(*history, strict=True)))
            if changed:
                moved = [current[k] for k in sorted(changed, key=lambda k: k[1])]
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
            await self.outbox.many(conn, events)
            for tenant, controller_ids in rendered.items():
                await self.publish_deployments(conn, tenant, sorted(controller_ids))
            return results

    async def _emit(self, conn: Conn, event: Event) -> None:
        await self.outbox.event(conn, event)

    async def publish_deployment(self, conn: Conn, tenant: str, controller_id: str) -> None:
        """Render the device's KV ``deployments`` entry from the tables, via the outbox."""
        await self.publish_deployments(conn, tenant, [controller_id])

    async def publish_deployments(
        self, conn: Conn, tenant: str, controller_ids: Sequence[str]
    ) -> None:
        """Render the KV ``deployments`` entries of many devices, in a fixed number of queries."""
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
        for r in await conn.fetch(RECENT_MESSAGES, [a.id for a in open_rows.values()], KV_HISTORY):
            messages.setdefault(r["action_id"], []).extend(reversed(list(r["details"])))
        wanted = {a.software_id for a in open_rows.values()} | {
            a.software_id for a in installed.values()
        }
        catalogue = {
            r["software_id"]: _software(r)
            for r in await conn.fetch(SOFTWARE_MANY, tenant, list(wanted))
        }
        auto = {r[0] for r in await conn.fetch(AUTO_CONFIRM, tenant, ids)}
        puts: list[tuple[str, str, BaseModel]] = []
        deletes: list[tuple[str, str]] = []
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
                open_part, installed_part, closed.get(controller_id, []), controller_id in auto
            )
            key = names.kv_key(tenant, controller_id)
            if entry is None:
                deletes.append((names.BUCKET_DEPLOYMENTS, key))
            else:
                puts.append((names.BUCKET_DEPLOYMENTS, key, entry))
        await self.outbox.many(conn, kv_puts=puts, kv_deletes=deletes)
