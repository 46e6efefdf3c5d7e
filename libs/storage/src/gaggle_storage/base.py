"""The object store interface every back-end implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

CHUNK = 256 * 1024
"""Bytes per read when streaming: memory stays bounded whatever the object's size."""


class ObjectNotFoundError(KeyError):
    """No object under that key."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object."""

    key: str
    size: int
    modified: datetime


class ObjectStore(Protocol):
    """Objects by key: streamed in and out, never held in memory whole."""

    async def stat(self, key: str) -> ObjectInfo:
        """Size and modification time.

        Raises:
            ObjectNotFoundError: no such object.
        """
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive (``None``: to the end), in chunks."""
        ...

    async def write(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        """Store an object from a stream; return its size. Nothing is left on failure."""
        ...

    async def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error."""
        ...

    async def presigned_url(self, key: str, expires_s: int, method: str = "GET") -> str | None:
        """A URL answering ``method`` (GET or HEAD) for the object, None if the store has none.

        The URL needs no other credentials. ``expires_s`` bounds when a request may start with
        it; a transfer that started in time runs to its end.
        """
        ...
