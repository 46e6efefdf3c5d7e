"""NATS side of a service: the broker, publishing events with their message ids, KV access."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import nats.errors
import nats.js.errors
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PubAck, PullSub
from nats.js.api import Header
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from gaggle_contracts import names
from gaggle_contracts.events import Event
from gaggle_contracts.settings import CommonSettings, nats_servers
from gaggle_runtime.acks import AckedPublisher, Message
from gaggle_runtime.failures import PermanentPublishError, describe, is_transient
from gaggle_runtime.outbox import Outgoing
from gaggle_runtime.telemetry import current_traceparent

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

JSON_HEADERS = {"content-type": "application/json"}
_SUBJECT_RE = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
_KV_KEY_RE = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
"""The keys nats-py's ``KeyValue`` accepts (it checks the same before a put or delete)."""
UNLIMITED = -1
GATHER_S = 0.05
"""Longest a whole-pull consumer waits to fill its batch: what a lone event waits at most."""
HEADER_RESERVE = 512
"""Bytes kept free for headers added after the check (the tracing middleware's)."""


def public_url(nats_url: str) -> str:
    """One server's URL without user and password, for documents that name the server."""
    parts = urlsplit(nats_url)
    if not parts.hostname:
        return nats_url
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def make_broker(nats_url: str, service: str, *, middlewares: Sequence[Any] = ()) -> NatsBroker:
    """A FastStream NATS broker whose per-message log lines are at DEBUG.

    ``middlewares`` (tracing, metrics, what to do with failures) wrap every message, outermost
    first. A lost connection is retried for ever, every half second (plus the client's jitter):
    a restarted server is used again within a second, and a refused connect costs nothing.
    ``nats_url`` may name several servers of one cluster, separated by commas: the client
    connects to one of them and moves to another when it goes away (and learns the cluster's
    other members from the server it is connected to).
    """
    servers = nats_servers(nats_url)
    return NatsBroker(
        servers,
        middlewares=list(middlewares),
        name=f"gaggle-{service}",
        logger=logging.getLogger(f"faststream.gaggle.{service}"),
        log_level=logging.DEBUG,
        graceful_timeout=10.0,
        specification_url=[public_url(url) for url in servers],
        max_reconnect_attempts=-1,
        # nats-py takes float seconds; FastStream annotates the option as int.
        reconnect_time_wait=0.5,  # type: ignore[arg-type]
    )


async def publish_event(broker: NatsBroker, event: Event, *, timeout: float = 5.0) -> PubAck:
    """Publish ``event`` to the OTA stream and wait for JetStream's ack.

    ``Nats-Msg-Id`` is the event's message id, so a retried publish is stored once.

    Raises:
        MessageTooLargeError: the event is larger than the bus accepts.
        Exception: whatever the client raises when NATS does not ack in ``timeout`` seconds.
    """
    return await publish_raw(
        broker, event.subject, event.encode(), event.message_id, timeout=timeout
    )


def check_publishable(
    subject: str, payload: bytes, headers: Mapping[str, str], max_payload: int
) -> None:
    """Refuse what the server would refuse: a malformed subject, a message over ``max_payload``.

    The server counts headers towards ``max_payload`` and closes the connection of a client that
    sends more, which would look like NATS being away; the client library checks the payload
    alone.

    Raises:
        PermanentPublishError: the message can never be published.
    """
    if not _SUBJECT_RE.match(subject):
        raise PermanentPublishError(f"subject {subject!r} is not a valid NATS subject")
    size = len(payload) + header_bytes(headers.items())
    if size + HEADER_RESERVE > max_payload:
        raise PermanentPublishError(
            f"message of {size} bytes with its headers is over the server's max_payload of "
            f"{max_payload} bytes"
        )


def header_bytes(headers: Iterable[tuple[str, str]]) -> int:
    """Bytes the headers take on the wire (``NATS/1.0`` line, one line each, blank line)."""
    return len("NATS/1.0\r\n\r\n") + sum(len(k) + len(v) + 4 for k, v in headers)


async def publish_raw(
    broker: NatsBroker,
    subject: str,
    payload: bytes,
    msg_id: str | None,
    *,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> PubAck:
    """Publish pre-serialised JSON to the OTA stream and wait for the ack.

    Raises:
        PermanentPublishError: the subject or the size is one the server refuses.
        Exception: whatever the client raises when NATS does not ack in ``timeout`` seconds.
    """
    sent = {**JSON_HEADERS, **(headers or {})}
    if msg_id:
        sent["Nats-Msg-Id"] = msg_id
    check_publishable(subject, payload, sent, broker.connection.max_payload)
    ack = await broker.publish(payload, subject, headers=sent, stream=names.STREAM, timeout=timeout)
    if ack is None:  # pragma: no cover - a stream publish always returns an ack
        raise RuntimeError("JetStream returned no ack")
    return ack


class NatsSink:
    """The outbox relay's way out: JetStream publishes and KV writes on the broker's connection.

    With ``published`` (told each published subject, for the service's counter) and no tracing,
    events go straight to nats-py, past the broker's middlewares: the relay publishes every event
    a service emits, and the counter is all those middlewares would do then.
    """

    def __init__(self, broker: NatsBroker, published: Callable[[str], None] | None = None) -> None:
        self.broker = broker
        self.published = published
        self._buckets: dict[str, KeyValue] = {}
        self._lock = asyncio.Lock()
        self._publisher: AckedPublisher | None = None

    async def bucket(self, name: str) -> KeyValue:
        """The KV handle of ``name``, looked up once."""
        kv = self._buckets.get(name)
        if kv is None:
            async with self._lock:
                kv = self._buckets.get(name)
                if kv is None:
                    kv = await self.broker.connection.jetstream().key_value(name)
                    self._buckets[name] = kv
        return kv

    async def publish(self, subject: str, payload: bytes, msg_id: str | None) -> None:
        """Publish and wait for the ack."""
        if self.published is None:
            await publish_raw(self.broker, subject, payload, msg_id)
            return
        headers = {**JSON_HEADERS, "Nats-Msg-Id": msg_id} if msg_id else dict(JSON_HEADERS)
        connection = self.broker.connection
        check_publishable(subject, payload, headers, connection.max_payload)
        await connection.jetstream().publish(
            subject, payload, timeout=5.0, stream=names.STREAM, headers=headers
        )
        self.published(subject)

    async def kv_put(self, bucket: str, key: str, payload: bytes) -> None:
        """Put one value; inside a trace, with its ``traceparent`` as a message header."""
        kv = await self.bucket(bucket)
        traceparent = current_traceparent()
        headers = {"traceparent": traceparent} if traceparent else {}
        check_publishable(f"{kv._pre}{key}", payload, headers, self.broker.connection.max_payload)
        if traceparent is None:
            await kv.put(key, payload)
            return
        # KeyValue.put takes no headers; a put is a publish to the bucket's subject of the key.
        await self.broker.connection.jetstream().publish(
            f"{kv._pre}{key}", payload, headers={"traceparent": traceparent}
        )

    async def kv_delete(self, bucket: str, key: str) -> None:
        """Delete one key."""
        await (await self.bucket(bucket)).delete(key)

    async def send_many(self, rows: Sequence[Outgoing]) -> list[BaseException | None]:
        """Send all ``rows`` back to back, then wait for their acks together (no tracing).

        Per row None (stored) or what kept it out: a refusal found before sending
        (:class:`PermanentPublishError`, an invalid key) or the server's answer or silence.
        Events carry ``Nats-Msg-Id``, so JetStream drops one that a retry sends again.
        """
        connection = self.broker.connection
        if self._publisher is None or self._publisher.nc is not connection:
            self._publisher = AckedPublisher(connection)
        results: list[BaseException | None] = [None] * len(rows)
        # Each bucket's subject prefix is looked up once (and the lookup's failure is the
        # failure of each of its rows); the messages are then built without awaiting.
        prefixes: dict[str, str | BaseException] = {}
        for bucket in {row.target for row in rows if row.op != "event"}:
            try:
                prefixes[bucket] = (await self.bucket(bucket))._pre
            except Exception as exc:
                prefixes[bucket] = exc
        messages: list[Message] = []
        sent: list[int] = []
        max_payload = connection.max_payload
        for i, row in enumerate(rows):
            try:
                message = _message(row, prefixes)
                check_publishable(
                    message.subject, message.payload, message.headers or {}, max_payload
                )
            except Exception as exc:
                results[i] = exc
                continue
            messages.append(message)
            sent.append(i)
        for i, outcome in zip(sent, await self._publisher.publish_many(messages), strict=True):
            results[i] = outcome
            if outcome is None and self.published is not None and rows[i].op == "event":
                self.published(rows[i].target)
        return results


def _message(row: Outgoing, prefixes: Mapping[str, str | BaseException]) -> Message:
    """What JetStream is sent for ``row``: an event, or a KV put or delete of its key.

    ``prefixes`` holds each bucket's subject prefix, or the error that looking it up raised.
    """
    if row.op == "event":
        headers = {**JSON_HEADERS, Header.EXPECTED_STREAM: names.STREAM}
        if row.msg_id:
            headers["Nats-Msg-Id"] = row.msg_id
        return Message(row.target, row.payload, headers)
    key = row.key or ""
    if not _KV_KEY_RE.match(key):
        raise nats.js.errors.InvalidKeyError(key)
    prefix = prefixes[row.target]
    if isinstance(prefix, BaseException):
        raise prefix
    if row.op == "kv_put":
        return Message(f"{prefix}{key}", row.payload, None)
    return Message(f"{prefix}{key}", b"", {"KV-Operation": "DEL"})


def consumer_options(
    service: str,
    kind: str,
    common: CommonSettings,
    *,
    batch: int | None = None,
    whole: type[BaseModel] | None = None,
) -> dict[str, Any]:
    """Subscriber options for a durable, explicitly acked pull consumer of ``kind`` events.

    ``batch`` overrides how many events one pull fetches (they are handled concurrently).
    ``whole`` (the event model): the handler gets the pull at once, each payload decoded as
    ``whole`` or left as bytes when it is not one (:func:`decode_each`), and settles (acks) each
    event itself (:func:`gaggle_runtime.batches.consume_batch`); a pull then gathers events for
    :data:`GATHER_S` at most, so a lone event is not kept waiting.
    Replicas of a service share the durable, so each event is handled by one of them. The ack
    comes after the handler (and so after its transaction) returns. A failure is nacked with a
    delay, and JetStream never gives up on an event (no ``max_deliver``): the service's
    :class:`~gaggle_runtime.deadletters.ConsumerFailures` retries a dependency that is away for
    as long as it takes, and parks an event that cannot be processed as a dead letter.
    """
    return {
        "subject": names.subscription(kind),
        "stream": JStream(names.STREAM, declare=False),
        "durable": names.durable(service, kind),
        "pull_sub": PullSub(
            batch_size=batch or common.pull_batch,
            timeout=1.0 if whole is None else GATHER_S,
            batch=whole is not None,
        ),
        "ack_policy": AckPolicy.NACK_ON_ERROR if whole is None else AckPolicy.MANUAL,
        "config": ConsumerConfig(max_deliver=UNLIMITED, ack_wait=common.ack_wait_s),
        **({} if whole is None else {"decoder": decode_each(whole)}),
    }


def decode_each(model: type[M]) -> Callable[[Any], list[M | bytes]]:
    """A batch decoder: each payload as ``model``, or its bytes when it is not one.

    Each event so fails on its own (:func:`gaggle_runtime.batches.consume_batch` parks it) and
    the others of its pull are decoded once, here.
    """

    def decode(msg: Any) -> list[M | bytes]:
        decoded: list[M | bytes] = []
        for payload in msg.body:
            try:
                decoded.append(model.model_validate_json(payload))
            except ValueError:  # pydantic's ValidationError, a payload that is not UTF-8
                decoded.append(bytes(payload))
        return decoded

    return decode


START_PATIENCE_S = 60.0
"""How long a start waits for JetStream to answer the subscriptions' consumer look-ups."""


async def patiently(
    call: Callable[[], Awaitable[T]], what: str, *, patience_s: float = START_PATIENCE_S
) -> T:
    """``call()``, again every second while it fails because JetStream does not answer.

    In a cluster electing a consumer's or a stream's leader (a node just died, replicas were
    just raised) JetStream may not answer a look-up in time; a start waits for it rather than
    fail.

    Raises:
        Exception: a failure that is not JetStream (or NATS) being away, or one still there
            after ``patience_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc) or loop.time() >= deadline:
                raise
            log.warning("%s not done yet; retrying error=%s", what, describe(exc, 300))
            await asyncio.sleep(1.0)


async def start_broker(broker: NatsBroker, *, patience_s: float = START_PATIENCE_S) -> None:
    """Start the broker's subscribers, patiently (:func:`patiently`).

    The subscribers that started keep their subscription when it is tried again (FastStream
    subscribes each only once); the others subscribe then.
    """
    await patiently(broker.start, "subscriptions", patience_s=patience_s)


def guard_fetches(broker: NatsBroker) -> int:
    """Make every started pull subscription's empty fetch end the way FastStream expects.

    nats-py ends some empty fetches with a bare ``asyncio.TimeoutError``; FastStream's pull loop
    catches only ``nats.errors.TimeoutError``, so its task dies and restarts, and the events a
    batch subscriber had already fetched in that round wait for ``ack_wait`` to come again.
    Returns how many subscriptions were guarded.
    """
    guarded = 0
    for subscriber in broker.subscribers:
        subscription = getattr(subscriber, "subscription", None)
        fetch = getattr(subscription, "fetch", None)
        if fetch is None or getattr(fetch, "guarded", False):
            continue
        subscription.fetch = _guarded(fetch)  # type: ignore[union-attr]
        guarded += 1
    return guarded


def guard_pull_fetches() -> bool:
    """Make every pull subscription's empty fetch end the way FastStream expects, from the first.

    :func:`guard_fetches` wraps the subscriptions of a started broker, but FastStream's pull task
    begins its first fetch while the broker is still starting, with nats-py's own ``fetch``. When
    that fetch ended empty in a bare ``asyncio.TimeoutError`` (most starts), the task died and
    FastStream's supervisor logged it as ERROR, with a traceback, before restarting it: harmless,
    and shown as an error. This wraps nats-py's ``PullSubscription.fetch`` itself, once per
    process, so call it before the broker starts. Returns whether it wrapped it now.
    """
    pull = JetStreamContext.PullSubscription
    if getattr(pull.fetch, "guarded", False):
        return False
    pull.fetch = _guarded(pull.fetch)  # type: ignore[method-assign]
    return True


def _guarded(fetch: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded_fetch(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fetch(*args, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc

    guarded_fetch.guarded = True  # type: ignore[attr-defined]
    return guarded_fetch


async def update_consumers(js: JetStreamContext, wanted: Iterable[ConsumerConfig]) -> list[str]:
    """Bring existing durable consumers to ``wanted``'s ``max_deliver`` and ``ack_wait``.

    Subscribing to an existing durable keeps its configuration as it was created, so consumers
    made before a change (say, ``max_deliver`` 10) would keep dropping events; this updates
    them in place (their position and pending acks stay). Durables that do not exist yet are
    left for the subscription to create. Returns the names updated.
    """
    updated = []
    for config in wanted:
        durable = config.durable_name
        if not durable:
            continue
        try:
            info = await js.consumer_info(names.STREAM, durable)
        except NotFoundError:
            continue
        current = info.config
        if current.max_deliver == config.max_deliver and current.ack_wait == config.ack_wait:
            continue
        current.max_deliver = config.max_deliver
        current.ack_wait = config.ack_wait
        current.name = current.name or durable
        await js.add_consumer(names.STREAM, config=current)
        log.info(
            "consumer updated durable=%s max_deliver=%s ack_wait_s=%s",
            durable,
            config.max_deliver,
            config.ack_wait,
        )
        updated.append(durable)
    return updated
