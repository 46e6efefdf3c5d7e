"""``gaggle-gateway``: settings -> app -> serve (one process, or several workers)."""

from __future__ import annotations

from gaggle_gateway.app import build_app
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.serve import main as serve_main
from gaggle_runtime.serve import run


def main() -> None:
    """Run the gateway until interrupted."""
    settings = GatewaySettings()
    if settings.workers > 1:
        # Each worker process builds its own app (and its own KV mirror) from the environment.
        run("gaggle_gateway.app:create_app", settings.host, settings.port, workers=settings.workers)
        return
    serve_main("gateway", build_app, GatewaySettings)


if __name__ == "__main__":
    main()
