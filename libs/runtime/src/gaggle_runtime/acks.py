"""Pipelined JetStream publishes: send a whole batch, then wait for all its acks at once.

A JetStream publish is a request: the server answers on the reply subject once the message is
stored. Awaiting each answer before the next publish costs a round trip and a timer per message;
:class:`AckedPublisher` sends the batch's messages back to back on one connection (the server
stores them in that order) and waits for the acks together, under one timeout. Each message
still gets its own outcome: its ack, or the error that kept it from being stored.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

ACK_TIMEOUT_S = 5.0
"""How long the acks of one batch are awaited, together (as long as one publish waited before)."""
_NO_RESPONDERS = "503"


class Message(NamedTuple):
    """One JetStream publish: subject, payload and headers."""

    subject: str
    payload: bytes
    headers: dict[str, str] | None


class _Batch:
    """The acks one :meth:`AckedPublisher.publish_many` call waits for: one future for them all."""

    __slots__ = ("done", "missing", "results")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.results: list[BaseException | None] = [None] * size
        self.missing: set[int] = set()
        self.done = done

    def answer(self, index: int, error: BaseException | None) -> None:
        """Message ``index`` was stored (``error`` None) or refused."""
        if index not in self.missing:
            return  # a second answer, or one that came after the batch gave up on it
        self.missing.discard(index)
        self.results[index] = error
        if not self.missing and not self.done.done():
            self.done.set_result(None)


class AckedPublisher:
    """Publishes batches on one connection; its acks come back on one wildcard inbox."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count()
        self._waiting: dict[str, tuple[_Batch, int]] = {}
        self._sub: Subscription | None = None

    async def publish_many(
        self, messages: Sequence[Message], timeout: float = ACK_TIMEOUT_S
    ) -> list[BaseException | None]:
        """Publish ``messages`` in order, then wait for their acks; per message None or its error.

        A message that gets no ack within ``timeout`` (for the whole batch) fails with
        ``TimeoutError``; one the server refuses, with its ``APIError``. Only cancellation is
        raised.
        """
        if self._sub is None:
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)
        # One future for the whole batch, set by the last ack: a future and a done-callback per
        # message cost more than the publish itself.
        batch = _Batch(len(messages), asyncio.get_running_loop().create_future())
        tokens: list[str] = []
        prefix = self._prefix
        try:
            for i, message in enumerate(messages):
                token = str(next(self._tokens))
                self._waiting[token] = (batch, i)
                batch.missing.add(i)
                tokens.append(token)
                try:
                    await self.nc.publish(
                        message.subject,
                        message.payload,
                        reply=f"{prefix}.{token}",
                        headers=message.headers,
                    )
                except Exception as exc:
                    batch.answer(i, exc)
            if batch.missing:
                await asyncio.wait([batch.done], timeout=timeout)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
            if not batch.done.done():
                batch.done.cancel()
            for i in batch.missing:
                batch.results[i] = TimeoutError(f"no JetStream ack within {timeout:g} s")
            batch.missing.clear()
        return batch.results

    async def _on_ack(self, msg: Msg) -> None:
        waiting = self._waiting.pop(msg.subject.rpartition(".")[2], None)
        if waiting is None:
            return  # came after its batch gave up on it
        batch, index = waiting
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            batch.answer(index, nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            batch.answer(index, nats.errors.Error(f"unreadable JetStream ack: {exc}"))
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if not error:
            batch.answer(index, None)
            return
        try:
            # nats-py raises the APIError subclass that the error's code names.
            nats.js.errors.APIError.from_error(error)
        except Exception as exc:
            batch.answer(index, exc)
        else:  # pragma: no cover - from_error always raises
            batch.answer(index, nats.js.errors.APIError(description=str(error)))
