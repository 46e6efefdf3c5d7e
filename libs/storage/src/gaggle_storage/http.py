"""Serving stored objects over HTTP: streamed with bounded memory, Range, HEAD, If-Range, If-Match.

Shared by the DDI gateway (device downloads) and the artifacts service (operator downloads).
Clients such as SWUpdate send HEAD first (they need ``Content-Length``) and resume a cut
download with ``Range: bytes=N-``. With a presigned-URL expiry given, the answer is a redirect to
the object store instead (a URL signed for the request's method), which needs no credentials of
ours; the client sends its ``Range`` there.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from gaggle_storage.base import ObjectStore


class PreconditionFailedError(Exception):
    """``If-Match`` names another version of the object."""


_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Byte ranges of a ``Range`` header as inclusive (start, end) pairs.

    Returns None when the header is not a byte range set we understand (then the whole object
    is sent, as RFC 9110 allows) and an empty list when no range is satisfiable (416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        match = _RANGE_RE.match(part)
        if not match or (not match.group(1) and not match.group(2)):
            return None
        first, last = match.group(1), match.group(2)
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
            if last and int(last) < start:
                return None
        else:  # suffix: the last N bytes
            n = int(last)
            if n == 0:
                continue
            start, end = max(size - n, 0), size - 1
        if start < size:
            ranges.append((start, end))
    return ranges


def _if_range_allows(if_range: str | None, etag: str, modified_http: str) -> bool:
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag
    try:
        return parsedate_to_datetime(value) == parsedate_to_datetime(modified_http)
    except (TypeError, ValueError):
        return False


def _if_match_fails(if_match: str | None, etag: str) -> bool:
    if if_match is None:
        return False
    tags = [t.strip() for t in if_match.split(",")]
    return "*" not in tags and etag not in tags


async def serve_object(
    request: Request,
    store: ObjectStore,
    key: str,
    *,
    etag: str,
    filename: str,
    presign_expiry_s: int | None = None,
) -> Response:
    """Answer GET or HEAD for one stored object.

    ``etag`` is the quoted entity tag (Gaggle uses the SHA-1, as hawkBit does).

    Raises:
        PreconditionFailedError: ``If-Match`` does not match ``etag``.
        ObjectNotFoundError: nothing stored under ``key``.
    """
    if _if_match_fails(request.headers.get("if-match"), etag):
        raise PreconditionFailedError(etag)
    if presign_expiry_s:
        # Signed for the request's method: S3 checks it (a GET URL answers no HEAD).
        url = await store.presigned_url(key, presign_expiry_s, request.method)
        if url:
            # The URL expires: no cache may keep the redirect.
            return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    info = await store.stat(key)
    size = info.size
    modified = format_datetime(info.modified, usegmt=True)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Last-Modified": modified,
        "Content-Disposition": f"attachment;filename={quote(filename)}",
    }
    head = request.method == "HEAD"
    range_header = request.headers.get("range")
    ranges = None
    if range_header and _if_range_allows(request.headers.get("if-range"), etag, modified):
        ranges = parse_ranges(range_header, size)
    if ranges is None:
        headers["Content-Length"] = str(size)
        whole = [(0, size - 1)] if size else []
        return _stream(store, key, whole, 200, headers, "application/octet-stream", head)
    if not ranges:
        headers["Content-Range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    if len(ranges) == 1:
        start, end = ranges[0]
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        return _stream(store, key, ranges, 206, headers, "application/octet-stream", head)
    return _multipart(store, key, ranges, size, headers, head)


def _stream(
    store: ObjectStore,
    key: str,
    ranges: list[tuple[int, int]],
    status: int,
    headers: dict[str, str],
    media_type: str,
    head: bool,
) -> Response:
    if head:
        return Response(status_code=status, headers=headers, media_type=media_type)

    async def body() -> AsyncIterator[bytes]:
        for start, end in ranges:
            async for chunk in store.read(key, start, end):
                yield chunk

    return StreamingResponse(body(), status_code=status, headers=headers, media_type=media_type)


def _multipart(
    store: ObjectStore,
    key: str,
    ranges: list[tuple[int, int]],
    size: int,
    headers: dict[str, str],
    head: bool,
) -> Response:
    boundary = secrets.token_hex(12)
    parts = [
        (
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {s}-{e}/{size}\r\n\r\n"
        ).encode()
        for s, e in ranges
    ]
    closing = f"\r\n--{boundary}--\r\n".encode()
    length = sum(len(p) for p in parts) + sum(e - s + 1 for s, e in ranges)
    length += 2 * (len(ranges) - 1) + len(closing)
    headers["Content-Length"] = str(length)
    media_type = f"multipart/byteranges; boundary={boundary}"
    if head:
        return Response(status_code=206, headers=headers, media_type=media_type)

    async def body() -> AsyncIterator[bytes]:
        for i, ((start, end), part) in enumerate(zip(ranges, parts, strict=True)):
            yield (b"\r\n" if i else b"") + part
            async for chunk in store.read(key, start, end):
                yield chunk
        yield closing

    return StreamingResponse(body(), status_code=206, headers=headers, media_type=media_type)
