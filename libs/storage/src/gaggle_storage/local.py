"""A local folder as object store: the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from gaggle_storage.base import ObjectInfo, ObjectNotFoundError

READ_CHUNK = 1024 * 1024
"""Bytes per read when streaming a file: each read is a trip to a worker thread, which cost
more than the copy at 256 KiB (a quarter of the gateway's time serving a fleet's downloads)."""


def _open_at(path: Path, start: int) -> BinaryIO:
    handle = path.open("rb")
    if start:
        handle.seek(start)
    return handle


class LocalStore:
    """Objects as files under ``root``; writes go to a temporary file renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The file of ``key``; keys cannot leave the root.

        Raises:
            ValueError: the key is empty or escapes the root.
        """
        if not key or key.startswith("/") or "\\" in key:
            raise ValueError(f"invalid object key {key!r}")
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"invalid object key {key!r}")
        return path

    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time."""
        try:
            st = await asyncio.to_thread(os.stat, self.path(key))
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(key) from exc
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream a byte range from the file."""
        try:
            handle = await asyncio.to_thread(_open_at, self.path(key), start)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(key) from exc
        try:
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                data = await asyncio.to_thread(handle.read, size)
                if not data:
                    return
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            await asyncio.to_thread(handle.close)

    async def write(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Write to a temporary file, fsync, rename; remove the temporary file on failure."""
        final = self.path(key)
        await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        size = 0
        handle = await asyncio.to_thread(open, tmp, "wb")
        try:
            async for chunk in chunks:
                await asyncio.to_thread(handle.write, chunk)
                size += len(chunk)
            await asyncio.to_thread(handle.flush)
            await asyncio.to_thread(os.fsync, handle.fileno())
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(os.replace, tmp, final)
        except BaseException:
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return size

    async def delete(self, key: str) -> None:
        """Remove the file if it exists."""
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(key).unlink)

    async def presigned_url(self, key: str, expires_s: int, method: str = "GET") -> str | None:
        """A folder has no URLs of its own."""
        return None
