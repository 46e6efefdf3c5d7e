"""NATS side of a service: the broker, publishing events with their message ids, KV access."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from faststream import AckPolicy, BaseMiddleware
from faststream.exceptions import RejectMessage
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PubAck, PullSub
from nats.js.kv import KeyValue
from pydantic import ValidationError

from gaggle_contracts import names
from gaggle_contracts.events import Event
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.telemetry import current_traceparent

log = logging.getLogger(__name__)

JSON_HEADERS = {"content-type": "application/json"}


def public_url(nats_url: str) -> str:
    """``nats_url`` without user and password, for documents that name the server."""
    parts = urlsplit(nats_url)
    if not parts.hostname:
        return nats_url
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def make_broker(nats_url: str, service: str, *, middlewares: Sequence[Any] = ()) -> NatsBroker:
    """A FastStream NATS broker whose per-message log lines are at DEBUG.

    ``middlewares`` (tracing, metrics) wrap every message, outermost first, around the check
    that rejects invalid payloads.
    """
    return NatsBroker(
        nats_url,
        middlewares=[*middlewares, RejectInvalidPayload],
        name=f"gaggle-{service}",
        logger=logging.getLogger(f"faststream.gaggle.{service}"),
        log_level=logging.DEBUG,
        graceful_timeout=10.0,
        specification_url=public_url(nats_url),
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )


async def publish_event(broker: NatsBroker, event: Event, *, timeout: float = 5.0) -> PubAck:
    """Publish ``event`` to the OTA stream and wait for JetStream's ack.

    ``Nats-Msg-Id`` is the event's message id, so a retried publish is stored once.

    Raises:
        Exception: whatever the client raises when NATS does not ack in ``timeout`` seconds.
    """
    return await publish_raw(
        broker, event.subject, event.model_dump_json().encode(), event.message_id, timeout=timeout
    )


async def publish_raw(
    broker: NatsBroker, subject: str, payload: bytes, msg_id: str | None, *, timeout: float = 5.0
) -> PubAck:
    """Publish pre-serialised JSON to the OTA stream and wait for the ack."""
    headers = dict(JSON_HEADERS)
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    ack = await broker.publish(
        payload, subject, headers=headers, stream=names.STREAM, timeout=timeout
    )
    if ack is None:  # pragma: no cover - a stream publish always returns an ack
        raise RuntimeError("JetStream returned no ack")
    return ack


class NatsSink:
    """The outbox relay's way out: JetStream publishes and KV writes on the broker's connection."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker
        self._buckets: dict[str, KeyValue] = {}
        self._lock = asyncio.Lock()

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
        await publish_raw(self.broker, subject, payload, msg_id)

    async def kv_put(self, bucket: str, key: str, payload: bytes) -> None:
        """Put one value; inside a trace, with its ``traceparent`` as a message header."""
        kv = await self.bucket(bucket)
        traceparent = current_traceparent()
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


class RejectInvalidPayload(BaseMiddleware):
    """Rejects (terminates) a message whose body does not validate, instead of redelivering it.

    A malformed event will never become valid; redelivering it only delays the ones behind it.
    """

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        """Turn a pydantic ``ValidationError`` raised while decoding into ``RejectMessage``."""
        try:
            return await call_next(msg)
        except ValidationError as exc:
            log.warning(
                "rejected invalid event subject=%s error=%s",
                getattr(msg, "subject", "?"),
                exc.errors()[:3],
            )
            raise RejectMessage from exc


def consumer_options(
    service: str, kind: str, common: CommonSettings, *, batch: int | None = None
) -> dict[str, Any]:
    """Subscriber options for a durable, explicitly acked pull consumer of ``kind`` events.

    ``batch`` overrides how many events one pull fetches (they are handled concurrently).
    Replicas of a service share the durable, so each event is handled by one of them. Failures
    are nacked and redelivered up to ``max_deliver`` times; the ack comes after the handler (and
    so after its transaction) returns.
    """
    return {
        "subject": names.subscription(kind),
        "stream": JStream(names.STREAM, declare=False),
        "durable": names.durable(service, kind),
        "pull_sub": PullSub(batch_size=batch or common.pull_batch, timeout=1.0),
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "config": ConsumerConfig(max_deliver=common.max_deliver, ack_wait=common.ack_wait_s),
    }
