"""The device listing: filters, sort and keyset pages as SQL, planned to follow an index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from gaggle_runtime.db import Conn
from gaggle_runtime.service import Database

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
    p = _Parts(query)
    if p.key != LAST_SEEN and not p.presence:
        return _on_devices(p), p.args
    if not p.filters:
        return p.joined(), p.args
    return _few_or_many(p, query.sort == "created"), p.args


class _Parts:
    """The pieces of a listing's SQL, its arguments numbered in the order they are taken."""

    def __init__(self, query: DeviceQuery) -> None:
        self.args: list[Any] = [query.tenant]
        self.scope = ["d.tenant = $1"]
        """Tenant, and the keyset position when the order is on devices."""
        self.filters: list[str] = []
        """Filters on devices."""
        self.presence: list[str] = []
        """Conditions on presence: on the indexed expression, so its index serves them."""
        self.grams: str | None = None
        """The search term's pieces, looked up in the ``devices_search`` index."""
        self._filter(query)
        self.key, self.id_column = SORTS[query.sort]
        self.order = "DESC" if query.descending else "ASC"
        self._position(query)
        key, id_column, order = self.key, self.id_column, self.order
        self.order_by = (
            f"{id_column} {order}" if key is None else f"{key} {order}, {id_column} {order}"
        )
        self.limit = self.arg(query.limit)
        columns = ", ".join(f"{sql} AS {name}" for name, sql in LIST_COLUMNS.items())
        self.select = f"SELECT {columns}, {key or id_column} AS sort_value"
        self.join = (
            "JOIN registry.device_presence AS p"
            " ON p.tenant = d.tenant AND p.controller_id = d.controller_id"
        )

    def arg(self, value: Any) -> str:
        """``value`` as the next numbered parameter."""
        self.args.append(value)
        return f"${len(self.args)}"

    def _filter(self, query: DeviceQuery) -> None:
        for column, value in (
            ("d.update_state", query.state),
            ("d.hw_model", query.hw_model),
            ("d.hw_revision", query.hw_revision),
            ("d.sw_version", query.sw_version),
            ("d.feed", query.feed),
        ):
            if value is not None:
                self.filters.append(f"{column} = {self.arg(value)}")
        if query.tag is not None:
            self.filters.append(f"d.tags @> ARRAY[{self.arg(query.tag)}]::text[]")
        if query.q:
            escaped = query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            # ILIKE in PostgreSQL is LIKE on both sides lowered; the columns are stored lowered.
            pattern = f"lower({self.arg(f'%{escaped}%')})"
            self.filters.append(f"(d.search_id LIKE {pattern} OR d.search_name LIKE {pattern})")
            if len(query.q) >= MIN_TERM_GRAMS:
                self.grams = (
                    "registry.device_grams(d.controller_id, d.name)"
                    f" @> registry.text_grams({self.arg(query.q)})"
                )
        for bound, compare in ((query.seen_before, "<"), (query.seen_after, ">=")):
            if bound is not None:
                self.presence.append(
                    f"p.last_seen_at IS NOT NULL AND {LAST_SEEN} {compare} {self.arg(bound)}"
                )

    def _position(self, query: DeviceQuery) -> None:
        if query.after is None:
            return
        compare = "<" if query.descending else ">"
        value, cid = query.after
        if self.key is None:
            self.scope.append(f"{self.id_column} {compare} {self.arg(str(cid))}")
            return
        # Timestamps travel in cursors as ISO text; -infinity (never seen) as 0001-01-01.
        at = datetime.fromisoformat(str(value))
        position = (
            f"({self.key}, {self.id_column}) {compare} ({self.arg(at)}, {self.arg(str(cid))})"
        )
        (self.presence if self.key == LAST_SEEN else self.scope).append(position)

    def joined(self) -> str:
        """Devices and presence joined, every condition on the join."""
        return (
            f"{self.select} FROM registry.devices AS d {self.join}"
            f" WHERE {_where(*self.scope, *self.filters, *self.presence)}"
            f" ORDER BY {self.order_by} LIMIT {self.limit}"
        )


def _where(*conditions: str) -> str:
    return " AND ".join(conditions)


def _on_devices(p: _Parts) -> str:
    """A listing in an order on devices, with no condition on presence."""
    order_by, limit, where = p.order_by, p.limit, _where
    page = (
        "SELECT * FROM registry.devices AS d"  # noqa: S608
        f" WHERE {where(*p.scope, *p.filters)} ORDER BY {order_by} LIMIT {limit}"
    )
    if p.grams is None:
        # Only the page's own rows need their presence: pick them from devices alone.
        return f"{p.select} FROM ({page}) AS d {p.join} ORDER BY {order_by}"
    window = (
        "SELECT * FROM registry.devices AS d"  # noqa: S608
        f" WHERE {where(*p.scope)} ORDER BY {order_by} LIMIT {SEARCH_WINDOW}"
    )
    rare = (
        "SELECT * FROM registry.devices AS d"  # noqa: S608
        f" WHERE (SELECT count(*) FROM walked) < {limit}"
        f" AND {where(*p.scope, *p.filters, p.grams)} ORDER BY {order_by} LIMIT {limit}"
    )
    return (
        f"WITH walked AS MATERIALIZED (SELECT * FROM ({window}) AS d"  # noqa: S608
        f" WHERE {where(*p.filters)} ORDER BY {order_by} LIMIT {limit})"
        f" {p.select} FROM ((SELECT * FROM walked WHERE (SELECT count(*) FROM walked) = {limit})"
        f" UNION ALL ({rare})) AS d {p.join} ORDER BY {order_by}"
    )


def _few_or_many(p: _Parts, by_created: bool) -> str:
    """A filtered listing in an order on presence, or with a condition on it."""
    order_by, limit, where = p.order_by, p.limit, _where
    # Only what the order needs, so an index alone can answer (index-only scan).
    keys = "d.tenant, d.controller_id" + (", d.created_at" if by_created else "")
    matching = (
        f"SELECT {keys} FROM registry.devices AS d"  # noqa: S608
        f" WHERE {where(*p.scope, *p.filters, *([p.grams] if p.grams else []))}"
        f" LIMIT {FEW_MATCHES + 1}"
    )
    gate = f"(SELECT count(*) FROM matching) <= {FEW_MATCHES}"  # noqa: S608
    # OFFSET 0 keeps the lateral subquery apart: one primary-key look-up per matching device.
    few = (
        "SELECT p.* FROM matching AS d CROSS JOIN LATERAL (SELECT * FROM"  # noqa: S608
        " registry.device_presence AS p WHERE p.tenant = d.tenant"
        " AND p.controller_id = d.controller_id OFFSET 0) AS p"
        f" WHERE {where(gate, *p.presence)}"
        f" ORDER BY {order_by} LIMIT {limit}"
    )
    many = (
        f"{p.select} FROM registry.devices AS d {p.join}"
        f" WHERE NOT {gate} AND {where(*p.scope, *p.filters, *p.presence)}"
        f" ORDER BY {order_by} LIMIT {limit}"
    )
    return (
        f"WITH matching AS MATERIALIZED ({matching})"
        f" ({p.select} FROM ({few}) AS p JOIN registry.devices AS d"
        " ON d.tenant = p.tenant AND d.controller_id = p.controller_id"
        f" ORDER BY {order_by}) UNION ALL ({many})"
        f" ORDER BY sort_value {p.order}, controller_id {p.order}"
    )


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


class DeviceListing:
    """Pages of devices as operators list them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(self, query: DeviceQuery) -> tuple[list[dict[str, Any]], list[Any] | None]:
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
