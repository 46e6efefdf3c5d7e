"""``gaggle-artifacts``: settings -> app -> serve."""

from __future__ import annotations

from gaggle_artifacts.app import build_app
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_runtime.serve import main as serve_main


def main() -> None:
    """Run the artifacts service until interrupted."""
    serve_main("artifacts", build_app, ArtifactsSettings)


if __name__ == "__main__":
    main()
