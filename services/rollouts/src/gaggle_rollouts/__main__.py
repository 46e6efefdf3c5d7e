"""``gaggle-rollouts``: settings -> app -> serve."""

from __future__ import annotations

from gaggle_rollouts.app import build_app
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.serve import main as serve_main


def main() -> None:
    """Run the rollouts service until interrupted."""
    serve_main("rollouts", build_app, RolloutsSettings)


if __name__ == "__main__":
    main()
