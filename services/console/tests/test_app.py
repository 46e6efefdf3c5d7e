"""The console's pages against fake services (httpx MockTransport): sessions, CSRF, refusals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient

from gaggle_console.app import build_app
from gaggle_console.settings import ConsoleSettings
from gaggle_contracts.settings import CommonSettings

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
GOOD = "goodkey"
NO_DEVICES = "rolloutsonly"
DEVICES = [
    {
        "controller_id": f"dev-{i}",
        "update_state": "up_to_date" if i % 2 else "error",
        "hw_model": "board",
        "hw_revision": "b",
        "sw_version": "1.0",
        "last_seen_at": (NOW - timedelta(minutes=i)).isoformat(),
    }
    for i in range(1, 8)
]


class FakeServices:
    """Registry and rollouts: ``GOOD`` may read all, ``NO_DEVICES`` only rollouts."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key not in (GOOD, NO_DEVICES):
            return httpx.Response(401, json={"message": "unknown API key"})
        if request.url.path == "/api/v1/me":
            granted = ["device:read", "rollout:read"] if key == GOOD else ["rollout:read"]
            return httpx.Response(
                200, json={"tenant": "t", "actor": f"key:{key}", "permissions": granted}
            )
        if request.url.host == "registry":
            if key != GOOD:
                return httpx.Response(403, json={"message": "needs device:read"})
            params = request.url.params
            if not (params.get("cursor") or "0").isdigit():
                return httpx.Response(400, json={"message": "invalid cursor"})
            start = int(params.get("cursor") or 0)
            limit = int(params["limit"])
            items = DEVICES[start : start + limit]
            nxt = str(start + limit) if start + limit < len(DEVICES) else None
            return httpx.Response(200, json={"items": items, "next": nxt})
        rollout = {
            "id": 7,
            "name": "spring",
            "state": "running",
            "counters": {"total": 4, "success": 1, "failure": 1},
        }
        return httpx.Response(200, json={"items": [rollout, {**rollout, "state": "finished"}]})


@pytest.fixture
def services() -> FakeServices:
    return FakeServices()


def _client(services: FakeServices, base_url: str = "http://testserver") -> TestClient:
    settings = ConsoleSettings(
        registry_url="http://registry", rollouts_url="http://rollouts", overview_max_devices=5
    )
    app = build_app(
        CommonSettings(), settings, now=lambda: NOW, transport=httpx.MockTransport(services)
    )
    return TestClient(app, base_url=base_url, follow_redirects=False)


@pytest.fixture
def client(services: FakeServices) -> Iterator[TestClient]:
    with _client(services) as c:
        yield c


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def _sign_in(client: TestClient, key: str) -> httpx.Response:
    form = client.get("/sign-in")
    return client.post("/sign-in", data={"csrf": _csrf(form.text), "key": key})


def test_signed_out_pages_lead_to_sign_in(client: TestClient) -> None:
    for path in ("/", "/overview", "/devices"):
        r = client.get(path)
        assert (r.status_code, r.headers["location"]) == (303, "/sign-in")


def test_cookie_is_httponly_lax_and_secure_only_on_https(services: FakeServices) -> None:
    with _client(services) as plain:
        cookie = plain.get("/sign-in").headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie
    with _client(services, "https://testserver") as tls:
        assert "secure" in tls.get("/sign-in").headers["set-cookie"].lower()


def test_sign_in_gives_a_new_session_and_the_key_goes_to_the_services(
    client: TestClient, services: FakeServices
) -> None:
    client.get("/sign-in")
    before = client.cookies["gaggle_console"]
    r = _sign_in(client, GOOD)
    assert (r.status_code, r.headers["location"]) == (303, "/overview")
    assert client.cookies["gaggle_console"] != before
    assert GOOD not in r.headers["set-cookie"]
    assert client.get("/overview").status_code == 200
    assert {q.headers["authorization"] for q in services.seen} == {f"Bearer {GOOD}"}


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("wrong", "This API key was not accepted"),
        ("", "Enter an API key."),
        ("bad key\x01", "This is not an API key."),
    ],
)
def test_a_wrong_key_is_refused_on_the_form(client: TestClient, key: str, message: str) -> None:
    r = _sign_in(client, key)
    assert r.status_code == 401
    assert message in r.text
    assert client.get("/overview").status_code == 303


def test_a_key_without_device_read_signs_in_and_sees_the_403(client: TestClient) -> None:
    assert _sign_in(client, NO_DEVICES).status_code == 303
    r = client.get("/devices")
    assert r.status_code == 403
    assert "answered 403 (forbidden): needs device:read" in r.text


@pytest.mark.parametrize("path", ["/sign-in", "/sign-out"])
@pytest.mark.parametrize("token", [None, "forged"])
def test_a_post_without_the_csrf_token_is_refused(
    client: TestClient, path: str, token: str | None
) -> None:
    assert _sign_in(client, GOOD).status_code == 303
    data = {"key": GOOD} | ({"csrf": token} if token else {})
    r = client.post(path, data=data)
    assert r.status_code == 403
    assert "CSRF" in r.text
    assert client.get("/overview").status_code == 200  # still signed in


def test_sign_out_ends_the_session(client: TestClient) -> None:
    _sign_in(client, GOOD)
    page = client.get("/overview")
    cookie = client.cookies["gaggle_console"]
    r = client.post("/sign-out", data={"csrf": _csrf(page.text)})
    assert (r.status_code, r.headers["location"]) == (303, "/sign-in")
    client.cookies.set("gaggle_console", cookie)
    assert client.get("/overview").status_code == 303


def test_overview_counts_and_rollouts(client: TestClient) -> None:
    _sign_in(client, GOOD)
    html = client.get("/overview").text
    # The cap (5) stops the count: 5 of 7 devices, seen 1 to 5 minutes ago, all online.
    assert 'id="count-total">5<' in html
    assert 'id="count-online">5<' in html
    assert "Counted over the first 5 devices only." in html
    assert 'data-label="up_to_date" data-count="3"' in html
    assert 'data-label="error" data-count="2"' in html
    assert "2 of 4 devices done (50%)" in html
    assert html.count("<progress") == 1  # the finished rollout is not listed


def test_devices_filters_and_paging(client: TestClient, services: FakeServices) -> None:
    _sign_in(client, GOOD)
    r = client.get("/devices", params={"q": "dev", "state": "bogus", "limit": "25"})
    assert r.status_code == 200
    sent = services.seen[-1].url.params
    assert (sent["q"], sent["limit"], "state" in sent) == ("dev", "25", False)
    assert r.text.count('<th scope="row">') == 7
    assert "Next page" not in r.text
    r = client.get("/devices", params={"limit": "25", "cursor": "5"})
    assert r.text.count('<th scope="row">') == 2
    assert 'href="/devices?limit=25">First page' in r.text


def test_an_oversized_form_is_refused_unread(client: TestClient) -> None:
    form = client.get("/sign-in")
    r = client.post("/sign-in", data={"csrf": _csrf(form.text), "key": "k" * 20_000})
    assert r.status_code == 413
    assert "larger than the console takes" in r.text


def test_a_refused_listing_shows_the_services_answer(client: TestClient) -> None:
    _sign_in(client, GOOD)
    r = client.get("/devices", params={"cursor": "<script>"})
    assert r.status_code == 400
    assert "The registry service answered 400 (refused): invalid cursor" in r.text
    assert "<script>" not in r.text
