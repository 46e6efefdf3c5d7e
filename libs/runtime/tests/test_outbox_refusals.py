"""The outbox relay against a real NATS that refuses some rows: they are parked, the rest go on."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from faststream.nats import NatsBroker

from gaggle_contracts import names
from gaggle_contracts.events import DeviceDiscovered
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime import db
from gaggle_runtime.bus import NatsSink, make_broker
from gaggle_runtime.deadletters import DeadLetterStore, NotReplayableError
from gaggle_runtime.jetstream import ensure_all, stream_config
from gaggle_runtime.outbox import Outbox, OutboxRelay

pytestmark = pytest.mark.integration

INSERT = (
    "INSERT INTO svc.outbox (op, target, key, msg_id, payload) VALUES ($1, $2, $3, $4, $5)"
    " RETURNING id"
)


@dataclass
class Setup:
    pool: asyncpg.Pool
    broker: NatsBroker
    relay: OutboxRelay
    store: DeadLetterStore

    async def row(
        self, op: str, target: str, key: str | None, msg_id: str | None, payload: bytes
    ) -> int:
        value: int = await self.pool.fetchval(INSERT, op, target, key, msg_id, payload)
        return value

    async def stored(self, subject: str) -> bytes | None:
        js = self.broker.connection.jetstream()
        try:
            msg = await js.get_last_msg(names.STREAM, subject)
        except Exception:
            return None
        return bytes(msg.data or b"")


@pytest.fixture
async def setup(database_url: str, nats_url: str) -> AsyncIterator[Setup]:
    pool = await db.create_pool(database_url)
    await db.migrate(pool, "svc", db.load_migrations("gaggle_runtime.migrations", "runtime"))
    broker = make_broker(nats_url, "test")
    await broker.connect()
    await ensure_all(broker.connection.jetstream(), CommonSettings(nats_url=nats_url))
    outbox = Outbox("svc")
    store = DeadLetterStore("svc", lambda: pool, outbox)
    relay = OutboxRelay(database_url, pool, outbox, NatsSink(broker), dead_letters=store)
    try:
        yield Setup(pool, broker, relay, store)
    finally:
        await broker.stop()
        await pool.close()


async def test_rows_the_bus_refuses_are_parked_once_and_the_rows_behind_them_go_out(
    setup: Setup, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    subject = names.subject(tenant, "device.updated")
    too_large = b'{"x": "' + b"x" * (2 << 20) + b'"}'  # twice NATS's default max_payload
    first = f"{tenant}-first"
    await setup.row("event", subject, "d1", first, b'{"n": 1}')
    refused = await setup.row("event", subject, "d1", f"{tenant}-large", too_large)
    await setup.row("event", subject, "d1", f"{tenant}-after", b'{"n": 3}')  # same device, behind
    await setup.row("kv_put", names.BUCKET_DEVICES, f"{tenant}.d1", None, too_large)
    await setup.row("kv_put", names.BUCKET_DEVICES, f"{tenant}.d1", None, b'{"n": 4}')
    await setup.row("event", f"ota.v1.{tenant}.bad subject.x", None, f"{tenant}-bad", b"{}")
    caplog.set_level(logging.ERROR, logger="gaggle_runtime.outbox")

    assert await setup.relay.drain() == 3
    assert await setup.stored(subject) == b'{"n": 3}'
    kv = await setup.broker.connection.jetstream().key_value(names.BUCKET_DEVICES)
    assert (await kv.get(f"{tenant}.d1")).value == b'{"n": 4}'
    assert await setup.pool.fetchval("SELECT count(*) FROM svc.outbox") == 0
    assert setup.relay.parked == 3
    parked_lines = [r for r in caplog.records if "outbox row parked" in r.getMessage()]
    assert len(parked_lines) == 3

    letters, _ = await setup.store.page(tenant)
    by_kind = {x["kind"]: x for x in letters}
    assert {(k, x["reason"], x["replayable"]) for k, x in by_kind.items()} == {
        ("bad subject.x", "refused", True),
        ("kv_put", "refused", False),
        ("device.updated", "refused", True),
    }
    bad_subject, kv_letter, large = (
        by_kind["bad subject.x"],
        by_kind["kv_put"],
        by_kind["device.updated"],
    )
    assert "max_payload" in large["error"] and large["size"] == len(too_large)
    assert (large["source"], large["consumer"], large["msg_id"]) == (
        "outbox",
        "outbox",
        f"{tenant}-large",
    )
    assert "not a valid NATS subject" in bad_subject["error"]
    assert (kv_letter["subject"], kv_letter["key"]) == (names.BUCKET_DEVICES, f"{tenant}.d1")
    assert await setup.store.counts() == {"outbox": 3}

    # Later rows still flow; nothing is retried or logged again.
    await setup.row("event", subject, "d1", f"{tenant}-later", b'{"n": 5}')
    assert await setup.relay.drain() == 1
    assert await setup.stored(subject) == b'{"n": 5}'
    assert len([r for r in caplog.records if "outbox row parked" in r.getMessage()]) == 3

    # A KV write is not replayed (later writes of its key superseded it).
    with pytest.raises(NotReplayableError):
        await setup.store.replay(tenant, int(kv_letter["id"]), _no_publish)
    # Replayed while the server still refuses it, the event is parked again on the same letter.
    replayed = await setup.store.replay(tenant, int(large["id"]), _no_publish)
    assert replayed is not None and replayed["replays"] == 1
    assert await setup.relay.drain() == 0
    again = await setup.store.get(tenant, int(large["id"]))
    assert again is not None
    assert (again["attempts"], again["replayed_at"]) == (2, None)
    assert refused not in {r["id"] for r in await setup.pool.fetch("SELECT id FROM svc.outbox")}


async def _no_publish(*_: object) -> None:
    raise AssertionError("an outbox letter is replayed through the outbox, not published")


async def test_a_parked_outbox_event_replayed_after_the_fix_is_published(
    setup: Setup, tenant: str, nats_url: str
) -> None:
    js = setup.broker.connection.jetstream()
    common = CommonSettings(nats_url=nats_url)
    # The stream takes messages of at most 2,000 bytes for a while (a setting an operator fixes).
    limited = stream_config(common)
    limited.max_msg_size = 2000
    await js.update_stream(limited)
    event = DeviceDiscovered(tenant=tenant, controller_id="d" + "x" * 250, address="y" * 2000)
    try:
        async with setup.pool.acquire() as conn:
            await setup.relay.outbox.event(conn, event)
        assert await setup.relay.drain() == 0
        [letter] = (await setup.store.page(tenant))[0]
        assert "message size exceeds maximum" in letter["error"]
    finally:
        await js.update_stream(stream_config(common))
    fixed = await js.stream_info(names.STREAM)
    assert fixed.config.max_msg_size in (None, -1)

    done = await setup.store.replay(tenant, int(letter["id"]), _no_publish)
    assert done is not None and done["replayed_at"] is not None
    assert await setup.relay.drain() == 1
    assert await setup.stored(event.subject) == event.encode()
    assert (await setup.store.page(tenant))[0] == []
