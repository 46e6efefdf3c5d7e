"""Object storage behind one small interface: a local folder (embedded) or S3 (minio SDK).

``S3Store`` (and with it the ``minio`` SDK, a few hundred milliseconds of imports) is loaded only
when asked for: a process on the local store starts, and restarts, without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gaggle_storage.base import ObjectInfo, ObjectNotFoundError, ObjectStore
from gaggle_storage.cache import CachedStore
from gaggle_storage.factory import StorageSettings, open_store
from gaggle_storage.local import LocalStore

if TYPE_CHECKING:
    from gaggle_storage.s3 import S3Store

__all__ = [
    "CachedStore",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3Store",
    "StorageSettings",
    "open_store",
]


def __getattr__(name: str) -> Any:
    """``S3Store``, imported on first use."""
    if name == "S3Store":
        from gaggle_storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
