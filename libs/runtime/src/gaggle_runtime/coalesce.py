"""Coalescing: many concurrent callers, one call for all of them.

A consumer handles the events of one pull concurrently; each handler submits its event and
waits. What was submitted before the loop gets round to it is handled by one ``run_many`` call
(one transaction, a few statements), and each caller gets its own result or exception. The
caller acks its event only after that, so nothing is acknowledged before it is committed.

One bad item must not fail the others: when the batch fails for a reason that is not transient
(a value the database refuses, a bug one item triggers), each item is run again alone, so the
good ones commit and only the bad one fails. A transient failure (the database away) fails the
whole batch at once; every item would meet it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from gaggle_runtime.failures import describe, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Gathers items submitted in the same moment and runs them through ``run_many`` at once.

    ``run_many`` gets the items in submission order and returns one result per item; a result
    that is an exception is raised to that item's caller only. If ``run_many`` itself raises
    a transient error, every caller of that batch gets it (their events are then redelivered);
    any other error has each item of the batch run alone, each caller getting its own outcome.
    ``run_many`` must therefore leave nothing behind when it raises (one transaction).
    """

    def __init__(
        self, run_many: Callable[[list[T]], Awaitable[Sequence[R | Exception]]], max_batch: int
    ) -> None:
        self.run_many = run_many
        self.max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Handle ``item`` together with whatever else is submitted now; its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._results([item for item, _ in batch])
        except asyncio.CancelledError:  # shutting down: nobody may wait forever
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _results(self, items: list[T]) -> Sequence[R | Exception]:
        return await run_each(self.run_many, items)


async def run_each(
    run_many: Callable[[list[T]], Awaitable[Sequence[R | Exception]]], items: list[T]
) -> Sequence[R | Exception]:
    """``run_many(items)``; if it fails for good, each item's outcome alone.

    A transient failure (or the failure of a single item) is raised: every item would meet it.
    Any other failure has each item run alone, so the good ones commit and only the bad one
    gets its exception as its outcome.
    """
    try:
        return await run_many(items)
    except Exception as exc:
        if len(items) == 1 or is_transient(exc):
            raise
        log.warning(
            "a batch of %d failed; each item alone error=%s", len(items), describe(exc, 300)
        )
    return [await _alone(run_many, item) for item in items]


async def _alone(
    run_many: Callable[[list[T]], Awaitable[Sequence[R | Exception]]], item: T
) -> R | Exception:
    try:
        return (await run_many([item]))[0]
    except Exception as exc:
        return exc
