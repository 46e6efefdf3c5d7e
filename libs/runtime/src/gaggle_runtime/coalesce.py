"""Coalescing: many concurrent callers, one call for all of them.

A consumer handles the events of one pull concurrently; each handler submits its event and
waits. What was submitted before the loop gets round to it is handled by one ``run_many`` call
(one transaction, a few statements), and each caller gets its own result or exception. The
caller acks its event only after that, so nothing is acknowledged before it is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Gathers items submitted in the same moment and runs them through ``run_many`` at once.

    ``run_many`` gets the items in submission order and returns one result per item; a result
    that is an exception is raised to that item's caller only. If ``run_many`` itself raises,
    every caller of that batch gets the exception (their events are then redelivered).
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
            results = await self.run_many([item for item, _ in batch])
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
