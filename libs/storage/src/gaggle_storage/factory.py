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
    """``host:port`` devices use for presigned URLs, if not ``s3_endpoint`` (a CDN or proxy in
    front of the bucket that passes the ``Host`` header and the query string on unchanged)."""
    s3_secure: bool = False
    s3_public_secure: bool | None = None
    """Whether presigned URLs use https; None: as ``s3_secure``."""
    s3_region: str = "us-east-1"
    s3_access_key: str = "minioadmin"
    s3_secret_key: SecretStr = SecretStr("minioadmin")
    s3_bucket: str = "gaggle-artifacts"
    presign: bool = False
    """Redirect downloads to presigned S3 URLs instead of streaming them: artifacts' operator
    downloads, and the gateway's for tenants whose ``download_redirect`` is not set."""
    presign_expiry_s: int = Field(300, ge=60, le=7 * 86400)
    """How long a presigned URL may be used to start a request. The store checks it when a
    request arrives, not while the body streams, so a slow device's long download is not cut;
    a resumed download (``Range``) asks the gateway again and gets a new URL. It must cover the
    clock difference between gateway and store, and the redirect's round trip."""


def open_store(settings: StorageSettings) -> ObjectStore:
    """The configured store; the S3 client is imported only for the S3 back-end."""
    if settings.backend == "local":
        return LocalStore(settings.dir)
    from minio import Minio

    from gaggle_storage.s3 import S3Store

    def client(endpoint: str, secure: bool) -> Minio:
        return Minio(
            endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=secure,
            region=settings.s3_region,
        )

    public_secure = settings.s3_secure
    if settings.s3_public_secure is not None:
        public_secure = settings.s3_public_secure
    public = None
    if settings.s3_public_endpoint or public_secure != settings.s3_secure:
        public = client(settings.s3_public_endpoint or settings.s3_endpoint, public_secure)
    return S3Store(client(settings.s3_endpoint, settings.s3_secure), settings.s3_bucket, public)
