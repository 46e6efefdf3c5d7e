"""The hot-object cache in front of a real local store: read once, served right, never stale."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gaggle_storage import CachedStore, LocalStore, ObjectNotFoundError


class CountingStore(LocalStore):
    """A local store that counts whole-object and ranged reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        self.reads += 1
        await asyncio.sleep(0.01)  # a slow store: concurrent first reads overlap
        async for chunk in super().read(key, start, end):
            yield chunk


async def put(store: LocalStore, key: str, data: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await store.write(key, chunks())


async def fetch(store: CachedStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    await store.stat(key)  # as serve_object does before each read
    return b"".join([bytes(c) async for c in store.read(key, start, end)])


async def test_concurrent_first_reads_load_once_and_ranges_come_from_memory(
    tmp_path: Path,
) -> None:
    inner = CountingStore(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    await put(inner, "a/img.swu", data)
    cache = CachedStore(inner, max_bytes=8 << 20, max_object=4 << 20)

    bodies = await asyncio.gather(*(fetch(cache, "a/img.swu") for _ in range(20)))
    assert all(body == data for body in bodies)
    assert inner.reads == 1
    assert cache.size == len(data)

    assert await fetch(cache, "a/img.swu", 5, 5) == data[5:6]
    assert await fetch(cache, "a/img.swu", 1_000_000, 2_500_000) == data[1_000_000:2_500_001]
    assert await fetch(cache, "a/img.swu", len(data) - 3, None) == data[-3:]
    assert await fetch(cache, "a/img.swu", 10, 10**12) == data[10:]  # end past the object
    assert inner.reads == 1
    chunks = [c async for c in cache.read("a/img.swu")]
    assert max(len(c) for c in chunks) <= 1024 * 1024


async def test_a_replaced_object_is_never_served_from_the_cache(tmp_path: Path) -> None:
    inner = CountingStore(tmp_path)
    await put(inner, "k", b"first version")
    cache = CachedStore(inner)
    assert await fetch(cache, "k") == b"first version"
    await put(inner, "k", b"second, longer version")  # behind the cache's back
    assert await fetch(cache, "k") == b"second, longer version"
    assert inner.reads == 2
    assert cache.size == len(b"second, longer version")

    await cache.write("k", _one(b"third"))
    assert await fetch(cache, "k") == b"third"
    await cache.delete("k")
    assert cache.size == 0
    with pytest.raises(ObjectNotFoundError):
        await fetch(cache, "k")


async def test_large_objects_stream_from_the_store_and_the_least_recent_go_first(
    tmp_path: Path,
) -> None:
    inner = CountingStore(tmp_path)
    big = os.urandom(300_000)
    await put(inner, "big", big)
    for name in ("x", "y", "z"):
        await put(inner, name, name.encode() * 100_000)
    cache = CachedStore(inner, max_bytes=250_000, max_object=200_000)

    assert await fetch(cache, "big") == big
    assert await fetch(cache, "big", 7, 9) == big[7:10]
    assert inner.reads == 2 and cache.size == 0  # too large: streamed each time

    await fetch(cache, "x")
    await fetch(cache, "y")
    await fetch(cache, "x")  # x is now the most recent
    await fetch(cache, "z")  # room for two: y goes
    assert cache.size == 200_000
    reads = inner.reads
    assert await fetch(cache, "x") == b"x" * 100_000
    assert await fetch(cache, "z") == b"z" * 100_000
    assert inner.reads == reads
    assert await fetch(cache, "y") == b"y" * 100_000
    assert inner.reads == reads + 1


async def test_a_failed_load_is_retried_by_the_next_read(tmp_path: Path) -> None:
    cache = CachedStore(LocalStore(tmp_path))
    with pytest.raises(ObjectNotFoundError):
        [c async for c in cache.read("missing")]
    await put(cache.inner, "missing", b"here now")  # type: ignore[arg-type]
    assert await fetch(cache, "missing") == b"here now"


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_reader_that_goes_away_does_not_cancel_the_load_for_the_others(
    tmp_path: Path,
) -> None:
    inner = CountingStore(tmp_path)
    data = os.urandom(200_000)
    await put(inner, "img", data)
    cache = CachedStore(inner)
    first = asyncio.create_task(fetch(cache, "img"))
    await asyncio.sleep(0.002)  # the first reader's load is under way
    second = asyncio.create_task(fetch(cache, "img"))
    await asyncio.sleep(0)
    first.cancel()  # its device disconnected
    assert await second == data
    with pytest.raises(asyncio.CancelledError):
        await first
    assert inner.reads == 1
    assert cache.size == len(data)
