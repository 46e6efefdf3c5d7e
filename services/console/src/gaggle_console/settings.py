"""Console settings, from ``GAGGLE_CONSOLE_*``."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
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
    public_url: str | None = None
    """The console's address as browsers reach it (``https://console.example.com``); the OIDC
    redirect URL is made from it, else from each request's own address."""
    oidc_issuer: str | None = None
    """The OpenID Connect provider's issuer; with ``oidc_client_id`` it turns single sign-on on.
    Its settings are read from ``{issuer}/.well-known/openid-configuration``."""
    oidc_client_id: str | None = None
    """The console's client id at the provider."""
    oidc_client_secret: SecretStr | None = None
    """The client's secret, for a confidential client; a public client uses PKCE alone."""
    oidc_scopes: str = "openid profile email"
    """Scopes asked for, space-separated (``openid`` is always asked for)."""
    oidc_name: str | None = None
    """The provider's name on the sign-in button; by default the issuer's host name."""
    oidc_bearer: Literal["access", "id"] = "access"
    """Which of the provider's tokens the services are called with: the access token, or the ID
    token where the provider's access tokens are not JWTs for the services' audience."""
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256"])
    """Signature algorithms accepted on ID tokens (never ``none`` or a shared secret)."""
    oidc_renew_before_s: float = Field(60.0, ge=0)
    """A token this close to its expiry is renewed (refresh token) before the page is served."""
    oidc_provider_logout: bool = True
    """After signing out, offer to sign out at the provider too, when it has an
    ``end_session_endpoint``."""

    @model_validator(mode="after")
    def _oidc_complete(self) -> Self:
        if bool(self.oidc_issuer) != bool(self.oidc_client_id):
            raise ValueError("OIDC sign-in needs both oidc_issuer and oidc_client_id")
        allowed = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
        refused = [a for a in self.oidc_algorithms if a not in allowed]
        if refused:
            raise ValueError(f"oidc_algorithms: not an asymmetric signature algorithm: {refused}")
        return self

    @property
    def oidc_enabled(self) -> bool:
        """Whether single sign-on is configured."""
        return bool(self.oidc_issuer and self.oidc_client_id)
