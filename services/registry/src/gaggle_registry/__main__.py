"""``gaggle-registry``: settings -> app -> serve."""

from __future__ import annotations

from gaggle_registry.app import build_app
from gaggle_registry.settings import RegistrySettings
from gaggle_runtime.serve import main as serve_main


def main() -> None:
    """Run the registry service until interrupted."""
    serve_main("registry", build_app, RegistrySettings)


if __name__ == "__main__":
    main()
