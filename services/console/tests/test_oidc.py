"""OpenID Connect sign-in against a fake provider and registry (httpx MockTransport).

The fake provider keeps the codes it issued with their PKCE challenge and nonce, checks the code
verifier at its token endpoint, and signs ID tokens with an RSA key made for the test; each test
bends one part (a claim, a signature, an answer) and the console must refuse with a clear page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gaggle_console.app import build_app
from gaggle_console.oidc import pkce_challenge
from gaggle_console.settings import ConsoleSettings
from gaggle_contracts.settings import CommonSettings

ISSUER = "http://idp"
CLIENT = "gaggle-console"
SECRET = "s3cret/+"


@pytest.fixture(scope="module")
def signer() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def stranger() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _half_hash(token: str) -> str:
    digest = hashlib.sha256(token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


class FakeIdp:
    """A provider at ``http://idp`` and a registry accepting the access tokens it issued."""

    def __init__(self, signer: Any) -> None:
        self.signer = signer
        self.sign_with = signer
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: set[str] = set()
        self.access: set[str] = set()
        self.seen: list[httpx.Request] = []
        self.token_forms: list[dict[str, str]] = []
        self.id_tokens: list[str] = []
        self.discovery: dict[str, Any] = {
            "issuer": ISSUER,
            "authorization_endpoint": f"{ISSUER}/authorize",
            "token_endpoint": f"{ISSUER}/token",
            "jwks_uri": f"{ISSUER}/jwks",
            "code_challenge_methods_supported": ["S256"],
        }
        self.down = False
        self.id_claims: dict[str, Any] = {}
        self.id_header: dict[str, Any] = {}
        self.token_answer: httpx.Response | None = None
        self.refresh_answer: httpx.Response | None = None
        self.give_refresh = True
        self.expires_in = 300
        self.registry_refuses = False

    def authorize(self, location: str, subject: str = "alice") -> str:
        """What the provider sends the browser back to, for the sign-in at ``location``."""
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert params["response_type"] == "code"
        assert params["client_id"] == CLIENT
        assert params["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {**params, "sub": subject}
        return f"{params['redirect_uri']}?code={code}&state={params['state']}"

    def id_token(self, sub: str, nonce: str | None, access: str) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": CLIENT,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "at_hash": _half_hash(access),
            **self.id_claims,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        headers = {"kid": "k1", **self.id_header}
        algorithm = headers.pop("alg", "RS256")
        key = self.sign_with if algorithm.startswith("RS") else "k" * 32
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)

    def _tokens(self, sub: str, nonce: str | None) -> httpx.Response:
        access = f"at-{secrets.token_hex(8)}"
        self.access.add(access)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "id_token": self.id_token(sub, nonce, access),
        }
        self.id_tokens.append(body["id_token"])
        if self.give_refresh:
            refresh = f"rt-{secrets.token_hex(8)}"
            self.refresh_tokens.add(refresh)
            body["refresh_token"] = refresh
        return httpx.Response(200, json=body)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.url.host == "idp":
            return self._provider(request)
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.registry_refuses or key not in self.access:
            return httpx.Response(401, json={"message": "invalid token"})
        if request.url.path == "/api/v1/me":
            return httpx.Response(
                200, json={"tenant": "t", "actor": "oidc:alice", "permissions": ["device:read"]}
            )
        return httpx.Response(200, json={"items": [], "next": None})

    def _provider(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=self.discovery)
        if path == "/jwks":
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.signer.public_key(), as_dict=True)
            return httpx.Response(200, json={"keys": [{**jwk, "kid": "k1", "use": "sig"}]})
        assert path == "/token", path
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.token_forms.append(form)
        if form["grant_type"] == "refresh_token":
            if self.refresh_answer is not None:
                return self.refresh_answer
            if form["refresh_token"] not in self.refresh_tokens:
                return httpx.Response(400, json={"error": "invalid_grant"})
            self.refresh_tokens.discard(form["refresh_token"])
            return self._tokens("alice", None)
        if self.token_answer is not None:
            return self.token_answer
        issued = self.codes.pop(form.get("code", ""), None)
        if issued is None or form.get("redirect_uri") != issued["redirect_uri"]:
            return httpx.Response(400, json={"error": "invalid_grant"})
        if pkce_challenge(form.get("code_verifier", "")) != issued["code_challenge"]:
            return httpx.Response(
                400, json={"error": "invalid_grant", "error_description": "PKCE failed"}
            )
        return self._tokens(issued["sub"], issued.get("nonce"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp(signer: Any) -> FakeIdp:
    return FakeIdp(signer)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _client(idp: FakeIdp, clock: Clock, **settings: Any) -> TestClient:
    options: dict[str, Any] = {
        "registry_url": "http://registry",
        "rollouts_url": "http://rollouts",
        "oidc_issuer": ISSUER,
        "oidc_client_id": CLIENT,
        "oidc_name": "Example ID",
        **settings,
    }
    app = build_app(
        CommonSettings(),
        ConsoleSettings(**options),
        clock=clock,
        transport=httpx.MockTransport(idp),
    )
    return TestClient(app, follow_redirects=False)


@pytest.fixture
def client(idp: FakeIdp, clock: Clock) -> Iterator[TestClient]:
    with _client(idp, clock) as c:
        yield c


def _start(client: TestClient) -> str:
    """The provider URL the console sends the browser to."""
    r = client.get("/oidc/sign-in")
    assert r.status_code == 303, r.text
    location: str = r.headers["location"]
    assert location.startswith(f"{ISSUER}/authorize?")
    return location


def _callback(client: TestClient, url: str) -> httpx.Response:
    parts = urlsplit(url)
    return client.get(f"{parts.path}?{parts.query}")


def _sign_in(client: TestClient, idp: FakeIdp) -> httpx.Response:
    return _callback(client, idp.authorize(_start(client)))


def _signed_in(client: TestClient) -> bool:
    return client.get("/overview").status_code == 200


def test_the_sign_in_page_offers_the_provider_only_when_configured(
    client: TestClient, idp: FakeIdp, clock: Clock
) -> None:
    page = client.get("/sign-in")
    assert 'href="/oidc/sign-in">Sign in with Example ID<' in page.text
    assert 'name="key"' in page.text  # the API key form stays
    with _client(idp, clock, oidc_issuer=None, oidc_client_id=None) as plain:
        assert "/oidc/sign-in" not in plain.get("/sign-in").text
        for path in ("/oidc/sign-in", "/oidc/callback?code=a&state=b"):
            r = plain.get(path)
            assert r.status_code == 404
            assert "Single sign-on is not configured" in r.text


def test_settings_need_issuer_and_client_together() -> None:
    with pytest.raises(ValidationError, match="oidc_issuer and oidc_client_id"):
        ConsoleSettings(oidc_issuer=ISSUER)
    with pytest.raises(ValidationError, match="asymmetric"):
        ConsoleSettings(oidc_issuer=ISSUER, oidc_client_id=CLIENT, oidc_algorithms=["HS256"])


def test_the_authorization_request_carries_state_nonce_and_an_s256_challenge(
    client: TestClient, idp: FakeIdp, clock: Clock
) -> None:
    first = parse_qs(urlsplit(_start(client)).query)
    second = parse_qs(urlsplit(_start(client)).query)
    assert first["redirect_uri"] == ["http://testserver/oidc/callback"]
    assert first["scope"] == ["openid profile email"]
    assert first["code_challenge_method"] == ["S256"]
    assert len(first["code_challenge"][0]) == 43  # base64url of a SHA-256
    for name in ("state", "nonce", "code_challenge"):
        assert len(first[name][0]) >= 43
        assert first[name] != second[name], name  # fresh for every sign-in
    with _client(idp, clock, public_url="https://console.example/", oidc_scopes="groups") as c:
        params = parse_qs(urlsplit(_start(c)).query)
    assert params["redirect_uri"] == ["https://console.example/oidc/callback"]
    assert params["scope"] == ["openid groups"]


def test_a_sign_in_exchanges_the_code_with_its_verifier_and_calls_with_the_access_token(
    client: TestClient, idp: FakeIdp
) -> None:
    client.get("/sign-in")
    before = client.cookies["gaggle_console"]
    r = _sign_in(client, idp)
    assert (r.status_code, r.headers["location"]) == (303, "/overview")
    assert client.cookies["gaggle_console"] != before  # a new session id
    form = idp.token_forms[-1]
    assert form["grant_type"] == "authorization_code"
    assert form["client_id"] == CLIENT
    assert "client_secret" not in form  # a public client: PKCE alone
    assert "authorization" not in idp.seen[-2].headers
    assert _signed_in(client)
    service_calls = [q for q in idp.seen if q.url.host != "idp"]
    tokens = {q.headers["authorization"].removeprefix("Bearer ") for q in service_calls}
    assert len(tokens) == 1
    assert tokens <= idp.access
    (token,) = tokens
    assert token not in r.headers["set-cookie"]


def test_a_confidential_client_authenticates_with_basic_or_post(idp: FakeIdp, clock: Clock) -> None:
    with _client(idp, clock, oidc_client_secret=SECRET) as c:
        assert _sign_in(c, idp).status_code == 303
    token_call = next(q for q in reversed(idp.seen) if q.url.path == "/token")
    expected = base64.b64encode(b"gaggle-console:s3cret%2F%2B").decode()
    assert token_call.headers["authorization"] == f"Basic {expected}"
    idp.discovery["token_endpoint_auth_methods_supported"] = ["client_secret_post"]
    with _client(idp, clock, oidc_client_secret=SECRET) as c:
        assert _sign_in(c, idp).status_code == 303
    assert idp.token_forms[-1]["client_secret"] == SECRET


def test_a_wrong_verifier_is_refused_by_the_provider(client: TestClient, idp: FakeIdp) -> None:
    location = _start(client)
    callback = idp.authorize(location)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    idp.codes[code]["code_challenge"] = pkce_challenge("some other verifier")
    r = _callback(client, callback)
    assert r.status_code == 400
    assert "Example ID refused the code exchange (invalid_grant: PKCE failed)" in r.text
    assert not _signed_in(client)


def test_a_callback_with_another_state_is_refused_and_ends_that_sign_in(
    client: TestClient, idp: FakeIdp
) -> None:
    good = idp.authorize(_start(client))
    forged = re.sub(r"state=[^&]+", "state=forged", good)
    r = _callback(client, forged)
    assert r.status_code == 400
    assert "its state does not match" in r.text
    assert not idp.token_forms  # the code was never exchanged
    r = _callback(client, good)  # one answer per sign-in
    assert r.status_code == 400
    assert "not started in this browser" in r.text
    assert not _signed_in(client)


def test_a_callback_is_used_once_and_only_in_the_browser_that_started_it(
    client: TestClient, idp: FakeIdp, clock: Clock
) -> None:
    callback = idp.authorize(_start(client))
    with _client(idp, clock) as other:  # another browser: no sign-in started there
        r = _callback(other, callback)
        assert r.status_code == 400
        assert "not started in this browser" in r.text
    assert _callback(client, callback).status_code == 303
    client.cookies.clear()
    assert _callback(client, callback).status_code == 400


def test_a_sign_in_started_in_an_earlier_tab_still_works(
    client: TestClient, idp: FakeIdp, clock: Clock
) -> None:
    first = idp.authorize(_start(client))
    idp.authorize(_start(client))  # a second tab
    assert _callback(client, first).status_code == 303
    assert _signed_in(client)
    with _client(idp, clock) as other:
        starts = [idp.authorize(_start(other)) for _ in range(5)]
        assert _callback(other, starts[1]).status_code == 303
    with _client(idp, clock) as other:
        starts = [idp.authorize(_start(other)) for _ in range(5)]
        r = _callback(other, starts[0])  # beyond the four kept
        assert r.status_code == 400
        assert "its state does not match" in r.text


def test_an_answer_naming_another_issuer_is_refused(client: TestClient, idp: FakeIdp) -> None:
    callback = idp.authorize(_start(client)) + "&iss=http%3A%2F%2Fevil"
    r = _callback(client, callback)
    assert r.status_code == 400
    assert "comes from another provider (iss)" in r.text
    assert not idp.token_forms


def test_a_late_answer_is_refused(client: TestClient, idp: FakeIdp, clock: Clock) -> None:
    callback = idp.authorize(_start(client))
    clock.now += 601
    r = _callback(client, callback)
    assert r.status_code == 400
    assert "took too long" in r.text


@pytest.mark.parametrize(
    ("error", "status", "shown"),
    [
        ("access_denied", 403, "Example ID did not sign you in (access_denied: the user said no)"),
        ("server_error", 400, "Example ID did not sign you in (server_error: the user said no)"),
    ],
)
def test_a_provider_error_is_shown(
    client: TestClient, idp: FakeIdp, error: str, status: int, shown: str
) -> None:
    location = _start(client)
    state = parse_qs(urlsplit(location).query)["state"][0]
    r = client.get(
        "/oidc/callback",
        params={"error": error, "error_description": "the user said no", "state": state},
    )
    assert r.status_code == status
    assert shown in r.text
    assert not _signed_in(client)


@pytest.mark.parametrize(
    ("bend", "shown"),
    [
        ({"id_claims": {"nonce": "replayed"}}, "is not for this sign-in (nonce)"),
        ({"id_claims": {"aud": "someone-else"}}, "is not valid: Audience doesn't match"),
        ({"id_claims": {"iss": "http://evil"}}, "is not valid: Invalid issuer"),
        ({"id_claims": {"exp": int(time.time()) - 120}}, "ID token has expired"),
        ({"id_claims": {"exp": None}}, 'is not valid: Token is missing the "exp" claim'),
        ({"id_claims": {"at_hash": "AAAA"}}, "does not match its access token"),
        (
            {"id_claims": {"aud": [CLIENT, "other"], "azp": "other"}},
            "issued to another client (azp)",
        ),
        ({"id_header": {"alg": "HS256"}}, "signed with 'HS256', refused"),
        ({"id_header": {"kid": "k9"}}, "signed by an unknown key"),
        ({"sign_with": "stranger"}, "is not valid: Signature verification failed"),
    ],
)
def test_a_bad_id_token_is_refused(
    client: TestClient, idp: FakeIdp, stranger: Any, bend: dict[str, Any], shown: str
) -> None:
    for name, value in bend.items():
        setattr(idp, name, stranger if value == "stranger" else value)
    r = _sign_in(client, idp)
    assert r.status_code == 401
    assert shown in html.unescape(r.text)
    assert not _signed_in(client)


@pytest.mark.parametrize(
    ("answer", "status", "shown"),
    [
        (
            httpx.Response(500, text="oops"),
            502,
            "Example ID failed the code exchange (it answered 500)",
        ),
        (httpx.Response(200, text="not json"), 502, "failed the code exchange (it answered 200)"),
        (
            httpx.Response(200, json={"access_token": "a", "token_type": "mac"}),
            502,
            "not a bearer token",
        ),
        (
            httpx.Response(200, json={"access_token": "a", "token_type": "Bearer"}),
            502,
            "gave no ID token",
        ),
        (
            httpx.Response(401, json={"error": "invalid_client"}),
            400,
            "refused the code exchange (invalid_client)",
        ),
    ],
)
def test_a_failed_exchange_is_shown(
    client: TestClient, idp: FakeIdp, answer: httpx.Response, status: int, shown: str
) -> None:
    idp.token_answer = answer
    r = _sign_in(client, idp)
    assert r.status_code == status
    assert shown in r.text


def test_a_provider_that_is_down_or_misdescribed_is_shown(
    client: TestClient, idp: FakeIdp, clock: Clock
) -> None:
    idp.down = True
    r = client.get("/oidc/sign-in")
    assert r.status_code == 502
    assert "Example ID could not be reached (discovery)" in r.text
    idp.down = False
    idp.discovery["issuer"] = "http://elsewhere"
    with _client(idp, clock) as c:
        r = c.get("/oidc/sign-in")
        assert r.status_code == 502
        assert "names another issuer" in r.text
    idp.discovery["issuer"] = ISSUER
    idp.discovery["code_challenge_methods_supported"] = ["plain"]
    with _client(idp, clock) as c:
        r = c.get("/oidc/sign-in")
        assert r.status_code == 502
        assert "does not support PKCE with S256" in r.text


def test_signing_keys_that_cannot_be_read_are_shown_then_read_again(
    client: TestClient, idp: FakeIdp
) -> None:
    _start(client)  # discovery is read (and kept)
    idp.down = True
    r = _callback(client, "http://testserver/oidc/callback")
    assert r.status_code == 400  # no state: refused before the provider is asked
    callback = idp.authorize(_start(client))
    r = _callback(client, callback)
    assert r.status_code == 502
    assert "Example ID could not be reached (code exchange)" in r.text
    idp.down = False
    original = idp._provider

    def no_keys(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks":
            return httpx.Response(503)
        return original(request)

    idp._provider = no_keys  # type: ignore[method-assign]
    r = _sign_in(client, idp)
    assert r.status_code == 502
    assert "Example ID's signing keys could not be read (503)" in html.unescape(r.text)
    idp._provider = original  # type: ignore[method-assign]
    assert _sign_in(client, idp).status_code == 303  # read again at once


def test_a_token_the_registry_refuses_does_not_sign_in(client: TestClient, idp: FakeIdp) -> None:
    idp.registry_refuses = True
    r = _sign_in(client, idp)
    assert r.status_code == 401
    assert "The registry did not accept the token from Example ID" in r.text
    assert "GAGGLE_OIDC_ISSUER" in r.text
    assert not _signed_in(client)


def test_the_id_token_can_be_the_credential(
    idp: FakeIdp, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    minted: list[str] = []
    original = idp.id_token

    def recording(sub: str, nonce: str | None, access: str) -> str:
        token = original(sub, nonce, access)
        minted.append(token)
        idp.access.add(token)  # this registry takes ID tokens
        return token

    monkeypatch.setattr(idp, "id_token", recording)
    with _client(idp, clock, oidc_bearer="id") as c:
        assert _sign_in(c, idp).status_code == 303
        assert _signed_in(c)
    assert idp.seen[-1].headers["authorization"] == f"Bearer {minted[-1]}"


def test_a_token_near_its_expiry_is_renewed_on_use(
    client: TestClient, idp: FakeIdp, clock: Clock
) -> None:
    _sign_in(client, idp)
    first = idp.seen[-1].headers["authorization"]
    clock.now += 200  # 100 s left: not due yet (60 s before expiry)
    assert _signed_in(client)
    assert idp.seen[-1].headers["authorization"] == first
    assert [f["grant_type"] for f in idp.token_forms] == ["authorization_code"]
    clock.now += 50  # 50 s left
    assert _signed_in(client)
    assert idp.token_forms[-1]["grant_type"] == "refresh_token"
    renewed = idp.seen[-1].headers["authorization"]
    assert renewed != first
    paths = [q.url.path for q in idp.seen]
    after = paths[len(paths) - paths[::-1].index("/token") :]
    assert after[0] == "/api/v1/me"  # the permissions are asked again, with the new token
    assert idp.seen[-len(after)].headers["authorization"] == renewed
    clock.now += 260
    assert _signed_in(client)  # the rotated refresh token was kept and used
    assert [f["grant_type"] for f in idp.token_forms].count("refresh_token") == 2


async def test_concurrent_pages_renew_once(idp: FakeIdp, clock: Clock) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token" and b"refresh_token" in request.content:
            await asyncio.sleep(0.05)  # both pages wait on the renewal
        return idp(request)

    settings = ConsoleSettings(
        registry_url="http://registry",
        rollouts_url="http://rollouts",
        oidc_issuer=ISSUER,
        oidc_client_id=CLIENT,
    )
    app = build_app(CommonSettings(), settings, clock=clock, transport=httpx.MockTransport(slow))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver") as c,
    ):
        start = await c.get("/oidc/sign-in")
        callback = urlsplit(idp.authorize(start.headers["location"]))
        assert (await c.get(f"{callback.path}?{callback.query}")).status_code == 303
        clock.now += 280
        pages = await asyncio.gather(*(c.get("/devices") for _ in range(4)))
    assert [p.status_code for p in pages] == [200] * 4
    assert [f["grant_type"] for f in idp.token_forms].count("refresh_token") == 1


@pytest.mark.parametrize(
    ("bend", "shown"),
    [
        ({"refresh_answer": httpx.Response(400, json={"error": "invalid_grant"})}, "invalid_grant"),
        ({"give_refresh": False}, "gave no refresh token"),
        ({"refresh_answer": "down"}, "could not be reached"),
    ],
)
def test_a_failed_renewal_signs_out_and_says_why(
    client: TestClient, idp: FakeIdp, clock: Clock, bend: dict[str, Any], shown: str
) -> None:
    if bend.get("give_refresh") is False:
        idp.give_refresh = False
    _sign_in(client, idp)
    assert _signed_in(client)
    if bend.get("refresh_answer") == "down":
        idp.down = True
    elif "refresh_answer" in bend:
        idp.refresh_answer = bend["refresh_answer"]
    clock.now += 290
    r = client.get("/devices")
    assert (r.status_code, r.headers["location"]) == (303, "/sign-in")
    page = client.get("/sign-in")
    assert "You were signed out: your sign-in with Example ID ended" in page.text
    assert shown in page.text
    assert "signed out" not in client.get("/sign-in").text  # said once
    idp.down = False
    assert not _signed_in(client)


def test_sign_out_offers_the_providers_logout(idp: FakeIdp, clock: Clock) -> None:
    with _client(idp, clock) as c:  # no end_session_endpoint: the console only
        _sign_in(c, idp)
        page = c.get("/overview")
        r = c.post("/sign-out", data={"csrf": _csrf(page.text)})
        assert (r.status_code, r.headers["location"]) == (303, "/sign-in")
        assert "/oidc/sign-out" not in c.get("/sign-in").text
    idp.discovery["end_session_endpoint"] = f"{ISSUER}/logout?ui=1"
    with _client(idp, clock) as c:
        _sign_in(c, idp)
        id_token = idp.id_tokens[-1]
        page = c.get("/overview")
        r = c.post("/sign-out", data={"csrf": _csrf(page.text)})
        assert (r.status_code, r.headers["location"]) == (303, "/sign-in")
        assert not _signed_in(c)
        offer = c.get("/sign-in")
        assert "You are signed out of the console" in offer.text
        assert 'href="/oidc/sign-out">Sign out of Example ID too<' in offer.text
        assert id_token not in offer.text  # the hint stays on the server
        r = c.get("/oidc/sign-out")
        assert r.status_code == 303
        target = urlsplit(r.headers["location"])
        params = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert f"{target.scheme}://{target.netloc}{target.path}" == f"{ISSUER}/logout"
        assert params == {
            "ui": "1",
            "id_token_hint": id_token,
            "client_id": CLIENT,
            "post_logout_redirect_uri": "http://testserver/sign-in",
        }
        r = c.get("/oidc/sign-out")  # once
        assert r.headers["location"] == "/sign-in"
    with _client(idp, clock, oidc_provider_logout=False) as c:
        _sign_in(c, idp)
        page = c.get("/overview")
        c.post("/sign-out", data={"csrf": _csrf(page.text)})
        assert "/oidc/sign-out" not in c.get("/sign-in").text


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)
