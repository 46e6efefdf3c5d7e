"""Registry settings, from ``GAGGLE_REGISTRY_*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    """Where the registry listens."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_REGISTRY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8081
    bootstrap_key: str | None = Field(None, pattern=r"^$|^[a-z0-9]{12}:[0-9a-f]{64}$")
    """``<key id>:<sha256>`` of an admin key to create for ``bootstrap_tenant`` if it has no key
    with that id yet. ``gaggle-stack`` sets it for the key it writes to ``.gaggle/admin.key``;
    ``gaggle-admin-key`` makes one for other deployments. Empty: none."""
    bootstrap_tenant: str = "default"
