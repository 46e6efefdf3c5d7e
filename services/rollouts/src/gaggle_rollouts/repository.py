"""Rollouts persistence: software catalogue, actions and their status history; KV via outbox."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import asyncpg

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
from gaggle_rollouts.decision import Candidate, Decision, DeviceView, PolicyView, decide
from gaggle_rollouts.domain import (
    Action,
    ActionType,
    Software,
    deployment_entry,
    with_status,
)
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

INSERT_ACTION = """
INSERT INTO rollouts.actions (tenant, controller_id, software_id, version, type, status)
VALUES ($1, $2, $3, $4, $5, 'running')
ON CONFLICT (tenant, controller_id) WHERE active DO NOTHING
RETURNING *"""

SELECT_ACTION = "SELECT * FROM rollouts.actions WHERE tenant = $1 AND id = $2"
LOCK_ACTION = "SELECT * FROM rollouts.actions WHERE tenant = $1 AND id = $2 FOR UPDATE"

UPDATE_STATUS = """
UPDATE rollouts.actions
SET status = $2, active = $3, updated_at = now(),
    closed_at = CASE WHEN $3 THEN NULL ELSE coalesce(closed_at, now()) END
WHERE id = $1"""

INSERT_STATUS = """
INSERT INTO rollouts.action_status (action_id, event_id, at, status, execution, finished, code,
                                    details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (event_id) DO NOTHING
RETURNING id"""

SELECT_HISTORY = """
SELECT at, status, execution, finished, code, details FROM rollouts.action_status
WHERE action_id = $1 ORDER BY id"""

SELECT_DEVICE_ACTIONS = """
SELECT * FROM rollouts.actions WHERE tenant = $1 AND controller_id = $2 ORDER BY id DESC LIMIT $3"""

OPEN_ACTION = """
SELECT * FROM rollouts.actions WHERE tenant = $1 AND controller_id = $2 AND active"""
LAST_INSTALLED = """
SELECT * FROM rollouts.actions
WHERE tenant = $1 AND controller_id = $2 AND NOT active AND status IN ('finished', 'downloaded')
ORDER BY id DESC LIMIT 1"""
RECENT_CLOSED = """
SELECT id FROM rollouts.actions WHERE tenant = $1 AND controller_id = $2 AND NOT active
ORDER BY id DESC LIMIT 10"""
RECENT_MESSAGES = """
SELECT details FROM rollouts.action_status WHERE action_id = $1 ORDER BY id DESC LIMIT 20"""


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

SELECT_POLICY = "SELECT * FROM rollouts.policies WHERE tenant = $1 AND controller_id = $2"

UPSERT_DEVICE = """
INSERT INTO rollouts.devices (tenant, controller_id, hw_model, hw_revision, sw_version,
                              updated_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (tenant, controller_id) DO UPDATE SET
    hw_model = EXCLUDED.hw_model, hw_revision = EXCLUDED.hw_revision,
    sw_version = EXCLUDED.sw_version, updated_at = EXCLUDED.updated_at
WHERE rollouts.devices.updated_at <= EXCLUDED.updated_at"""
DELETE_DEVICE = "DELETE FROM rollouts.devices WHERE tenant = $1 AND controller_id = $2"
SELECT_DEVICE = "SELECT * FROM rollouts.devices WHERE tenant = $1 AND controller_id = $2"
LOCK_DEVICE = "SELECT pg_advisory_xact_lock(hashtext($1))"
HAS_OPEN_ACTION = """
SELECT EXISTS (SELECT 1 FROM rollouts.actions
               WHERE tenant = $1 AND controller_id = $2 AND active)"""
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


class ActionExistsError(Exception):
    """The device already has an open action."""


class Repo:
    """The ``rollouts`` schema."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

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

    # --- actions --------------------------------------------------------------------------

    async def create_action(
        self, tenant: str, controller_id: str, software: Software, action_type: ActionType
    ) -> Action:
        """Open an action for a device.

        Raises:
            ActionExistsError: the device has an open action already.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            return await self._open_action(
                conn, tenant, controller_id, software, action_type, "Assigned by an operator."
            )

    async def _open_action(
        self,
        conn: Conn,
        tenant: str,
        controller_id: str,
        software: Software,
        action_type: ActionType,
        note: str,
    ) -> Action:
        row = await conn.fetchrow(
            INSERT_ACTION,
            tenant,
            controller_id,
            software.software_id,
            software.version,
            action_type,
        )
        if row is None:
            raise ActionExistsError(controller_id)
        action = _action(row)
        await self._log(conn, action.id, None, utcnow(), "running", None, None, None, [note])
        await self._emit(
            conn,
            ActionCreated(
                tenant=tenant,
                controller_id=controller_id,
                action_id=str(action.id),
                software_id=software.software_id,
                version=software.version,
            ),
        )
        await self.publish_deployment(conn, tenant, controller_id)
        return action

    # --- decisions ----------------------------------------------------------------------------

    async def record_device(self, event: DeviceUpdated) -> None:
        """Keep the inventory decisions read (a deleted device is forgotten)."""
        if event.change == "deleted":
            await self.db.pool.execute(DELETE_DEVICE, event.tenant, event.controller_id)
            return
        await self.db.pool.execute(
            UPSERT_DEVICE,
            event.tenant,
            event.controller_id,
            event.hw_model,
            event.hw_revision,
            event.sw_version,
            event.occurred_at,
        )

    async def redecide(self, tenant: str, controller_id: str) -> Decision:
        """Decide what the device should run and open an action for it if needed.

        One transaction holding a per-device advisory lock: two replicas, or two events for the
        same device, decide one after the other, and the second sees the first's action (the
        partial unique index on open actions is the last line of defence).
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_DEVICE, f"{tenant}/{controller_id}")
            if await conn.fetchval(HAS_OPEN_ACTION, tenant, controller_id):
                return Decision(None, "an action is open")
            policy_row = await conn.fetchrow(SELECT_POLICY, tenant, controller_id)
            policy = (
                PolicyView(policy_row["mode"], policy_row["feed"], policy_row["software_id"])
                if policy_row
                else PolicyView()
            )
            if policy.mode == "pinned":
                return Decision(None, "pinned")
            row = await conn.fetchrow(SELECT_DEVICE, tenant, controller_id)
            if row is None or (row["hw_model"] is None and row["sw_version"] is None):
                # As in gooseBit, nothing is decided before the device reported what it is and
                # runs (configData); that report's device.updated decides again.
                return Decision(None, "waiting for the device's inventory")
            device = DeviceView(
                controller_id, row["hw_model"], row["hw_revision"], row["sw_version"]
            )
            catalogue = {
                r["software_id"]: (
                    _software(r),
                    Candidate(
                        r["software_id"],
                        r["version"],
                        tuple((c["hw_model"], c["hw_revision"]) for c in r["compatibility"]),
                        r["deleted"],
                    ),
                )
                for r in await conn.fetch(SELECT_CATALOGUE, tenant)
            }
            failed = frozenset(
                r["software_id"] for r in await conn.fetch(FAILED_SOFTWARE, tenant, controller_id)
            )
            decision = decide(device, policy, {k: v[1] for k, v in catalogue.items()}, (), failed)
            if decision.software_id is not None:
                software = catalogue[decision.software_id][0]
                await self._open_action(
                    conn,
                    tenant,
                    controller_id,
                    software,
                    "forced",
                    f"Decided: {decision.reason} ({software.version}).",
                )
            return decision

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
        decide: Any,
        note: list[str] | None = None,
    ) -> Action | None:
        """Record a status entry and move the action as ``decide(action, fb)`` says.

        Runs in one transaction with the action row locked, so concurrent feedback for one
        action is applied one after the other; a redelivered event (same ``event_id``) changes
        nothing. Returns the action as it is now, or None if it does not exist.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_ACTION, tenant, action_id)
            if row is None:
                return None
            action = _action(row)
            status, active = decide(action, fb)
            logged = await self._log(
                conn,
                action_id,
                event_id,
                at,
                status,
                fb.execution if fb else None,
                fb.finished if fb else None,
                fb.code if fb else None,
                (fb.details if fb else note) or [],
            )
            if event_id is not None and logged is None:
                return action  # seen before
            if (status, active) == (action.status, action.active):
                if active:
                    if fb is not None:
                        # The device is at work (a first "proceeding" leaves the action
                        # "running"): say so, for the registry's update state and for watchers.
                        await self._announce(conn, action, fb)
                    await self.publish_deployment(conn, tenant, action.controller_id)
                return action
            await conn.execute(UPDATE_STATUS, action_id, status, active)
            updated = with_status(action, status, active)
            await self._announce(conn, updated, fb)
            await self.publish_deployment(conn, tenant, action.controller_id)
            return updated

    async def _announce(self, conn: Conn, action: Action, fb: FeedbackStatus | None) -> None:
        if action.active:
            await self._emit(
                conn,
                ActionUpdated(
                    tenant=action.tenant,
                    controller_id=action.controller_id,
                    action_id=str(action.id),
                    status=action.status,
                    details=fb.details if fb else [],
                ),
            )
            return
        await self._emit(
            conn,
            ActionFinished(
                tenant=action.tenant,
                controller_id=action.controller_id,
                action_id=str(action.id),
                status=action.status,
                software_id=action.software_id,
                version=action.version,
            ),
        )

    async def _log(
        self,
        conn: Conn,
        action_id: int,
        event_id: Any,
        at: datetime,
        status: str,
        execution: str | None,
        finished: str | None,
        code: int | None,
        details: list[str],
    ) -> int | None:
        value: int | None = await conn.fetchval(
            INSERT_STATUS, action_id, event_id, at, status, execution, finished, code, details
        )
        return value

    async def _emit(self, conn: Conn, event: Event) -> None:
        await self.outbox.event(conn, event)

    async def publish_deployment(self, conn: Conn, tenant: str, controller_id: str) -> None:
        """Render the device's KV ``deployments`` entry from the tables, via the outbox."""
        open_row = await conn.fetchrow(OPEN_ACTION, tenant, controller_id)
        installed_row = await conn.fetchrow(LAST_INSTALLED, tenant, controller_id)
        closed = [r["id"] for r in await conn.fetch(RECENT_CLOSED, tenant, controller_id)]
        open_part = None
        if open_row is not None:
            action = _action(open_row)
            software = await self.software(tenant, action.software_id, conn)
            if software is not None:
                messages: list[str] = []
                for r in await conn.fetch(RECENT_MESSAGES, action.id):
                    messages.extend(reversed(list(r["details"])))
                open_part = (action, software, messages)
        installed_part = None
        if installed_row is not None:
            action = _action(installed_row)
            software = await self.software(tenant, action.software_id, conn)
            if software is not None:
                installed_part = (action, software)
        entry = deployment_entry(open_part, installed_part, closed)
        key = names.kv_key(tenant, controller_id)
        if entry is None:
            await self.outbox.kv_delete(conn, names.BUCKET_DEPLOYMENTS, key)
        else:
            await self.outbox.kv_put(conn, names.BUCKET_DEPLOYMENTS, key, entry)
