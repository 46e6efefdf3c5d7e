"""Running an ASGI app: uvicorn with uvloop and httptools (TCP_NODELAY kept, no 40 ms stalls)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import uvicorn

from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.logs import configure_logging

OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,
    "log_config": None,
    "timeout_graceful_shutdown": 10,
}


def uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration every service uses, for serving in a running event loop."""
    return uvicorn.Config(app, host=host, port=port, **OPTIONS)


class ListenSettings(Protocol):
    """The part of a service's settings that says where it listens."""

    host: str
    port: int


def main(
    service: str,
    build_app: Callable[[CommonSettings, Any], Any],
    settings_class: Callable[[], ListenSettings],
) -> None:
    """A service's entry point: settings from the environment, logging, serve until stopped."""
    common = CommonSettings()
    settings = settings_class()
    configure_logging(service, common.log_level, json_lines=common.log_json)
    run(build_app(common, settings), settings.host, settings.port)


def run(app: Any, host: str, port: int, *, workers: int = 1) -> None:
    """Serve ``app`` until SIGINT/SIGTERM.

    ``app`` is an ASGI app, or the import string of an app factory
    (``"package.module:factory"``), which ``workers`` > 1 needs: uvicorn then runs that many
    processes on one socket, each calling the factory.
    """
    factory = isinstance(app, str)
    uvicorn.run(app, host=host, port=port, workers=workers, factory=factory, **OPTIONS)
