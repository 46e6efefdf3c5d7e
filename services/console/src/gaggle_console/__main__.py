"""``gaggle-console``: settings -> app -> serve."""

from __future__ import annotations

from gaggle_console.app import build_app
from gaggle_console.settings import ConsoleSettings
from gaggle_runtime.serve import main as serve_main


def main() -> None:
    """Run the console until interrupted."""
    serve_main("console", build_app, ConsoleSettings)


if __name__ == "__main__":
    main()
