"""Migrations and the outbox relay against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from gaggle_contracts.events import DeviceConfigReported, DeviceDiscovered
from gaggle_contracts.kv import DeviceEntry
from gaggle_runtime import db
from gaggle_runtime.outbox import Outbox, OutboxRelay

pytestmark = pytest.mark.integration

MIGRATIONS = [
    db.Migration("service", 1, "0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);"),
    db.Migration("service", 2, "0002_more.sql", "ALTER TABLE things ADD COLUMN name text;"),
]


async def test_replicas_starting_together_apply_each_migration_once(database_url: str) -> None:
    pools = [await db.create_pool(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(db.migrate(p, "svc", MIGRATIONS) for p in pools))
        applied = [name for r in results for name in r]
        assert sorted(applied) == ["0001_things.sql", "0002_more.sql"]
        rows = await pools[0].fetch("SELECT version FROM svc.schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [1, 2]
        # Running again is a no-op.
        assert await db.migrate(pools[0], "svc", MIGRATIONS) == []
    finally:
        for p in pools:
            await p.close()


async def test_a_failing_migration_leaves_nothing_half_applied(database_url: str) -> None:
    bad = [
        *MIGRATIONS,
        db.Migration(
            "service", 3, "0003_bad.sql", "ALTER TABLE things ADD COLUMN x int; SELECT nonsense;"
        ),
    ]
    pool = await db.create_pool(database_url)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await db.migrate(pool, "svc", bad)
        cols = await pool.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'svc' AND table_name = 'things'"
        )
        assert {c["column_name"] for c in cols} == {"id", "name"}
        versions = await pool.fetch("SELECT version FROM svc.schema_migrations")
        assert sorted(r["version"] for r in versions) == [1, 2]
    finally:
        await pool.close()


def test_migration_files_are_found_in_order() -> None:
    found = db.load_migrations("gaggle_registry.migrations")
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name.startswith("0001_")


class ListSink:
    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[str, ...]] = []
        self.fail_first = fail_first

    async def publish(self, subject: str, payload: bytes, msg_id: str | None) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise ConnectionError("NATS away")
        self.sent.append(("event", subject, msg_id or ""))

    async def kv_put(self, bucket: str, key: str, payload: bytes) -> None:
        self.sent.append(("put", bucket, key, payload.decode()))

    async def kv_delete(self, bucket: str, key: str) -> None:
        self.sent.append(("delete", bucket, key))


async def _outbox_pool(database_url: str) -> asyncpg.Pool:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, "svc", db.load_migrations("gaggle_runtime.migrations", "runtime"))
    return pool


async def test_outbox_rows_are_relayed_in_commit_order_and_deleted(database_url: str) -> None:
    pool = await _outbox_pool(database_url)
    outbox = Outbox("svc")
    sink = ListSink()
    relay = OutboxRelay(database_url, pool, outbox, sink)
    try:
        ev = DeviceDiscovered(tenant="t", controller_id="d1")
        async with pool.acquire() as conn, conn.transaction():
            await outbox.kv_put(conn, "devices", "t.d1", DeviceEntry(config_requested=True))
            await outbox.event(conn, ev)
            await outbox.kv_delete(conn, "devices", "t.d0")
        assert await relay.drain() == 3
        assert sink.sent == [
            ("put", "devices", "t.d1", DeviceEntry(config_requested=True).model_dump_json()),
            ("event", ev.subject, ev.message_id),
            ("delete", "devices", "t.d0"),
        ]
        assert await pool.fetchval("SELECT count(*) FROM svc.outbox") == 0
    finally:
        await pool.close()


async def test_rolled_back_transaction_publishes_nothing(database_url: str) -> None:
    pool = await _outbox_pool(database_url)
    outbox = Outbox("svc")
    sink = ListSink()
    try:

        async def write_then_fail() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.event(conn, DeviceDiscovered(tenant="t", controller_id="d1"))
                raise RuntimeError("handler failed after writing")

        with pytest.raises(RuntimeError):
            await write_then_fail()
        assert await OutboxRelay(database_url, pool, outbox, sink).drain() == 0
        assert sink.sent == []
    finally:
        await pool.close()


async def test_rows_stay_until_published_when_the_bus_is_away(database_url: str) -> None:
    pool = await _outbox_pool(database_url)
    outbox = Outbox("svc")
    sink = ListSink(fail_first=1)
    relay = OutboxRelay(database_url, pool, outbox, sink)
    first = DeviceDiscovered(tenant="t", controller_id="d1")
    second = DeviceConfigReported(tenant="t", controller_id="d1", data={"a": "1"})
    other = DeviceDiscovered(tenant="t", controller_id="d2")
    try:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.event(conn, first)
            await outbox.event(conn, second)
            await outbox.event(conn, other)
        with pytest.raises(ConnectionError):
            await relay.drain()
        # d1's first event failed, so its second waits behind it; d2 is not held up.
        assert [s[2] for s in sink.sent] == [other.message_id]
        assert await pool.fetchval("SELECT count(*) FROM svc.outbox") == 2
        assert await relay.drain() == 2
        assert [s[2] for s in sink.sent[1:]] == [first.message_id, second.message_id]
    finally:
        await pool.close()


class SlowSink(ListSink):
    """Answers after a random delay, as a real server under load does."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0

    async def kv_put(self, bucket: str, key: str, payload: bytes) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(random.uniform(0, 0.003))
        self.in_flight -= 1
        await super().kv_put(bucket, key, payload)


async def test_batched_rows_go_out_concurrently_yet_in_order_per_key(database_url: str) -> None:
    pool = await _outbox_pool(database_url)
    outbox = Outbox("svc")
    sink = SlowSink()
    relay = OutboxRelay(database_url, pool, outbox, sink)
    try:
        async with pool.acquire() as conn, conn.transaction():
            for version in range(5):
                puts = [
                    ("devices", f"t.d{i}", DeviceEntry(token_hash=str(version))) for i in range(40)
                ]
                await outbox.many(conn, kv_puts=puts)
        assert await relay.drain() == 200
        assert sink.peak > 1
        for i in range(40):
            values = [s[3] for s in sink.sent if s[2] == f"t.d{i}"]
            assert [DeviceEntry.model_validate_json(v).token_hash for v in values] == [
                str(v) for v in range(5)
            ]
    finally:
        await pool.close()


async def test_running_relay_wakes_on_notify(database_url: str) -> None:
    pool = await _outbox_pool(database_url)
    outbox = Outbox("svc")
    sink = ListSink()
    relay = OutboxRelay(database_url, pool, outbox, sink, idle_poll_s=30)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.3)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.event(conn, DeviceDiscovered(tenant="t", controller_id="d1"))
        async with asyncio.timeout(5):
            while not sink.sent:
                await asyncio.sleep(0.01)
        assert sink.sent[0][2] == "discovered:t:d1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.close()
