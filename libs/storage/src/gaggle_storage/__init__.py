"""Object storage behind one small interface: a local folder (embedded) or S3 (minio SDK)."""

from gaggle_storage.base import ObjectInfo, ObjectNotFoundError, ObjectStore
from gaggle_storage.cache import CachedStore
from gaggle_storage.factory import StorageSettings, open_store
from gaggle_storage.local import LocalStore
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
