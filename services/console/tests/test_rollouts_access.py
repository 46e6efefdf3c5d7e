"""Rollout and access pages against fake services (httpx MockTransport).

Permissions decide which buttons show, CSRF guards every form, a service's refusal is shown with
its status, a refused form keeps its values, and a new key is shown once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gaggle_console.app import build_app
from gaggle_console.settings import ConsoleSettings
from gaggle_contracts.settings import CommonSettings

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # fixed-date-ok: an injected clock
GRANTS = {
    "admin": ["admin", "rollout:read", "rollout:write", "rollout:approve", "device:read"],
    "operator": ["rollout:read", "rollout:write", "device:read"],
    "approver": ["rollout:read", "rollout:approve"],
    "viewer": ["rollout:read", "device:read"],
    "stale": ["rollout:read", "rollout:write"],  # the services no longer let it write
    "blind": ["device:read"],
}
NEW_KEY = "ggl_abcdefabcdef_" + "S" * 43
SSE = b'event: rollout\ndata: {"id":"7","state":"running"}\n\n'


def rollout_doc(ident: str = "7", **extra: Any) -> dict[str, Any]:
    return {
        "id": ident,
        "name": "spring",
        "feed": "default",
        "software_id": "3",
        "version": "2.0",
        "state": "running",
        "approval": None,
        "reason": None,
        "current_wave": 1,
        "success_threshold": 80,
        "error_threshold": 20,
        "error_action": "pause",
        "action_type": "forced",
        "confirmation_required": False,
        "counters": {"total": 10, "success": 3, "failure": 1, "running": 2, "pending": 4},
        "waves": [
            {"wave": 1, "size": 4, "counters": {"total": 4, "success": 3, "failure": 1}},
            {"wave": 2, "size": 6, "counters": {"total": 6, "running": 2}},
        ],
        "created_at": "2030-01-01T11:00:00+00:00",
        **extra,
    }


class FakeServices:
    """Registry and rollouts, each call checked against the key's grants."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.rollout = rollout_doc()

    def writes(self) -> list[httpx.Request]:
        return [r for r in self.seen if r.method != "GET"]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key not in GRANTS:
            return httpx.Response(401, json={"message": "unknown API key"})
        granted = set(GRANTS[key])
        path = request.url.path
        if path == "/api/v1/me":
            return httpx.Response(200, json={"tenant": "t", "permissions": sorted(granted)})
        if request.url.host == "registry":
            return self.registry(request, granted)
        return self.rollouts(request, key, granted)

    def registry(self, request: httpx.Request, granted: set[str]) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/devices":
            tag = request.url.params.get("tag")
            ids = ["a-1", "a-2"] if tag == "lab" else []
            return httpx.Response(
                200, json={"items": [{"controller_id": i} for i in ids], "next": None}
            )
        if "admin" not in granted:
            return httpx.Response(403, json={"message": "needs admin"})
        if path == "/api/v1/keys" and request.method == "GET":
            key = {"id": "abcdefabcdef", "name": "ci", "permissions": ["viewer"]}
            return httpx.Response(200, json={"items": [key]})
        if path == "/api/v1/keys" and request.method == "POST":
            body = json.loads(request.content)
            if body["name"] == "taken":
                return httpx.Response(400, json={"message": "give a better name"})
            doc = {"id": "abcdefabcdef", "name": body["name"], "permissions": ["viewer"]}
            return httpx.Response(201, json={**doc, "expires_at": None, "key": NEW_KEY})
        if path.startswith("/api/v1/keys/") and request.method == "DELETE":
            return httpx.Response(200, json={"id": path.rsplit("/", 1)[1]})
        if path == "/api/v1/audit":
            params = dict(request.url.params)
            entry = {
                "at": "2030-01-01T11:59:00+00:00",
                "actor": "key:abcdefabcdef",
                "service": "rollouts",
                "action": "pause_rollout",
                "method": "POST",
                "resource": "rollouts/7/pause",
                "status": 200,
                "outcome": "success",
            }
            return httpx.Response(
                200,
                json={"items": [{**entry, "params": params}], "next": "c2"},
            )
        return httpx.Response(404, json={"message": "not found"})

    def rollouts(self, request: httpx.Request, key: str, granted: set[str]) -> httpx.Response:
        path = request.url.path
        if "rollout:read" not in granted:
            return httpx.Response(403, json={"message": "needs rollout:read"})
        if request.method == "POST":
            if "rollout:write" not in granted or key == "stale":
                return httpx.Response(403, json={"message": "needs rollout:write"})
            if path == "/api/v1/rollouts":
                body = json.loads(request.content)
                if body["name"] == "bad":
                    detail = [{"msg": "waves: the percentages add up to more than 100"}]
                    return httpx.Response(422, json={"detail": detail})
                return httpx.Response(201, json=rollout_doc("8"))
            return httpx.Response(200, json=self.rollout)
        if path == "/api/v1/rollouts":
            finished = rollout_doc("6", state="finished")
            return httpx.Response(200, json={"items": [self.rollout, finished], "next": "6"})
        if path == "/api/v1/rollouts/7":
            return httpx.Response(200, json=self.rollout)
        if path == "/api/v1/rollouts/7/events":
            return httpx.Response(200, content=SSE, headers={"content-type": "text/event-stream"})
        if path == "/api/v1/rollouts/7/devices":
            items = [{"controller_id": "a-1", "wave": 1, "state": "success", "action_id": "5"}]
            return httpx.Response(200, json={"items": items, "next": "a-1"})
        return httpx.Response(404, json={"message": "rollout not found"})


@pytest.fixture
def services() -> FakeServices:
    return FakeServices()


@pytest.fixture
def client(services: FakeServices) -> Iterator[TestClient]:
    settings = ConsoleSettings(registry_url="http://registry", rollouts_url="http://rollouts")
    app = build_app(
        CommonSettings(), settings, now=lambda: NOW, transport=httpx.MockTransport(services)
    )
    with TestClient(app, follow_redirects=False) as c:
        yield c


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Signs in with ``key`` (in a new session); the session's CSRF token."""
    client.cookies.clear()
    form = client.get("/sign-in")
    r = client.post("/sign-in", data={"csrf": csrf(form.text), "key": key})
    assert r.status_code == 303, r.text
    return csrf(client.get("/rollouts").text)


def test_the_list_shows_state_and_progress_and_new_only_to_writers(client: TestClient) -> None:
    sign_in(client, "viewer")
    r = client.get("/rollouts")
    assert r.status_code == 200
    assert 'href="/rollouts/7"' in r.text
    assert 'class="badge rollout-finished"' in r.text
    assert '<progress id="progress-7" max="10" value="4">' in r.text
    assert "4 of 10 done (40%)" in r.text
    assert 'href="/rollouts?before=6"' in r.text
    assert "New rollout" not in r.text
    assert client.get("/rollouts/new").status_code == 403
    sign_in(client, "operator")
    assert "New rollout" in client.get("/rollouts").text
    assert client.get("/rollouts/new").status_code == 200


@pytest.mark.parametrize(
    ("key", "shown", "hidden"),
    [
        ("viewer", [], ["/pause", "/resume", "/abort", "/approve", "Abort…"]),
        ("operator", ["/pause", "/resume", "/abort", "Abort…"], ["/approve", "/deny"]),
        ("approver", ["/approve", "/deny"], ["/pause", "/abort", "Abort…"]),
    ],
)
def test_the_live_view_shows_only_the_commands_the_key_may_use(
    client: TestClient, services: FakeServices, key: str, shown: list[str], hidden: list[str]
) -> None:
    services.rollout = rollout_doc(approval="pending")
    sign_in(client, key)
    r = client.get("/rollouts/7")
    assert r.status_code == 200
    assert 'data-events="/rollouts/7/events"' in r.text
    assert '<progress id="overall" max="10" value="4">' in r.text
    assert '<progress id="wave-1" max="4" value="4">' in r.text
    assert '<progress id="wave-2" max="6" value="0">' in r.text
    for text in shown:
        assert text in r.text, text
    for text in hidden:
        assert text not in r.text, text


def test_commands_not_for_the_state_are_there_but_hidden(client: TestClient) -> None:
    sign_in(client, "operator")
    html = client.get("/rollouts/7").text
    pause = re.search(r'<form [^>]*action="/rollouts/7/pause"[^>]*>', html)
    resume = re.search(r'<form [^>]*action="/rollouts/7/resume"[^>]*>', html)
    assert pause and "hidden" not in pause.group(0)
    assert resume and "hidden" in resume.group(0)


@pytest.mark.parametrize(
    "path",
    ["/rollouts/new", "/rollouts/7/pause", "/access/keys", "/access/keys/abcdefabcdef/revoke"],
)
@pytest.mark.parametrize("token", [None, "forged"])
def test_a_form_without_the_csrf_token_is_refused_and_nothing_is_sent(
    client: TestClient, services: FakeServices, path: str, token: str | None
) -> None:
    sign_in(client, "admin")
    data = {"name": "x", "software_id": "3", "role": "viewer"}
    r = client.post(path, data=data | ({"csrf": token} if token else {}))
    assert r.status_code == 403
    assert "CSRF" in r.text
    assert services.writes() == []


def test_a_new_rollout_is_sent_as_the_api_takes_it(
    client: TestClient, services: FakeServices
) -> None:
    token = sign_in(client, "operator")
    form = {
        "csrf": token,
        "name": "spring",
        "software_id": "3",
        "feed": "beta",
        "hw_model": "press",
        "controller_ids": "a-1, a-2\na-3",
        "tag": "lab",
        "wave_unit": "count",
        "waves": "1, 1",
        "success_threshold": "90",
        "error_threshold": "5",
        "error_action": "abort",
        "action_type": "timeforced",
        "forcetime": "2030-01-02T03:04",
        "window_start": "02:00",
        "window_end": "04:00",
        "window_timezone": "Europe/Berlin",
        "window_days": "mon, tue",
        "confirmation_required": "on",
        "start": "on",
    }
    r = client.post("/rollouts/new", data=form)
    assert (r.status_code, r.headers["location"]) == (303, "/rollouts/8")
    (sent,) = services.writes()
    assert json.loads(sent.content) == {
        "name": "spring",
        "software_id": "3",
        "feed": "beta",
        "filter": {"hw_model": "press", "controller_ids": ["a-1", "a-2"]},
        "waves": [{"count": 1}, {"count": 1}],
        "success_threshold": 90,
        "error_threshold": 5,
        "error_action": "abort",
        "action_type": "timeforced",
        "forcetime": "2030-01-02T03:04:00+00:00",
        "maintenance_window": {
            "start": "02:00",
            "end": "04:00",
            "timezone": "Europe/Berlin",
            "days": ["mon", "tue"],
        },
        "confirmation_required": True,
        "start": True,
    }
    assert sent.headers["authorization"] == "Bearer operator"


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"name": "bad"}, 422, "the percentages add up to more than 100"),
        ({"waves": "ten"}, 400, "Waves: give each wave"),
        ({"error_threshold": "101"}, 400, "Error threshold"),
        ({"window_start": "2am", "window_end": "04:00"}, 400, "Maintenance window"),
        ({"tag": "nobody"}, 400, "no device has the tag"),
    ],
)
def test_a_refused_rollout_keeps_the_forms_values(
    client: TestClient, fields: dict[str, str], status: int, message: str
) -> None:
    token = sign_in(client, "operator")
    form = {
        "csrf": token,
        "name": "spring",
        "software_id": "sw-77",
        "feed": "beta-feed",
        "waves": "10, 30",
        "success_threshold": "80",
        "error_threshold": "20",
        "hw_model": "press-model",
    } | fields
    r = client.post("/rollouts/new", data=form)
    assert r.status_code == status
    assert message in r.text
    assert 'role="alert"' in r.text
    for name, value in form.items():
        if name != "csrf":
            assert f'value="{value}"' in r.text, name


def test_a_services_refusal_is_shown_with_its_status(client: TestClient) -> None:
    token = sign_in(client, "stale")
    r = client.post("/rollouts/new", data={"csrf": token, "name": "n", "software_id": "3"})
    assert r.status_code == 403
    assert "answered 403 (forbidden): needs rollout:write" in r.text
    r = client.post("/rollouts/7/pause", data={"csrf": token})
    assert r.status_code == 403
    assert "needs rollout:write" in r.text
    sign_in(client, "blind")
    for path in ("/rollouts", "/rollouts/7", "/rollouts/7/devices"):
        r = client.get(path)
        assert r.status_code == 403, path
        assert "needs rollout:read" in r.text


def test_a_command_goes_to_the_service_and_back_to_the_rollout(
    client: TestClient, services: FakeServices
) -> None:
    token = sign_in(client, "operator")
    r = client.post("/rollouts/7/pause", data={"csrf": token})
    assert (r.status_code, r.headers["location"]) == (303, "/rollouts/7")
    assert [(q.method, q.url.path) for q in services.writes()] == [
        ("POST", "/api/v1/rollouts/7/pause")
    ]
    r = client.post("/rollouts/7/approve", data={"csrf": token})
    assert r.status_code == 403  # the console knows the key may not approve
    assert client.post("/rollouts/7/explode", data={"csrf": token}).status_code == 404
    assert client.post("/rollouts/x7/pause", data={"csrf": token}).status_code == 404
    assert len(services.writes()) == 1


def test_the_event_stream_is_relayed_with_the_operators_key(
    client: TestClient, services: FakeServices
) -> None:
    sign_in(client, "viewer")
    r = client.get("/rollouts/7/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.content == SSE
    assert services.seen[-1].headers["authorization"] == "Bearer viewer"
    sign_in(client, "blind")
    r = client.get("/rollouts/7/events")
    assert r.status_code == 403
    assert "needs rollout:read" in r.text


def test_members_are_paged_by_device_id(client: TestClient, services: FakeServices) -> None:
    sign_in(client, "viewer")
    r = client.get("/rollouts/7/devices?state=success")
    assert r.status_code == 200
    assert "a-1" in r.text
    assert 'href="/rollouts/7/devices?state=success&amp;after=a-1"' in r.text
    assert services.seen[-1].url.params["state"] == "success"


def test_access_is_for_admins_and_its_menu_item_too(client: TestClient) -> None:
    sign_in(client, "operator")
    assert 'href="/access"' not in client.get("/rollouts").text
    for path in ("/access", "/access/audit"):
        r = client.get(path)
        assert r.status_code == 403
        assert "lacks the admin permission" in r.text
    sign_in(client, "admin")
    assert 'href="/access"' in client.get("/rollouts").text
    r = client.get("/access")
    assert r.status_code == 200
    assert "abcdefabcdef" in r.text
    assert "Revoke…" in r.text


def test_a_new_key_is_shown_once(client: TestClient, services: FakeServices) -> None:
    token = sign_in(client, "admin")
    r = client.post(
        "/access/keys",
        data={"csrf": token, "name": "ci", "grant": "role", "role": "viewer"},
    )
    assert r.status_code == 201
    assert NEW_KEY in r.text
    assert "shown this once" in r.text
    (sent,) = services.writes()
    assert json.loads(sent.content) == {"name": "ci", "role": "viewer"}
    assert NEW_KEY not in r.headers.get("location", "")
    for path in ("/access", "/rollouts", "/access/audit"):
        assert NEW_KEY not in client.get(path).text


def test_a_key_of_chosen_permissions_and_refusals_keep_the_values(
    client: TestClient, services: FakeServices
) -> None:
    token = sign_in(client, "admin")
    form = {
        "csrf": token,
        "name": "deployer",
        "grant": "permissions",
        "perm-rollout:read": "on",
        "perm-rollout:write": "on",
        "expires_in_days": "30",
    }
    assert client.post("/access/keys", data=form).status_code == 201
    assert json.loads(services.writes()[0].content) == {
        "name": "deployer",
        "permissions": ["rollout:read", "rollout:write"],
        "expires_in_days": 30,
    }
    r = client.post("/access/keys", data={**form, "name": "taken"})
    assert r.status_code == 400
    assert "give a better name" in r.text
    assert 'value="taken"' in r.text and 'value="30"' in r.text
    assert 'name="perm-rollout:write" checked' in r.text
    assert NEW_KEY not in r.text
    r = client.post("/access/keys", data={**form, "expires_in_days": "-1"})
    assert r.status_code == 400
    assert "Expires in" in r.text


def test_revoke_deletes_the_key(client: TestClient, services: FakeServices) -> None:
    token = sign_in(client, "admin")
    r = client.post("/access/keys/abcdefabcdef/revoke", data={"csrf": token})
    assert (r.status_code, r.headers["location"]) == (303, "/access?revoked=abcdefabcdef")
    assert [(q.method, q.url.path) for q in services.writes()] == [
        ("DELETE", "/api/v1/keys/abcdefabcdef")
    ]
    assert "is revoked" in client.get(r.headers["location"]).text


def test_the_audit_log_passes_its_filters_and_pages(
    client: TestClient, services: FakeServices
) -> None:
    sign_in(client, "admin")
    r = client.get("/access/audit?actor=key:x&resource=rollouts/7&service=rollouts&cursor=c1")
    assert r.status_code == 200
    assert "pause_rollout" in r.text
    params = dict(services.seen[-1].url.params)
    assert params == {
        "actor": "key:x",
        "resource": "rollouts/7",
        "service": "rollouts",
        "cursor": "c1",
        "limit": "50",
    }
    assert "cursor=c2" in r.text
    assert 'href="/access/audit?actor=key%3Ax' in r.text


def test_the_pages_script_is_a_file_of_the_console(client: TestClient) -> None:
    sign_in(client, "admin")
    for path in ("/rollouts/7", "/access"):
        html = client.get(path).text
        scripts = re.findall(r"<script[^>]*>", html)
        assert scripts == ['<script src="http://testserver/static/console.js" defer>'], scripts
        assert not re.search(r"\son[a-z]+=", html)  # no inline handler (the CSP forbids them)
    r = client.get("/static/console.js")
    assert r.status_code == 200
    assert "EventSource" in r.text
