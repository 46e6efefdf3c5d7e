"""Signing in with an OpenID Connect provider: the authorization code flow with PKCE.

The provider is found by discovery (``{issuer}/.well-known/openid-configuration``). A sign-in
keeps a random ``state``, ``nonce`` and PKCE code verifier (S256) in the browser's server-side
session; the callback must bring that state back, the code is exchanged at the token endpoint with
the verifier, and the ID token is checked with PyJWT: signature against the provider's JWKS,
issuer, audience (the client id), expiry and nonce. The token the services verify (the access
token, or the ID token: ``GAGGLE_CONSOLE_OIDC_BEARER``) becomes the session's credential and the
registry's ``GET /api/v1/me`` says what it may do, as for an API key. Tokens stay on the server.

A credential near its expiry is renewed with the refresh token before a page is served
(:class:`RenewTokens`); when that fails the operator is signed out and told why.

The tokens are checked with PyJWT and cryptography, which the services' own verifier
(:mod:`gaggle_runtime.oidc`) already uses; the flow's few requests go through the console's httpx
client, so the unit tests replace the provider as they replace the services.

Every failure is an :class:`OidcError`: a page with a clear message, 4xx (502 when the provider
cannot be reached or answers nonsense), never a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gaggle_console.sessions import OidcPending, OidcTokens, Session
from gaggle_console.settings import ConsoleSettings
from gaggle_console.upstream import UpstreamError
from gaggle_console.web import Console, Refused, parts, set_session_cookie

log = logging.getLogger(__name__)
router = APIRouter()

CALLBACK = "/oidc/callback"
DISCOVERY_TTL_S = 3600.0
"""The provider's configuration is read again after this long."""
JWKS_RETRY_S = 30.0
"""An unknown key id fetches the JWKS again, at most this often."""
PENDING_S = 600.0
"""A sign-in not answered within this long must be started again."""
PENDING_KEPT = 4
"""Sign-ins waiting at once in one browser session."""
LEEWAY_S = 30
MAX_BODY_BYTES = 1 << 20
MAX_PARAM = 4096
"""Longest ``code`` or ``state`` taken from the callback."""
HASHES = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


class OidcError(Exception):
    """A sign-in step that failed: the status to answer and a message for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Provider:
    """What discovery says about the provider."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    auth_methods: tuple[str, ...]
    """``token_endpoint_auth_methods_supported``; empty when not said."""


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _short(text: object, limit: int = 300) -> str:
    value = str(text)
    return value if len(value) <= limit else value[:limit] + "…"


class OidcClient:
    """The provider as the console uses it: discovery, keys, code exchange and refresh."""

    def __init__(
        self, settings: ConsoleSettings, client: httpx.AsyncClient, clock: Callable[[], float]
    ) -> None:
        if not (settings.oidc_issuer and settings.oidc_client_id):
            raise ValueError("OIDC needs oidc_issuer and oidc_client_id")
        self.settings = settings
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        self.client = client
        self.clock = clock
        self.name = settings.oidc_name or httpx.URL(self.issuer).host or self.issuer
        self._provider: Provider | None = None
        self._provider_at = float("-inf")
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at = float("-inf")

    # -- talking to the provider ---------------------------------------------------------------

    async def _json(self, what: str, request: httpx.Request) -> tuple[int, Any]:
        """Status and JSON body of ``request``; the body is None when it is not JSON.

        Raises:
            OidcError: 502 when the provider cannot be reached.
        """
        try:
            response = await self.client.send(request)
        except httpx.HTTPError as exc:
            log.warning("OIDC %s failed url=%s: %s", what, request.url, exc)
            raise OidcError(
                502, f"{self.name} could not be reached ({what}): {exc or type(exc).__name__}"
            ) from exc
        if len(response.content) > MAX_BODY_BYTES:
            raise OidcError(502, f"{self.name} sent too large an answer ({what}).")
        try:
            body = response.json()
        except ValueError:
            body = None
        return response.status_code, body

    async def provider(self) -> Provider:
        """The provider's configuration, by discovery (cached for an hour).

        Raises:
            OidcError: 502 when it cannot be read or does not describe this issuer.
        """
        now = self.clock()
        if self._provider is not None and now - self._provider_at < DISCOVERY_TTL_S:
            return self._provider
        url = f"{self.issuer}/.well-known/openid-configuration"
        status, doc = await self._json("discovery", self.client.build_request("GET", url))
        if status != 200 or not isinstance(doc, dict):
            raise OidcError(502, f"{self.name} did not describe itself: {url} answered {status}.")
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
            raise OidcError(
                502,
                f"{url} names another issuer ({_short(doc.get('issuer'), 100)!s}); "
                "GAGGLE_CONSOLE_OIDC_ISSUER must be the provider's issuer exactly.",
            )
        needed = ("authorization_endpoint", "token_endpoint", "jwks_uri")
        missing = [k for k in needed if not isinstance(doc.get(k), str) or not doc[k]]
        if missing:
            raise OidcError(502, f"{url} lacks {', '.join(missing)}.")
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise OidcError(502, f"{self.name} does not support PKCE with S256.")
        end = doc.get("end_session_endpoint")
        auth = doc.get("token_endpoint_auth_methods_supported")
        self._provider = Provider(
            issuer=str(doc["issuer"]),
            authorization_endpoint=doc["authorization_endpoint"],
            token_endpoint=doc["token_endpoint"],
            jwks_uri=doc["jwks_uri"],
            end_session_endpoint=end if isinstance(end, str) and end else None,
            auth_methods=tuple(str(m) for m in auth) if isinstance(auth, list) else (),
        )
        self._provider_at = now
        return self._provider

    async def _key(self, provider: Provider, kid: str | None) -> jwt.PyJWK | None:
        """The provider's signing key ``kid`` (the only one when the token names none)."""
        fresh = self.clock() - self._keys_at > JWKS_RETRY_S
        if fresh and (not self._keys or (kid is not None and kid not in self._keys)):
            status, doc = await self._json(
                "signing keys", self.client.build_request("GET", provider.jwks_uri)
            )
            if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                raise OidcError(502, f"{self.name}'s signing keys could not be read ({status}).")
            self._keys_at = self.clock()
            keys: dict[str, jwt.PyJWK] = {}
            for item in doc["keys"]:
                if not isinstance(item, dict) or item.get("use", "sig") != "sig":
                    continue
                try:
                    keys[str(item.get("kid", ""))] = jwt.PyJWK(item)
                except jwt.PyJWTError:
                    log.warning("ignored an unusable JWKS key kid=%s", item.get("kid"))
            self._keys = keys
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _token_request(self, provider: Provider, form: dict[str, str]) -> httpx.Request:
        """A token endpoint request, with the client's credentials as the provider takes them."""
        form = {**form, "client_id": self.client_id}
        headers = {"Accept": "application/json"}
        secret = self.settings.oidc_client_secret
        if secret is not None:
            methods = provider.auth_methods
            if methods and "client_secret_basic" not in methods and "client_secret_post" in methods:
                form["client_secret"] = secret.get_secret_value()
            else:  # client_secret_basic: both parts form-encoded first (RFC 6749, 2.3.1)
                pair = f"{quote_plus(self.client_id)}:{quote_plus(secret.get_secret_value())}"
                headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return self.client.build_request(
            "POST", provider.token_endpoint, data=form, headers=headers
        )

    async def _tokens(self, what: str, provider: Provider, form: dict[str, str]) -> dict[str, Any]:
        """The token endpoint's answer to ``form``.

        Raises:
            OidcError: 400 when the provider refuses, 502 when it fails.
        """
        status, body = await self._json(what, self._token_request(provider, form))
        if 400 <= status < 500 and isinstance(body, dict) and "error" in body:
            reason = _short(body.get("error"), 100)
            if body.get("error_description"):
                reason += f": {_short(body['error_description'])}"
            raise OidcError(400, f"{self.name} refused the {what} ({reason}).")
        if status != 200 or not isinstance(body, dict):
            raise OidcError(502, f"{self.name} failed the {what} (it answered {status}).")
        if not isinstance(body.get("access_token"), str) or not body["access_token"]:
            raise OidcError(502, f"{self.name} gave no access token ({what}).")
        if str(body.get("token_type", "")).lower() not in ("bearer", "dpop"):
            raise OidcError(502, f"{self.name} gave a token that is not a bearer token ({what}).")
        return body

    # -- the steps -----------------------------------------------------------------------------

    def start(self, provider: Provider, redirect_uri: str) -> tuple[OidcPending, str]:
        """A new pending sign-in and the provider's URL to send the browser to."""
        pending = OidcPending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),
            redirect_uri=redirect_uri,
            started_at=self.clock(),
        )
        scopes = self.settings.oidc_scopes.split()
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pkce_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        url = httpx.URL(provider.authorization_endpoint).copy_merge_params(params)
        return pending, str(url)

    async def exchange(self, provider: Provider, pending: OidcPending, code: str) -> dict[str, Any]:
        """The tokens for ``code``, the ID token checked (claims under ``"claims"``).

        Raises:
            OidcError: the provider refused or failed, or the ID token is not valid.
        """
        tokens = await self._tokens(
            "code exchange",
            provider,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier,
            },
        )
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError(502, f"{self.name} gave no ID token (is the scope openid asked for?).")
        tokens["claims"] = await self.verify_id_token(
            provider, id_token, pending.nonce, tokens["access_token"]
        )
        return tokens

    async def refresh(self, provider: Provider, tokens: OidcTokens) -> dict[str, Any]:
        """New tokens for the session's refresh token; a new ID token, if any, checked.

        Raises:
            OidcError: there is no refresh token, the provider refused or failed, or the new ID
                token is not valid or names someone else.
        """
        if not tokens.refresh_token:
            raise OidcError(401, f"the token expired and {self.name} gave no refresh token")
        form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        fresh = await self._tokens("renewal", provider, form)
        id_token = fresh.get("id_token")
        if isinstance(id_token, str) and id_token:
            claims = await self.verify_id_token(provider, id_token, None, fresh["access_token"])
            if claims.get("sub") != tokens.subject:
                raise OidcError(401, f"{self.name} renewed the sign-in for someone else")
        return fresh

    async def verify_id_token(
        self, provider: Provider, token: str, nonce: str | None, access_token: str | None
    ) -> dict[str, Any]:
        """The claims of a valid ID token: signature (JWKS), issuer, audience, expiry, nonce.

        Raises:
            OidcError: 401 naming what is wrong; 502 when the keys cannot be read.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcError(401, f"{self.name}'s ID token is malformed.") from exc
        algorithm = header.get("alg")
        if algorithm not in self.settings.oidc_algorithms:
            raise OidcError(401, f"{self.name}'s ID token is signed with {algorithm!r}, refused.")
        kid = header.get("kid")
        key = await self._key(provider, str(kid) if kid is not None else None)
        if key is None:
            raise OidcError(401, f"{self.name}'s ID token is signed by an unknown key.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.client_id,
                issuer=provider.issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise OidcError(401, f"{self.name}'s ID token has expired.") from exc
        except jwt.PyJWTError as exc:
            raise OidcError(401, f"{self.name}'s ID token is not valid: {_short(exc)}.") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise OidcError(401, f"{self.name}'s ID token was issued to another client (azp).")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise OidcError(401, f"{self.name}'s ID token is not for this sign-in (nonce).")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            digest = HASHES.get(str(algorithm)[2:], hashlib.sha256)(access_token.encode()).digest()
            if not hmac.compare_digest(str(at_hash), b64url(digest[: len(digest) // 2])):
                raise OidcError(401, f"{self.name}'s ID token does not match its access token.")
        return claims

    def credential(self, tokens: dict[str, Any]) -> str:
        """The token the services are called with (``GAGGLE_CONSOLE_OIDC_BEARER``).

        Raises:
            OidcError: 502 when the ID token is asked for and the provider gave none.
        """
        if self.settings.oidc_bearer == "id":
            id_token = tokens.get("id_token")
            if not isinstance(id_token, str) or not id_token:
                raise OidcError(502, f"{self.name} gave no ID token to call the services with.")
            return id_token
        token: str = tokens["access_token"]
        return token

    def expires_at(self, tokens: dict[str, Any], credential: str) -> float | None:
        """When the credential expires on the sessions' clock: ``expires_in``, else its ``exp``.

        For the ID token, its ``exp``; None when neither is known.
        """
        lifetime: float | None = None
        expires_in = tokens.get("expires_in")
        if self.settings.oidc_bearer == "access" and isinstance(expires_in, int | float):
            lifetime = float(expires_in)
        elif credential.count(".") == 2:
            try:
                claims = jwt.decode(credential, options={"verify_signature": False})
                exp = claims.get("exp")
                if isinstance(exp, int | float):
                    iat = claims.get("iat")
                    lifetime = float(exp) - float(iat if isinstance(iat, int | float) else exp)
            except jwt.PyJWTError:
                lifetime = None
        return None if lifetime is None or lifetime <= 0 else self.clock() + lifetime

    def logout_url(self, provider: Provider, tokens: OidcTokens, after: str) -> str | None:
        """The provider's RP-initiated logout URL for this sign-in, if it has one."""
        if not provider.end_session_endpoint:
            return None
        params = {
            "id_token_hint": tokens.id_token,
            "client_id": self.client_id,
            "post_logout_redirect_uri": after,
        }
        return str(httpx.URL(provider.end_session_endpoint).copy_merge_params(params))


# -- the console's side -------------------------------------------------------------------------


def client_of(request: Request) -> OidcClient | None:
    """The app's provider client (made on first use), or None when OIDC is not configured."""
    c = parts(request)
    if not c.settings.oidc_enabled:
        return None
    found: OidcClient | None = getattr(request.app.state, "oidc", None)
    if found is None:
        found = OidcClient(c.settings, c.upstream.client, c.sessions.clock)
        request.app.state.oidc = found
    return found


def base_url(request: Request) -> str:
    """The console's own address: ``GAGGLE_CONSOLE_PUBLIC_URL``, else the request's."""
    public = parts(request).settings.public_url
    return (public or str(request.base_url)).rstrip("/")


async def permissions_of(c: Console, credential: str, name: str) -> frozenset[str]:
    """What the registry says ``credential`` may do.

    Raises:
        OidcError: 401 when the registry does not accept the token, else its status or 502.
    """
    try:
        me = await c.upstream.get("registry", "/api/v1/me", credential)
    except UpstreamError as exc:
        if exc.status == 401:
            raise OidcError(
                401,
                f"The registry did not accept the token from {name} ({exc.message}). The "
                "services must be set up for this provider (GAGGLE_OIDC_ISSUER, "
                "GAGGLE_OIDC_AUDIENCE, GAGGLE_OIDC_JWKS_URL).",
            ) from exc
        status = exc.status if 400 <= exc.status < 500 else 502
        raise OidcError(status, str(exc)) from exc
    if not isinstance(me, dict):
        raise OidcError(502, "The registry's answer to GET /api/v1/me is not an object.")
    return frozenset(str(p) for p in me.get("permissions", []))


def _failed(request: Request, error: OidcError) -> HTMLResponse:
    """The sign-in error page."""
    c = parts(request)
    _, session = c.session(request)
    return c.render(
        request,
        "error.html",
        session,
        status_code=error.status,
        title="Sign-in failed",
        message=error.message,
    )


def _configured(request: Request) -> OidcClient:
    """The provider client.

    Raises:
        Refused: OIDC is not configured (404).
    """
    oidc = client_of(request)
    if oidc is None:
        raise Refused(404, "Single sign-on is not configured on this console.")
    return oidc


@router.get("/oidc/sign-in", response_class=HTMLResponse)
async def oidc_sign_in(request: Request) -> Response:
    """Send the browser to the provider, with a new state, nonce and PKCE challenge."""
    c = parts(request)
    oidc = _configured(request)
    session_id, session = c.session(request)
    if session is not None and session.key:
        return RedirectResponse("/overview", status_code=303)
    try:
        provider = await oidc.provider()
    except OidcError as exc:
        return _failed(request, exc)
    fresh = session is None
    if session is None:
        session_id, session = c.sessions.create()
    pending, url = oidc.start(provider, base_url(request) + CALLBACK)
    # A few sign-ins may wait at once (one per tab); the oldest beyond that is forgotten.
    session.oidc_pending = [*session.oidc_pending, pending][-PENDING_KEPT:]
    response = RedirectResponse(url, status_code=303)
    if fresh and session_id:
        set_session_cookie(request, response, session_id)
    return response


@router.get(CALLBACK, response_class=HTMLResponse)
async def oidc_callback(request: Request) -> Response:
    """The provider's answer: check the state, exchange the code, check the ID token, sign in."""
    c = parts(request)
    oidc = _configured(request)
    session_id, session = c.session(request)
    try:
        credential, tokens, claims = await _finish(request, c, oidc, session)
    except OidcError as exc:
        log.info("OIDC sign-in refused status=%d: %s", exc.status, exc.message)
        return _failed(request, exc)
    try:
        permissions = await permissions_of(c, credential, oidc.name)
    except OidcError as exc:
        return _failed(request, exc)
    # A new session id at sign-in: an id planted before it is worth nothing after.
    c.sessions.drop(session_id)
    new_id, signed_in = c.sessions.create(credential, permissions)
    signed_in.oidc = OidcTokens(
        id_token=str(tokens["id_token"]),
        subject=str(claims["sub"]),
        refresh_token=_str_or_none(tokens.get("refresh_token")),
        expires_at=oidc.expires_at(tokens, credential),
    )
    log.info("OIDC sign-in subject=%s", _short(claims["sub"], 100))
    response = RedirectResponse("/overview", status_code=303)
    set_session_cookie(request, response, new_id)
    return response


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def _finish(
    request: Request, c: Console, oidc: OidcClient, session: Session | None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The checked callback's credential, token answer and ID token claims.

    Raises:
        OidcError: anything wrong with the answer, the exchange or the ID token.
    """
    query = request.query_params
    started = session.oidc_pending if session is not None else []
    state = query.get("state") or ""
    pending = None
    if len(state) <= MAX_PARAM:
        for candidate in started:
            if hmac.compare_digest(state.encode(), candidate.state.encode()):
                pending = candidate
    if session is not None:
        # One answer per sign-in; an answer that matches none ends them all.
        session.oidc_pending = [p for p in started if pending is not None and p is not pending]
    error = query.get("error")
    if error:
        reason = _short(error, 100)
        if query.get("error_description"):
            reason += f": {_short(query['error_description'])}"
        status = 403 if error == "access_denied" else 400
        raise OidcError(status, f"{oidc.name} did not sign you in ({reason}).")
    if not started:
        raise OidcError(
            400,
            "This sign-in was not started in this browser, or it was already used or has ended. "
            "Start again from the sign-in page.",
        )
    if pending is None:
        raise OidcError(
            400,
            "The answer does not belong to a sign-in this browser started (its state does not "
            "match). Start again from the sign-in page.",
        )
    if oidc.clock() - pending.started_at > PENDING_S:
        raise OidcError(400, "This sign-in took too long. Start again from the sign-in page.")
    provider = await oidc.provider()
    iss = query.get("iss")
    if iss is not None and iss.rstrip("/") != provider.issuer.rstrip("/"):
        raise OidcError(400, "The answer comes from another provider (iss).")
    code = query.get("code") or ""
    if not code or len(code) > MAX_PARAM:
        raise OidcError(400, f"{oidc.name}'s answer has no usable code.")
    tokens = await oidc.exchange(provider, pending, code)
    credential = oidc.credential(tokens)
    return credential, tokens, tokens["claims"]


@router.get("/oidc/sign-out", response_class=HTMLResponse)
async def oidc_sign_out(request: Request) -> Response:
    """After signing out of the console: sign out at the provider too (RP-initiated logout)."""
    c = parts(request)
    _, session = c.session(request)
    target = session.provider_logout if session is not None else None
    if session is None or target is None:
        return RedirectResponse("/sign-in", status_code=303)
    session.provider_logout = None
    return RedirectResponse(target, status_code=303)


async def signed_out(request: Request, session: Session) -> str | None:
    """Where to sign out at the provider after ``session`` (signed in with it) ends, if anywhere.

    None when the provider has no ``end_session_endpoint``, cannot be reached, or
    ``GAGGLE_CONSOLE_OIDC_PROVIDER_LOGOUT`` is off.
    """
    oidc = client_of(request)
    if oidc is None or session.oidc is None or not oidc.settings.oidc_provider_logout:
        return None
    try:
        provider = await oidc.provider()
    except OidcError:
        return None
    return oidc.logout_url(provider, session.oidc, base_url(request) + "/sign-in")


def provider_name(request: Request) -> str | None:
    """The provider's name for the sign-in button, or None when OIDC is not configured."""
    oidc = client_of(request)
    return oidc.name if oidc is not None else None


# -- renewal ------------------------------------------------------------------------------------

SKIPPED = ("/static/", "/healthz", "/readyz", "/oidc/", "/sign-out", "/sign-in")


def _due(c: Console, session: Session) -> bool:
    tokens = session.oidc
    if tokens is None or tokens.expires_at is None:
        return False
    return c.sessions.clock() >= tokens.expires_at - c.settings.oidc_renew_before_s


async def renew(request: Request, session: Session) -> None:
    """Renew the session's credential with its refresh token, and its permissions.

    Raises:
        OidcError: it cannot be renewed.
    """
    c = parts(request)
    oidc = client_of(request)
    tokens = session.oidc
    if oidc is None or tokens is None:
        raise OidcError(401, "single sign-on is no longer configured")
    provider = await oidc.provider()
    fresh = await oidc.refresh(provider, tokens)
    credential = oidc.credential(fresh)
    permissions = await permissions_of(c, credential, oidc.name)
    session.key = credential
    session.permissions = permissions
    tokens.refresh_token = _str_or_none(fresh.get("refresh_token")) or tokens.refresh_token
    tokens.id_token = _str_or_none(fresh.get("id_token")) or tokens.id_token
    tokens.expires_at = oidc.expires_at(fresh, credential)


class RenewTokens:
    """Renews a signed-in provider session's token near its expiry, before the page is served.

    When it cannot be renewed the session ends and the browser goes to the sign-in form, which
    says why.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Renew when due, then serve the request."""
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path and not path.startswith(SKIPPED):
            request = Request(scope)
            c = parts(request)
            session_id, session = c.session(request)
            if session is not None and session.key and session.oidc and _due(c, session):
                async with session.oidc.lock:
                    error = None
                    if _due(c, session):
                        try:
                            await renew(request, session)
                        except OidcError as exc:
                            error = exc
                if error is not None:
                    log.info("OIDC renewal failed, session ended: %s", error.message)
                    name = provider_name(request) or "the provider"
                    c.sessions.drop(session_id)
                    new_id, anonymous = c.sessions.create()
                    anonymous.notice = (
                        f"You were signed out: your sign-in with {name} ended and could not be "
                        f"renewed ({error.message.rstrip('.')}). Sign in again."
                    )
                    response = RedirectResponse("/sign-in", status_code=303)
                    set_session_cookie(request, response, new_id)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
