"""A small HTTP/1.1 client over asyncio, built for many small requests per second from one core.

What a fleet of DDI devices needs and nothing more: keep-alive connections pooled per origin
(bounded by ``connections`` concurrent requests), ``Content-Length``, chunked and
read-until-close bodies, streamed reading with back-pressure (throttled devices), ``Range``
requests (the caller sets the header), redirects to absolute or relative URLs (presigned S3),
``https`` through :mod:`ssl`, and a timeout per request that counts only time spent waiting for
the server.

Each connection is an :class:`asyncio.Protocol` that parses the response as bytes arrive, so a
small answer costs one future and one parse; a sweeper task checks timeouts for all requests
together instead of arming a timer per request. A request can be prepared once
(:class:`Request`) and sent many times, as a device does with its base poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

__all__ = [
    "ConnectionClosed",
    "HttpClient",
    "HttpError",
    "ProtocolError",
    "Request",
    "RequestTimeout",
    "Response",
]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_HEAD = 64 * 1024
_HIGH_WATER = 512 * 1024
"""A streamed response stops reading from the socket once this much is buffered."""
_LOW_WATER = 128 * 1024

# Parser states.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE = range(8)

Origin = tuple[str, str, int]
"""``(scheme, host, port)``: what a pooled connection is good for."""
HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]


class HttpError(Exception):
    """A request did not get a complete answer (network, protocol or timeout)."""


class ConnectionClosed(HttpError, ConnectionError):
    """The server closed the connection before the response was complete."""


class ProtocolError(HttpError):
    """The server's answer is not HTTP/1.1 as this client understands it."""


class RequestTimeout(HttpError, TimeoutError):
    """No byte of the answer arrived within the client's timeout."""


def _header_items(headers: HeaderItems | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _split(url: str) -> tuple[Origin, str, str]:
    """``(origin, Host header, request target)`` of an absolute http(s) URL.

    Raises:
        ValueError: not an absolute http(s) URL.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    netloc, slash, path = rest.partition("/")
    netloc, _, query = netloc.partition("?")
    simple = sep and scheme in ("http", "https") and netloc
    if simple and "@" not in netloc and "[" not in netloc and "#" not in netloc:
        name, colon, port_text = netloc.partition(":")
        if name and (not colon or port_text.isdigit()):
            port = int(port_text) if colon else (443 if scheme == "https" else 80)
            target = (slash + path).partition("#")[0] or "/"
            if query:
                target = f"{target}?{query}"
            return (scheme, name.lower(), port), netloc, target
    parts = urlsplit(url)  # the unusual: user info, IPv6 literals, fragments in odd places
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return (scheme, parts.hostname, port), parts.netloc.rpartition("@")[2], target


class Request:
    """A request rendered to bytes once; send it as often as needed with :meth:`HttpClient.send`.

    Args:
        method: HTTP method, e.g. ``GET``.
        url: absolute ``http://`` or ``https://`` URL, already percent-encoded.
        headers: extra headers (``Host`` and ``Content-Length`` are added).
        body: request body; ``POST``, ``PUT`` and ``PATCH`` always send a ``Content-Length``.

    Raises:
        ValueError: not an absolute http(s) URL.
    """

    __slots__ = ("body", "data", "headers", "method", "origin", "url")

    def __init__(
        self,
        method: str,
        url: str,
        headers: HeaderItems | None = None,
        body: bytes | None = None,
    ) -> None:
        self.origin, host, target = _split(url)
        self.method = method.upper()
        self.url = url
        self.headers = _header_items(headers)
        self.body = body
        lines = [f"{self.method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        if body is not None or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        self.data = head + body if body else head

    def header(self, name: str) -> str | None:
        """The value of one of the request's own headers (case-insensitive), if set."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


class Response:
    """An HTTP response; its body is complete unless it was requested with ``stream=True``.

    Attributes:
        status: the status code.
        headers: header names in lower case; repeated headers are joined with ``", "``.
        url: the URL that gave this answer (after redirects).
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_content",
        "_done",
        "_error",
        "_head",
        "_headers",
        "_stream",
        "_waiter",
        "status",
        "url",
    )

    def __init__(self, status: int, head: bytes, url: str, stream: bool) -> None:
        self.status = status
        self._head = head
        self._headers: dict[str, str] | None = None
        self.url = url
        self._stream = stream
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._conn: _Connection | None = None
        self._content: bytes | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Header names in lower case; repeated headers joined with ``", "`` (parsed lazily)."""
        headers = self._headers
        if headers is None:
            headers = {}
            for line in self._head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                key = name.strip().lower().decode("latin-1")
                text = value.strip().decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            self._headers = headers
        return headers

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived."""
        return self._done

    @property
    def content(self) -> bytes:
        """The whole body of a response that was not streamed.

        Raises:
            RuntimeError: the response is streamed, or not complete yet.
        """
        if self._content is None:
            if self._stream or not self._done:
                raise RuntimeError("streamed response: use read() or read_chunk()")
            self._content = b"".join(self._chunks)
            self._chunks.clear()
        return self._content

    def json(self) -> Any:
        """The body parsed as JSON (``None`` for an empty body)."""
        data = self.content
        return json.loads(data) if data else None

    async def read_chunk(self) -> bytes:
        """The next piece of the body; ``b""`` once it is complete.

        Raises:
            HttpError: the connection failed or timed out mid-body.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            conn = self._conn
            if conn is None:  # pragma: no cover - a live body always has its connection
                raise ConnectionClosed("response body lost its connection")
            waiter = conn.loop.create_future()
            self._waiter = waiter
            conn.last_activity = conn.loop.time()
            try:
                await waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        conn = self._conn
        if conn is not None and conn.paused and self._buffered < _LOW_WATER:
            conn.resume()
        return chunk

    async def read(self) -> bytes:
        """The rest of the body."""
        if not self._stream:
            if not self._done:  # pragma: no cover - non-streamed answers arrive complete
                raise RuntimeError("response not complete")
            return self.content
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Stop reading: an unfinished body closes its connection (a cut download)."""
        conn = self._conn
        if conn is not None and not self._done:
            conn.abort(ConnectionClosed("response closed by the client"))
        self._chunks.clear()
        self._buffered = 0

    # -- fed by the connection --------------------------------------------------------------

    def _push(self, data: bytes) -> None:
        self._chunks.append(data)
        if self._stream:
            self._buffered += len(data)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _finish(self) -> None:
        self._done = True
        self._conn = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._conn = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _value(lower_head: bytes, key: bytes) -> bytes | None:
    """The value of the header ``key`` (CRLF, lower-case name, colon) in a lower-cased head."""
    at = lower_head.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = lower_head.find(b"\r\n", start)
    return (lower_head[start:end] if end >= 0 else lower_head[start:]).strip()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses responses as they arrive."""

    def __init__(self, client: HttpClient, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.paused = False
        self.last_activity = 0.0
        self.got_bytes = False
        self._active = False
        self._buf = b""
        self._state = _IDLE
        self._remaining = 0
        self._head_waiter: asyncio.Future[Response] | None = None
        self._resp: Response | None = None
        self._url = ""
        self._stream = False
        self._no_body = False
        self._keep_alive = True

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.got_bytes = True
        if self._buf:
            data = self._buf + data
            self._buf = b""
        try:
            self._feed(data)
        except ProtocolError as exc:
            self.abort(exc)
        except (ValueError, IndexError) as exc:
            self.abort(ProtocolError(f"malformed response: {exc}"))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        if self._state == _UNTIL_CLOSE:
            self._complete()
        elif self._active:
            self._fail(ConnectionClosed(f"connection closed mid-response ({exc or 'EOF'})"))

    def pause_writing(self) -> None:  # pragma: no cover - requests are small
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # -- used by the client -----------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """Whether someone waits for bytes from the server right now."""
        if self._head_waiter is not None:
            return True
        resp = self._resp
        return resp is not None and resp._waiter is not None

    def start(self, request: Request, stream: bool) -> asyncio.Future[Response]:
        """Write ``request``; the future resolves with the head (streamed) or whole answer."""
        if self.transport is None or self.closed:
            raise ConnectionClosed("connection not open")
        waiter: asyncio.Future[Response] = self.loop.create_future()
        self._head_waiter = waiter
        self._active = True
        self._state = _HEAD
        self._url = request.url
        self._stream = stream
        self._no_body = request.method == "HEAD"
        self._keep_alive = True
        self._buf = b""
        self.got_bytes = False
        self.last_activity = self.loop.time()
        self.transport.write(request.data)
        return waiter

    def resume(self) -> None:
        """Read from the socket again (the streamed body was consumed)."""
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.last_activity = self.loop.time()
            self.transport.resume_reading()

    def abort(self, exc: BaseException) -> None:
        """Close at once; a request in flight fails with ``exc``."""
        if self._active:
            self._fail(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close an idle connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- parsing ----------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        while data:
            state = self._state
            if state == _HEAD:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > _MAX_HEAD:
                        raise ProtocolError("response head too large")
                    self._buf = data
                    return
                head, data = data[:end], data[end + 4 :]
                self._on_head(head)
            elif state in (_LENGTH, _CHUNK_DATA):
                size = len(data)
                resp = self._resp
                if resp is None:  # pragma: no cover - set with the head
                    raise ProtocolError("body without a response")
                if size < self._remaining:
                    resp._push(data)
                    self._remaining -= size
                    self._check_pause(resp)
                    return
                resp._push(data[: self._remaining])
                data = data[self._remaining :]
                self._remaining = 0
                if state == _LENGTH:
                    self._complete()
                else:
                    self._state = _CHUNK_CRLF
                    self._check_pause(resp)
            elif state == _CHUNK_SIZE:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > 1024:
                        raise ProtocolError("chunk size line too long")
                    self._buf = data
                    return
                size = int(data[:end].split(b";", 1)[0].strip(), 16)
                data = data[end + 2 :]
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_CRLF:
                if len(data) < 2:
                    self._buf = data
                    return
                if data[:2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                data = data[2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = data.find(b"\r\n")
                if end < 0:
                    self._buf = data
                    return
                line, data = data[:end], data[end + 2 :]
                if not line:
                    self._complete()
            elif state == _UNTIL_CLOSE:
                resp = self._resp
                if resp is None:  # pragma: no cover - set with the head
                    raise ProtocolError("body without a response")
                resp._push(data)
                self._check_pause(resp)
                return
            else:  # _IDLE: bytes nobody asked for
                raise ProtocolError("data received outside a response")

    def _on_head(self, head: bytes) -> None:
        if not head.startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
        status = int(head[9:12])
        if 100 <= status < 200:
            return  # 100 Continue and friends: the real answer follows.
        # Only three headers matter to the parser: find them without parsing the rest.
        lower = head.lower()
        connection = _value(lower, b"\r\nconnection:") or b""
        if head.startswith(b"HTTP/1.0"):
            self._keep_alive = b"keep-alive" in connection
        elif b"close" in connection:
            self._keep_alive = False
        resp = Response(status, head, self._url, self._stream)
        resp._conn = self
        self._resp = resp
        if self._no_body or status in (204, 304):
            self._complete()
            return
        encoding = _value(lower, b"\r\ntransfer-encoding:")
        if encoding is not None and b"chunked" in encoding:
            self._state = _CHUNK_SIZE
        elif (length := _value(lower, b"\r\ncontent-length:")) is not None:
            self._remaining = int(length)
            if self._remaining < 0:
                raise ProtocolError("negative Content-Length")
            self._state = _LENGTH
            if self._remaining == 0:
                self._complete()
                return
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
        if self._stream:
            self._resolve_head(resp)

    def _check_pause(self, resp: Response) -> None:
        transport = self.transport
        if self._stream and not self.paused and resp._buffered > _HIGH_WATER and transport:
            self.paused = True
            transport.pause_reading()

    def _resolve_head(self, resp: Response) -> None:
        waiter = self._head_waiter
        self._head_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(resp)

    def _complete(self) -> None:
        resp = self._resp
        self._resp = None
        self._state = _IDLE
        self._active = False
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        reusable = self._keep_alive and not self.closed
        self.client._release(self, reusable)
        if resp is not None:
            resp._finish()
            self._resolve_head(resp)

    def _fail(self, exc: BaseException) -> None:
        self._active = False
        self._state = _IDLE
        self.closed = True
        resp = self._resp
        self._resp = None
        waiter = self._head_waiter
        self._head_waiter = None
        self.client._release(self, False)
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if resp is not None:
            resp._fail(exc)


class HttpClient:
    """Keep-alive HTTP/1.1 client; at most ``connections`` requests (and connections) at once.

    Args:
        connections: the most requests in flight, and connections open, at any time.
        timeout: seconds a request may wait for the server without receiving a byte
            (connecting included).
        max_redirects: redirects followed per request.
        ssl_context: for ``https`` URLs; the system's default context when None.

    A streamed response holds its connection until its body is read to the end or it is
    closed (:meth:`Response.close`).
    """

    def __init__(
        self,
        *,
        connections: int = 64,
        timeout: float = 30.0,
        max_redirects: int = 8,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.connections = connections
        self.timeout = timeout
        self.max_redirects = max_redirects
        self._ssl = ssl_context
        self._free = connections
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._open: set[_Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self.opened = 0
        """Connections opened so far (a test of keep-alive)."""
        self.loop = asyncio.get_running_loop()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeaderItems | None = None,
        body: bytes | None = None,
        stream: bool = False,
        follow_redirects: bool = True,
    ) -> Response:
        """Build and send one request (see :meth:`send`)."""
        return await self.send(
            Request(method, url, headers, body), stream=stream, follow_redirects=follow_redirects
        )

    async def send(
        self, request: Request, *, stream: bool = False, follow_redirects: bool = True
    ) -> Response:
        """Send ``request`` and return the answer (after redirects, if followed).

        A redirect to another origin drops ``Authorization``, as curl and aiohttp do; 303 (and
        301/302 after a POST) continue with GET and no body.

        Raises:
            HttpError: no complete answer (connection refused or lost, timeout, bad HTTP, too
                many redirects).
        """
        response = await self._send_once(request, stream)
        hops = 0
        while (
            follow_redirects
            and response.status in REDIRECTS
            and (location := response.headers.get("location"))
        ):
            if not response.complete:
                await response.read()
            hops += 1
            if hops > self.max_redirects:
                raise HttpError(f"more than {self.max_redirects} redirects from {request.url}")
            target = urljoin(request.url, location)
            method, body = request.method, request.body
            if (response.status == 303 and method != "HEAD") or (
                response.status in (301, 302) and method == "POST"
            ):
                method, body = "GET", None
            headers = request.headers
            follow = Request(method, target, headers, body)
            if follow.origin != request.origin:
                headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
                follow = Request(method, target, headers, body)
            request = follow
            response = await self._send_once(request, stream)
        return response

    async def close(self) -> None:
        """Close every connection and stop the timeout sweeper."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for conn in list(self._open):
            if conn._active:
                conn.abort(ConnectionClosed("client closed"))
            else:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)

    # -- internals --------------------------------------------------------------------------

    async def _send_once(self, request: Request, stream: bool) -> Response:
        if self._closed:
            raise HttpError("client is closed")
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        for attempt in (0, 1):
            if self._free > 0:
                self._free -= 1
            else:
                await self._wait_slot()
            # A retry always takes a fresh connection: other idle ones may be stale too.
            conn = None if attempt else self._idle_connection(request.origin)
            if conn is None:
                try:
                    conn = await self._connect(request.origin)
                except BaseException:
                    self._give_slot()
                    raise
            self._busy.add(conn)
            try:
                waiter = conn.start(request, stream)
            except ConnectionClosed:
                self._release(conn, False)  # closed between connecting and sending
                if attempt == 0:
                    continue
                raise
            try:
                return await waiter
            except ConnectionClosed:
                # A kept-alive connection the server closed while idle: try a fresh one once.
                if attempt == 0 and conn.reused and not conn.got_bytes:
                    continue
                raise
            except asyncio.CancelledError:
                if conn._active:
                    conn.abort(ConnectionClosed("request cancelled"))
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _wait_slot(self) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_slot()  # handed to us just as we were cancelled: pass it on
            raise

    def _give_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next in line
                return
        self._free += 1

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def _close_one_idle(self) -> None:
        for idle in self._idle.values():
            while idle:
                conn = idle.pop(0)
                if not conn.closed:
                    conn.close()
                    self._open.discard(conn)
                    return

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        if len(self._open) >= self.connections:
            self._close_one_idle()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(self.timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: _Connection(self, origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context else None,
                )
        except TimeoutError as exc:
            raise RequestTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise ConnectionClosed(f"cannot connect to {host}:{port}: {exc}") from exc
        self._open.add(protocol)
        self.opened += 1
        return protocol

    def _release(self, conn: _Connection, reusable: bool) -> None:
        """Called by a connection exactly once per request, when it completed or failed."""
        if conn not in self._busy:
            return
        self._busy.discard(conn)
        self._give_slot()
        if reusable and not self._closed:
            self._idle.setdefault(conn.origin, []).append(conn)
        else:
            self._open.discard(conn)
            if not conn.closed:
                conn.close()

    def _forget(self, conn: _Connection) -> None:
        self._open.discard(conn)

    async def _sweep(self) -> None:
        interval = min(1.0, max(self.timeout / 4, 0.05))
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self._busy):
                if conn.waiting and now - conn.last_activity > self.timeout:
                    conn.abort(RequestTimeout(f"no answer within {self.timeout:g}s"))
