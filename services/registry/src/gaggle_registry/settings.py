"""Registry settings, from ``GAGGLE_REGISTRY_*``."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    """Where the registry listens."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_REGISTRY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8081
