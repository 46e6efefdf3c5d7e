"""Artifacts settings, from ``GAGGLE_ARTIFACTS_*`` (storage itself: ``GAGGLE_STORAGE_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ArtifactsSettings(BaseSettings):
    """Where the artifacts service listens and what it accepts."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_ARTIFACTS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8082
    max_upload_bytes: int = Field(8 * 1024**3, ge=1024)
    """Largest image taken (413 beyond); also the limit for fetching external software."""
    external_timeout_s: float = Field(300.0, gt=0)
    """How long fetching an external image for hashing and parsing may take."""
    allow_private_urls: bool = True
    """Whether external software may live on loopback or private addresses."""
    signer_purpose: Literal["emailProtection", "codeSigning"] = "emailProtection"
    """Extended key usage a CMS signer's certificate must allow, if it names any: SWUpdate's
    ``--cert-purpose`` (``emailProtection`` unless built or started otherwise)."""
