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


class AckedPublisher:
    """Publishes batches on one connection; its acks come back on one wildcard inbox."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = nc.new_inbox()
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[None]] = {}
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
        results: list[BaseException | None] = [None] * len(messages)
        acks: dict[int, tuple[str, asyncio.Future[None]]] = {}
        loop = asyncio.get_running_loop()
        try:
            for i, message in enumerate(messages):
                token = str(next(self._tokens))
                ack: asyncio.Future[None] = loop.create_future()
                self._waiting[token] = ack
                try:
                    await self.nc.publish(
                        message.subject,
                        message.payload,
                        reply=f"{self._prefix}.{token}",
                        headers=message.headers,
                    )
                except Exception as exc:
                    del self._waiting[token]
                    results[i] = exc
                    continue
                acks[i] = (token, ack)
            if acks:
                await asyncio.wait([ack for _, ack in acks.values()], timeout=timeout)
        finally:
            for i, (token, ack) in acks.items():
                self._waiting.pop(token, None)
                if not ack.done():
                    ack.cancel()
                    results[i] = TimeoutError(f"no JetStream ack within {timeout:g} s")
                elif not ack.cancelled():
                    results[i] = ack.exception()
        return results

    async def _on_ack(self, msg: Msg) -> None:
        ack = self._waiting.get(msg.subject.rpartition(".")[2])
        if ack is None or ack.done():
            return  # came after its batch gave up on it
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            ack.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = orjson.loads(msg.data)
        except orjson.JSONDecodeError as exc:
            ack.set_exception(nats.errors.Error(f"unreadable JetStream ack: {exc}"))
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if not error:
            ack.set_result(None)
            return
        try:
            # nats-py raises the APIError subclass that the error's code names.
            nats.js.errors.APIError.from_error(error)
        except Exception as exc:
            ack.set_exception(exc)
        else:  # pragma: no cover - from_error always raises
            ack.set_exception(nats.js.errors.APIError(description=str(error)))
