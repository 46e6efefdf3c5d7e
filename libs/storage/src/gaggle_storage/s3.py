"""Any S3 API (MinIO, AWS, ...) through the ``minio`` SDK, its blocking calls in threads."""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, BinaryIO, cast

from minio import Minio
from minio.error import S3Error

from gaggle_storage.base import CHUNK, ObjectInfo, ObjectNotFoundError

PART_SIZE = 8 * 1024 * 1024
"""Multipart upload part size; one part is in flight at a time, so memory per upload stays
a few parts' worth (minio copies each part while building it)."""


class _QueueReader(io.RawIOBase):
    """A blocking file-like view of chunks fed from the event loop (for ``put_object``)."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self.buffer = bytearray()
        self.finished = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self.finished and (size < 0 or len(self.buffer) < size):
            chunk = self.chunks.get()
            if chunk is None:
                self.finished = True
            else:
                self.buffer += chunk
        if size < 0 or size >= len(self.buffer):
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
        return data


class S3Store:
    """Objects in one bucket."""

    def __init__(self, client: Minio, bucket: str, public_client: Minio | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.public_client = public_client or client
        """Signs presigned URLs for the host devices reach, which may differ from ours."""

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        exists = await asyncio.to_thread(self.client.bucket_exists, self.bucket)
        if not exists:
            with contextlib.suppress(S3Error):
                await asyncio.to_thread(self.client.make_bucket, self.bucket)

    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time."""
        try:
            st = await asyncio.to_thread(self.client.stat_object, self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFoundError(key) from exc
            raise
        if st.size is None or st.last_modified is None:  # pragma: no cover - S3 always sends them
            raise ObjectNotFoundError(key)
        return ObjectInfo(key, st.size, st.last_modified)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream a byte range with one ranged GET."""
        length = 0 if end is None else end - start + 1
        try:
            response: Any = await asyncio.to_thread(
                self.client.get_object, self.bucket, key, offset=start, length=length
            )
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFoundError(key) from exc
            raise
        try:
            while True:
                data = await asyncio.to_thread(response.read, CHUNK)
                if not data:
                    return
                yield data
        finally:
            response.close()
            response.release_conn()

    async def write(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Multipart upload fed from the stream; an aborted upload leaves no object."""
        reader = _QueueReader()
        size = 0
        upload = asyncio.create_task(
            asyncio.to_thread(
                self.client.put_object,
                self.bucket,
                key,
                cast(BinaryIO, reader),
                -1,
                part_size=PART_SIZE,
                num_parallel_uploads=1,
            )
        )
        try:
            async for chunk in chunks:
                size += len(chunk)
                while True:
                    try:
                        reader.chunks.put_nowait(chunk)
                        break
                    except queue.Full:
                        if upload.done():
                            await upload
                        await asyncio.sleep(0.005)
            await asyncio.to_thread(reader.chunks.put, None)
            await upload
        except BaseException:
            # Unblock the uploader with an error so it aborts the multipart upload.
            reader.finished = True
            with contextlib.suppress(queue.Full):
                reader.chunks.put_nowait(None)
            with contextlib.suppress(BaseException):
                await upload
            with contextlib.suppress(Exception):
                await self.delete(key)
            raise
        return size

    async def delete(self, key: str) -> None:
        """Remove the object."""
        await asyncio.to_thread(self.client.remove_object, self.bucket, key)

    async def presigned_url(self, key: str, expires_s: int, method: str = "GET") -> str | None:
        """A presigned URL for the host devices reach (``method``: GET or HEAD).

        Signing is a few HMACs over the URL, without a request to the store (the client knows
        its region): done inline, cheaper than a trip to a worker thread.
        """
        url: str = self.public_client.get_presigned_url(
            method, self.bucket, key, expires=timedelta(seconds=expires_s)
        )
        return url
