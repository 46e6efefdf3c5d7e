"""TcpProxy between httpx and a small HTTP/1.1 server: it records requests and cuts a response."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from gaggle_servers import free_port
from gaggle_testing.proxy import Request, TcpProxy

SIZE = 50_000
"""Bytes of every response body."""


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request on the connection with ``SIZE`` bytes (keep-alive)."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = re.search(rb"content-length: *(\d+)", head.lower())
            if length:
                await reader.readexactly(int(length.group(1)))
            status = b"206 Partial Content" if b"range:" in head.lower() else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % SIZE)
            writer.write(b"x" * SIZE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield ("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


async def test_records_requests_and_cuts_the_first_long_response_once(
    target: tuple[str, int],
) -> None:
    proxy = TcpProxy(target, record=True, cut_after=1000)
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}"
    try:
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"{url}/first")
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{url}/again", headers={"Range": "bytes=1000-"})
            assert len(r.content) == SIZE
    finally:
        await proxy.stop()
    assert proxy.cut
    assert [(m, p) for m, p, _ in proxy.requests] == [("GET", "/first"), ("GET", "/again")]
    assert proxy.requests[1].headers["range"] == "bytes=1000-"
    assert proxy.statuses == [200, 206]


async def test_cuts_only_the_response_to_the_chosen_request(target: tuple[str, int]) -> None:
    def chosen(request: Request) -> bool:
        return request.path == "/big"

    proxy = TcpProxy(target, cut_after=1000, cut_on=chosen)
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}"
    try:
        async with httpx.AsyncClient() as client:
            # Earlier responses on the same connection pass whole and do not count.
            for _ in range(2):
                assert len((await client.get(f"{url}/small")).content) == SIZE
            # A request body is skipped, even one that looks like a request head.
            r = await client.put(f"{url}/body", content=b"GET /no HTTP/1.1\r\nx: y\r\n\r\n")
            assert r.status_code == 200
            assert not proxy.cut
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"{url}/big")
            assert proxy.cut
            assert len((await client.get(f"{url}/big")).content) == SIZE
    finally:
        await proxy.stop()
    paths = [p for _, p, _ in proxy.requests]
    assert paths == ["/small", "/small", "/body", "/big", "/big"]


async def test_without_options_it_only_pipes(target: tuple[str, int]) -> None:
    proxy = TcpProxy(target)
    await proxy.start()
    try:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{proxy.port}/x")
            assert len(r.content) == SIZE
    finally:
        await proxy.stop()
    assert proxy.requests == [] and proxy.statuses == [] and not proxy.cut
