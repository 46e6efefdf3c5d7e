"""What the artifacts routes are given, from the parts ``app.py`` puts in ``app.state``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from gaggle_artifacts.repository import Repo
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_storage import ObjectStore, StorageSettings


def state(name: str) -> Any:
    """A dependency giving ``app.state.<name>``."""

    def part(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(part)


Catalogue = Annotated[Repo, state("repo")]
Store = Annotated[ObjectStore, state("store")]
"""Where uploaded images' bytes are kept."""
Settings = Annotated[ArtifactsSettings, state("settings")]
Storage = Annotated[StorageSettings, state("storage")]
