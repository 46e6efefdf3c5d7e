"""What the artifacts routes are given, from the parts ``app.py`` puts in ``app.state``."""

from __future__ import annotations

from typing import Annotated

from gaggle_artifacts.repository import Repo
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_artifacts.trust_store import TrustStore
from gaggle_artifacts.uploads import Gate
from gaggle_runtime.state import part
from gaggle_storage import ObjectStore, StorageSettings

Catalogue = Annotated[Repo, part("repo")]
Store = Annotated[ObjectStore, part("store")]
"""Where uploaded images' bytes are kept."""
Settings = Annotated[ArtifactsSettings, part("settings")]
Storage = Annotated[StorageSettings, part("storage")]
Judge = Annotated[Gate, part("gate")]
"""The trust store and policies every image is checked against."""
Trust = Annotated[TrustStore, part("trust")]
