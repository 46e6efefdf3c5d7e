"""Rollouts settings, from ``GAGGLE_ROLLOUTS_*``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RolloutsSettings(BaseSettings):
    """Where the rollouts service listens."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_ROLLOUTS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8083
    sweep_s: float = 2.0
    """How often every active rollout is looked at, besides when something changes it."""
    window_s: float = 30.0
    """How often maintenance windows of open actions are re-checked."""
    force_s: float = Field(1.0, gt=0)
    """How often open time-forced actions are checked for their force time."""
    health_s: float = Field(5.0, gt=0)
    """How often actions are checked against their time-outs and soaks (health.py): a limit
    is enforced this much late at most."""
    lookup_timeout_s: float = Field(2.0, gt=0)
    """How long to wait for artifacts or registry about an id rollouts was not told of yet."""
