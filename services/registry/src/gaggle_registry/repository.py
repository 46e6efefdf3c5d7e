"""Registry persistence: SQL as constants, asyncpg underneath, domain types out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from gaggle_contracts import names
from gaggle_contracts.events import (
    DeviceConfigReported,
    DeviceDiscovered,
    DeviceSeen,
    DeviceUpdated,
    Sighting,
)
from gaggle_contracts.kv import DeviceEntry
from gaggle_registry.domain import Device, kv_changes, lifted, merge_attributes
from gaggle_runtime.db import Conn
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

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
INSERT_DISCOVERED = """
INSERT INTO registry.devices (tenant, controller_id, created_at) VALUES ($1, $2, $3)
ON CONFLICT (tenant, controller_id) DO NOTHING
RETURNING true"""

INSERT_API = _with_presence(
    """INSERT INTO registry.devices (tenant, controller_id, name, tags, token_hash, registered_via)
VALUES ($1, $2, $3, $4, $5, 'api')
ON CONFLICT (tenant, controller_id) DO NOTHING
RETURNING *"""
)

LOCK_ONE = "SELECT * FROM registry.devices WHERE tenant = $1 AND controller_id = $2 FOR UPDATE"

ENSURE = """
INSERT INTO registry.devices (tenant, controller_id, created_at) VALUES ($1, $2, $3)
ON CONFLICT (tenant, controller_id) DO NOTHING"""

UPDATE_ATTRIBUTES = _with_presence(
    """UPDATE registry.devices
SET attributes = $3, hw_model = $4, hw_revision = $5, sw_version = $6,
    config_requested = false, updated_at = now()
WHERE tenant = $1 AND controller_id = $2
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
SET_STATE = _with_presence(
    """UPDATE registry.devices
SET update_state = CASE WHEN $3 <> 'revert' THEN $3
                        WHEN installed_version IS NULL THEN 'unknown' ELSE 'up_to_date' END,
    state_at = $4, action_id = $5,
    installed_version = coalesce($6, installed_version), updated_at = now()
WHERE tenant = $1 AND controller_id = $2 AND (state_at IS NULL OR state_at <= $4)
RETURNING *"""
)

# A sighting only ever moves a device's last seen forward; an older or repeated one (a
# redelivered batch) leaves the row alone, so it costs no new row version.
TOUCH_MANY = """
UPDATE registry.device_presence AS p
SET last_seen_at = s.seen_at, last_address = coalesce(s.address, p.last_address)
FROM unnest($2::text[], $3::timestamptz[], $4::text[]) AS s(controller_id, seen_at, address)
WHERE p.tenant = $1 AND p.controller_id = s.controller_id
  AND (p.last_seen_at IS NULL OR s.seen_at > p.last_seen_at
       OR (s.seen_at = p.last_seen_at AND s.address IS NOT NULL
           AND s.address IS DISTINCT FROM p.last_address))"""

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

# Writers of devices wait while this is held; those that committed before are all visible.
LOCK_DEVICES = "LOCK TABLE registry.devices IN SHARE MODE"

SELECT_ALL_KV = "SELECT tenant, controller_id, token_hash, config_requested FROM registry.devices"

SELECT_PENDING_KV = """
SELECT op, key, payload FROM registry.outbox
WHERE target = $1 AND op IN ('kv_put', 'kv_delete')
ORDER BY id"""

PRESENCE_ROWS = "SELECT reltuples FROM pg_class WHERE oid = 'registry.device_presence'::regclass"

ANALYZE_PRESENCE = "ANALYZE registry.device_presence"

LAST_SEEN = "coalesce(p.last_seen_at, '-infinity'::timestamptz)"
"""A device's last seen as the listing sorts it (never seen: first, ascending); indexed."""

SORTS = {
    "controller_id": (None, "d.controller_id"),
    "last_seen": (LAST_SEEN, "p.controller_id"),
    "created": ("d.created_at", "d.controller_id"),
}
"""Sort name -> (key expression, or None for the id alone; the id column next to it)."""

LIST_COLUMNS = {
    "tenant": "d.tenant",
    "controller_id": "d.controller_id",
    "name": "d.name",
    "hw_model": "d.hw_model",
    "hw_revision": "d.hw_revision",
    "sw_version": "d.sw_version",
    "attributes": "d.attributes::text",
    "config_requested": "d.config_requested",
    "update_state": "d.update_state",
    "installed_version": "d.installed_version",
    "action_id": "d.action_id",
    "feed": "d.feed",
    "tags": "d.tags",
    "last_seen_at": "p.last_seen_at",
    "last_address": "p.last_address",
    "registered_via": "d.registered_via",
    "has_token": "d.token_hash IS NOT NULL",
    "created_at": "d.created_at",
    "updated_at": "d.updated_at",
}
"""A listed device's fields (those of ``Device.public``) as SQL; attributes as JSON text."""

MIN_TERM_GRAMS = 3
"""Terms this long or longer are looked up in the ``devices_search`` index first."""


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
    """SQL and arguments for a listing; every value is a parameter, columns come from a table.

    Each sort has an index whose order it follows, keyset position included, so a page costs
    about its own rows at any depth. ``q`` narrows the rows through the ``devices_search`` index
    of three-character pieces before ILIKE decides.
    """
    args: list[Any] = [query.tenant]
    where = ["d.tenant = $1"]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    for column, value in (
        ("d.update_state", query.state),
        ("d.hw_model", query.hw_model),
        ("d.hw_revision", query.hw_revision),
        ("d.sw_version", query.sw_version),
        ("d.feed", query.feed),
    ):
        if value is not None:
            where.append(f"{column} = {arg(value)}")
    if query.tag is not None:
        where.append(f"d.tags @> ARRAY[{arg(query.tag)}]::text[]")
    # On the indexed expression, so that the index on last seen serves these filters too.
    if query.seen_before is not None:
        where.append(f"p.last_seen_at IS NOT NULL AND {LAST_SEEN} < {arg(query.seen_before)}")
    if query.seen_after is not None:
        where.append(f"p.last_seen_at IS NOT NULL AND {LAST_SEEN} >= {arg(query.seen_after)}")
    if query.q:
        escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = arg(f"%{escaped}%")
        where.append(f"(d.controller_id ILIKE {pattern} OR d.name ILIKE {pattern})")
        if len(query.q) >= MIN_TERM_GRAMS:
            where.append(
                "registry.device_grams(d.controller_id, d.name)"
                f" @> registry.text_grams({arg(query.q)})"
            )
    key, id_column = SORTS[query.sort]
    order = "DESC" if query.descending else "ASC"
    compare = "<" if query.descending else ">"
    if query.after is not None:
        value, cid = query.after
        if key is None:
            where.append(f"{id_column} {compare} {arg(str(cid))}")
        else:
            # Timestamps travel in cursors as ISO text; -infinity (never seen) as 0001-01-01.
            at = datetime.fromisoformat(str(value))
            where.append(f"({key}, {id_column}) {compare} ({arg(at)}, {arg(str(cid))})")
    order_by = f"{id_column} {order}" if key is None else f"{key} {order}, {id_column} {order}"
    columns = ", ".join(f"{sql} AS {name}" for name, sql in LIST_COLUMNS.items())
    sql = (
        f"SELECT {columns}, {key or id_column} AS sort_value"  # noqa: S608
        " FROM registry.devices AS d JOIN registry.device_presence AS p"
        " ON p.tenant = d.tenant AND p.controller_id = d.controller_id"
        f" WHERE {' AND '.join(where)} ORDER BY {order_by} LIMIT {arg(query.limit)}"
    )
    return sql, args


class Repo:
    """Devices in the ``registry`` schema, with their outbox writes in the same transaction."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox
        self.touched_since_analyze = 0
        """Presence rows sightings updated since the last ``refresh_presence_stats``."""

    async def register_discovered(self, event: DeviceDiscovered) -> Device | None:
        """Create the device unless it exists; None when it already did (idempotent).

        The discovery is also the device's first sighting: a device that its configData report
        registered first, or whose sightings batch overtook this event, still gets it.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                INSERT_DISCOVERED, event.tenant, event.controller_id, event.occurred_at
            )
            await conn.execute(
                TOUCH_MANY,
                event.tenant,
                [event.controller_id],
                [event.occurred_at],
                [event.address],
            )
            if not inserted:
                return None
            row = await conn.fetchrow(SELECT_ONE, event.tenant, event.controller_id)
            device = _device(row)  # type: ignore[arg-type]  # inserted just above
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
            if created.endswith(" 1"):  # the report is the new device's first sighting
                await conn.execute(
                    TOUCH_MANY, event.tenant, [event.controller_id], [event.occurred_at], [None]
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
        newest: dict[str, Sighting] = {}
        for sighting in event.sightings:  # one row per device: the newest sighting wins
            known = newest.get(sighting.controller_id)
            if known is None or sighting.seen_at >= known.seen_at:
                newest[sighting.controller_id] = sighting
        ids = list(newest)
        times = [s.seen_at for s in newest.values()]
        addresses = [s.address for s in newest.values()]
        await self.db.pool.execute(TOUCH_MANY, event.tenant, ids, times, addresses)
        self.touched_since_analyze += len(ids)

    async def refresh_presence_stats(self, share: float = 0.1, minimum: int = 1000) -> bool:
        """ANALYZE the presence table once sightings rewrote ``share`` of it; True if it ran.

        Sightings move every last_seen_at past the newest value the planner's statistics know;
        until the next ANALYZE it takes "seen in the last minutes" for a handful of devices
        when it is the whole fleet, and picks plans for a handful.
        """
        touched = self.touched_since_analyze
        if touched < minimum:
            return False
        rows = await self.db.pool.fetchval(PRESENCE_ROWS)
        if touched < share * (rows or 0):
            return False
        self.touched_since_analyze = 0
        await self.db.pool.execute(ANALYZE_PRESENCE)
        return True

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

    async def list_page(self, query: DeviceQuery) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """One page of devices as the operator sees them, and the keyset position after it.

        Items are ``Device.public`` dicts built straight from the rows; ``attributes`` is the
        stored JSON as an ``orjson.Fragment``, passed through without being parsed.
        """
        sql, args = build_list_query(query)
        rows = await self.db.pool.fetch(sql, *args)
        items: list[dict[str, Any]] = []
        for row in rows:
            item = dict(row)
            item["attributes"] = orjson.Fragment(item["attributes"])
            items.append(item)
        after = None
        if len(items) == query.limit:
            last = items[-1]
            after = [last["sort_value"], last["controller_id"]]
        for item in items:
            del item["sort_value"]
        return items, after

    async def rebuild_kv(self, held: dict[str, bytes]) -> tuple[int, int]:
        """Queue the KV writes that make bucket ``devices`` match the table; return the counts.

        ``held`` is what the bucket holds (read before this call). Outbox rows not relayed yet
        will land on top of it, so they count as written. Only missing or different entries get
        a put, and only keys no device has get a delete: a start with nothing to fix writes
        nothing. Run at start, so the read model matches the table whatever happened while
        the registry was away (a lost bucket, a changed key, a missed write).

        Device writers wait while the comparison runs: one that committed before it is in what
        it reads, one that commits after it queues its own KV write behind these.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_DEVICES)
            pending = [
                (r["op"], r["key"], bytes(r["payload"]))
                for r in await conn.fetch(SELECT_PENDING_KV, names.BUCKET_DEVICES)
            ]
            wanted = [
                (
                    names.kv_key(r["tenant"], r["controller_id"]),
                    DeviceEntry(token_hash=r["token_hash"], config_requested=r["config_requested"]),
                )
                for r in await conn.fetch(SELECT_ALL_KV)
            ]
            puts, deletes = kv_changes(held, pending, wanted, _kv_bytes)
            for key, entry in puts:
                await self.outbox.kv_put(conn, names.BUCKET_DEVICES, key, entry)
            for key in deletes:
                await self.outbox.kv_delete(conn, names.BUCKET_DEVICES, key)
        return len(puts), len(deletes)


def _kv_bytes(entry: DeviceEntry) -> bytes:
    """A KV value exactly as the outbox writes it."""
    return entry.model_dump_json().encode()
