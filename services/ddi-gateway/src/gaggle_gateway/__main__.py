"""``gaggle-gateway``: settings -> app -> serve (one process, or several workers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gaggle_gateway.app import build_app
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.metrics import MULTIPROC_ENV
from gaggle_runtime.serve import ACCEPT_ALL_LOOP, run
from gaggle_runtime.serve import main as serve_main


@contextlib.contextmanager
def shared_metrics() -> Iterator[Path]:
    """A folder for the workers' shared metrics, named in ``PROMETHEUS_MULTIPROC_DIR``.

    The folder given there is emptied of earlier runs' files (counters start at zero, as a
    single process's do); without one, a temporary folder is made, and removed (the variable
    with it) at the end.
    Workers are started after this, so they import prometheus_client with the variable set.
    """
    given = os.environ.get(MULTIPROC_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="gaggle-gateway-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):
        old.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    try:
        yield folder
    finally:
        if not given:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    """Run the gateway until interrupted."""
    settings = GatewaySettings()
    if settings.workers > 1:
        # Each worker process builds its own app (and its own KV mirror) from the environment.
        # uvloop here: asyncio's loop sets no TCP_NODELAY on the workers' shared socket (40 ms
        # delayed ACKs per answer); each worker's loop accepts one connection per iteration.
        # One scrape of /metrics, whichever worker answers it, sums the counters of all.
        with shared_metrics():
            run(
                "gaggle_gateway.app:create_app",
                settings.host,
                settings.port,
                workers=settings.workers,
            )
        return
    # Devices connect in bursts: a loop that accepts them all at once (see ACCEPT_ALL_LOOP).
    serve_main("gateway", build_app, GatewaySettings, loop=ACCEPT_ALL_LOOP)


if __name__ == "__main__":
    main()
