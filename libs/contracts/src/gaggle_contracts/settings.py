"""Settings shared by every Gaggle process, read from ``GAGGLE_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Where the bus and the database are, and how the stream and buckets are sized."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    """The NATS server, or several of one cluster separated by commas
    (``nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222``)."""
    database_url: str = "postgresql://postgres@127.0.0.1:5432/gaggle"
    log_level: str = "INFO"
    log_json: bool = True
    stream_replicas: int = Field(1, ge=1, le=5)
    stream_max_age_days: float = Field(7.0, gt=0)
    """Events older than this are dropped from the stream (consumers are durable)."""
    stream_max_bytes: int = Field(-1)
    duplicate_window_s: float = Field(120.0, gt=0)
    """JetStream drops a second publish with the same ``Nats-Msg-Id`` inside this window."""
    kv_replicas: int = Field(1, ge=1, le=5)
    nats_replicas: int | None = Field(None, ge=1, le=5)
    """Replicas of the ``OTA`` stream and of every KV bucket (3 on a three-node cluster): the
    default of ``stream_replicas`` and ``kv_replicas`` where these are not set themselves."""
    retry_delay_s: float = Field(0.5, gt=0, le=60)
    """Delay before an event whose handling failed comes back; doubles with every failure."""
    retry_delay_max_s: float = Field(10.0, gt=0, le=600)
    """Longest delay between two tries of an event. A failure because the database or the bus
    is away is retried at least this often for as long as it lasts, never given up on."""
    dead_letter_after: int = Field(5, ge=1, le=100)
    """Failures of an event that the event itself causes (not a dependency away) before it is
    parked as a dead letter, for an operator to look at and replay."""
    ack_wait_s: float = Field(10.0, gt=0)
    """An event taken but not acked (the consumer stopped or crashed) comes back after this."""
    pull_batch: int = Field(16, ge=1, le=1000)
    """Events a consumer fetches per pull request."""
    otel_endpoint: str | None = None
    """OTLP endpoint for traces; none: tracing off."""
    open_docs: bool = True
    """Serve the OpenAPI and AsyncAPI documents without a token."""
    open_metrics: bool = True
    """Serve ``/metrics`` without a token."""
    key_use_flush_s: float = Field(15.0, gt=0)
    """How often a service reports when each API key was last used (to registry)."""
    oidc_issuer: str | None = None
    """Issuer (``iss``) of operator JWTs; with ``oidc_jwks_url`` and ``oidc_audience`` it turns
    OpenID Connect tokens on."""
    oidc_audience: str | None = None
    """Audience (``aud``) operator JWTs must name."""
    oidc_jwks_url: str | None = None
    """Where the provider's signing keys are (its ``jwks_uri``)."""
    oidc_roles_claim: str = "gaggle_roles"
    """Claim holding role names (viewer, operator, admin) and/or permission names."""
    oidc_tenant_claim: str = "gaggle_tenant"
    """Claim naming the tenant; tokens without it belong to ``oidc_default_tenant``."""
    oidc_default_tenant: str = "default"
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    """Signature algorithms accepted (never ``none`` or a shared secret)."""

    @model_validator(mode="after")
    def _replicas_from_nats_replicas(self) -> CommonSettings:
        """``nats_replicas`` stands for ``stream_replicas`` and ``kv_replicas`` not given."""
        nats_servers(self.nats_url)
        if self.nats_replicas is not None:
            given = self.model_fields_set
            if "stream_replicas" not in given:
                self.stream_replicas = self.nats_replicas
            if "kv_replicas" not in given:
                self.kv_replicas = self.nats_replicas
        return self

    @property
    def nats_servers(self) -> list[str]:
        """The URLs of ``nats_url``, one per server."""
        return nats_servers(self.nats_url)


def nats_servers(nats_url: str) -> list[str]:
    """The server URLs of a comma-separated ``nats_url`` (blanks around each dropped).

    Raises:
        ValueError: no URL in it.
    """
    servers = [part.strip() for part in nats_url.split(",") if part.strip()]
    if not servers:
        raise ValueError("GAGGLE_NATS_URL names no server")
    return servers
