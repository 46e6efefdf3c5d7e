"""Which store a process uses, from ``GAGGLE_STORAGE_*``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gaggle_storage.base import ObjectStore
from gaggle_storage.local import LocalStore

if TYPE_CHECKING:
    from minio import Minio


class StorageSettings(BaseSettings):
    """Object store settings shared by artifacts (writes) and the gateway (reads)."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_STORAGE_", extra="ignore")

    backend: Literal["local", "s3"] = "local"
    dir: Path = Path(".gaggle/objects")
    s3_endpoint: str = "127.0.0.1:9000"
    """``host:port`` of the S3 API."""
    s3_public_endpoint: str | None = None
    """``host:port`` devices use for presigned URLs, if not ``s3_endpoint``."""
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_bucket: str = "gaggle-artifacts"
    presign: bool = False
    """Gateway: redirect downloads to presigned S3 URLs instead of streaming them."""
    presign_expiry_s: int = Field(3600, ge=60, le=7 * 86400)


def open_store(settings: StorageSettings) -> ObjectStore:
    """The configured store; the S3 client is imported only for the S3 back-end."""
    if settings.backend == "local":
        return LocalStore(settings.dir)
    from minio import Minio

    from gaggle_storage.s3 import S3Store

    def client(endpoint: str) -> Minio:
        return Minio(
            endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
        )

    public = client(settings.s3_public_endpoint) if settings.s3_public_endpoint else None
    return S3Store(client(settings.s3_endpoint), settings.s3_bucket, public)
