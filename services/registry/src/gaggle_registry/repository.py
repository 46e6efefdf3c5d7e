"""Registry persistence: SQL as constants, asyncpg underneath, domain types out."""

from __future__ import annotations

from collections.abc import Sequence
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
from gaggle_registry.domain import (
    Device,
    TooManyAttributesError,
    kv_changes,
    lifted,
    merge_attributes,
)
from gaggle_runtime.db import Conn
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database


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
    sw_version = u.sw_version, config_requested = false, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[])
    AS u(tenant, controller_id, attributes, hw_model, hw_revision, sw_version)
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

# The attribute names go to the gateway, which refuses a report past the quota from them.
SELECT_ALL_KV = """
SELECT tenant, controller_id, token_hash, config_requested,
    ARRAY(SELECT jsonb_object_keys(attributes)) AS attribute_keys
FROM registry.devices"""

SELECT_SOME_KV = """
SELECT tenant, controller_id, d.token_hash, d.config_requested,
    ARRAY(SELECT jsonb_object_keys(d.attributes)) AS attribute_keys
FROM registry.devices AS d
JOIN unnest($1::text[], $2::text[]) AS k(tenant, controller_id) USING (tenant, controller_id)"""

SELECT_PENDING_KV = """
SELECT op, key, payload FROM registry.outbox
WHERE target = $1 AND op IN ('kv_put', 'kv_delete')
ORDER BY id"""

PRESENCE_ROWS = "SELECT reltuples FROM pg_class WHERE oid = 'registry.device_presence'::regclass"

# SKIP_LOCKED: another replica (or autovacuum) at it already is just as good.
VACUUM_PRESENCE = "VACUUM (ANALYZE, SKIP_LOCKED) registry.device_presence"

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
"""Terms this long or longer have pieces to look up in the ``devices_search`` index."""

SEARCH_WINDOW = 4000
"""Devices a ``q`` listing reads in order before it turns to the ``devices_search`` index."""

FEW_MATCHES = 2000
"""Up to this many matching devices, sorting them all beats walking the order for a page."""


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

    Each sort follows an index, keyset position included, so a page costs about its own rows at
    any depth, and presence is joined for the page's rows only when nothing else needs it. Two
    cases need more, because no estimate tells how many devices match:

    * ``q`` (three characters or more): the page is looked for among the first
      ``SEARCH_WINDOW`` devices in the listing's order. If they hold a whole page, that is the
      page (a common term); if not, the term is rare and the ``devices_search`` index of
      three-character pieces finds its few devices. A case-insensitive match decides either
      way (LIKE on the stored lower-case id and name).
    * Filters on devices with the order or a filter on presence: up to ``FEW_MATCHES + 1``
      matching devices are taken first. If that is all of them, the page is sorted out of
      those; otherwise they are common enough that walking the order finds a page soon.
    """
    args: list[Any] = [query.tenant]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    scope = ["d.tenant = $1"]
    """Tenant, and the keyset position when the order is on devices."""
    filters: list[str] = []
    """Filters on devices."""
    presence: list[str] = []
    """Conditions on presence: on the indexed expression, so the index on last seen serves them."""
    for column, value in (
        ("d.update_state", query.state),
        ("d.hw_model", query.hw_model),
        ("d.hw_revision", query.hw_revision),
        ("d.sw_version", query.sw_version),
        ("d.feed", query.feed),
    ):
        if value is not None:
            filters.append(f"{column} = {arg(value)}")
    if query.tag is not None:
        filters.append(f"d.tags @> ARRAY[{arg(query.tag)}]::text[]")
    grams = None
    if query.q:
        escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        # ILIKE in PostgreSQL is LIKE on both sides lowered; the columns are stored lowered.
        pattern = f"lower({arg(f'%{escaped}%')})"
        filters.append(f"(d.search_id LIKE {pattern} OR d.search_name LIKE {pattern})")
        if len(query.q) >= MIN_TERM_GRAMS:
            grams = (
                "registry.device_grams(d.controller_id, d.name)"
                f" @> registry.text_grams({arg(query.q)})"
            )
    if query.seen_before is not None:
        presence.append(f"p.last_seen_at IS NOT NULL AND {LAST_SEEN} < {arg(query.seen_before)}")
    if query.seen_after is not None:
        presence.append(f"p.last_seen_at IS NOT NULL AND {LAST_SEEN} >= {arg(query.seen_after)}")
    key, id_column = SORTS[query.sort]
    order = "DESC" if query.descending else "ASC"
    compare = "<" if query.descending else ">"
    if query.after is not None:
        value, cid = query.after
        if key is None:
            scope.append(f"{id_column} {compare} {arg(str(cid))}")
        else:
            # Timestamps travel in cursors as ISO text; -infinity (never seen) as 0001-01-01.
            at = datetime.fromisoformat(str(value))
            position = f"({key}, {id_column}) {compare} ({arg(at)}, {arg(str(cid))})"
            (presence if key == LAST_SEEN else scope).append(position)
    on_presence = key == LAST_SEEN or bool(presence)
    order_by = f"{id_column} {order}" if key is None else f"{key} {order}, {id_column} {order}"
    limit = arg(query.limit)
    columns = ", ".join(f"{sql} AS {name}" for name, sql in LIST_COLUMNS.items())
    select = f"SELECT {columns}, {key or id_column} AS sort_value"
    join = (
        "JOIN registry.device_presence AS p"
        " ON p.tenant = d.tenant AND p.controller_id = d.controller_id"
    )

    def where(*conditions: str) -> str:
        return " AND ".join(conditions)

    if not on_presence:
        page = (
            "SELECT * FROM registry.devices AS d"  # noqa: S608
            f" WHERE {where(*scope, *filters)} ORDER BY {order_by} LIMIT {limit}"
        )
        if grams is None:
            # Only the page's own rows need their presence: pick them from devices alone.
            return f"{select} FROM ({page}) AS d {join} ORDER BY {order_by}", args
        window = (
            "SELECT * FROM registry.devices AS d"  # noqa: S608
            f" WHERE {where(*scope)} ORDER BY {order_by} LIMIT {SEARCH_WINDOW}"
        )
        rare = (
            "SELECT * FROM registry.devices AS d"  # noqa: S608
            f" WHERE (SELECT count(*) FROM walked) < {limit}"
            f" AND {where(*scope, *filters, grams)} ORDER BY {order_by} LIMIT {limit}"
        )
        sql = (
            f"WITH walked AS MATERIALIZED (SELECT * FROM ({window}) AS d"  # noqa: S608
            f" WHERE {where(*filters)} ORDER BY {order_by} LIMIT {limit})"
            f" {select} FROM ((SELECT * FROM walked WHERE (SELECT count(*) FROM walked) = {limit})"
            f" UNION ALL ({rare})) AS d {join} ORDER BY {order_by}"
        )
        return sql, args
    joined = (
        f"{select} FROM registry.devices AS d {join}"
        f" WHERE {where(*scope, *filters, *presence)} ORDER BY {order_by} LIMIT {limit}"
    )
    if not filters:
        return joined, args
    # Only what the order needs, so an index alone can answer (index-only scan).
    keys = "d.tenant, d.controller_id" + (", d.created_at" if query.sort == "created" else "")
    matching = (
        f"SELECT {keys} FROM registry.devices AS d"  # noqa: S608
        f" WHERE {where(*scope, *filters, *([grams] if grams else []))}"
        f" LIMIT {FEW_MATCHES + 1}"
    )
    gate = f"(SELECT count(*) FROM matching) <= {FEW_MATCHES}"  # noqa: S608
    # OFFSET 0 keeps the lateral subquery apart: one primary-key look-up per matching device.
    few = (
        "SELECT p.* FROM matching AS d CROSS JOIN LATERAL (SELECT * FROM"  # noqa: S608
        " registry.device_presence AS p WHERE p.tenant = d.tenant"
        " AND p.controller_id = d.controller_id OFFSET 0) AS p"
        f" WHERE {where(gate, *presence)}"
        f" ORDER BY {order_by} LIMIT {limit}"
    )
    many = (
        f"{select} FROM registry.devices AS d {join}"
        f" WHERE NOT {gate} AND {where(*scope, *filters, *presence)}"
        f" ORDER BY {order_by} LIMIT {limit}"
    )
    sql = (
        f"WITH matching AS MATERIALIZED ({matching})"
        f" ({select} FROM ({few}) AS p JOIN registry.devices AS d"
        " ON d.tenant = p.tenant AND d.controller_id = p.controller_id"
        f" ORDER BY {order_by}) UNION ALL ({many})"
        f" ORDER BY sort_value {order}, controller_id {order}"
    )
    return sql, args


def plans_per_call(query: DeviceQuery) -> bool:
    """Whether a listing's best plan depends on its filter values (any filter or search)."""
    return any(
        value is not None
        for value in (
            query.state,
            query.hw_model,
            query.hw_revision,
            query.sw_version,
            query.tag,
            query.feed,
            query.seen_before,
            query.seen_after,
            query.q or None,
        )
    )


async def fetch_listing(conn: Conn, query: DeviceQuery) -> list[asyncpg.Record]:
    """The rows of one listing page.

    A statement reused from the connection's cache gets a generic plan after five runs, one
    plan for every value: for a filter that matches 0.5 % of the fleet with one value and 40 %
    with another, that plan is wrong for one of them. Filtered listings therefore run as an
    unnamed statement, planned for their own values each time.
    """
    sql, args = build_list_query(query)
    if not plans_per_call(query):
        return await conn.fetch(sql, *args)
    statement = await conn.prepare(sql, name="")
    return await statement.fetch(*args)


class Repo:
    """Devices in the ``registry`` schema, with their outbox writes in the same transaction."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox
        self.touched_since_tidy = 0
        """Presence rows sightings updated since the last ``tidy_presence``."""

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
            await self._first_sightings(conn, events)
            created = {(r["tenant"], r["controller_id"]): _device(r) for r in rows}
            await self._publish_devices(conn, [(d, "registered") for d in created.values()])
        results: list[Device | None] = []
        for event in events:
            results.append(created.pop((event.tenant, event.controller_id), None))
        return results

    async def _first_sightings(
        self, conn: Conn, events: Sequence[DeviceDiscovered | DeviceConfigReported]
    ) -> None:
        """Each event counts as its device's sighting (the newest per device wins)."""
        newest: dict[tuple[str, str], DeviceDiscovered | DeviceConfigReported] = {}
        for e in events:
            key = (e.tenant, e.controller_id)
            if key not in newest or e.occurred_at > newest[key].occurred_at:
                newest[key] = e
        by_tenant: dict[str, list[DeviceDiscovered | DeviceConfigReported]] = {}
        for (tenant, _), e in sorted(newest.items()):
            by_tenant.setdefault(tenant, []).append(e)
        for tenant, group in by_tenant.items():
            await conn.execute(
                TOUCH_MANY,
                tenant,
                [e.controller_id for e in group],
                [e.occurred_at for e in group],
                [getattr(e, "address", None) for e in group],
            )

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
            await self._first_sightings(
                conn, [e for e in events if (e.tenant, e.controller_id) in created]
            )
            rows = await conn.fetch(LOCK_MANY, [t for (t, _), _ in keys], [c for (_, c), _ in keys])
            attributes = {(r["tenant"], r["controller_id"]): dict(r["attributes"]) for r in rows}
            changed: set[tuple[str, str]] = set()
            for i, event in enumerate(events):
                key = (event.tenant, event.controller_id)
                try:
                    attributes[key] = merge_attributes(attributes[key], event.mode, event.data)
                except TooManyAttributesError as exc:
                    results[i] = exc
                    continue
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
            )
            devices = {(r["tenant"], r["controller_id"]): _device(r) for r in updated}
            await self._publish_devices(
                conn,
                [(d, "registered" if k in created else "attributes") for k, d in devices.items()],
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
                                sw_version=c.installed_version,
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
        self.touched_since_tidy += len(ids)

    async def tidy_presence(self, share: float = 0.2, minimum: int = 1000) -> bool:
        """VACUUM and ANALYZE presence once sightings rewrote ``share`` of it; True if it ran.

        Every sighting leaves a dead row version and a dead entry in each of the table's two
        indexes; autovacuum looks at most once a minute, and a burst of sightings (a fleet
        coming back online) bloats the index on last seen several times over by then. Sightings
        also move every last_seen_at past the newest value the planner's statistics know, and
        until the next ANALYZE it takes "seen in the last minutes" for a handful of devices.
        """
        touched = self.touched_since_tidy
        if touched < minimum:
            return False
        rows = await self.db.pool.fetchval(PRESENCE_ROWS)
        if touched < share * (rows or 0):
            return False
        self.touched_since_tidy = 0
        await self.db.pool.execute(VACUUM_PRESENCE)
        return True

    async def _publish_devices(self, conn: Conn, changes: list[tuple[Device, Change]]) -> None:
        """KV entries and ``device.updated`` events of many devices, in one statement."""
        if not changes:
            return
        await self.outbox.many(
            conn,
            events=[
                DeviceUpdated(
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
            ],
        )

    async def _publish_device(self, conn: Conn, device: Device, change: Change) -> None:
        await self._publish_devices(conn, [(device, change)])

    async def get(self, tenant: str, controller_id: str) -> Device | None:
        """One device, or None."""
        row = await self.db.pool.fetchrow(SELECT_ONE, tenant, controller_id)
        return _device(row) if row else None

    async def list_page(self, query: DeviceQuery) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """One page of devices as the operator sees them, and the keyset position after it.

        Items are ``Device.public`` dicts built straight from the rows; ``attributes`` is the
        stored JSON as an ``orjson.Fragment``, passed through without being parsed.
        """
        async with self.db.pool.acquire() as conn:
            rows = await fetch_listing(conn, query)
        # Every column but the last (sort_value), by name; zip stops at the shorter.
        columns = list(LIST_COLUMNS)
        items = [dict(zip(columns, row, strict=False)) for row in rows]
        for item in items:
            item["attributes"] = orjson.Fragment(item["attributes"])
        after = None
        if len(rows) == query.limit:
            after = [rows[-1]["sort_value"], rows[-1]["controller_id"]]
        return items, after

    async def rebuild_kv(self, held: dict[str, bytes]) -> tuple[int, int]:
        """Queue the KV writes that make bucket ``devices`` match the table; return the counts.

        ``held`` is what the bucket holds (read before this call). Outbox rows not relayed yet
        will land on top of it, so they count as written. Only missing or different entries get
        a put, and only keys no device has get a delete: a start with nothing to fix writes
        nothing. Run at start, so the read model matches the table whatever happened while
        the registry was away (a lost bucket, a changed key, a missed write).

        The comparison reads one snapshot without blocking anyone. The keys it finds wrong are
        then read again while device writers wait, and written as they are then: a writer that
        committed before is in that state, one that commits after queues its KV write behind
        these. A key that changed in between without showing up here has its own write queued.
        """
        async with self.db.pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                pending = [
                    (r["op"], r["key"], bytes(r["payload"]))
                    for r in await conn.fetch(SELECT_PENDING_KV, names.BUCKET_DEVICES)
                ]
                rows = await conn.fetch(SELECT_ALL_KV)
            wanted = ((names.kv_key(r["tenant"], r["controller_id"]), _kv_entry(r)) for r in rows)
            puts, deletes = kv_changes(held, pending, wanted, _kv_bytes)
            wrong = [key for key, _ in puts] + deletes
            if not wrong:
                return 0, 0
            ids = [_device_of(key) for key in wrong]
            async with conn.transaction():
                await conn.execute(LOCK_DEVICES)
                now = {
                    names.kv_key(r["tenant"], r["controller_id"]): _kv_entry(r)
                    for r in await conn.fetch(
                        SELECT_SOME_KV, [t for t, _ in ids], [c for _, c in ids]
                    )
                }
                fixes = [(key, now.get(key)) for key in wrong]
                for start in range(0, len(fixes), 5000):
                    chunk = fixes[start : start + 5000]
                    await self.outbox.many(
                        conn,
                        kv_puts=[(names.BUCKET_DEVICES, k, e) for k, e in chunk if e is not None],
                        kv_deletes=[(names.BUCKET_DEVICES, k) for k, e in chunk if e is None],
                    )
                put = sum(1 for _, entry in fixes if entry is not None)
        return put, len(wrong) - put


def _kv_entry(row: asyncpg.Record) -> DeviceEntry:
    return DeviceEntry(
        token_hash=row["token_hash"],
        config_requested=row["config_requested"],
        attribute_keys=tuple(row["attribute_keys"]),
    )


def _device_of(key: str) -> tuple[str, str]:
    """(tenant, controller id) a KV key stands for; a key no device can have gives ("", "")."""
    try:
        return names.parse_kv_key(key)
    except ValueError:  # undecodable: written by something else
        return "", ""


def _kv_bytes(entry: DeviceEntry) -> bytes:
    """A KV value exactly as the outbox writes it."""
    return entry.model_dump_json().encode()
