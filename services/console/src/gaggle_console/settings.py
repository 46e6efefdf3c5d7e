"""Console settings, from ``GAGGLE_CONSOLE_*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    """Where the console listens, and where the services it shows answer."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_CONSOLE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8084
    registry_url: str = "http://127.0.0.1:8081"
    rollouts_url: str = "http://127.0.0.1:8083"
    artifacts_url: str = "http://127.0.0.1:8082"
    session_idle_s: float = Field(8 * 3600.0, gt=0)
    """A session unused this long is signed out."""
    max_sessions: int = Field(10_000, ge=1)
    """Sessions kept at most; the least recently used goes first."""
    online_within_s: float = Field(300.0, gt=0)
    """A device seen this recently counts as online on the overview."""
    overview_max_devices: int = Field(20_000, ge=1)
    """The overview counts at most this many devices (the first by controller id)."""
    request_timeout_s: float = Field(10.0, gt=0)
    """Timeout of each call to a service."""
