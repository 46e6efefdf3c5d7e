"""Gateway settings, from ``GAGGLE_GATEWAY_*``."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gaggle_contracts import names
from gaggle_contracts.kv import TenantConfig


class GatewaySettings(BaseSettings):
    """Where the gateway listens and what a tenant without its own configuration gets."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(1, ge=1, le=64)
    """Worker processes sharing the port; each keeps its own mirror of the KV buckets."""
    tenants: str = "default"
    """Tenants that exist without a ``tenants`` KV entry or an API key, comma-separated.

    Any other tenant is answered 404 until an operator creates it (README: Tenants)."""
    polling_sleep: str = Field("00:01:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$")
    """Default polling interval for tenants without a configuration in KV ``tenants``."""
    anonymous: bool = True
    """Default: accept polls without credentials (embedded default, like gooseBit)."""
    auto_register: bool = True
    """Default: register unknown controller ids on their first poll."""
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    """Largest configData (and other small JSON) body taken."""
    max_feedback_bytes: int = Field(512 * 1024, ge=1024)
    """Largest feedback body taken (SWUpdate uploads ~50 log lines per feedback)."""
    publish_timeout_s: float = Field(3.0, gt=0)
    """How long a device report waits for JetStream's ack before it is answered 429."""
    busy_retry_after_s: int = Field(5, ge=1, le=3600)
    """``Retry-After`` of that 429. A NATS restart is ready again in 2 to 4 s, so a device that
    heeds it finds the bus back; rauc-hawkbit-updater retries after 1 s regardless. Also the
    ``Retry-After`` of requests refused while the KV mirror is behind, and the least sleep an
    idle device is handed meanwhile."""
    poll_jitter: float = Field(0.1, ge=0, le=0.5)
    """Largest share by which a device's polling sleep moves from the tenant's (0.1: up to 10%
    either way), fixed per device by a hash of its ids, so a fleet started together spreads out.
    The whole seconds handed out are rounded down or up by turns, so the mean is kept."""
    busy_window_s: float = Field(10.0, gt=0)
    """How far back report acknowledgements (their time, and reports answered 429 because the
    bus did not acknowledge them) count towards a busy gateway."""
    busy_ack_latency_s: float = Field(0.25, gt=0)
    """Mean JetStream ack time of reports within that window from which the idle polling sleep is
    stretched (by mean / this). A quiet stack acknowledges in milliseconds."""
    busy_threshold: int = Field(5, ge=1)
    """Refused reports within that window from which the polling sleep is stretched."""
    busy_max_factor: float = Field(4.0, ge=1, le=100)
    """Most the idle polling sleep is stretched while busy."""
    seen_flush_s: float = Field(1.0, gt=0)
    """How often batched ``device.seen`` sightings are published."""
    rediscover_after_s: float = Field(30.0, gt=0)
    """An unknown device that still polls is announced again after this long."""
    artifact_cache_mib: int = Field(64, ge=0)
    """Memory for the artifacts devices download most (0: none); a rollout's image is read once."""
    artifact_cache_object_mib: int = Field(16, ge=0)
    """Largest artifact kept in that memory; larger ones are streamed from the store each time."""

    final_memory_s: float = Field(600.0, gt=0)
    """How long an acknowledged final report is remembered after the KV mirror caught up: a
    retry of it within this time is answered 200 without a second event."""
    final_memory_max: int = Field(100_000, ge=1)
    """Most final reports remembered at once (the oldest are forgotten first)."""

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, value: str) -> str:
        return ",".join(names.normalize_tenant(t.strip()) for t in value.split(",") if t.strip())

    def configured_tenants(self) -> frozenset[str]:
        """The tenants of ``tenants``, normalised."""
        return frozenset(t for t in self.tenants.split(",") if t)

    def default_tenant_config(self) -> TenantConfig:
        """The configuration of a tenant that has none in KV."""
        return TenantConfig(
            polling_sleep=self.polling_sleep,
            anonymous=self.anonymous,
            auto_register=self.auto_register,
        )
