"""A small OpenID Connect provider for the tests: one client, one user, real HTTP.

It serves discovery, an authorization endpoint that signs the fixed user in at once (it redirects
straight back with a code), a token endpoint (authorization code with a PKCE S256 verifier, and
refresh tokens), its JWKS and an end-session endpoint. Its RSA key is made when it is built. The
access tokens are JWTs for the services (``aud`` = :attr:`TestProvider.audience`) carrying the
user's ``gaggle_tenant`` and ``gaggle_roles``, as the services' verifier reads them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

KID = "test-key-1"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Grant:
    """A code issued by the authorization endpoint, waiting for its exchange."""

    redirect_uri: str
    challenge: str
    nonce: str | None


@dataclass
class TestProvider:
    """The provider's state; :meth:`app` serves it. ``issuer`` is set once it is served."""

    __test__ = False  # not a test class

    client_id: str
    redirect_uris: list[str]
    tenant: str
    audience: str = "gaggle"
    subject: str = "alice"
    roles: list[str] = field(default_factory=lambda: ["operator"])
    expires_in: int = 300
    issuer: str = ""
    key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    codes: dict[str, Grant] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    grants: list[str] = field(default_factory=list)
    """Every grant type the token endpoint served, in order."""
    refused: list[str] = field(default_factory=list)
    """Why the token endpoint refused requests, in order."""
    logouts: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        """The provider's endpoints."""
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/jwks", self.jwks),
                Route("/logout", self.logout),
            ]
        )

    async def discovery(self, request: Request) -> Response:
        """The provider's configuration."""
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "end_session_endpoint": f"{self.issuer}/logout",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
            }
        )

    async def authorize(self, request: Request) -> Response:
        """Sign the user in at once: back to the client with a code, or with an error."""
        q = request.query_params
        if q.get("client_id") != self.client_id or q.get("redirect_uri") not in self.redirect_uris:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        back = str(q["redirect_uri"])
        answer: dict[str, str] = {"state": q.get("state", ""), "iss": self.issuer}
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            answer["error"] = "invalid_request"
        elif "openid" not in q.get("scope", "").split():
            answer["error"] = "invalid_scope"
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = Grant(back, q.get("code_challenge", ""), q.get("nonce"))
            answer["code"] = code
        return RedirectResponse(f"{back}?{urlencode(answer)}", status_code=302)

    def _refuse(self, why: str) -> Response:
        self.refused.append(why)
        return JSONResponse({"error": "invalid_grant", "error_description": why}, status_code=400)

    async def token(self, request: Request) -> Response:
        """Exchange a code (its PKCE verifier checked) or a refresh token (used once)."""
        form = await request.form()
        grant_type = str(form.get("grant_type", ""))
        if form.get("client_id") != self.client_id:
            return self._refuse("unknown client")
        nonce: str | None = None
        if grant_type == "authorization_code":
            grant = self.codes.pop(str(form.get("code", "")), None)
            if grant is None:
                return self._refuse("unknown or used code")
            if form.get("redirect_uri") != grant.redirect_uri:
                return self._refuse("redirect_uri differs")
            verifier = str(form.get("code_verifier", ""))
            if _b64url(hashlib.sha256(verifier.encode()).digest()) != grant.challenge:
                return self._refuse("PKCE verifier does not match")
            nonce = grant.nonce
        elif grant_type == "refresh_token":
            refresh = str(form.get("refresh_token", ""))
            if refresh not in self.refresh_tokens:
                return self._refuse("unknown or used refresh token")
            self.refresh_tokens.discard(refresh)
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        self.grants.append(grant_type)
        now = int(time.time())
        access = self._sign(
            {
                "aud": self.audience,
                "exp": now + self.expires_in,
                "gaggle_tenant": self.tenant,
                "gaggle_roles": self.roles,
                "azp": self.client_id,
            }
        )
        digest = hashlib.sha256(access.encode()).digest()
        claims = {"aud": self.client_id, "exp": now + 300, "at_hash": _b64url(digest[:16])}
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens.add(refresh)
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "refresh_token": refresh,
                "id_token": self._sign({**claims, **({"nonce": nonce} if nonce else {})}),
            },
            headers={"Cache-Control": "no-store"},
        )

    def _sign(self, claims: dict[str, Any]) -> str:
        body = {"iss": self.issuer, "sub": self.subject, "iat": int(time.time()), **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": KID})

    async def jwks(self, request: Request) -> Response:
        """The public key."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return JSONResponse({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})

    async def logout(self, request: Request) -> Response:
        """End the user's session here, then back to the client if it asked."""
        self.logouts.append(dict(request.query_params))
        back = request.query_params.get("post_logout_redirect_uri")
        if back and back.removesuffix("/sign-in") + "/oidc/callback" in self.redirect_uris:
            return RedirectResponse(back, status_code=302)
        return JSONResponse({"signed_out": True})
