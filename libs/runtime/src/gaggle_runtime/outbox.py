"""Transactional outbox: state changes and the events/KV writes describing them commit together.

A service writes outbox rows in the same transaction as its own tables (``Outbox.event``,
``Outbox.kv_put``, ``Outbox.kv_delete``); the :class:`OutboxRelay` publishes them in order and
deletes them. A crash between commit and publish only delays the publish: the rows are still
there at the next start. Events carry ``Nats-Msg-Id`` so a publish repeated after a crash is
dropped by JetStream. One relay per schema is active at a time (an advisory lock elects it), which
keeps KV writes for the same key in commit order. When tracing is on, each row keeps the W3C
``traceparent`` of the transaction that wrote it, and the relay sends it under that trace.

Without tracing, a :class:`BatchSink` (``NatsSink`` in a service) gets a batch's rows pipelined:
the next row of every key at once, sent back to back with all their acks awaited together, then
the next wave. A key's rows never travel together, so a failed one is never overtaken by its
successor, and the rows are deleted only once acknowledged.

The relay cannot jam: a row the bus refuses for good (too large, a subject or key it cannot hold),
or that fails ``park_after`` times for another reason, is parked in ``dead_letters`` (see
:mod:`gaggle_runtime.deadletters`) in the transaction that deletes it, and the rows behind it go
on. Only a transient failure (NATS away) keeps a row, and the rows of its key after it, waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import asyncpg
from pydantic import BaseModel

from gaggle_contracts.events import Event, bounded_json
from gaggle_runtime.db import Conn, check_identifier
from gaggle_runtime.deadletters import DeadLetterStore, outbox_letter
from gaggle_runtime.failures import describe, is_permanent, is_transient
from gaggle_runtime.telemetry import Tracing, continued, current_traceparent

log = logging.getLogger(__name__)


RETRY_FIRST_S = 0.2
RETRY_MAX_S = 0.5
"""How soon the relay tries again after an interruption: the first time, and at most (a refused
connection to the database costs little, and a restarted one is used again within this)."""
BUS_RETRY_S = 0.25
LOCK_RETRY_S = 0.5
"""How often a relay that is not the leader asks for the lead again."""
"""How often the relay tries the bus again while NATS is away (the database still there)."""

OutboxRow = tuple[str, str, str | None, str | None, bytes, str | None]
Observer = Callable[[str, bytes], None]
"""Told ``(subject, payload)`` of every event the relay published."""


def _event_row(event: Event, traceparent: str | None) -> OutboxRow:
    # An event's key is its device, if it has one: the relay keeps a device's events in order.
    key = getattr(event, "controller_id", None)
    payload = event.encode()
    return ("event", event.subject, key, event.message_id, payload, traceparent)


class Outbox:
    """Writes outbox rows of one schema inside the caller's transaction."""

    def __init__(self, schema: str) -> None:
        self.schema = check_identifier(schema)
        self.channel = f"{schema}_outbox"
        # Each insert also wakes the relay (pg_notify is delivered at commit), in one round trip.
        notify = f") SELECT pg_notify('{self.channel}', '')"
        # ``schema`` is a checked identifier, the channel is derived from it.
        insert = (
            f"WITH queued AS (INSERT INTO {schema}.outbox"
            " (op, target, key, msg_id, payload, traceparent)"
        )
        values = " VALUES ($1, $2, $3, $4, $5, $6) RETURNING 1"
        self._insert = insert + values + notify
        self._insert_many = (
            insert  # noqa: S608
            + " SELECT op, target, key, msg_id, payload, $6::text"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[])"
            " WITH ORDINALITY AS r(op, target, key, msg_id, payload, n) ORDER BY n RETURNING 1"
            + notify
        )

    async def event(self, conn: Conn, event: Event) -> None:
        """Queue ``event`` for publishing once the transaction commits."""
        await conn.execute(self._insert, *_event_row(event, current_traceparent()))

    async def many(
        self,
        conn: Conn,
        events: Sequence[Event] = (),
        kv_puts: Sequence[tuple[str, str, BaseModel]] = (),
        kv_deletes: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Queue many events, KV puts ``(bucket, key, value)`` and deletes, in one statement."""
        traceparent = current_traceparent()
        rows = [_event_row(e, None)[:5] for e in events]
        rows += [("kv_put", b, k, None, _kv_value(b, v)) for b, k, v in kv_puts]
        rows += [("kv_delete", b, k, None, b"") for b, k in kv_deletes]
        if not rows:
            return
        ops, targets, keys, msg_ids, payloads = (list(col) for col in zip(*rows, strict=True))
        await conn.execute(self._insert_many, ops, targets, keys, msg_ids, payloads, traceparent)

    async def kv_put(self, conn: Conn, bucket: str, key: str, value: BaseModel) -> None:
        """Queue a KV put for once the transaction commits."""
        payload = _kv_value(bucket, value)
        await conn.execute(
            self._insert, "kv_put", bucket, key, None, payload, current_traceparent()
        )

    async def kv_delete(self, conn: Conn, bucket: str, key: str) -> None:
        """Queue a KV delete for once the transaction commits."""
        await conn.execute(self._insert, "kv_delete", bucket, key, None, b"", current_traceparent())

    async def requeue(
        self,
        conn: Conn,
        op: str,
        target: str,
        key: str | None,
        msg_id: str | None,
        payload: bytes,
        traceparent: str | None,
    ) -> None:
        """Queue a row again as it was written (a replayed dead letter)."""
        await conn.execute(self._insert, op, target, key, msg_id, payload, traceparent)


def _kv_value(bucket: str, value: BaseModel) -> bytes:
    return bounded_json(value, f"{bucket} KV value")


class Sink(Protocol):
    """Where the relay sends rows one at a time: NATS in production, a list in tests."""

    async def publish(self, subject: str, payload: bytes, msg_id: str | None) -> None:
        """Publish to JetStream and wait for its ack."""

    async def kv_put(self, bucket: str, key: str, payload: bytes) -> None:
        """Put a KV value."""

    async def kv_delete(self, bucket: str, key: str) -> None:
        """Delete a KV key."""


class Outgoing(NamedTuple):
    """One outbox row as a sink sends it."""

    op: str
    target: str
    key: str | None
    msg_id: str | None
    payload: bytes


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that sends many rows at once: all of them, then all the acks awaited together."""

    async def send_many(self, rows: Sequence[Outgoing]) -> Sequence[BaseException | None]:
        """Send ``rows`` in order; per row None (stored) or the error that kept it out."""


def _lanes(rows: Sequence[asyncpg.Record]) -> list[list[asyncpg.Record]]:
    """The rows by ordering key, each key's rows in id order: a KV key, or a device's events."""
    lanes: dict[tuple[str, str | None], list[asyncpg.Record]] = {}
    for row in rows:
        # Columns by position (id, op, target, key, ...): a batch has thousands of rows.
        lane = ("", row[3]) if row[1] == "event" else (row[2], row[3])
        lane_rows = lanes.get(lane)
        if lane_rows is None:
            lanes[lane] = [row]
        else:
            lane_rows.append(row)
    return list(lanes.values())


class OutboxRelay:
    """Publishes outbox rows of one schema, in id order, while it holds the schema's relay lock."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        outbox: Outbox,
        sink: Sink,
        *,
        batch: int = 500,
        idle_poll_s: float = 1.0,
        tracing: Tracing | None = None,
        observers: Sequence[Observer] = (),
        dead_letters: DeadLetterStore | None = None,
        park_after: int = 5,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.outbox = outbox
        self.sink = sink
        self.tracing = tracing
        # Traced rows go one by one, each in its span; otherwise a batch sink sends them at once.
        self._batch_sink = sink if tracing is None and isinstance(sink, BatchSink) else None
        self.observers = list(observers)
        self.batch = batch
        self.idle_poll_s = idle_poll_s
        self._wake = asyncio.Event()
        self.published = 0
        self.parked = 0
        self.dead_letters = dead_letters or DeadLetterStore(outbox.schema, lambda: pool, outbox)
        self.park_after = park_after
        self._failures: dict[int, int] = {}
        self._retry_s = RETRY_FIRST_S
        self._bus_away = False
        schema = outbox.schema
        self._select = (
            f"SELECT id, op, target, key, msg_id, payload, traceparent FROM {schema}.outbox"  # noqa: S608
            " ORDER BY id LIMIT $1"
        )
        self._delete = f"DELETE FROM {schema}.outbox WHERE id = ANY($1::bigint[])"  # noqa: S608
        self._lock_key = f"gaggle-outbox:{schema}"

    async def run(self) -> None:
        """Relay until cancelled; retries after errors (NATS or database away).

        The first retry comes after ``RETRY_FIRST_S``, doubling to ``RETRY_MAX_S`` while the
        failures go on: a restarted database is used again within half a second.
        """
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The first failure with its traceback; the retries of the same outage quietly.
                first = self._retry_s == RETRY_FIRST_S
                log.log(
                    logging.WARNING if first else logging.DEBUG,
                    "outbox relay interrupted; retrying schema=%s in=%.1fs",
                    self.outbox.schema,
                    self._retry_s,
                    exc_info=first,
                )
                await asyncio.sleep(self._retry_s)
                self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)

    async def _lead(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        # A lost connection (the database restarted) wakes the loop below at once: without its
        # LISTEN, new rows would otherwise wait for the idle poll.
        conn.add_termination_listener(lambda _: self._wake.set())
        try:
            # Only the lock holder relays, which keeps KV writes per key in commit order.
            # A crashed leader's session can hold the lock for a moment after it died.
            lock = "SELECT pg_try_advisory_lock(hashtext($1))"
            while not await conn.fetchval(lock, self._lock_key):  # noqa: ASYNC110
                await asyncio.sleep(LOCK_RETRY_S)
            await conn.add_listener(self.outbox.channel, self._on_notify)
            log.info("outbox relay leading schema=%s", self.outbox.schema)
            self._retry_s = RETRY_FIRST_S
            while True:
                if conn.is_closed():
                    raise ConnectionError("the outbox relay's database connection was lost")
                self._wake.clear()
                if not await self._drain_or_wait(conn):
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_poll_s)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _drain_or_wait(self, conn: asyncpg.Connection) -> bool:
        """Drain; False after a transient failure with the database still there (NATS away).

        The bus coming back is not announced, so the relay tries again every ``BUS_RETRY_S``
        on the same connection and lock, and the rows written meanwhile follow within that.
        Anything else (the database gone, an unexpected error) goes up to :meth:`run`.
        """
        try:
            await self.drain()
        except Exception as exc:
            if conn.is_closed() or not is_transient(exc):
                raise
            if not self._bus_away:
                log.warning(
                    "outbox relay waiting for the bus schema=%s error=%s",
                    self.outbox.schema,
                    describe(exc, 300),
                )
            self._bus_away = True
            await asyncio.sleep(BUS_RETRY_S)
            return False
        if self._bus_away:
            log.info("outbox relay resumed schema=%s", self.outbox.schema)
            self._bus_away = False
        return True

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def drain(self) -> int:
        """Publish everything pending now; return how many rows were sent.

        A batch goes out in waves: each wave sends the next row of every ordering key (the same
        KV key, or events of the same device) at once (pipelined, all acks awaited together,
        when the sink can and tracing is off), so a key's rows go one after the other in id
        order. When a send fails transiently, the rows of its key after it are not sent and wait
        for the next attempt, so a retry can never overtake a newer write of the same key. A row
        refused for good is parked and the rows behind it go on. The rows sent are deleted (and
        the refused ones parked) once the batch's waves are over, also after a failure.
        """
        sent = 0
        while True:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(self._select, self.batch)
                if not rows:
                    return sent
                done: list[int] = []
                parked: list[tuple[asyncpg.Record, BaseException]] = []
                try:
                    failure = await self._send_waves(_lanes(rows), done, parked)
                finally:
                    if done or parked:
                        await self._finish(conn, done, parked)
                        sent += len(done)
                        self.published += len(done)
                if failure is not None:
                    raise failure

    async def _send_waves(
        self,
        lanes: list[list[asyncpg.Record]],
        done: list[int],
        parked: list[tuple[asyncpg.Record, BaseException]],
    ) -> BaseException | None:
        """Send the lanes' rows wave by wave; the first transient failure, if any."""
        failure: BaseException | None = None
        position = 0
        while lanes:
            wave = [lane[position] for lane in lanes]
            results = await self._send_wave(wave)
            going: list[list[asyncpg.Record]] = []
            for lane, row, result in zip(lanes, wave, results, strict=True):
                if result is None:
                    self._failures.pop(row["id"], None)
                    done.append(row["id"])
                elif not isinstance(result, Exception):
                    raise result  # cancelled, or the process is stopping
                elif self._refused(row["id"], result):
                    parked.append((row, result))
                else:
                    failure = failure or result
                    continue  # the rest of this key waits for the next attempt
                if len(lane) > position + 1:
                    going.append(lane)
            lanes = going
            position += 1
        return failure

    async def _send_wave(self, rows: list[asyncpg.Record]) -> Sequence[BaseException | None]:
        """Send one row of each of several keys at once; per row None or its failure."""
        if self._batch_sink is None:
            return await asyncio.gather(*(self._send(row) for row in rows), return_exceptions=True)
        # ``_select``'s columns by position: id, op, target, key, msg_id, payload (bytes).
        outgoing = [Outgoing(r[1], r[2], r[3], r[4], r[5]) for r in rows]
        results = await self._batch_sink.send_many(outgoing)
        if self.observers:
            for row, result in zip(outgoing, results, strict=True):
                if result is None and row.op == "event":
                    for observe in self.observers:
                        observe(row.target, row.payload)
        return results

    async def _finish(
        self, conn: Conn, done: list[int], parked: list[tuple[asyncpg.Record, BaseException]]
    ) -> None:
        """Delete what was sent, and park what was refused, in one transaction."""
        if not parked:
            await conn.execute(self._delete, done)
            return
        async with conn.transaction():
            await self.dead_letters.park_many(conn, [outbox_letter(r, e) for r, e in parked])
            await conn.execute(self._delete, [*done, *(r["id"] for r, _ in parked)])
        for row, exc in parked:
            self._failures.pop(row["id"], None)
            self.parked += 1
            log.error(
                "outbox row parked as a dead letter, the rows behind it go on schema=%s row=%s"
                " op=%s target=%s key=%s msg_id=%s size=%d error=%s",
                self.outbox.schema,
                row["id"],
                row["op"],
                row["target"],
                row["key"],
                row["msg_id"],
                len(row["payload"]),
                describe(exc),
            )

    def _refused(self, row_id: int, exc: BaseException) -> bool:
        """Whether a failed row is to be parked: refused for good, or failing too often."""
        if is_permanent(exc):
            return True
        if is_transient(exc):
            return False
        failures = self._failures.get(row_id, 0) + 1
        self._failures[row_id] = failures
        return failures >= self.park_after

    async def _send(self, row: asyncpg.Record) -> None:
        op = row["op"]
        with continued(row["traceparent"]):
            if op == "event":
                payload = bytes(row["payload"])
                await self.sink.publish(row["target"], payload, row["msg_id"])
                for observe in self.observers:
                    observe(row["target"], payload)
            elif op in ("kv_put", "kv_delete"):
                if self.tracing is None:
                    await self._send_kv(row)
                else:
                    with self.tracing.kv_span(op.removeprefix("kv_"), row["target"], row["key"]):
                        await self._send_kv(row)
            else:  # pragma: no cover - guarded by a CHECK constraint
                raise ValueError(f"unknown outbox op {op!r}")

    async def _send_kv(self, row: asyncpg.Record) -> None:
        if row["op"] == "kv_put":
            await self.sink.kv_put(row["target"], row["key"], bytes(row["payload"]))
        else:
            await self.sink.kv_delete(row["target"], row["key"])


OnStart = Callable[[], Awaitable[None]]
