"""A read-through memory cache of small, hot objects, in front of any store.

A rollout sends the same image to thousands of devices: without a cache each download reads it
from the store again (disk reads in worker threads, or S3 GETs). ``CachedStore`` keeps objects up
to ``max_object`` bytes in memory, at most ``max_bytes`` in all (least recently used first out),
and serves reads from there as slices of one buffer, without copying.

An entry is only used while the store says the object is unchanged: ``stat`` always asks the
store, and drops the entry when size or modification time differ. (``serve_object`` stats before
it reads, so a replaced object is never served from the cache.) Concurrent first reads of one
object load it once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from functools import partial

from gaggle_storage.base import ObjectInfo, ObjectStore

SLICE = 1024 * 1024
"""Bytes per chunk handed out: the server's flow control still sees bounded writes."""


class CachedStore:
    """``inner`` with a bounded memory cache for reads; writes and deletes go straight through."""

    def __init__(
        self, inner: ObjectStore, *, max_bytes: int = 64 << 20, max_object: int = 16 << 20
    ) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self.max_object = min(max_object, max_bytes)
        self._entries: OrderedDict[str, tuple[ObjectInfo, bytes]] = OrderedDict()
        self._loading: dict[str, asyncio.Task[tuple[ObjectInfo, bytes] | None]] = {}
        self.size = 0
        """Bytes held now."""

    async def stat(self, key: str) -> ObjectInfo:
        """The store's answer; a cached copy that no longer matches it is dropped."""
        info = await self.inner.stat(key)
        entry = self._entries.get(key)
        if entry is not None and entry[0] != info:
            self._drop(key)
        return info

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive, from memory when the object fits the cache."""
        entry = self._entries.get(key)
        if entry is None:
            entry = await self._load(key)
        else:
            self._entries.move_to_end(key)
        if entry is None:  # too large to keep
            async for chunk in self.inner.read(key, start, end):
                yield chunk
            return
        data = memoryview(entry[1])
        stop = len(data) if end is None else min(end + 1, len(data))
        for offset in range(start, stop, SLICE):
            yield data[offset : min(offset + SLICE, stop)]  # type: ignore[misc]

    async def _load(self, key: str) -> tuple[ObjectInfo, bytes] | None:
        # The load runs in a task of its own: a reader that goes away (a device disconnecting)
        # does not cancel it for the others waiting on it.
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(key))
            self._loading[key] = task
            task.add_done_callback(partial(self._loaded, key))
        return await asyncio.shield(task)

    def _loaded(self, key: str, task: asyncio.Task[tuple[ObjectInfo, bytes] | None]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failed load nobody waited for any more is no error

    async def _fetch(self, key: str) -> tuple[ObjectInfo, bytes] | None:
        info = await self.inner.stat(key)
        if info.size > self.max_object:
            return None
        parts = [chunk async for chunk in self.inner.read(key)]
        data = b"".join(parts)
        if len(data) != info.size:  # replaced while it was read: stream it, keep nothing
            return None
        self._drop(key)
        while self._entries and self.size + len(data) > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (info, data)
        self.size += len(data)
        return (info, data)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= len(entry[1])

    async def write(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store through; the cached copy, if any, is dropped."""
        self._drop(key)
        try:
            return await self.inner.write(key, chunks)
        finally:
            self._drop(key)

    async def delete(self, key: str) -> None:
        """Delete through, and from the cache."""
        self._drop(key)
        await self.inner.delete(key)

    async def presigned_url(self, key: str, expires_s: int, method: str = "GET") -> str | None:
        """The store's presigned URL (downloads redirected there bypass the cache)."""
        return await self.inner.presigned_url(key, expires_s, method)
