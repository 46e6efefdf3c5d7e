"""A server facing a fleet accepts a burst of new connections at once, however busy its loop.

Counted in event loop iterations, not seconds: under load one iteration of the gateway's loop
handles hundreds of requests and takes up to a second, so a loop that accepts one connection
per iteration leaves a burst of devices waiting in the listen queue, their requests unread.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from gaggle_runtime.serve import ACCEPT_ALL_LOOP

BURST = 200


async def _iterations_to_accept(burst: int) -> int:
    """Loop iterations until a server has accepted ``burst`` connections opened at once.

    The server listens as uvicorn does for one process (``host`` and ``port``); every accepted
    connection must have TCP_NODELAY, or each small answer waits ~40 ms for a delayed ACK.
    """
    loop = asyncio.get_running_loop()
    accepted = 0

    class Counting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal accepted
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            accepted += 1

    server = await loop.create_server(Counting, "127.0.0.1", 0, backlog=2048)
    port = server.sockets[0].getsockname()[1]
    # The kernel completes each handshake; the connections wait in the listen queue.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(burst)]
    done: asyncio.Future[int] = loop.create_future()
    iterations = 0

    def tick() -> None:  # runs once per loop iteration: each call schedules the next
        nonlocal iterations
        iterations += 1
        if accepted >= burst:
            done.set_result(iterations)
        elif iterations > 10 * burst:
            done.set_exception(AssertionError(f"only {accepted} of {burst} accepted"))
        else:
            loop.call_soon(tick)

    loop.call_soon(tick)
    try:
        return await done
    finally:
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()


def _run_on(loop_name: str) -> int:
    factory = uvicorn.Config(app=None, loop=loop_name).get_loop_factory()
    assert factory is not None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_iterations_to_accept(BURST))


def test_the_gateway_loop_accepts_a_burst_of_connections_in_a_few_iterations() -> None:
    assert _run_on(ACCEPT_ALL_LOOP) <= 10


def test_uvloop_accepts_one_connection_per_iteration() -> None:
    # Why the gateway does not use uvloop: should this fail, uvloop accepts bursts again.
    assert _run_on("uvloop") >= BURST // 2
