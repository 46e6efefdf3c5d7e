"""Dead letters: what a service could not process, kept for an operator instead of dropped.

Two kinds of message end up in a service's ``dead_letters`` table:

* an event one of its consumers could not handle: invalid (it does not parse as its event),
  rejected by the handler (a domain rule), or failing ``dead_letter_after`` times for a reason
  that is not a dependency being away (:mod:`gaggle_runtime.failures`). It is parked, then acked,
  so the events behind it flow on;
* an outbox row the bus refused for good (larger than the server's ``max_payload``, a subject or
  key it cannot hold): parked by the relay, which goes on with the rows behind it.

An operator lists them (``GET /api/v1/dead-letters``), fixes the cause and replays one
(``POST /api/v1/dead-letters/{id}/replay``). A consumer's event is published again to its subject
with a fresh ``Nats-Msg-Id`` (JetStream would drop the original id as a duplicate within its
window) and the header ``Gaggle-Replay-For: <durable>``: that consumer handles it, every other
consumer of the subject acks it untouched. A parked outbox event goes back into the outbox. A
parked KV write is not replayable: later writes of its key have superseded it.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple, NoReturn, Protocol

import asyncpg
import orjson
from fastapi import APIRouter, Path, Query
from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, RejectMessage
from pydantic import BaseModel, Field, ValidationError

from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.auth import needs
from gaggle_runtime.db import Conn, check_identifier
from gaggle_runtime.failures import Parked, Retry, Skipped, describe, is_transient, retry_delay
from gaggle_runtime.http import ApiError, NotFoundError
from gaggle_runtime.metrics import Metrics, kind_of

log = logging.getLogger(__name__)

REPLAY_FOR = "Gaggle-Replay-For"
"""Header of a replayed event: the durable consumer it is for; the others ack it untouched."""
REPLAY_OF = "Gaggle-Replay-Of"
"""Header of a replayed event: its original ``Nats-Msg-Id``."""
_NOT_KEPT = frozenset({"nats-msg-id", REPLAY_FOR.lower(), REPLAY_OF.lower()})
OUTBOX = "outbox"
"""The ``consumer`` of outbox rows, and their ``kind`` label in ``gaggle_dead_letters``."""
TRACKED_FAILURES = 10_000
"""Events whose failures a process counts at once; the oldest are forgotten past it."""

Reason = Literal["invalid", "rejected", "failed", "refused"]


@dataclass(frozen=True)
class Letter:
    """One message to park, and why."""

    source: Literal["consumer", "outbox"]
    consumer: str
    tenant: str
    kind: str
    op: str
    subject: str
    key: str | None
    msg_id: str | None
    payload: bytes
    reason: Reason
    error: str
    attempts: int = 1
    headers: Mapping[str, str] = field(default_factory=dict)
    traceparent: str | None = None

    def row(self) -> tuple[Any, ...]:
        """The values of the insert's parameters, in order."""
        return (
            self.source,
            self.consumer,
            self.tenant,
            self.kind,
            self.op,
            self.subject,
            self.key,
            self.msg_id,
            self.payload,
            dict(self.headers),
            self.traceparent,
            self.reason,
            self.error,
            self.attempts,
        )


def tenant_of_row(op: str, target: str, key: str | None, payload: bytes) -> str:
    """The tenant an outbox row belongs to: its subject's, else its value's, else its key's."""
    if op == "event":
        parts = target.split(".")
        return parts[2] if len(parts) >= 5 else ""
    try:
        value = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("tenant"), str):
        return str(value["tenant"])
    return (key or "").split(".", 1)[0]


def outbox_letter(row: asyncpg.Record, error: BaseException) -> Letter:
    """The dead letter of an outbox row the bus refused."""
    op = str(row["op"])
    payload = bytes(row["payload"])
    target = str(row["target"])
    return Letter(
        source="outbox",
        consumer=OUTBOX,
        tenant=tenant_of_row(op, target, row["key"], payload),
        kind=kind_of(target) if op == "event" else op,
        op=op,
        subject=target,
        key=row["key"],
        msg_id=row["msg_id"],
        payload=payload,
        reason="refused",
        error=describe(error),
        traceparent=row["traceparent"],
    )


class NotReplayableError(Exception):
    """A dead letter that cannot be sent again (a KV write)."""


Publish = Callable[[str, bytes, str, dict[str, str]], Awaitable[None]]
"""``publish(subject, payload, msg_id, headers)``: to JetStream, waiting for its ack."""

_COLUMNS = (
    "id, source, consumer, tenant, kind, op, subject, key, msg_id, length(payload) AS size,"
    " reason, error, attempts, first_failed_at, last_failed_at, replays, replayed_at"
)


class Requeue(Protocol):
    """Where a parked outbox row goes back to when it is replayed (the schema's outbox)."""

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
        """Queue the row again, in the caller's transaction."""


class DeadLetterStore:
    """The ``dead_letters`` table of one schema."""

    def __init__(
        self, schema: str, pool: Callable[[], asyncpg.Pool], outbox: Requeue | None = None
    ) -> None:
        self.schema = check_identifier(schema)
        self._pool = pool
        self.outbox = outbox
        table = f"{schema}.dead_letters"
        self._park = (
            f"INSERT INTO {table} (source, consumer, tenant, kind, op, subject, key, msg_id,"  # noqa: S608
            " payload, headers, traceparent, reason, error, attempts)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            " ON CONFLICT (consumer, msg_id) DO UPDATE SET"
            " attempts = dead_letters.attempts + EXCLUDED.attempts,"
            " last_failed_at = now(), reason = EXCLUDED.reason, error = EXCLUDED.error,"
            " payload = EXCLUDED.payload, headers = EXCLUDED.headers, replayed_at = NULL"
            " RETURNING id"
        )
        self._page = f"SELECT {_COLUMNS} FROM {table} WHERE tenant = $1"  # noqa: S608
        self._one = (
            f"SELECT {_COLUMNS}, payload, headers, traceparent FROM {table}"  # noqa: S608
            " WHERE tenant = $1 AND id = $2"
        )
        self._counts = (
            f"SELECT CASE WHEN source = 'outbox' THEN '{OUTBOX}' ELSE kind END, count(*)"  # noqa: S608
            f" FROM {table} WHERE replayed_at IS NULL GROUP BY 1"
        )
        self._replayed = (
            f"UPDATE {table} SET replays = replays + 1, replayed_at = now()"  # noqa: S608
            f" WHERE id = $1 RETURNING {_COLUMNS}"
        )

    @property
    def pool(self) -> asyncpg.Pool:
        """The service's pool (once started)."""
        return self._pool()

    async def park(self, letter: Letter) -> int:
        """Keep ``letter``; its id (the same row again for an event parked before)."""
        value: int = await self.pool.fetchval(self._park, *letter.row())
        return value

    async def park_many(self, conn: Conn, letters: Sequence[Letter]) -> None:
        """Keep ``letters`` inside the caller's transaction."""
        if letters:
            await conn.executemany(self._park, [letter.row() for letter in letters])

    async def counts(self) -> dict[str, int]:
        """Dead letters waiting for an operator, by event kind (``outbox`` for outbox rows)."""
        rows = await self.pool.fetch(self._counts)
        return {str(r[0]): int(r[1]) for r in rows}

    async def page(
        self,
        tenant: str,
        *,
        state: Literal["open", "replayed", "all"] = "open",
        kind: str | None = None,
        consumer: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The tenant's dead letters, newest first, and the cursor of the next page."""
        sql = self._page
        args: list[Any] = [tenant]
        if state == "open":
            sql += " AND replayed_at IS NULL"
        elif state == "replayed":
            sql += " AND replayed_at IS NOT NULL"
        for column, value in (("kind", kind), ("consumer", consumer)):
            if value is not None:
                args.append(value)
                sql += f" AND {column} = ${len(args)}"
        if before is not None:
            args.append(before)
            sql += f" AND id < ${len(args)}"
        args.append(limit)
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"
        rows = await self.pool.fetch(sql, *args)
        items = [_item(r) for r in rows]
        return items, (items[-1]["id"] if len(items) == limit else None)

    async def get(self, tenant: str, letter_id: int) -> dict[str, Any] | None:
        """One dead letter with its payload and headers, if it is the tenant's."""
        row = await self.pool.fetchrow(self._one, tenant, letter_id)
        return None if row is None else _detail(row)

    async def replay(self, tenant: str, letter_id: int, publish: Publish) -> dict[str, Any] | None:
        """Send a dead letter again; it, marked replayed, or None if the tenant has no such one.

        Raises:
            NotReplayableError: it is a KV write.
            Exception: whatever ``publish`` raised (nothing is marked then).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(self._one + " FOR UPDATE", tenant, letter_id)
            if row is None:
                return None
            if row["op"] != "event":
                raise NotReplayableError(
                    "a KV write is not replayed: later writes of its key superseded it, and the "
                    "service writes the key again when its state next changes"
                )
            if row["source"] == OUTBOX:
                if self.outbox is None:  # pragma: no cover - a service with a schema has one
                    raise NotReplayableError("this service has no outbox")
                await self.outbox.requeue(
                    conn,
                    row["op"],
                    row["subject"],
                    row["key"],
                    row["msg_id"],
                    bytes(row["payload"]),
                    row["traceparent"],
                )
            else:
                headers = {str(k): str(v) for k, v in (row["headers"] or {}).items()}
                headers[REPLAY_FOR] = row["consumer"]
                if row["msg_id"]:
                    headers[REPLAY_OF] = row["msg_id"]
                msg_id = f"{row['msg_id']}:replay:{row['consumer']}:{row['replays'] + 1}"
                await publish(row["subject"], bytes(row["payload"]), msg_id, headers)
            updated = await conn.fetchrow(self._replayed, letter_id)
        return None if updated is None else _item(updated)


def _item(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "source": row["source"],
        "consumer": row["consumer"],
        "kind": row["kind"],
        "subject": row["subject"],
        "key": row["key"],
        "msg_id": row["msg_id"],
        "size": row["size"],
        "reason": row["reason"],
        "error": row["error"],
        "attempts": row["attempts"],
        "first_failed_at": row["first_failed_at"],
        "last_failed_at": row["last_failed_at"],
        "replays": row["replays"],
        "replayed_at": row["replayed_at"],
        "replayable": row["op"] == "event",
    }


def _detail(row: asyncpg.Record) -> dict[str, Any]:
    payload = bytes(row["payload"])
    try:
        body: Any = orjson.loads(payload)
        encoding = "json"
    except orjson.JSONDecodeError:
        body = payload.decode("utf-8", "replace")
        encoding = "text"
    return {
        **_item(row),
        "payload": body,
        "payload_encoding": encoding,
        "headers": dict(row["headers"] or {}),
    }


# --- consumers ------------------------------------------------------------------------------


def _origin(meta: Any) -> tuple[str, tuple[str, int] | None]:
    """The durable consumer of a message's ``meta``, and the key its failures are counted by."""
    consumer = str(getattr(meta, "consumer", "") or "")
    return consumer, ((consumer, int(meta.sequence.stream)) if meta is not None else None)


def _metadata(raw: Any) -> Any:
    try:
        return raw.metadata
    except Exception:  # not a JetStream message (a core NATS publish, a test broker)
        return None


class Delivery(NamedTuple):
    """What settling an event needs of its JetStream metadata."""

    consumer: str
    key: tuple[str, int] | None
    """The consumer and the event's stream sequence: what its failures are counted by."""
    delivered: int


def delivery(raw: Any) -> Delivery:
    """The consumer, failure key and delivery count of ``raw``, read from its reply subject.

    A JetStream message's reply subject is ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream
    seq>...`` (9 tokens), or with the domain and account hash after ``ACK`` (11 or more).
    nats-py's ``Msg.metadata`` reads the same tokens but also builds a timestamp and two
    objects, which cost as much as the ack itself for each event of a pull. Anything else falls
    back to it.
    """
    tokens = str(getattr(raw, "reply", None) or "").split(".")
    if tokens[:2] == ["$JS", "ACK"] and (len(tokens) == 9 or len(tokens) >= 11):
        first = 3 if len(tokens) == 9 else 5
        try:
            consumer = tokens[first]
            sequence, delivered = int(tokens[first + 2]), int(tokens[first + 1])
        except ValueError:
            pass
        else:
            return Delivery(consumer, (consumer, sequence), delivered)
    meta = _metadata(raw)
    consumer, key = _origin(meta)
    return Delivery(consumer, key, int(getattr(meta, "num_delivered", 1) or 1))


class ConsumerFailures:
    """How a service's consumers treat a failing event: retry, wait, or park it.

    * A transient failure (:func:`~gaggle_runtime.failures.is_transient`) is nacked with a
      delay that grows with the deliveries, up to ``retry_delay_max_s``, for as long as it lasts.
      Consumers have no ``max_deliver``: JetStream never drops an event for us.
    * Any other failure is retried ``dead_letter_after`` times with growing delays (counted in
      this process), then parked with the last error and acked.
    * An event that does not validate, or that its handler rejects (``RejectMessage``), is
      parked at once: it will never be different.

    Without a store (a service without a database) a permanent failure is logged at ERROR and
    the event terminated, as nothing could keep it.
    """

    def __init__(
        self,
        service: str,
        common: CommonSettings,
        store: DeadLetterStore | None,
        metrics: Metrics | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        """Where a batch's events are counted (:meth:`settle`); single events count elsewhere."""
        self.store = store
        self.first_delay_s = common.retry_delay_s
        self.max_delay_s = common.retry_delay_max_s
        self.dead_letter_after = common.dead_letter_after
        self._failures: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._consumed: dict[tuple[str, str], Any] = {}

    def middleware(self) -> type[BaseMiddleware]:
        """The FastStream middleware class bound to this policy (innermost of the broker's)."""
        return type("ServiceConsumerFailures", (ConsumerFailureMiddleware,), {"policy": self})

    def _count(self, key: tuple[str, int] | None) -> int:
        if key is None:
            return self.dead_letter_after
        count = self._failures.pop(key, 0) + 1
        self._failures[key] = count
        while len(self._failures) > TRACKED_FAILURES:
            self._failures.popitem(last=False)
        return count

    def _forget(self, key: tuple[str, int] | None) -> None:
        if key is not None:
            self._failures.pop(key, None)

    def skips(self, raw: Any) -> bool:
        """Whether ``raw`` is a replay meant for another consumer of its subject (acked as is)."""
        replay_for = (raw.headers or {}).get(REPLAY_FOR)
        if not replay_for:
            return False
        consumer = _origin(_metadata(raw))[0]
        return bool(consumer and replay_for != consumer)

    async def handle(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        """Run the handler; turn its failure into a retry, a dead letter, or a skip.

        A batch (the raw message is a list) is settled message by message by its handler
        (:meth:`settle`); if it fails, the events it did not settle are retried.
        """
        raw = msg.raw_message
        if isinstance(raw, list):
            return await self._batch(call_next, msg)
        if self.skips(raw):
            raise Skipped()
        consumer, key = _origin(_metadata(raw))
        try:
            result = await call_next(msg)
        except RejectMessage as exc:
            await self._failed(raw, consumer, key, exc)
        except HandlerException:
            raise
        except Exception as exc:
            await self._failed(raw, consumer, key, exc)
        self._forget(key)
        return result

    async def _batch(self, call_next: Callable[[Any], Awaitable[Any]], msg: Any) -> Any:
        try:
            return await call_next(msg)
        except Exception as exc:
            log.warning(
                "batch of %d events not handled; retrying those not settled error=%s",
                len(msg.raw_message),
                describe(exc, 300),
                exc_info=not is_transient(exc),
            )
            await msg.nack(delay=self._delay(1))
            return None

    async def settle(self, raw: Any, exc: BaseException | None) -> str:
        """Answer JetStream for one event of a batch by its outcome; the outcome's label.

        ``None``: handled, acked. Otherwise what :meth:`handle` does with a failure: a
        transient one nacked with a delay, a permanent one retried a few times then parked and
        acked, an invalid or rejected event parked at once, a replay for another consumer
        (:class:`Skipped`) acked.
        """
        consumer, key, delivered = delivery(raw)
        if exc is None or isinstance(exc, Skipped):
            self._forget(key)
            await raw.ack()
            outcome = "ok" if exc is None else "skipped"
        else:
            try:
                await self._failed(raw, consumer, key, exc)
            except Retry as retry:
                await raw.nak(delay=retry.extra_options.get("delay"))
                outcome = "retry"
            except Parked:
                await raw.ack()
                outcome = "dead_letter"
            except RejectMessage:
                await raw.term()
                outcome = "rejected"
        if self.metrics is not None:
            kind = kind_of(str(raw.subject))
            if delivered > 1:
                self.metrics.events_redelivered.labels(kind).inc()
            # A batch settles each of its events: the labelled counter is looked up once.
            counter = self._consumed.get((kind, outcome))
            if counter is None:
                counter = self._consumed[kind, outcome] = self.metrics.events_consumed.labels(
                    kind, outcome
                )
            counter.inc()
        return outcome

    async def _failed(
        self, raw: Any, consumer: str, key: tuple[str, int] | None, exc: BaseException
    ) -> NoReturn:
        """Turn a failure of ``raw``'s handling into a retry or a dead letter (raised)."""
        if isinstance(exc, RejectMessage):
            await self._park(raw, consumer, key, "rejected", exc.__cause__ or exc, 1)
        if isinstance(exc, (ValidationError, json.JSONDecodeError, UnicodeDecodeError)):
            await self._park(raw, consumer, key, "invalid", exc, 1)
        meta = _metadata(raw)
        delivered = int(getattr(meta, "num_delivered", 1) or 1)
        if is_transient(exc):
            level = logging.WARNING if delivered & (delivered - 1) == 0 else logging.DEBUG
            log.log(
                level,
                "event not handled, a dependency is away; retrying consumer=%s subject=%s"
                " delivery=%d error=%s",
                consumer,
                raw.subject,
                delivered,
                describe(exc, 300),
            )
            raise Retry(delay=self._delay(delivered)) from exc
        failures = self._count(key)
        if failures < self.dead_letter_after:
            log.warning(
                "event failed; retrying consumer=%s subject=%s failure=%d of %d error=%s",
                consumer,
                raw.subject,
                failures,
                self.dead_letter_after,
                describe(exc, 300),
                exc_info=(type(exc), exc, exc.__traceback__) if failures == 1 else False,
            )
            raise Retry(delay=self._delay(failures)) from exc
        await self._park(raw, consumer, key, "failed", exc, failures)

    def _delay(self, attempt: int) -> float:
        return retry_delay(attempt, self.first_delay_s, self.max_delay_s)

    async def _park(
        self,
        raw: Any,
        consumer: str,
        key: tuple[str, int] | None,
        reason: Reason,
        exc: BaseException,
        attempts: int,
    ) -> NoReturn:
        """Keep the event as a dead letter and ack it; if that cannot be kept now, retry later.

        Raises:
            Parked: kept (the event is acked).
            Retry: the store is away (the event comes back).
            RejectMessage: nothing can keep it (no database): terminated, logged at ERROR.
        """
        headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
        subject = str(raw.subject)
        msg_id = headers.get(REPLAY_OF) or headers.get("Nats-Msg-Id")
        meta = _metadata(raw)
        if not msg_id and meta is not None:
            msg_id = f"seq:{meta.sequence.stream}"
        letter = Letter(
            source="consumer",
            consumer=consumer or "unknown",
            tenant=names.tenant_of_subject(subject) if subject.count(".") >= 4 else "",
            kind=kind_of(subject),
            op="event",
            subject=subject,
            key=None,
            msg_id=msg_id,
            payload=bytes(raw.data or b""),
            reason=reason,
            error=describe(exc),
            attempts=attempts,
            headers={k: v for k, v in headers.items() if k.lower() not in _NOT_KEPT},
            traceparent=headers.get("traceparent"),
        )
        if self.store is None:
            log.error(
                "event dropped: no dead-letter store consumer=%s subject=%s reason=%s error=%s",
                consumer,
                subject,
                reason,
                letter.error,
            )
            raise RejectMessage() from exc
        try:
            letter_id = await self.store.park(letter)
        except Exception as store_exc:
            log.warning(
                "dead letter not stored yet; retrying consumer=%s subject=%s error=%s",
                consumer,
                subject,
                describe(store_exc, 300),
            )
            raise Retry(delay=self._delay(attempts)) from store_exc
        self._forget(key)
        log.error(
            "event parked as a dead letter id=%s consumer=%s subject=%s msg_id=%s reason=%s"
            " attempts=%d error=%s",
            letter_id,
            letter.consumer,
            subject,
            msg_id,
            reason,
            attempts,
            letter.error,
        )
        raise Parked() from exc


class ConsumerFailureMiddleware(BaseMiddleware):
    """FastStream middleware applying a :class:`ConsumerFailures` (bound with ``middleware()``)."""

    policy: ConsumerFailures

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        """The handler, with its failure turned into a retry, a dead letter or a skip."""
        return await self.policy.handle(call_next, msg)


# --- operator API ---------------------------------------------------------------------------


class DeadLetter(BaseModel):
    """A message this service parked instead of dropping it."""

    id: str = Field(description="Id within this service")
    source: Literal["consumer", "outbox"] = Field(
        description="`consumer`: an event one of its consumers could not process; "
        "`outbox`: something it wrote that the bus refused"
    )
    consumer: str = Field(description="The durable consumer, or `outbox`")
    kind: str = Field(description="Event kind (`entity.event`), or `kv_put`/`kv_delete`")
    subject: str = Field(description="The event's subject, or the KV bucket")
    key: str | None = Field(description="The KV key, or the ordering key of an outbox event")
    msg_id: str | None = Field(description="The event's `Nats-Msg-Id`")
    size: int = Field(description="Bytes of the payload")
    reason: Literal["invalid", "rejected", "failed", "refused"] = Field(
        description="`invalid`: not a valid event; `rejected`: its handler refused it; "
        "`failed`: its handler failed every try; `refused`: the bus would not take it"
    )
    error: str = Field(description="The last error")
    attempts: int = Field(description="Tries that failed")
    first_failed_at: datetime
    last_failed_at: datetime
    replays: int = Field(description="Times an operator replayed it")
    replayed_at: datetime | None = Field(description="Last replay; null: waiting for an operator")
    replayable: bool = Field(description="Events are; KV writes are not (later writes won)")


class DeadLetterDetail(DeadLetter):
    """A dead letter with what it carried."""

    payload: Any = Field(description="The payload: JSON as JSON, anything else as text")
    payload_encoding: Literal["json", "text"]
    headers: dict[str, str] = Field(description="Its message headers (without `Nats-Msg-Id`)")


class DeadLetterPage(BaseModel):
    """A page of dead letters, newest first."""

    items: list[DeadLetter]
    next: str | None = Field(description="Pass as `cursor` for the next page; null at the end")


LetterIdParam = Annotated[int, Path(ge=1, le=2**63 - 1, description="The dead letter's id")]
Admin = Annotated[str, needs(Permission.ADMIN)]


def make_dead_letter_routes(store: DeadLetterStore, publish: Publish) -> APIRouter:
    """``/api/v1/dead-letters``: list, show and replay this service's dead letters (admin)."""
    api = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])

    @api.get("", response_model=DeadLetterPage, summary="This service's dead letters")
    async def list_dead_letters(
        tenant: Admin,
        state: Annotated[
            Literal["open", "replayed", "all"],
            Query(description="`open`: not replayed since they were parked"),
        ] = "open",
        kind: Annotated[str | None, Query(max_length=128, description="Event kind")] = None,
        consumer: Annotated[str | None, Query(max_length=128, description="Durable")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[
            str | None, Query(pattern=r"^[0-9]{1,18}$", description="From `next`")
        ] = None,
    ) -> dict[str, Any]:
        """Events it could not process and messages the bus refused, newest first.

        Nothing is dropped: what one of its consumers could not process after its retries, and
        what the bus refused from its outbox, is kept here with the last error.
        """
        items, next_cursor = await store.page(
            tenant,
            state=state,
            kind=kind,
            consumer=consumer,
            before=int(cursor) if cursor else None,
            limit=limit,
        )
        return {"items": items, "next": next_cursor}

    @api.get("/{letter_id}", response_model=DeadLetterDetail, summary="One dead letter")
    async def get_dead_letter(letter_id: LetterIdParam, tenant: Admin) -> dict[str, Any]:
        """The dead letter with its payload and headers."""
        found = await store.get(tenant, letter_id)
        if found is None:
            raise NotFoundError("dead letter", str(letter_id))
        return found

    @api.post(
        "/{letter_id}/replay",
        response_model=DeadLetter,
        summary="Send a dead letter again, after fixing its cause",
    )
    async def replay_dead_letter(letter_id: LetterIdParam, tenant: Admin) -> dict[str, Any]:
        """Publish the event again for the consumer that parked it (or queue it in the outbox).

        Only that consumer handles the replay; other consumers of the subject ack it untouched.
        If it fails again it is parked again (the same dead letter, open again, attempts added).
        Handlers are idempotent, but a replayed event is older than what came after it: a
        handler that orders by time (inventory, action status) keeps the newer state.
        """
        try:
            done = await store.replay(tenant, letter_id, publish)
        except NotReplayableError as exc:
            raise ApiError(409, "not_replayable", str(exc)) from exc
        except ApiError:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise ApiError(
                503, "unavailable", f"the bus did not take the event; try again ({describe(exc)})"
            ) from exc
        if done is None:
            raise NotFoundError("dead letter", str(letter_id))
        return done

    return api
