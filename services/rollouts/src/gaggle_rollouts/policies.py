"""Devices as rollouts knows them: their inventory (from the registry) and their policies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gaggle_contracts.events import DevicePolicyChanged, DeviceUpdated
from gaggle_rollouts.decision import DeviceView, PolicyView
from gaggle_runtime.db import Conn
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

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
LATEST_MODE_DEVICES = """
SELECT controller_id FROM rollouts.policies WHERE tenant = $1 AND mode = 'latest'"""


def device_view(row: asyncpg.Record) -> DeviceView:
    """A ``rollouts.devices`` row as decisions see it."""
    return DeviceView(row["controller_id"], row["hw_model"], row["hw_revision"], row["sw_version"])


@dataclass(frozen=True)
class Policy:
    """How a device gets its software."""

    mode: str = "rollout"
    feed: str = "default"
    software_id: str | None = None

    def public(self) -> dict[str, Any]:
        """The operator's view."""
        return {"mode": self.mode, "feed": self.feed, "software_id": self.software_id}

    def changed(self, tenant: str, controller_id: str) -> DevicePolicyChanged:
        """The event announcing this policy for a device."""
        return DevicePolicyChanged(
            tenant=tenant,
            controller_id=controller_id,
            mode=self.mode,
            feed=self.feed,
            software_id=self.software_id,
        )


@dataclass(frozen=True)
class PolicyMatch:
    """Which known devices a bulk policy change is for; every part is optional."""

    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    feed: str | None = None
    mode: str | None = None
    controller_ids: frozenset[str] | None = None


class Policies:
    """The ``rollouts.devices`` and ``rollouts.policies`` tables."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

    async def lock(self, conn: Conn, tenant: str, controller_ids: Sequence[str]) -> None:
        """Hold the devices' advisory locks until ``conn``'s transaction ends (in key order)."""
        await conn.execute(LOCK_DEVICES, [f"{tenant}/{c}" for c in controller_ids])

    async def views(
        self, conn: Conn, tenant: str, controller_ids: Sequence[str]
    ) -> tuple[dict[str, PolicyView], dict[str, DeviceView]]:
        """The devices' policies (those set) and inventories (those known), by device."""
        ids = list(controller_ids)
        policies = {
            r["controller_id"]: PolicyView(r["mode"], r["feed"], r["software_id"])
            for r in await conn.fetch(SELECT_POLICIES, tenant, ids)
        }
        devices = {
            r["controller_id"]: device_view(r)
            for r in await conn.fetch(SELECT_DEVICES, tenant, ids)
        }
        return policies, devices

    async def policy(self, tenant: str, controller_id: str) -> Policy:
        """A device's policy (the default when none was set)."""
        row = await self.db.pool.fetchrow(SELECT_POLICY, tenant, controller_id)
        if row is None:
            return Policy()
        return Policy(row["mode"], row["feed"], row["software_id"])

    async def set_policy(self, conn: Conn, tenant: str, controller_id: str, policy: Policy) -> None:
        """Store a device's policy and announce it (``device.policy_changed``)."""
        await conn.execute(
            UPSERT_POLICY, tenant, controller_id, policy.mode, policy.feed, policy.software_id
        )
        await self.outbox.event(conn, policy.changed(tenant, controller_id))

    async def set_policies(
        self, conn: Conn, tenant: str, match: PolicyMatch, policy: Policy
    ) -> list[str]:
        """Store ``policy`` for every known device ``match`` selects, announced; their ids."""
        rows = await conn.fetch(
            MATCH_DEVICES,
            tenant,
            match.hw_model,
            match.hw_revision,
            match.sw_version,
            match.feed,
            match.mode,
            None if match.controller_ids is None else list(match.controller_ids),
        )
        ids = [r[0] for r in rows]
        if ids:
            await conn.execute(
                UPSERT_POLICIES, tenant, ids, policy.mode, policy.feed, policy.software_id
            )
            await self.outbox.many(conn, events=[policy.changed(tenant, c) for c in ids])
        return ids

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

    async def latest_mode_devices(self, tenant: str) -> list[str]:
        """Devices whose policy is ``latest`` (a new software may concern them)."""
        rows = await self.db.pool.fetch(LATEST_MODE_DEVICES, tenant)
        return [r["controller_id"] for r in rows]
