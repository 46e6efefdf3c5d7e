"""Every way a listing can be answered gives what plain filtering and sorting would."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gaggle_registry import listing
from gaggle_registry.domain import decode_cursor, encode_cursor
from gaggle_registry.listing import DeviceQuery, fetch_listing
from gaggle_runtime import db

pytestmark = pytest.mark.integration

TENANT = "t1"
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
NEVER = datetime.min.replace(tzinfo=UTC)


def fleet() -> list[dict[str, Any]]:
    """300 devices with skewed attributes, ties in last seen, and some never seen."""
    rng = random.Random(5)
    devices = []
    for i in range(300):
        model = rng.choice(["gw-100", "gw-100", "gw-100", "gw-200", "cam-x"])
        seen = None if i % 17 == 0 else NOW - timedelta(minutes=rng.choice(range(0, 600, 7)))
        devices.append(
            {
                "controller_id": f"dev-{i:03d}",
                "name": f"{model} {i} {rng.choice(['Lyon', 'Oslo', 'Graz'])}" if i % 3 else None,
                "hw_model": model,
                "sw_version": rng.choice(["1.0", "1.1", "2.0"]),
                "update_state": rng.choice(["up_to_date", "up_to_date", "pending", "error"]),
                "tags": ["beta"] if i % 11 == 0 else [],
                "created_at": NOW - timedelta(days=rng.randrange(5)),  # many equal
                "last_seen_at": seen,
                "last_address": f"10.0.0.{i % 250}" if seen else None,
            }
        )
    rng.shuffle(devices)  # rows stored in no particular order
    return devices


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    pool = await db.create_pool(database_url)
    try:
        migrations = db.load_migrations("gaggle_runtime.migrations", "runtime")
        migrations += db.load_migrations("gaggle_registry.migrations")
        await db.migrate(pool, "registry", migrations)
        async with pool.acquire() as c:
            for d in fleet():
                await c.execute(
                    "INSERT INTO registry.devices (tenant, controller_id, name, hw_model,"
                    " sw_version, update_state, tags, created_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    TENANT,
                    d["controller_id"],
                    d["name"],
                    d["hw_model"],
                    d["sw_version"],
                    d["update_state"],
                    d["tags"],
                    d["created_at"],
                )
                await c.execute(
                    "UPDATE registry.device_presence SET last_seen_at = $3, last_address = $4"
                    " WHERE tenant = $1 AND controller_id = $2",
                    TENANT,
                    d["controller_id"],
                    d["last_seen_at"],
                    d["last_address"],
                )
            await c.execute("ANALYZE registry.devices; ANALYZE registry.device_presence")
            yield c  # type: ignore[misc]  # a pool's connection proxy
    finally:
        await pool.close()


def expected(query: DeviceQuery) -> list[str]:
    """The listing by plain filtering and sorting in Python."""

    def keep(d: dict[str, Any]) -> bool:
        checks = [
            query.state in (None, d["update_state"]),
            query.hw_model in (None, d["hw_model"]),
            query.sw_version in (None, d["sw_version"]),
            query.tag is None or query.tag in d["tags"],
            query.q is None
            or query.q.lower() in d["controller_id"].lower()
            or query.q.lower() in (d["name"] or "").lower(),
            query.seen_after is None
            or (d["last_seen_at"] is not None and d["last_seen_at"] >= query.seen_after),
            query.seen_before is None
            or (d["last_seen_at"] is not None and d["last_seen_at"] < query.seen_before),
        ]
        return all(checks)

    def key(d: dict[str, Any]) -> tuple[Any, str]:
        if query.sort == "last_seen":
            return (d["last_seen_at"] or NEVER, d["controller_id"])
        if query.sort == "created":
            return (d["created_at"], d["controller_id"])
        return (d["controller_id"], d["controller_id"])

    rows = sorted((d for d in fleet() if keep(d)), key=key, reverse=query.descending)
    return [d["controller_id"] for d in rows]


async def listed(conn: asyncpg.Connection, query: DeviceQuery) -> list[str]:
    """Every page of the listing, following the cursor as the API does."""
    ids: list[str] = []
    after = None
    for _ in range(400):
        page = await fetch_listing(conn, DeviceQuery(**{**query.__dict__, "after": after}))
        ids += [r["controller_id"] for r in page]
        if len(page) < query.limit:
            return ids
        last = page[-1]
        after = decode_cursor(encode_cursor([last["sort_value"], last["controller_id"]]))
    raise AssertionError("the listing did not end")


FILTERS: list[dict[str, Any]] = [
    {},
    {"hw_model": "cam-x"},
    {"hw_model": "gw-100", "sw_version": "1.1"},
    {"state": "error"},
    {"tag": "beta"},
    {"q": "lyon"},
    {"q": "DEV-01"},
    {"q": "2 o"},
    {"q": "nomatch"},
    {"q": "gw-100 1", "state": "up_to_date"},
    {"seen_after": NOW - timedelta(hours=2)},
    {"seen_before": NOW - timedelta(hours=5)},
    {"hw_model": "gw-200", "seen_after": NOW - timedelta(hours=6)},
    {"q": "oslo", "seen_before": NOW - timedelta(hours=1)},
]
SORTS = [("controller_id", False), ("controller_id", True), ("last_seen", False)]
SORTS += [("last_seen", True), ("created", False), ("created", True)]


@pytest.mark.parametrize(
    ("few", "window"),
    [(listing.FEW_MATCHES, listing.SEARCH_WINDOW), (5, 10), (0, 1)],
    ids=["as-shipped", "small-thresholds", "always-walk"],
)
async def test_every_listing_plan_pages_through_exactly_the_matching_devices(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, few: int, window: int
) -> None:
    # Small thresholds send these 300 devices down the branches meant for large fleets.
    monkeypatch.setattr(listing, "FEW_MATCHES", few)
    monkeypatch.setattr(listing, "SEARCH_WINDOW", window)
    for filters in FILTERS:
        for sort, descending in SORTS:
            query = DeviceQuery(tenant=TENANT, sort=sort, descending=descending, limit=7, **filters)
            want = expected(query)
            assert await listed(conn, query) == want, (filters, sort, descending)
