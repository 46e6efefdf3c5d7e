"""A TCP proxy a test can take away (every connection cut) and bring back on the same port.

It stands between a service and NATS or PostgreSQL, so a test can make a server unreachable
without stopping it. The target is a ``(host, port)`` pair or the path of a Unix socket.

For HTTP/1.1 through it, it can also keep what clients asked (``record``: each request's
method, path and headers, and the statuses answered) and cut one response midway
(``cut_after``), as a network that drops a download would.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import NamedTuple

from gaggle_servers import free_port

_REQUEST = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", re.S)
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class Request(NamedTuple):
    """A request head a client sent through the proxy; header names in lower case."""

    method: str
    path: str
    headers: dict[str, str]


def _request(method: bytes, path: bytes, head: bytes) -> Request:
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method.decode(), path.decode("latin-1"), headers)


class TcpProxy:
    """Listens on 127.0.0.1:``port`` and pipes each connection to ``target`` while started.

    Args:
        target: ``(host, port)``, or the path of a Unix socket.
        record: keep every HTTP/1.1 request head clients send (:attr:`requests`) and the status
            of every response that begins a read from the target (:attr:`statuses`).
        cut_after: cut one response, once: let this many bytes of it through, then abort both
            sides. Which one: the first to grow longer, counted from its connection's start; or,
            with ``cut_on``, from the first request ``cut_on`` accepts (``record`` is implied).
        cut_on: which request's response to cut.
    """

    def __init__(
        self,
        target: tuple[str, int] | str,
        *,
        record: bool = False,
        cut_after: int | None = None,
        cut_on: Callable[[Request], bool] | None = None,
    ) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.record = record or cut_on is not None
        self.cut_after = cut_after
        self.cut_on = cut_on
        self.requests: list[Request] = []
        self.statuses: list[int] = []
        self.cut = False
        """Whether a response was cut; a test sets it to cut none from now on."""
        self._chosen = False

    async def start(self) -> None:
        """Listen again on the same port."""
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and cut every connection now (no graceful close)."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if isinstance(self.target, str):
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}
        passed = 0
        """Bytes of responses let through on this connection."""
        cut_from: int | None = 0 if self.cut_on is None else None
        """Where on this connection the response to cut began, once known."""
        pending = b""
        body = 0
        """Bytes of the last request's body still to come."""

        def heads(data: bytes) -> None:
            nonlocal pending, body, cut_from
            pending += data
            while True:
                skipped = min(body, len(pending))
                pending, body = pending[skipped:], body - skipped
                if body or not (m := _REQUEST.search(pending)):
                    return
                pending = pending[m.end() :]
                request = _request(*m.groups())
                self.requests.append(request)
                with contextlib.suppress(ValueError):
                    body = max(0, int(request.headers.get("content-length", "0")))
                if self.cut_on is not None and not self._chosen and self.cut_on(request):
                    self._chosen = True
                    cut_from = passed

        async def upstream() -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    if self.record:
                        heads(data)
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.transport.abort()

        async def downstream() -> None:
            nonlocal passed
            with contextlib.suppress(Exception):
                while data := await up_reader.read(65536):
                    if self.record:
                        self.statuses += [int(s) for s in _STATUS.findall(data[:64])]
                    if self.cut_after is not None and cut_from is not None and not self.cut:
                        room = self.cut_after - (passed - cut_from)
                        if len(data) > room:
                            self.cut = True
                            writer.write(data[:room])
                            await writer.drain()
                            break
                    passed += len(data)
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()
            up_writer.transport.abort()

        await asyncio.gather(upstream(), downstream())
        self.links -= {writer, up_writer}
