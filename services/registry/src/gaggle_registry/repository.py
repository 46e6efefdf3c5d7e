"""Registry persistence: SQL as constants, asyncpg underneath, domain types out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from gaggle_contracts import names
from gaggle_contracts.events import (
    DeviceConfigReported,
    DeviceDiscovered,
    DeviceSeen,
    DeviceUpdated,
)
from gaggle_registry.domain import Device, lifted, merge_attributes
from gaggle_runtime.db import Conn
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

Change = Literal["registered", "attributes", "installed", "deleted", "other"]

INSERT_DISCOVERED = """
INSERT INTO registry.devices (tenant, controller_id, last_seen_at, last_address, created_at)
VALUES ($1, $2, $3, $4, $3)
ON CONFLICT (tenant, controller_id) DO UPDATE
SET last_seen_at = EXCLUDED.last_seen_at,
    last_address = coalesce(EXCLUDED.last_address, registry.devices.last_address)
WHERE registry.devices.last_seen_at IS NULL
   OR registry.devices.last_seen_at < EXCLUDED.last_seen_at
RETURNING *, (xmax = 0) AS inserted"""

INSERT_API = """
INSERT INTO registry.devices (tenant, controller_id, name, tags, token_hash, registered_via)
VALUES ($1, $2, $3, $4, $5, 'api')
ON CONFLICT (tenant, controller_id) DO NOTHING
RETURNING *"""

LOCK_ONE = "SELECT * FROM registry.devices WHERE tenant = $1 AND controller_id = $2 FOR UPDATE"

ENSURE = """
INSERT INTO registry.devices (tenant, controller_id, created_at, last_seen_at)
VALUES ($1, $2, $3, $3)
ON CONFLICT (tenant, controller_id) DO NOTHING"""

UPDATE_ATTRIBUTES = """
UPDATE registry.devices
SET attributes = $3, hw_model = $4, hw_revision = $5, sw_version = $6,
    config_requested = false, updated_at = now()
WHERE tenant = $1 AND controller_id = $2
RETURNING *"""

SET_CREDENTIAL = """
UPDATE registry.devices SET token_hash = $3, updated_at = now()
WHERE tenant = $1 AND controller_id = $2
RETURNING *"""

PATCH = """
UPDATE registry.devices
SET name = CASE WHEN $3 THEN $4 ELSE name END,
    tags = CASE WHEN $5 THEN $6::text[] ELSE tags END,
    updated_at = now()
WHERE tenant = $1 AND controller_id = $2
RETURNING *"""

DELETE = "DELETE FROM registry.devices WHERE tenant = $1 AND controller_id = $2 RETURNING *"

# Action events of one device may arrive out of order (one durable consumer per kind): the
# newest event wins, an older one changes nothing.
SET_STATE = """
UPDATE registry.devices
SET update_state = CASE WHEN $3 <> 'revert' THEN $3
                        WHEN installed_version IS NULL THEN 'unknown' ELSE 'up_to_date' END,
    state_at = $4, action_id = $5,
    installed_version = coalesce($6, installed_version), updated_at = now()
WHERE tenant = $1 AND controller_id = $2 AND (state_at IS NULL OR state_at <= $4)
RETURNING *"""

TOUCH_MANY = """
UPDATE registry.devices AS d
SET last_seen_at = GREATEST(d.last_seen_at, s.seen_at),
    last_address = CASE WHEN d.last_seen_at IS NULL OR s.seen_at >= d.last_seen_at
                        THEN coalesce(s.address, d.last_address) ELSE d.last_address END
FROM unnest($2::text[], $3::timestamptz[], $4::text[]) AS s(controller_id, seen_at, address)
WHERE d.tenant = $1 AND d.controller_id = s.controller_id"""

# A policy set before the device's first poll pre-registers the device.
SET_FEED = """
INSERT INTO registry.devices (tenant, controller_id, feed, registered_via)
VALUES ($1, $2, $3, 'api')
ON CONFLICT (tenant, controller_id) DO UPDATE SET feed = EXCLUDED.feed, updated_at = now()
RETURNING *, (xmax = 0) AS inserted"""

SELECT_ONE = "SELECT * FROM registry.devices WHERE tenant = $1 AND controller_id = $2"

SELECT_ALL_KV = "SELECT tenant, controller_id, token_hash, config_requested FROM registry.devices"

SORT_COLUMNS = {
    "controller_id": None,
    "last_seen": "coalesce(last_seen_at, '-infinity'::timestamptz)",
    "created": "created_at",
}


def _device(row: asyncpg.Record) -> Device:
    return Device(
        tenant=row["tenant"],
        controller_id=row["controller_id"],
        name=row["name"],
        token_hash=row["token_hash"],
        hw_model=row["hw_model"],
        hw_revision=row["hw_revision"],
        sw_version=row["sw_version"],
        attributes=dict(row["attributes"]),
        config_requested=row["config_requested"],
        update_state=row["update_state"],
        installed_version=row["installed_version"],
        action_id=row["action_id"],
        feed=row["feed"],
        tags=list(row["tags"]),
        last_seen_at=row["last_seen_at"],
        last_address=row["last_address"],
        registered_via=row["registered_via"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


@dataclass(frozen=True)
class DeviceQuery:
    """Filters, order and position of a device listing."""

    tenant: str
    state: str | None = None
    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    tag: str | None = None
    feed: str | None = None
    seen_before: datetime | None = None
    seen_after: datetime | None = None
    q: str | None = None
    sort: str = "controller_id"
    descending: bool = False
    after: list[Any] | None = None
    """Keyset position: [sort value, controller id] of the last row of the previous page."""
    limit: int = 100


def build_list_query(query: DeviceQuery) -> tuple[str, list[Any]]:
    """SQL and arguments for a listing; every value is a parameter, columns come from a table."""
    args: list[Any] = [query.tenant]
    where = ["tenant = $1"]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in (
        ("update_state", query.state),
        ("hw_model", query.hw_model),
        ("hw_revision", query.hw_revision),
        ("sw_version", query.sw_version),
        ("feed", query.feed),
    ):
        if value is not None:
            where.append(f"{column} = {arg(value)}")
    if query.tag is not None:
        where.append(f"tags @> ARRAY[{arg(query.tag)}]::text[]")
    if query.seen_before is not None:
        where.append(f"last_seen_at < {arg(query.seen_before)}")
    if query.seen_after is not None:
        where.append(f"last_seen_at >= {arg(query.seen_after)}")
    if query.q:
        escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = arg(f"%{escaped}%")
        where.append(f"(controller_id ILIKE {pattern} OR name ILIKE {pattern})")
    key = SORT_COLUMNS[query.sort]
    order = "DESC" if query.descending else "ASC"
    compare = "<" if query.descending else ">"
    if query.after is not None:
        value, cid = query.after
        if key is None:
            where.append(f"controller_id {compare} {arg(str(cid))}")
        else:
            # Timestamps travel in cursors as ISO text; -infinity (never seen) as 0001-01-01.
            at = datetime.fromisoformat(str(value))
            where.append(f"({key}, controller_id) {compare} ({arg(at)}, {arg(str(cid))})")
    order_by = f"controller_id {order}" if key is None else f"{key} {order}, controller_id {order}"
    sql = (
        f"SELECT *, {key or 'controller_id'} AS sort_value FROM registry.devices"  # noqa: S608
        f" WHERE {' AND '.join(where)} ORDER BY {order_by} LIMIT {arg(query.limit)}"
    )
    return sql, args


class Repo:
    """Devices in the ``registry`` schema, with their outbox writes in the same transaction."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

    async def register_discovered(self, event: DeviceDiscovered) -> Device | None:
        """Create the device unless it exists; None when it already did (idempotent).

        The discovery is also the device's first sighting: a device that its configData report
        registered first, or whose sightings batch overtook this event, still gets it.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                INSERT_DISCOVERED,
                event.tenant,
                event.controller_id,
                event.occurred_at,
                event.address,
            )
            if row is None or not row["inserted"]:
                return None
            device = _device(row)
            await self._publish_device(conn, device, "registered")
            return device

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

    async def apply_config(self, event: DeviceConfigReported) -> Device:
        """Merge, replace or remove attributes; lift the three we use into columns.

        A report from a device the registry has not registered yet (its discovery is still in
        flight) registers it. Raises ``TooManyAttributesError`` past the quota; nothing changes.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            created = await conn.execute(
                ENSURE, event.tenant, event.controller_id, event.occurred_at
            )
            row = await conn.fetchrow(LOCK_ONE, event.tenant, event.controller_id)
            if row is None:  # pragma: no cover - ensured just above, in this transaction
                raise RuntimeError("device vanished inside its transaction")
            attributes = merge_attributes(dict(row["attributes"]), event.mode, event.data)
            cols = lifted(attributes)
            row = await conn.fetchrow(
                UPDATE_ATTRIBUTES,
                event.tenant,
                event.controller_id,
                attributes,
                cols["hw_model"],
                cols["hw_revision"],
                cols["sw_version"],
            )
            device = _device(row)  # type: ignore[arg-type]  # the row is locked above
            await self._publish_device(
                conn, device, "registered" if created.endswith(" 1") else "attributes"
            )
            return device

    async def set_state(
        self,
        tenant: str,
        controller_id: str,
        state: str,
        at: datetime,
        action_id: str,
        installed_version: str | None,
    ) -> Device | None:
        """Record the update state an action event implies, unless a newer one is recorded."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                SET_STATE, tenant, controller_id, state, at, action_id, installed_version
            )
            if row is None:
                return None
            device = _device(row)
            if installed_version is not None:
                await self.outbox.event(
                    conn,
                    DeviceUpdated(
                        tenant=tenant,
                        controller_id=controller_id,
                        change="installed",
                        hw_model=device.hw_model,
                        hw_revision=device.hw_revision,
                        sw_version=installed_version,
                    ),
                )
            return device

    async def set_feed(self, tenant: str, controller_id: str, feed: str) -> Device:
        """Record the feed of a device's policy (creating the device if it is new)."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(SET_FEED, tenant, controller_id, feed)
            device = _device(row)  # type: ignore[arg-type]  # an upsert returns its row
            if row["inserted"]:  # type: ignore[index]
                await self._publish_device(conn, device, "registered")
            return device

    async def touch_many(self, event: DeviceSeen) -> None:
        """Advance last seen (and address) of every device in the batch, in one statement."""
        ids = [s.controller_id for s in event.sightings]
        times = [s.seen_at for s in event.sightings]
        addresses = [s.address for s in event.sightings]
        await self.db.pool.execute(TOUCH_MANY, event.tenant, ids, times, addresses)

    async def _publish_device(self, conn: Conn, device: Device, change: Change) -> None:
        await self.outbox.kv_put(
            conn,
            names.BUCKET_DEVICES,
            names.kv_key(device.tenant, device.controller_id),
            device.kv_entry(),
        )
        await self.outbox.event(
            conn,
            DeviceUpdated(
                tenant=device.tenant,
                controller_id=device.controller_id,
                change=change,
                hw_model=device.hw_model,
                hw_revision=device.hw_revision,
                sw_version=device.sw_version,
            ),
        )

    async def get(self, tenant: str, controller_id: str) -> Device | None:
        """One device, or None."""
        row = await self.db.pool.fetchrow(SELECT_ONE, tenant, controller_id)
        return _device(row) if row else None

    async def search(self, query: DeviceQuery) -> list[tuple[Device, Any]]:
        """One page of devices with the sort value of each (for the next cursor)."""
        sql, args = build_list_query(query)
        rows = await self.db.pool.fetch(sql, *args)
        return [(_device(r), r["sort_value"]) for r in rows]

    async def rebuild_kv(self, existing_keys: set[str]) -> tuple[int, int]:
        """Queue a KV put per device and a delete per key no device has; return both counts.

        Run at start, so the read model matches the table whatever happened while we were away.
        """
        count = 0
        wanted: set[str] = set()
        async with self.db.pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(SELECT_ALL_KV, prefetch=1000):
                device = Device(
                    tenant=row["tenant"],
                    controller_id=row["controller_id"],
                    token_hash=row["token_hash"],
                    config_requested=row["config_requested"],
                )
                key = names.kv_key(device.tenant, device.controller_id)
                wanted.add(key)
                await self.outbox.kv_put(conn, names.BUCKET_DEVICES, key, device.kv_entry())
                count += 1
            stale = existing_keys - wanted
            for key in stale:
                await self.outbox.kv_delete(conn, names.BUCKET_DEVICES, key)
        return count, len(stale)
