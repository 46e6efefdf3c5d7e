"""Running an ASGI app: uvicorn with uvloop and httptools (TCP_NODELAY kept, no 40 ms stalls).

The DDI gateway, alone in its process, runs on asyncio's loop instead (:data:`ACCEPT_ALL_LOOP`).

A service process can also be started as a warm spare (``GAGGLE_STANDBY_FD``, see
:func:`await_activation`): it does its imports, which are nearly all of a cold start's time, and
then waits until its supervisor tells it to serve, so a crashed service is replaced in a fraction
of a second (``make run`` keeps one spare per service).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, Protocol

import uvicorn

from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.logs import configure_logging

STANDBY_FD_VARIABLE = "GAGGLE_STANDBY_FD"
"""The inherited socket a warm spare says ``ready`` on, then reads ``start`` from."""
READY = b"ready\n"
START = b"start\n"

OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,
    "log_config": None,
    "timeout_graceful_shutdown": 10,
}


def await_activation() -> None:
    """In a warm spare, block until the supervisor says ``start``; return at once otherwise.

    A process started with ``GAGGLE_STANDBY_FD`` has imported its service already (``python -m``
    runs the package's ``__main__``, which imports the app) and now loads what uvicorn would load
    when it runs, says ``ready`` on that socket and waits. It reads its settings only once started,
    so it serves with the environment it was given. If the supervisor goes away first, it exits.
    """
    raw = os.environ.pop(STANDBY_FD_VARIABLE, None)
    if raw is None:
        return
    import uvicorn.loops.uvloop
    import uvicorn.protocols.http.httptools_impl  # noqa: F401 - loaded now, not when started

    with socket.socket(fileno=int(raw)) as sock, sock.makefile("rb") as stream:
        # A supervisor that needed us before we were ready has sent ``start`` and let go.
        with contextlib.suppress(OSError):
            sock.sendall(READY)
        if stream.readline() != START:
            sys.exit(0)


GC_THRESHOLDS = (50_000, 20, 20)
"""The cyclic collector's thresholds in a service process (Python's defaults: 700, 10, 10)."""


def settle_heap() -> None:
    """Keep the cyclic garbage collector off what lives as long as the process.

    Once the app is built, its modules, classes, schemas and routes (some 90,000 objects) are
    moved out of the collector's reach (:func:`gc.freeze`), and young objects are collected
    every :data:`GC_THRESHOLDS` allocations rather than every 700. A burst of events allocates
    millions of short-lived objects (rows, events, messages); with the defaults the collector
    walked the whole heap every few hundred thousand of them, about an eighth of the rollouts
    process's CPU while it absorbed feedback. Objects without cycles are freed at once as
    before; only cyclic garbage waits a little longer.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration every service uses, for serving in a running event loop."""
    return uvicorn.Config(app, host=host, port=port, **OPTIONS)


class ListenSettings(Protocol):
    """The part of a service's settings that says where it listens."""

    host: str
    port: int


ACCEPT_ALL_LOOP = "asyncio"
"""The event loop for a server that many clients connect to at once (the DDI gateway).

uvloop's libuv (since libuv#3696, 2022) accepts one connection per loop iteration. Under load
an iteration handles hundreds of requests and takes 0.1 to 1 s, so a burst of new connections (a
fleet whose keep-alive connections the server closed) waited in the listen queue for tens of
seconds, their requests unread, and the devices timed out. asyncio's loop accepts every waiting
connection (up to the backlog) each time the listening socket is readable. It sets TCP_NODELAY
only on the connections of a socket it opened itself (``host`` and ``port``), so it serves one
process; uvicorn workers share a socket it did not open, and are served on uvloop.
"""


def main(
    service: str,
    build_app: Callable[[CommonSettings, Any], Any],
    settings_class: Callable[[], ListenSettings],
    *,
    loop: str = "uvloop",
) -> None:
    """A service's entry point: settings from the environment, logging, serve until stopped."""
    await_activation()
    common = CommonSettings()
    settings = settings_class()
    configure_logging(service, common.log_level, json_lines=common.log_json)
    app = build_app(common, settings)
    settle_heap()
    run(app, settings.host, settings.port, loop=loop)


def run(app: Any, host: str, port: int, *, workers: int = 1, loop: str = "uvloop") -> None:
    """Serve ``app`` until SIGINT/SIGTERM.

    ``app`` is an ASGI app, or the import string of an app factory
    (``"package.module:factory"``), which ``workers`` > 1 needs: uvicorn then runs that many
    processes on one socket, each calling the factory. ``loop`` is uvicorn's event loop
    (``uvloop``, or :data:`ACCEPT_ALL_LOOP` for a server facing a fleet).
    """
    await_activation()
    factory = isinstance(app, str)
    options = {**OPTIONS, "loop": loop}
    uvicorn.run(app, host=host, port=port, workers=workers, factory=factory, **options)
