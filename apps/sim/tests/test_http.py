"""The simulator's HTTP/1.1 client against a tiny local server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from apps.sim.tests.conftest import MiniServer, Reply, Seen
from gaggle_sim.http import (
    ConnectionClosed,
    HttpClient,
    HttpError,
    Request,
    RequestTimeout,
)


async def test_keep_alive_reuses_one_connection_for_sequential_requests(mini_server) -> None:
    server = await mini_server(lambda req: Reply(200, req.path.encode()))
    async with HttpClient(connections=4) as client:
        for i in range(50):
            r = await client.request("GET", f"{server.url}/n/{i}")
            assert r.status == 200
            assert r.content == f"/n/{i}".encode()
        assert client.opened == 1
    assert server.connections == 1
    assert {r.connection for r in server.requests} == {1}


async def test_prepared_request_is_sent_many_times_with_its_headers(mini_server) -> None:
    server = await mini_server(lambda req: Reply.json({"auth": req.headers.get("authorization")}))
    async with HttpClient() as client:
        request = Request("GET", f"{server.url}/x?q=1", {"Authorization": "TargetToken t"})
        for _ in range(3):
            r = await client.send(request)
            assert r.json() == {"auth": "TargetToken t"}
    assert [r.path for r in server.requests] == ["/x?q=1"] * 3
    assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"


async def test_concurrency_is_bounded_by_connections(mini_server) -> None:
    server = await mini_server(lambda req: Reply(200, b"ok", delay=0.02))
    async with HttpClient(connections=4) as client:
        answers = await asyncio.gather(
            *(client.request("GET", f"{server.url}/{i}") for i in range(40))
        )
        assert {r.status for r in answers} == {200}
        assert client.opened <= 4
    assert server.max_active <= 4
    assert server.connections <= 4


async def test_post_and_put_send_their_body_and_length(mini_server) -> None:
    server = await mini_server(lambda req: Reply(200, req.body[::-1]))
    async with HttpClient() as client:
        r = await client.request("PUT", f"{server.url}/c", body=b"abc")
        assert r.content == b"cba"
        r = await client.request("POST", f"{server.url}/c")
        assert r.content == b""
    assert server.requests[0].headers["content-length"] == "3"
    assert server.requests[1].headers["content-length"] == "0"


async def test_chunked_body_with_extensions_and_trailers(mini_server) -> None:
    payload = os.urandom(10_000)
    server = await mini_server(lambda req: Reply(200, payload, chunked=True, chunk_size=333))
    async with HttpClient() as client:
        for _ in range(3):  # and the connection stays usable afterwards
            r = await client.request("GET", f"{server.url}/chunked")
            assert r.content == payload
        streamed = await client.request("GET", f"{server.url}/chunked", stream=True)
        assert await streamed.read() == payload
    assert server.connections == 1


async def test_body_until_close_and_connection_close_header(mini_server) -> None:
    def handler(req: Seen) -> Reply:
        if req.path == "/eof":
            return Reply(200, b"x" * 5000, until_close=True)
        return Reply(200, b"bye", close=True)

    server = await mini_server(handler)
    async with HttpClient() as client:
        r = await client.request("GET", f"{server.url}/eof")
        assert r.content == b"x" * 5000
        r = await client.request("GET", f"{server.url}/close")
        assert r.content == b"bye"
        r = await client.request("GET", f"{server.url}/close")
        assert r.content == b"bye"
    assert server.connections == 3


async def test_head_and_204_have_no_body(mini_server) -> None:
    def handler(req: Seen) -> Reply:
        if req.method == "HEAD":
            return Reply(200, b"y" * 1234)
        return Reply(204)

    server = await mini_server(handler)
    async with HttpClient() as client:
        head = await client.request("HEAD", f"{server.url}/a")
        assert head.status == 200
        assert head.headers["content-length"] == "1234"
        assert head.content == b""
        empty = await client.request("DELETE", f"{server.url}/a")
        assert empty.status == 204
        assert empty.content == b""
        again = await client.request("HEAD", f"{server.url}/a")
        assert again.status == 200
    assert server.connections == 1


async def test_cut_download_resumes_with_range(mini_server) -> None:
    payload = os.urandom(3_000_000)

    def handler(req: Seen) -> Reply:
        spec = req.headers.get("range")
        if spec:
            start = int(spec.removeprefix("bytes=").removesuffix("-"))
            headers = {"Content-Range": f"bytes {start}-{len(payload) - 1}/{len(payload)}"}
            return Reply(206, payload[start:], headers)
        return Reply(200, payload)

    server = await mini_server(handler)
    async with HttpClient() as client:
        first = await client.request("GET", f"{server.url}/img", stream=True)
        got = bytearray()
        while len(got) < 1_000_000:
            got += await first.read_chunk()
        first.close()  # the device's network goes away mid-body
        cut = len(got)
        rest = await client.request(
            "GET", f"{server.url}/img", headers={"Range": f"bytes={cut}-"}, stream=True
        )
        assert rest.status == 206
        assert rest.headers["content-range"] == f"bytes {cut}-{len(payload) - 1}/{len(payload)}"
        got += await rest.read()
        assert bytes(got) == payload
        # The cut connection was closed, not reused mid-body; the client still works.
        assert (await client.request("GET", f"{server.url}/img")).content == payload
    assert [r.headers.get("range") for r in server.requests] == [None, f"bytes={cut}-", None]
    assert server.connections >= 2


async def test_slow_reader_applies_back_pressure_and_gets_every_byte(mini_server) -> None:
    payload = os.urandom(4_000_000)
    server = await mini_server(lambda req: Reply(200, payload))
    async with HttpClient() as client:
        r = await client.request("GET", f"{server.url}/big", stream=True)
        got = bytearray(await r.read_chunk())
        await asyncio.sleep(0.2)  # the server could have sent everything by now
        assert sum(map(len, r._chunks)) <= 1_000_000  # reading paused at the high-water mark
        while chunk := await r.read_chunk():
            got += chunk
            await asyncio.sleep(0.001)
        assert bytes(got) == payload
        assert r.complete
        assert (await client.request("GET", f"{server.url}/big")).content == payload
    assert server.connections == 1


async def test_redirect_to_another_origin_drops_authorization(mini_server) -> None:
    store = await mini_server(
        lambda req: Reply.json({"path": req.path, "auth": req.headers.get("authorization")})
    )

    def gateway(req: Seen) -> Reply:
        if req.path == "/presigned":
            return Reply(302, b"", {"Location": f"{store.url}/bucket/obj?X-Amz-Signature=s"})
        if req.path == "/relative":
            return Reply(307, b"moved", {"Location": "/final"})
        return Reply.json({"path": req.path, "auth": req.headers.get("authorization")})

    server = await mini_server(gateway)
    auth = {"Authorization": "TargetToken secret"}
    async with HttpClient() as client:
        r = await client.request("GET", f"{server.url}/presigned", headers=auth)
        assert r.status == 200
        assert r.json() == {"path": "/bucket/obj?X-Amz-Signature=s", "auth": None}
        assert r.url == f"{store.url}/bucket/obj?X-Amz-Signature=s"
        r = await client.request("GET", f"{server.url}/relative", headers=auth, stream=True)
        assert json.loads(await r.read()) == {"path": "/final", "auth": "TargetToken secret"}
        r = await client.request("GET", f"{server.url}/presigned", follow_redirects=False)
        assert r.status == 302


async def test_303_after_post_continues_with_get(mini_server) -> None:
    def handler(req: Seen) -> Reply:
        if req.path == "/form":
            return Reply(303, b"", {"Location": "/result"})
        return Reply(200, req.method.encode() + b" " + req.body)

    server = await mini_server(handler)
    async with HttpClient() as client:
        r = await client.request("POST", f"{server.url}/form", body=b"data")
        assert r.content == b"GET "


async def test_redirect_loop_is_an_error(mini_server) -> None:
    server = await mini_server(lambda req: Reply(302, b"", {"Location": req.path}))
    async with HttpClient(max_redirects=3) as client:
        with pytest.raises(HttpError, match="redirects"):
            await client.request("GET", f"{server.url}/loop")
    assert len(server.requests) == 4


async def test_timeout_when_the_server_does_not_answer(mini_server) -> None:
    server = await mini_server(lambda req: Reply(200, b"late", delay=2.0))
    async with HttpClient(timeout=0.2) as client:
        with pytest.raises(RequestTimeout):
            await client.request("GET", f"{server.url}/slow")


async def test_body_cut_by_the_server_is_an_error_and_the_client_recovers(mini_server) -> None:
    def handler(req: Seen) -> Reply:
        if req.path == "/cut":
            return Reply(200, b"z" * 100_000, cut_after=1000)
        return Reply(200, b"fine")

    server = await mini_server(handler)
    async with HttpClient() as client:
        with pytest.raises(ConnectionClosed):
            await client.request("GET", f"{server.url}/cut")
        r = await client.request("GET", f"{server.url}/cut", stream=True)
        with pytest.raises(ConnectionClosed):
            await r.read()
        assert (await client.request("GET", f"{server.url}/ok")).content == b"fine"


async def test_connection_closed_while_idle_is_retried_transparently(mini_server) -> None:
    server = await mini_server(lambda req: Reply(200, b"ok"))
    async with HttpClient() as client:
        assert (await client.request("GET", f"{server.url}/1")).content == b"ok"
        server.drop_idle_connections()  # as a server's keep-alive timeout does
        await asyncio.sleep(0.05)
        assert (await client.request("GET", f"{server.url}/2")).content == b"ok"
    assert server.connections == 2


async def test_request_racing_a_keep_alive_close_is_sent_again(mini_server) -> None:
    def handler(req: Seen) -> Reply:
        if req.connection == 1 and req.path == "/second":
            return Reply(drop=True)
        return Reply(200, req.path.encode())

    server = await mini_server(handler)
    async with HttpClient() as client:
        assert (await client.request("GET", f"{server.url}/first")).content == b"/first"
        assert (await client.request("PUT", f"{server.url}/second")).content == b"/second"
        # Only requests on a reused connection are sent again; a fresh one failing is an error.
        server.handler = lambda req: Reply(drop=True)
        with pytest.raises(ConnectionClosed):
            await client.request("GET", f"{server.url}/third")
    assert [(r.path, r.connection) for r in server.requests] == [
        ("/first", 1),
        ("/second", 1),
        ("/second", 2),
        ("/third", 2),
        ("/third", 3),
    ]


async def test_connection_refused_is_an_http_error() -> None:
    async with HttpClient(timeout=2) as client:
        with pytest.raises(HttpError):
            await client.request("GET", "http://127.0.0.1:9/nothing")


def test_request_rejects_relative_urls() -> None:
    with pytest.raises(ValueError, match="absolute"):
        Request("GET", "/controller/v1/x")


async def test_many_requests_per_second_over_few_connections(mini_server) -> None:
    # Not a benchmark: just that thousands of small requests flow without leaking connections.
    server = await mini_server(lambda req: Reply(200, b"{}"))
    async with HttpClient(connections=8) as client:
        request = Request("GET", f"{server.url}/poll")

        async def worker() -> int:
            n = 0
            for _ in range(250):
                n += (await client.send(request)).status == 200
            return n

        assert sum(await asyncio.gather(*(worker() for _ in range(8)))) == 2000
        assert client.opened <= 8


@pytest.mark.parametrize(
    ("url", "origin", "first_line"),
    [
        ("http://h:8080/T/controller/v1/d", ("http", "h", 8080), "GET /T/controller/v1/d HTTP/1.1"),
        ("HTTPS://Host/x?c=1#frag", ("https", "host", 443), "GET /x?c=1 HTTP/1.1"),
        ("http://h?q=1", ("http", "h", 80), "GET /?q=1 HTTP/1.1"),
        ("http://user:pw@h:81/p", ("http", "h", 81), "GET /p HTTP/1.1"),
        ("http://[::1]:9000/p", ("http", "::1", 9000), "GET /p HTTP/1.1"),
    ],
)
def test_request_parses_absolute_urls(url: str, origin: tuple, first_line: str) -> None:
    request = Request("get", url)
    assert request.origin == origin
    assert request.data.decode().split("\r\n")[0] == first_line


def test_the_same_client_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    payload = os.urandom(2_000_000)

    def handler(req: Seen) -> Reply:
        if req.path == "/chunked":
            return Reply(200, payload[:50_000], chunked=True, chunk_size=4096)
        if req.path == "/moved":
            return Reply(302, b"", {"Location": "/big"})
        spec = req.headers.get("range")
        if spec:
            start = int(spec.removeprefix("bytes=").removesuffix("-"))
            return Reply(206, payload[start:], {"Content-Range": f"bytes {start}-"})
        return Reply(200, payload)

    async def scenario() -> None:
        server = await MiniServer(handler).start()
        try:
            async with HttpClient(connections=2) as client:
                assert (await client.request("GET", f"{server.url}/chunked")).content == (
                    payload[:50_000]
                )
                first = await client.request("GET", f"{server.url}/moved", stream=True)
                got = bytearray(await first.read_chunk())
                first.close()
                rest = await client.request(
                    "GET", f"{server.url}/big", headers={"Range": f"bytes={len(got)}-"}
                )
                assert rest.status == 206
                assert bytes(got) + rest.content == payload
                statuses = await asyncio.gather(
                    *(client.request("GET", f"{server.url}/chunked") for _ in range(20))
                )
                assert {r.status for r in statuses} == {200}
                assert client.opened <= 4
        finally:
            await server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
