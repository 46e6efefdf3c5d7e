"""Registry persistence: SQL as constants, asyncpg underneath, domain types out."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from gaggle_contracts import names
from gaggle_contracts.events import (
    DeviceConfigReported,
    DeviceDiscovered,
    DeviceUpdated,
)
from gaggle_contracts.kv import DeviceEntry
from gaggle_registry.domain import (
    Device,
    TooManyAttributesError,
    installed_or_reported,
    late_data,
    lifted,
    merge_attributes,
)
from gaggle_registry.presence import record_sightings
from gaggle_runtime.db import Conn
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateChange:
    """The update state an action event implies for one device."""

    tenant: str
    controller_id: str
    state: str
    at: datetime
    action_id: str
    installed_version: str | None


Change = Literal["registered", "attributes", "installed", "deleted", "other"]


def _with_presence(statement: str) -> str:
    """``statement`` (``... RETURNING *`` on devices) answering whole devices, presence joined.

    The outer query sees the presence rows as they were before ``statement``: a device inserted
    by it has no presence yet (never seen), which is what its new row says anyway.
    """
    return (
        f"WITH d AS ({statement}) SELECT d.*, p.last_seen_at, p.last_address FROM d"  # noqa: S608
        " LEFT JOIN registry.device_presence AS p USING (tenant, controller_id)"
    )


# Every device has a presence row (a trigger adds it), so inserts say nothing about presence.
INSERT_DISCOVERED_MANY = _with_presence(
    """INSERT INTO registry.devices (tenant, controller_id, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (tenant, controller_id) DO NOTHING
RETURNING *"""
)

ENSURE_MANY = """
INSERT INTO registry.devices (tenant, controller_id, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (tenant, controller_id) DO NOTHING
RETURNING tenant, controller_id"""

# Rows are locked in key order, as every batch does, so two batches never deadlock.
LOCK_MANY = """
SELECT d.* FROM registry.devices AS d
JOIN unnest($1::text[], $2::text[]) AS k(tenant, controller_id) USING (tenant, controller_id)
ORDER BY d.tenant, d.controller_id
FOR UPDATE OF d"""

UPDATE_ATTRIBUTES_MANY = _with_presence(
    """UPDATE registry.devices AS d
SET attributes = u.attributes, hw_model = u.hw_model, hw_revision = u.hw_revision,
    sw_version = u.sw_version, config_requested = false, updated_at = now(),
    config_reported_at = GREATEST(d.config_reported_at, u.reported_at)
FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[],
    $7::timestamptz[])
    AS u(tenant, controller_id, attributes, hw_model, hw_revision, sw_version, reported_at)
WHERE d.tenant = u.tenant AND d.controller_id = u.controller_id
RETURNING d.*"""
)

INSERT_API = _with_presence(
    """INSERT INTO registry.devices (tenant, controller_id, name, tags, token_hash, registered_via)
VALUES ($1, $2, $3, $4, $5, 'api')
ON CONFLICT (tenant, controller_id) DO NOTHING
RETURNING *"""
)

SET_CREDENTIAL = _with_presence(
    """UPDATE registry.devices SET token_hash = $3, updated_at = now()
WHERE tenant = $1 AND controller_id = $2
RETURNING *"""
)

PATCH = _with_presence(
    """UPDATE registry.devices
SET name = CASE WHEN $3 THEN $4 ELSE name END,
    tags = CASE WHEN $5 THEN $6::text[] ELSE tags END,
    updated_at = now()
WHERE tenant = $1 AND controller_id = $2
RETURNING *"""
)

DELETE = _with_presence(
    "DELETE FROM registry.devices WHERE tenant = $1 AND controller_id = $2 RETURNING *"
)

# Action events of one device may arrive out of order (one durable consumer per kind): the
# newest event wins, an older one changes nothing.
# One row per device per statement (an UPDATE takes one source row per target row).
SET_STATE_MANY = _with_presence(
    """UPDATE registry.devices AS d
SET update_state = CASE WHEN u.state <> 'revert' THEN u.state
                        WHEN d.installed_version IS NULL THEN 'unknown' ELSE 'up_to_date' END,
    state_at = u.at, action_id = u.action_id,
    installed_version = coalesce(u.installed, d.installed_version), updated_at = now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])
    AS u(tenant, controller_id, state, at, action_id, installed)
WHERE d.tenant = u.tenant AND d.controller_id = u.controller_id
  AND (d.state_at IS NULL OR d.state_at <= u.at)
RETURNING d.*"""
)

# A policy set before the device's first poll pre-registers the device.
SET_FEED = _with_presence(
    """INSERT INTO registry.devices (tenant, controller_id, feed, registered_via)
VALUES ($1, $2, $3, 'api')
ON CONFLICT (tenant, controller_id) DO UPDATE SET feed = EXCLUDED.feed, updated_at = now()
RETURNING *, (xmax = 0) AS inserted"""
)

SELECT_ONE = """
SELECT d.*, p.last_seen_at, p.last_address
FROM registry.devices AS d
LEFT JOIN registry.device_presence AS p USING (tenant, controller_id)
WHERE d.tenant = $1 AND d.controller_id = $2"""


# What ``device.updated`` says of a device, for services that missed it.
KNOWN = """
SELECT controller_id, hw_model, hw_revision, sw_version, updated_at FROM registry.devices
WHERE tenant = $1 AND controller_id = ANY($2::text[])"""

DEVICE_FIELDS = tuple(f.name for f in dataclasses.fields(Device))
"""Columns of a device row (presence joined) that ``Device`` has a field for."""


def _device(row: asyncpg.Record) -> Device:
    values = {name: row[name] for name in DEVICE_FIELDS}
    values["attributes"] = dict(values["attributes"])
    values["tags"] = list(values["tags"])
    return Device(**values)


class Repo:
    """Devices in the ``registry`` schema, with their outbox writes in the same transaction."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

    async def register_discovered_many(self, events: list[DeviceDiscovered]) -> list[Device | None]:
        """Create each device unless it exists, in one transaction; results in the events' order.

        A result is None when the device already existed (redeliveries change nothing). The
        discovery is also the device's first sighting: a device that its configData report
        registered first, or whose sightings batch overtook this event, still gets it. A device
        discovered twice in the batch is registered once (the first event's result).
        """
        keys = sorted({(e.tenant, e.controller_id): e for e in events}.items())
        async with self.db.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                INSERT_DISCOVERED_MANY,
                [t for (t, _), _ in keys],
                [c for (_, c), _ in keys],
                [e.occurred_at for _, e in keys],
            )
            await record_sightings(conn, events)
            created = {(r["tenant"], r["controller_id"]): _device(r) for r in rows}
            await self._publish_devices(conn, [(d, "registered") for d in created.values()])
        results: list[Device | None] = []
        for event in events:
            results.append(created.pop((event.tenant, event.controller_id), None))
        return results

    async def apply_config_many(
        self, events: list[DeviceConfigReported]
    ) -> list[Device | Exception]:
        """Merge, replace or remove attributes and lift the three we use into columns, per report.

        One transaction for all; results in the reports' order. A report from a device the
        registry has not registered yet (its discovery is still in flight) registers it.

        Reports of one device apply in the order given. A report past the attribute quota gets
        ``TooManyAttributesError`` and changes nothing; the others go ahead.
        """
        keys = sorted({(e.tenant, e.controller_id): e.occurred_at for e in events}.items())
        results: list[Device | Exception | None] = [None] * len(events)
        async with self.db.pool.acquire() as conn, conn.transaction():
            new = await conn.fetch(
                ENSURE_MANY,
                [t for (t, _), _ in keys],
                [c for (_, c), _ in keys],
                [at for _, at in keys],
            )
            created = {(r["tenant"], r["controller_id"]) for r in new}
            # A report that registers its device is the device's first sighting.
            await record_sightings(
                conn, [e for e in events if (e.tenant, e.controller_id) in created]
            )
            rows = await conn.fetch(LOCK_MANY, [t for (t, _), _ in keys], [c for (_, c), _ in keys])
            attributes = {(r["tenant"], r["controller_id"]): dict(r["attributes"]) for r in rows}
            entries = {
                (r["tenant"], r["controller_id"]): DeviceEntry(
                    token_hash=r["token_hash"],
                    config_requested=r["config_requested"],
                    attribute_keys=tuple(r["attributes"]),
                )
                for r in rows
            }
            newest = {(r["tenant"], r["controller_id"]): r["config_reported_at"] for r in rows}
            changed: set[tuple[str, str]] = set()
            for i, event in enumerate(events):
                key = (event.tenant, event.controller_id)
                last = newest[key]
                try:
                    if last is not None and event.occurred_at < last:
                        log.info(
                            "late config report tenant=%s controller_id=%s: only new keys",
                            event.tenant,
                            event.controller_id,
                        )
                        late = late_data(attributes[key], event.mode, event.data)
                        merged = merge_attributes(attributes[key], "merge", late)
                    else:
                        merged = merge_attributes(attributes[key], event.mode, event.data)
                        newest[key] = event.occurred_at
                except TooManyAttributesError as exc:
                    results[i] = exc
                    continue
                attributes[key] = merged
                changed.add(key)
            order = sorted(changed)
            lifts = [lifted(attributes[k]) for k in order]
            updated = await conn.fetch(
                UPDATE_ATTRIBUTES_MANY,
                [t for t, _ in order],
                [c for _, c in order],
                [attributes[k] for k in order],
                [c["hw_model"] for c in lifts],
                [c["hw_revision"] for c in lifts],
                [c["sw_version"] for c in lifts],
                [newest[k] for k in order],
            )
            devices = {(r["tenant"], r["controller_id"]): _device(r) for r in updated}
            # A device reporting the attribute names it reported before (as every device does
            # after an update, with its new version) leaves its KV entry as it was: the outbox
            # already holds, or has written, that entry.
            await self._publish_devices(
                conn,
                [(d, "registered" if k in created else "attributes") for k, d in devices.items()],
                # When the devices reported (the gateway's time): rollouts compares it with when
                # they reported their last success (rollback detection).
                {k: newest[k] for k in devices if newest[k] is not None},
                kv_unchanged={k for k, d in devices.items() if entries.get(k) == d.kv_entry()},
            )
        return [
            devices[(e.tenant, e.controller_id)] if r is None else r
            for e, r in zip(events, results, strict=True)
        ]

    async def create(
        self, tenant: str, controller_id: str, name: str | None, tags: list[str], token_hash: str
    ) -> Device | None:
        """Create a device through the API, with its token's hash; None if it exists."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(INSERT_API, tenant, controller_id, name, tags, token_hash)
            if row is None:
                return None
            device = _device(row)
            await self._publish_device(conn, device, "registered")
            return device

    async def set_token(
        self, tenant: str, controller_id: str, token_hash: str | None
    ) -> Device | None:
        """Replace (rotate) or clear (revoke) a device's token; None if no such device."""
        return await self._update(SET_CREDENTIAL, "other", tenant, controller_id, token_hash)

    async def patch(
        self,
        tenant: str,
        controller_id: str,
        name: tuple[bool, str | None],
        tags: tuple[bool, list[str] | None],
    ) -> Device | None:
        """Change name and/or tags (each only when its flag is set); None if no such device."""
        return await self._update(
            PATCH, "other", tenant, controller_id, name[0], name[1], tags[0], tags[1]
        )

    async def _update(self, sql: str, change: Change, *args: Any) -> Device | None:
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(sql, *args)
            if row is None:
                return None
            device = _device(row)
            await self._publish_device(conn, device, change)
            return device

    async def delete(self, tenant: str, controller_id: str) -> Device | None:
        """Remove a device: its row, its KV entry; ``device.updated`` (deleted) tells rollouts."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(DELETE, tenant, controller_id)
            if row is None:
                return None
            device = _device(row)
            await self.outbox.kv_delete(
                conn, names.BUCKET_DEVICES, names.kv_key(tenant, controller_id)
            )
            await self.outbox.event(
                conn, DeviceUpdated(tenant=tenant, controller_id=controller_id, change="deleted")
            )
            return device

    async def set_state_many(self, changes: Sequence[StateChange]) -> list[Device | None]:
        """Record the update states action events imply, in one transaction; results in order.

        Changes of one device apply in the order given (one statement per round, a device at
        most once in each). Each result is the device after its change, or None when the
        device is unknown or a newer state is recorded.
        """
        results: list[Device | None] = [None] * len(changes)
        pending = list(enumerate(changes))
        keys = sorted({(c.tenant, c.controller_id) for c in changes})
        async with self.db.pool.acquire() as conn, conn.transaction():
            # Rows locked in key order first: batches sharing devices cannot deadlock.
            await conn.execute(LOCK_MANY, [t for t, _ in keys], [c for _, c in keys])
            events: list[DeviceUpdated] = []
            while pending:
                now: dict[tuple[str, str], tuple[int, StateChange]] = {}
                later: list[tuple[int, StateChange]] = []
                for i, c in pending:
                    key = (c.tenant, c.controller_id)
                    if key in now:
                        later.append((i, c))
                    else:
                        now[key] = (i, c)
                batch = sorted(now.values(), key=lambda ic: (ic[1].tenant, ic[1].controller_id))
                rows = await conn.fetch(
                    SET_STATE_MANY,
                    [c.tenant for _, c in batch],
                    [c.controller_id for _, c in batch],
                    [c.state for _, c in batch],
                    [c.at for _, c in batch],
                    [c.action_id for _, c in batch],
                    [c.installed_version for _, c in batch],
                )
                for row in rows:
                    device = _device(row)
                    i, c = now[(device.tenant, device.controller_id)]
                    results[i] = device
                    if c.installed_version is not None:
                        events.append(
                            DeviceUpdated(
                                tenant=device.tenant,
                                controller_id=device.controller_id,
                                change="installed",
                                hw_model=device.hw_model,
                                hw_revision=device.hw_revision,
                                sw_version=installed_or_reported(
                                    c.installed_version,
                                    c.at,
                                    device.sw_version,
                                    row["config_reported_at"],
                                ),
                            )
                        )
                pending = later
            await self.outbox.many(conn, events)
        return results

    async def set_feed(self, tenant: str, controller_id: str, feed: str) -> Device:
        """Record the feed of a device's policy (creating the device if it is new)."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(SET_FEED, tenant, controller_id, feed)
            device = _device(row)  # type: ignore[arg-type]  # an upsert returns its row
            if row["inserted"]:  # type: ignore[index]
                await self._publish_device(conn, device, "registered")
            return device

    async def _publish_devices(
        self,
        conn: Conn,
        changes: list[tuple[Device, Change]],
        reported_at: Mapping[tuple[str, str], datetime] | None = None,
        kv_unchanged: AbstractSet[tuple[str, str]] = frozenset(),
    ) -> None:
        """KV entries and ``device.updated`` events of many devices, in one statement.

        ``reported_at``: when the devices reported what changed (the gateway's time), if they
        did. The KV entries of devices in ``kv_unchanged`` (tenant, controller id) are not
        written: they are what KV holds already.
        """
        at = reported_at or {}
        if not changes:
            return
        await self.outbox.many(
            conn,
            events=[
                DeviceUpdated(
                    reported_at=at.get((d.tenant, d.controller_id)),
                    tenant=d.tenant,
                    controller_id=d.controller_id,
                    change=change,
                    hw_model=d.hw_model,
                    hw_revision=d.hw_revision,
                    sw_version=d.sw_version,
                )
                for d, change in changes
            ],
            kv_puts=[
                (names.BUCKET_DEVICES, names.kv_key(d.tenant, d.controller_id), d.kv_entry())
                for d, _ in changes
                if (d.tenant, d.controller_id) not in kv_unchanged
            ],
        )

    async def _publish_device(self, conn: Conn, device: Device, change: Change) -> None:
        await self._publish_devices(conn, [(device, change)])

    async def known(self, tenant: str, controller_ids: list[str]) -> list[dict[str, Any]]:
        """Those of the devices that exist, with what ``device.updated`` says of them."""
        return [dict(r) for r in await self.db.pool.fetch(KNOWN, tenant, controller_ids)]

    async def get(self, tenant: str, controller_id: str) -> Device | None:
        """One device, or None."""
        row = await self.db.pool.fetchrow(SELECT_ONE, tenant, controller_id)
        return _device(row) if row else None
