"""Consuming a pull's events as one batch: decoded one by one, handled at once, settled each.

A consumer subscribed with ``consumer_options(..., whole=Model)`` gets one pull at once: the raw
messages, and each payload decoded or left as bytes (:func:`gaggle_runtime.bus.decode_each`).
:func:`consume_batch` parks each payload that is not an event alone, hands the events to the
handler in one call, and answers JetStream for each event by its own outcome with
:meth:`ConsumerFailures.settle <gaggle_runtime.deadletters.ConsumerFailures.settle>`: acked
once the handler returned (so after its transaction committed), retried or parked when its
outcome is an exception. One bad event so never holds back the others of its pull.

A :class:`BatchRunner` lets the consumer fetch its next pull while earlier ones are still being
applied: a few batches in flight hide the database's round trips. Such a consumer acks itself
(``AckPolicy.MANUAL``); the runner is closed before the subscribers stop, so a graceful stop
finishes what was fetched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from gaggle_runtime.failures import Skipped

log = logging.getLogger(__name__)

E = TypeVar("E")


class Settles(Protocol):
    """What answers JetStream for one event (a service's ``ConsumerFailures``)."""

    def skips(self, raw: Any) -> bool:
        """Whether ``raw`` is a replay meant for another consumer."""

    async def settle(self, raw: Any, exc: BaseException | None) -> str:
        """Ack, retry or park ``raw`` by its outcome."""


async def consume_batch(
    failures: Settles,
    raws: Sequence[Any],
    decoded: Sequence[E | bytes],
    decode: Callable[[bytes], E],
    handle: Callable[[list[E]], Awaitable[Sequence[BaseException | None]]],
) -> dict[str, int]:
    """Handle a pull's events together, settle each; how many ended how (``ok``, ``retry``...).

    ``decoded`` holds each raw message's event, or its payload when it did not decode: that one
    is decoded again with ``decode`` for the error, and parked as invalid. ``handle`` gets the
    events in pull order and returns one outcome per event (None: done). If it raises, every
    event of the call gets that exception as its outcome: a transient one is retried later,
    anything else counts towards parking each event.
    """
    outcomes: dict[str, int] = {}

    async def settle(raw: Any, exc: BaseException | None) -> None:
        outcome = await failures.settle(raw, exc)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    valid: list[tuple[Any, E]] = []
    for raw, item in zip(raws, decoded, strict=True):
        if failures.skips(raw):
            await settle(raw, Skipped())
            continue
        if isinstance(item, bytes):
            try:
                item = decode(item)
            except Exception as exc:
                await settle(raw, exc)
                continue
        valid.append((raw, item))
    if not valid:
        return outcomes
    results: Sequence[BaseException | None]
    try:
        results = await handle([event for _, event in valid])
    except Exception as exc:
        results = [exc] * len(valid)
    for (raw, _), result in zip(valid, results, strict=True):
        await settle(raw, result)
    return outcomes


class BatchRunner:
    """Runs a consumer's batches as tasks, ``in_flight`` at most at once.

    :meth:`submit` returns once the batch has a slot, so the consumer fetches its next pull while
    this one is applied; when every slot is busy it waits (the events stay with JetStream).
    """

    def __init__(self, in_flight: int) -> None:
        self._slots = asyncio.Semaphore(in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, raws: Sequence[Any], work: Callable[[], Awaitable[object]]) -> None:
        """Run ``work()`` (which settles ``raws``) in a slot; closed: ``raws`` go back at once."""
        if self._closed:
            for raw in raws:
                await raw.nak()
            return
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._run(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, work: Callable[[], Awaitable[object]]) -> None:
        try:
            await work()
        except Exception:
            # Its events were not all settled: JetStream delivers them again after ack_wait.
            log.warning("a batch of events was not settled; redelivered later", exc_info=True)
        finally:
            self._slots.release()

    async def idle(self) -> None:
        """Wait until no batch is in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Take no more batches (they are nacked); wait for those in flight."""
        self._closed = True
        await self.idle()
