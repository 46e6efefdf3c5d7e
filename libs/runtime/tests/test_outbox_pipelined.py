"""The outbox relay sending a batch pipelined: in waves of one row per key, all acks awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from faststream.nats import NatsBroker
from nats.js.errors import NoStreamResponseError

from gaggle_contracts import names
from gaggle_contracts.events import DeviceDiscovered
from gaggle_contracts.kv import DeviceEntry
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime import db
from gaggle_runtime.acks import AckedPublisher, Message
from gaggle_runtime.bus import NatsSink, make_broker
from gaggle_runtime.jetstream import ensure_all
from gaggle_runtime.outbox import BatchSink, Outbox, OutboxRelay, Outgoing

pytestmark = pytest.mark.integration


class WaveSink:
    """Records each wave it is given; fails the rows named in ``fail`` once, as NATS away."""

    def __init__(self, fail: set[tuple[str | None, bytes]]) -> None:
        self.fail = fail
        self.waves: list[list[Outgoing]] = []
        self.sent: list[tuple[str | None, bytes]] = []

    async def send_many(self, rows: Sequence[Outgoing]) -> list[BaseException | None]:
        self.waves.append(list(rows))
        results: list[BaseException | None] = []
        for row in rows:
            if (row.key, row.payload) in self.fail:
                self.fail.discard((row.key, row.payload))
                results.append(ConnectionError("NATS away"))
                continue
            self.sent.append((row.key, row.payload))
            results.append(None)
        return results

    async def publish(self, subject: str, payload: bytes, msg_id: str | None) -> None:
        raise AssertionError("a batch sink is sent whole batches")

    async def kv_put(self, bucket: str, key: str, payload: bytes) -> None:
        raise AssertionError("a batch sink is sent whole batches")

    async def kv_delete(self, bucket: str, key: str) -> None:
        raise AssertionError("a batch sink is sent whole batches")


def _entry(version: int) -> DeviceEntry:
    return DeviceEntry(token_hash=str(version))


async def _outbox_pool(database_url: str) -> asyncpg.Pool:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, "svc", db.load_migrations("gaggle_runtime.migrations", "runtime"))
    return pool


async def test_a_failure_in_the_middle_of_a_batch_holds_back_its_key_alone(
    database_url: str,
) -> None:
    pool = await _outbox_pool(database_url)
    outbox = Outbox("svc")
    failing = ("t.d1", _entry(1).model_dump_json().encode())
    sink = WaveSink({failing})
    assert isinstance(sink, BatchSink)
    relay = OutboxRelay(database_url, pool, outbox, sink)
    events = [DeviceDiscovered(tenant="t", controller_id=f"d{i}") for i in range(3)]
    try:
        async with pool.acquire() as conn, conn.transaction():
            for version in range(3):
                puts = [("devices", f"t.d{i}", _entry(version)) for i in range(3)]
                await outbox.many(conn, events=events if version == 1 else (), kv_puts=puts)
        with pytest.raises(ConnectionError):
            await relay.drain()
        # Each wave holds at most one row of a key, so a key's rows are never in flight together.
        for wave in sink.waves:
            lanes = [(r.op == "event", r.target if r.op != "event" else "", r.key) for r in wave]
            assert len(lanes) == len(set(lanes))
        # d1's second put failed: it and its third put wait; everything else went out.
        left = await pool.fetch("SELECT key, payload FROM svc.outbox ORDER BY id")
        assert [(r["key"], bytes(r["payload"])) for r in left] == [
            ("t.d1", _entry(1).model_dump_json().encode()),
            ("t.d1", _entry(2).model_dump_json().encode()),
        ]
        assert len(sink.sent) == 3 * 3 + 3 - 2
        assert await relay.drain() == 2
        assert await pool.fetchval("SELECT count(*) FROM svc.outbox") == 0
        # Nothing went out twice, and each key's puts went out in the order they were written.
        assert len(sink.sent) == len(set(sink.sent)) == 3 * 3 + 3
        for i in range(3):
            bodies = [p for k, p in sink.sent if k == f"t.d{i}"]
            values = [DeviceEntry.model_validate_json(p).token_hash for p in bodies]
            assert values == ["0", "1", "2"]
    finally:
        await pool.close()


@pytest.fixture
async def broker(nats_url: str) -> AsyncIterator[NatsBroker]:
    broker = make_broker(nats_url, "test")
    await broker.connect()
    await ensure_all(broker.connection.jetstream(), CommonSettings(nats_url=nats_url))
    try:
        yield broker
    finally:
        await broker.stop()


async def test_pipelined_puts_of_one_key_land_in_order_and_resent_events_are_stored_once(
    database_url: str, broker: NatsBroker, tenant: str
) -> None:
    pool = await _outbox_pool(database_url)
    outbox = Outbox("svc")
    relay = OutboxRelay(database_url, pool, outbox, NatsSink(broker))
    events = [DeviceDiscovered(tenant=tenant, controller_id=f"d{i}") for i in range(20)]
    bucket = f"history-{tenant}"  # keeps every revision, so their order shows
    kv = await broker.connection.jetstream().create_key_value(bucket=bucket, history=8)
    try:
        async with pool.acquire() as conn, conn.transaction():
            for version in range(4):
                puts = [(bucket, f"{tenant}.d{i}", _entry(version)) for i in range(20)]
                await outbox.many(conn, events=events if version == 2 else (), kv_puts=puts)
            await outbox.kv_delete(conn, bucket, f"{tenant}.d19")
        assert await relay.drain() == 4 * 20 + 20 + 1
        for i in range(19):
            history = await kv.history(f"{tenant}.d{i}")
            values = [DeviceEntry.model_validate_json(e.value or b"").token_hash for e in history]
            assert values == ["0", "1", "2", "3"]
        assert [e.operation for e in await kv.history(f"{tenant}.d19")][-1] == "DEL"

        # A relay that crashed after the acks but before deleting its rows sends them again:
        # JetStream recognises each event by its Nats-Msg-Id and stores it once.
        async with pool.acquire() as conn:
            await outbox.many(conn, events=events)
        assert await relay.drain() == 20
        js = broker.connection.jetstream()
        info = await js.stream_info(names.STREAM, subjects_filter=f"ota.v1.{tenant}.>")
        assert sum((info.state.subjects or {}).values()) == 20
    finally:
        await broker.connection.jetstream().delete_key_value(bucket)
        await pool.close()


async def test_one_batch_reports_each_message_on_its_own(broker: NatsBroker, tenant: str) -> None:
    nc = broker.connection
    publisher = AckedPublisher(nc)
    stored = names.subject(tenant, "device.discovered")
    silent = f"silent.{tenant}"
    listener = await nc.subscribe(silent)  # takes the message and never answers
    try:
        results = await publisher.publish_many(
            [
                Message(stored, b"{}", None),
                Message(f"nostream.{tenant}", b"{}", None),
                Message(stored, b"{}", None),
            ]
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], NoStreamResponseError)
        [late] = await publisher.publish_many([Message(silent, b"{}", None)], timeout=0.2)
        assert isinstance(late, TimeoutError)
        assert publisher._waiting == {}
    finally:
        await listener.unsubscribe()
