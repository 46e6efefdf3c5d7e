"""``gaggle-gateway``: settings -> app -> serve (one process, or several workers)."""

from __future__ import annotations

from gaggle_gateway.app import build_app
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.serve import ACCEPT_ALL_LOOP, run
from gaggle_runtime.serve import main as serve_main


def main() -> None:
    """Run the gateway until interrupted."""
    settings = GatewaySettings()
    if settings.workers > 1:
        # Each worker process builds its own app (and its own KV mirror) from the environment.
        # uvloop here: asyncio's loop sets no TCP_NODELAY on the workers' shared socket (40 ms
        # delayed ACKs per answer); each worker's loop accepts one connection per iteration.
        run("gaggle_gateway.app:create_app", settings.host, settings.port, workers=settings.workers)
        return
    # Devices connect in bursts: a loop that accepts them all at once (see ACCEPT_ALL_LOOP).
    serve_main("gateway", build_app, GatewaySettings, loop=ACCEPT_ALL_LOOP)


if __name__ == "__main__":
    main()
