"""Operator JWTs of one OpenID Connect provider, for :class:`gaggle_runtime.auth.Authenticator`.

Imported only by a service configured for OIDC (``GAGGLE_OIDC_JWKS_URL``), so that the others
start without PyJWT and cryptography.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

import jwt

from gaggle_contracts import names
from gaggle_contracts.access import expand
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.auth import Principal, Unauthenticated

log = logging.getLogger(__name__)

JWKS_REFRESH_S = 600.0
JWKS_RETRY_S = 30.0
JWT_LEEWAY_S = 30


class JwtVerifier:
    """JWTs of one OpenID Connect provider: signature (JWKS), issuer, audience, expiry."""

    def __init__(self, common: CommonSettings) -> None:
        if not (common.oidc_issuer and common.oidc_audience and common.oidc_jwks_url):
            raise ValueError("OIDC needs oidc_issuer, oidc_audience and oidc_jwks_url")
        self.issuer = common.oidc_issuer
        self.audience = common.oidc_audience
        self.jwks_url = common.oidc_jwks_url
        self.roles_claim = common.oidc_roles_claim
        self.tenant_claim = common.oidc_tenant_claim
        self.default_tenant = common.oidc_default_tenant
        self.algorithms = [a for a in common.oidc_algorithms if a.upper() not in ("NONE",)]
        self.keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    def _fetch(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.jwks_url, timeout=10) as response:  # noqa: S310
            data: dict[str, Any] = json.loads(response.read(1 << 20))
        return data

    async def refresh(self) -> None:
        """Fetch the provider's keys; keys it no longer lists stop verifying."""
        async with self._lock:
            self._fetched_at = time.monotonic()
            data = await asyncio.to_thread(self._fetch)
            keys: dict[str, jwt.PyJWK] = {}
            for item in data.get("keys", []):
                try:
                    key = jwt.PyJWK(item)
                except jwt.PyJWTError:
                    log.warning("ignored an unusable JWKS key kid=%s", item.get("kid"))
                    continue
                keys[str(item.get("kid", ""))] = key
            self.keys = keys
            log.info("JWKS loaded keys=%d url=%s", len(keys), self.jwks_url)

    async def follow(self) -> None:
        """Refresh the keys now and then, forever."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log.warning("JWKS fetch failed url=%s", self.jwks_url, exc_info=True)
                await asyncio.sleep(JWKS_RETRY_S)
                continue
            await asyncio.sleep(JWKS_REFRESH_S)

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        key = self.keys.get(kid)
        if key is None and time.monotonic() - self._fetched_at > JWKS_RETRY_S:
            # A key the provider rotated in since the last fetch; at most one fetch per period.
            try:
                await self.refresh()
            except Exception:
                log.warning("JWKS fetch failed url=%s", self.jwks_url, exc_info=True)
            key = self.keys.get(kid)
        return key

    async def verify(self, token: str) -> Principal:
        """The principal a valid JWT names.

        Raises:
            Unauthenticated: anything wrong with the token.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token") from exc
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise Unauthenticated(f"token algorithm {algorithm!r} not accepted")
        key = await self._key(str(header.get("kid", "")))
        if key is None:
            raise Unauthenticated("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        roles = claims.get(self.roles_claim, [])
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list):
            roles = []
        tenant = claims.get(self.tenant_claim, self.default_tenant)
        if not isinstance(tenant, str) or not names.TENANT_RE.match(tenant):
            raise Unauthenticated("token names no valid tenant")
        return Principal(
            tenant=tenant.lower(),
            actor=f"oidc:{claims['sub']}"[:256],
            permissions=expand([str(r) for r in roles]),
        )
