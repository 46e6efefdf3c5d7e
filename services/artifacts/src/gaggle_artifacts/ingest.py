"""Taking an image in: one pass over the bytes hashes them, parses them and stores them.

Memory stays bounded whatever the size: bytes flow from the request (raw body or a multipart
file part, parsed incrementally) through MD5, SHA-1, SHA-256 and the ``.swu`` stream parser into
the object store, in slices of about a megabyte. The parser rejects a bad image as early as it
can (a non-cpio first header stops the upload after a few bytes). It also hashes every member,
for the check of the sha256 values the sw-description gives (``verification``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from gaggle_artifacts.domain import MAX_MEMBERS, MAX_SW_DESCRIPTION, check_quotas
from gaggle_swu import SwDescription, SwuInfo, SwuStreamParser

SLICE = 1024 * 1024
"""Bytes gathered before hashing and writing: fewer, larger steps."""


class TooLargeError(Exception):
    """The image is larger than the limit it was taken in with."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"image larger than the limit of {limit} bytes")
        self.limit = limit


class MalformedBodyError(Exception):
    """A multipart request body that cannot be read for its file."""


def check_metadata(info: SwDescription, members: int = 0) -> None:
    """Refuse an image whose metadata is over a quota.

    Raises:
        QuotaExceededError: which quota, its limit, and what the image has.
    """
    check_quotas(
        name=info.name,
        version=info.version,
        description=info.description,
        compatibility=info.compatibility,
        images=len(info.images),
        members=members,
    )


@dataclass(frozen=True)
class Ingested:
    """What one pass over an image found."""

    size: int
    md5: str
    sha1: str
    sha256: str
    info: SwuInfo


class Ingest:
    """Hashes, parses and counts bytes as they pass; raises as soon as something is wrong.

    What it raises (``TooLargeError``, ``gaggle_swu.SwuError``, ``domain.QuotaExceededError``)
    is answered over HTTP by ``errors.install``.

    The metadata quotas are checked as soon as the sw-description (the first member) is read,
    so an image over one stops there rather than after all its bytes were stored.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.md5 = hashlib.md5()  # noqa: S324 - hawkBit's and rauc-hawkbit's checksum
        self.sha1 = hashlib.sha1()  # noqa: S324 - hawkBit's ETag and SWUpdate's checksum
        self.sha256 = hashlib.sha256()
        self.parser = SwuStreamParser(
            MAX_SW_DESCRIPTION, max_members=MAX_MEMBERS, hash_members=True
        )
        self._checked = False

    async def _take(self, data: bytes) -> None:
        # hashlib releases the GIL on large buffers: the three hashes and the parser (which
        # hashes each member for the sw-description's sha256 check) run side by side in
        # threads, and the event loop stays free for the next slice.
        await asyncio.gather(
            asyncio.to_thread(self.parser.feed, data),
            asyncio.to_thread(self.md5.update, data),
            asyncio.to_thread(self.sha1.update, data),
            asyncio.to_thread(self.sha256.update, data),
        )

    async def through(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Pass ``chunks`` on in slices, inspecting each on the way."""
        buffer = bytearray()
        async for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.limit:
                raise TooLargeError(self.limit)
            buffer += chunk
            if len(buffer) >= SLICE:
                data = bytes(buffer)
                buffer.clear()
                await self._inspect(data)
                yield data
        if buffer:
            data = bytes(buffer)
            await self._inspect(data)
            yield data

    async def _inspect(self, data: bytes) -> None:
        await self._take(data)
        if not self._checked and self.parser.description is not None:
            self._checked = True
            check_metadata(self.parser.description)

    def result(self) -> Ingested:
        """The hashes and the parsed image, once every byte went through."""
        info = self.parser.finish()
        check_metadata(info, len(info.members))
        return Ingested(
            self.size, self.md5.hexdigest(), self.sha1.hexdigest(), self.sha256.hexdigest(), info
        )


class _FilePart:
    """Callbacks for python-multipart that keep the data of one file part, nothing else."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.header_name = b""
        self.headers: dict[bytes, bytes] = {}
        self.active = False
        self.found = False
        self.done = False
        self.filename: str | None = None
        self.pending: list[bytes] = []

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.headers.clear,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        name = self.header_name.lower()
        self.headers[name] = self.headers.get(name, b"") + data[start:end]

    def on_header_end(self) -> None:
        self.header_name = b""

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        self.active = name == self.field and not self.found
        if self.active:
            self.found = True
            raw = disposition.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.active:
            self.pending.append(data[start:end])

    def on_part_end(self) -> None:
        if self.active:
            self.active = False
            self.done = True


def _feed(parser: MultipartParser, chunk: bytes) -> None:
    try:
        parser.write(chunk)
    except MultipartParseError as exc:
        raise MalformedBodyError(f"malformed multipart body: {exc}") from exc


async def multipart_file(
    content_type: str, body: AsyncIterator[bytes], field: str = "file"
) -> tuple[str | None, AsyncIterator[bytes]]:
    """The filename and a stream of the bytes of the file part ``field`` of a multipart body.

    Raises:
        MalformedBodyError: no boundary, no such part, or the body ends inside it.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedBodyError("multipart body without a boundary")
    part = _FilePart(field)
    parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
    chunks = body.__aiter__()
    # Read until the file part's headers are in: its filename is needed before its data.
    while not part.found:
        try:
            _feed(parser, await chunks.__anext__())
        except StopAsyncIteration:
            raise MalformedBodyError(f"multipart body has no {field!r} file part") from None

    async def data() -> AsyncIterator[bytes]:
        while True:
            if part.pending:
                out = b"".join(part.pending)
                part.pending.clear()
                yield out
            if part.done:
                return
            try:
                _feed(parser, await chunks.__anext__())
            except StopAsyncIteration:
                raise MalformedBodyError("multipart body ends inside the file") from None

    return part.filename, data()
