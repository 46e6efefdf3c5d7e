"""A TCP proxy a test can take away (every connection cut) and bring back on the same port.

It stands between a service and NATS or PostgreSQL, so a test can make a server unreachable
without stopping it. The target is a ``(host, port)`` pair or the path of a Unix socket.
"""

from __future__ import annotations

import asyncio
import contextlib

from gaggle_servers import free_port


class TcpProxy:
    """Listens on 127.0.0.1:``port`` and pipes each connection to ``target`` while started."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

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

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links -= {writer, up_writer}
