"""The device and software pages against fake services: CSRF, permissions, refusals, proxies."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gaggle_console.app import build_app
from gaggle_console.settings import ConsoleSettings
from gaggle_contracts.settings import CommonSettings

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)  # fixed-date-ok: the console's injected clock
READ = ["device:read", "rollout:read", "software:read"]
WRITE = ["device:write", "rollout:write", "software:write"]
KEYS = {"opkey": READ + WRITE, "viewkey": READ, "devonly": ["device:read", "rollout:read"]}
DEVICE = {
    "controller_id": "dev-1",
    "name": "Press one",
    "hw_model": "press",
    "hw_revision": "a",
    "sw_version": "1.0",
    "attributes": {"hw_boardname": "press", "serial": "<b>42</b>"},
    "update_state": "in_progress",
    "feed": "default",
    "tags": ["hall-2"],
    "last_seen_at": "2030-01-01T11:59:00Z",  # fixed-date-ok: shown, never compared
    "has_token": True,
}
HISTORY = [
    {"at": "2030-01-01T11:00:00Z", "status": "running", "execution": None, "details": []},
    {
        "at": "2030-01-01T11:01:00Z",
        "status": "running",
        "execution": "proceeding",
        "finished": "none",
        "code": None,
        "details": ["writing rootfs", "50% done"],
    },
]
ACTIONS = [
    {"id": "12", "controller_id": "dev-1", "software_id": "5", "version": "1.1", "type": "forced",
     "status": "running", "active": True, "created_at": "2030-01-01T11:00:00Z",
     "history": HISTORY},
    {"id": "9", "controller_id": "dev-1", "software_id": "4", "version": "1.0", "type": "forced",
     "status": "finished", "active": False, "created_at": "2030-01-01T10:00:00Z",
     "closed_at": "2030-01-01T10:05:00Z", "history": HISTORY[:1]},
]  # fmt: skip
SOFTWARE = {
    "id": "5",
    "name": "press-image",
    "version": "1.1",
    "filename": "press-1.1.swu",
    "size": 4096,
    "hashes": {"md5": "a" * 32, "sha1": "b" * 40, "sha256": "c" * 64},
    "compatibility": [{"hw_model": "press", "hw_revision": "*"}],
    "signed": True,
    "trust": "verified",
    "signature": {"method": "cms", "signer": {"subject": "CN=Builds", "fingerprint": "d" * 64}},
    "image_check": {"unhashed": [], "missing": []},
    "files": [{"name": "sw-description", "size": 300}],
    "used": False,
    "deleted": False,
    "created_at": "2030-01-01T09:00:00Z",
}
SSE = b': connected\n\nevent: action.feedback\ndata: {"action_id":"12"}\n\n'


class FakeServices(httpx.AsyncBaseTransport):
    """Registry, rollouts and artifacts; an upload's body is read chunk by chunk, as it comes."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []
        self.uploaded: list[bytes] = []
        self.on_upload_chunk: Any = None
        self.policy = {"mode": "rollout", "feed": "default", "software_id": None}
        self.deleted: list[str] = []
        self.canceled: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if key not in KEYS:
            return httpx.Response(401, json={"message": "unknown API key"})
        granted = KEYS[key]
        path, method = request.url.path, request.method
        if path == "/api/v1/me":
            return httpx.Response(200, json={"tenant": "t", "actor": key, "permissions": granted})
        host = request.url.host
        needs = {"registry": "device", "rollouts": "rollout", "artifacts": "software"}[host]
        verb = "read" if method == "GET" else "write"
        if f"{needs}:{verb}" not in granted:
            await request.aread()
            return httpx.Response(403, json={"message": f"needs {needs}:{verb}"})
        if host == "artifacts" and method == "POST" and path == "/api/v1/software":
            return await self._upload(request)
        body = await request.aread()
        if host == "registry":
            return self._registry(path)
        if host == "rollouts":
            return self._rollouts(method, path, body)
        return self._artifacts(method, path, request)

    async def _upload(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("content-type") == "application/json":
            sent = json.loads(await request.aread())
            if "nowhere" in sent["url"]:
                return httpx.Response(
                    422, json={"error": "fetch_failed", "message": "could not fetch the image"}
                )
            return httpx.Response(201, json={**SOFTWARE, "id": "6"})
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            if self.on_upload_chunk is not None:
                self.on_upload_chunk(chunk)
            self.uploaded.append(chunk)
        data = b"".join(self.uploaded)
        if data.startswith(b"bad"):
            return httpx.Response(
                422,
                json={
                    "error": "image_hash_mismatch",
                    "message": "member 'payload.bin' does not match the sha256 that "
                    "software.board.files gives",
                },
            )
        return httpx.Response(201, json={**SOFTWARE, "id": "7", "size": len(data)})

    def _registry(self, path: str) -> httpx.Response:
        if path == "/api/v1/devices":
            return httpx.Response(200, json={"items": [DEVICE], "next": None})
        if path == "/api/v1/devices/dev-1":
            return httpx.Response(200, json=DEVICE)
        if path == "/api/v1/devices/dev-1/logs/stream":

            async def events() -> AsyncIterator[bytes]:
                for part in SSE.split(b"\n\n")[:-1]:
                    yield part + b"\n\n"

            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=events()
            )
        return httpx.Response(404, json={"message": "device not found"})

    def _rollouts(self, method: str, path: str, body: bytes) -> httpx.Response:
        if path == "/api/v1/devices/dev-1/policy":
            if method == "PUT":
                sent = json.loads(body)
                if sent["mode"] == "assigned" and not sent.get("software_id"):
                    return httpx.Response(
                        400,
                        json={"error": "invalid_request", "message": "mode assigned needs a "
                              "software_id", "parameter": "software_id"},
                    )  # fmt: skip
                self.policy = {"software_id": None, **sent}
            return httpx.Response(200, json={"controller_id": "dev-1", **self.policy})
        if path == "/api/v1/devices/dev-1/actions":
            return httpx.Response(200, json={"items": ACTIONS})
        if path == "/api/v1/actions/12":
            return httpx.Response(200, json=ACTIONS[0])
        if path == "/api/v1/actions/9/cancel":
            return httpx.Response(409, json={"message": "action '9' is finished"})
        if path == "/api/v1/actions/12/cancel":
            self.canceled.append("12")
            return httpx.Response(200, json={**ACTIONS[0], "status": "canceling"})
        return httpx.Response(404, json={"message": "not found"})

    def _artifacts(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if path == "/api/v1/software":
            offset = int(request.url.params.get("offset") or 0)
            return httpx.Response(
                200,
                json={
                    "items": [SOFTWARE] if offset == 0 else [],
                    "total": 30,
                    "next_offset": 25 if offset == 0 else None,
                },
            )
        if path == "/api/v1/software/5":
            if method == "DELETE":
                self.deleted.append("5")
                return httpx.Response(200, json={"id": "5", "deleted": "hard"})
            return httpx.Response(200, json=SOFTWARE)
        return httpx.Response(404, json={"message": "software not found"})


@pytest.fixture
def services() -> FakeServices:
    return FakeServices()


def _app(services: FakeServices) -> Any:
    settings = ConsoleSettings(
        registry_url="http://registry",
        rollouts_url="http://rollouts",
        artifacts_url="http://artifacts",
    )
    return build_app(CommonSettings(), settings, now=lambda: NOW, transport=services)


@pytest.fixture
def client(services: FakeServices) -> Iterator[TestClient]:
    with TestClient(_app(services), follow_redirects=False) as c:
        yield c


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def _sign_in(client: TestClient, key: str = "opkey") -> str:
    """Sign in; the session's CSRF token."""
    form = client.get("/sign-in")
    r = client.post("/sign-in", data={"csrf": _csrf(form.text), "key": key})
    assert r.status_code == 303, r.text
    return _csrf(client.get("/overview").text)


# -- device page ----------------------------------------------------------------------------------


def test_signed_out_the_pages_lead_to_sign_in(client: TestClient, services: FakeServices) -> None:
    for path in ("/devices/dev-1", "/devices/dev-1/actions/12", "/software", "/software/5"):
        r = client.get(path)
        assert (r.status_code, r.headers["location"]) == (303, "/sign-in")
    r = client.post("/software/upload", content=b"x", headers={"X-Filename": "a.swu"})
    assert r.status_code == 401
    assert services.seen == []


def test_device_page_shows_inventory_policy_actions_and_history(client: TestClient) -> None:
    _sign_in(client)
    r = client.get("/devices/dev-1")
    assert r.status_code == 200, r.text
    html = r.text
    assert "Press one" in html
    assert '<th scope="row">serial</th><td>&lt;b&gt;42&lt;/b&gt;</td>' in html  # escaped
    assert '<span class="badge">hall-2</span>' in html
    assert 'id="policy-now">Mode <strong>rollout</strong>, feed <strong>default</strong>' in html
    assert "writing rootfs\n50% done" in html  # the history's detail lines
    assert 'action="/devices/dev-1/actions/12/cancel"' in html  # the open action only
    assert "/actions/9/cancel" not in html
    assert 'data-source="/devices/dev-1/log"' in html
    assert "device-log.js" in html
    assert "<noscript>" in html


def test_device_list_rows_lead_to_the_device_page(client: TestClient) -> None:
    _sign_in(client, "viewkey")
    html = client.get("/devices").text
    assert '<th scope="row"><a href="/devices/dev-1">dev-1</a></th>' in html


def test_viewer_sees_no_policy_form_and_no_cancel(client: TestClient) -> None:
    _sign_in(client, "viewkey")
    html = client.get("/devices/dev-1").text
    assert "Mode <strong>rollout</strong>" in html
    assert "Save policy" not in html
    assert "/policy" not in html
    assert "/cancel" not in html


@pytest.mark.parametrize(
    ("path", "status", "text"),
    [
        ("/devices/bad%20id", 400, "invalid controller id"),
        ("/devices/%C3%A9t%C3%A9", 400, "invalid controller id"),
        ("/devices/" + "x" * 257, 400, "invalid controller id"),
        ("/devices/dev-2", 404, "The registry knows no device"),
        ("/devices/dev-1/actions/abc", 404, "ids are numbers"),
        ("/devices/dev-1/actions/77", 404, "Rollouts knows no action 77"),
    ],
)
def test_bad_ids_answer_a_clear_page_without_asking_the_services(
    client: TestClient, services: FakeServices, path: str, status: int, text: str
) -> None:
    _sign_in(client)
    before = len(services.seen)
    r = client.get(path)
    assert r.status_code == status
    assert text in r.text
    if status == 400:
        assert len(services.seen) == before


def test_action_page_shows_its_full_history(client: TestClient, services: FakeServices) -> None:
    _sign_in(client)
    r = client.get("/devices/dev-1/actions/12")
    assert r.status_code == 200
    assert services.seen[-1].url.path == "/api/v1/actions/12"
    assert "writing rootfs" in r.text
    assert "Cancel action 12" in r.text
    # An action of another device is not shown under this one.
    assert client.get("/devices/dev-9/actions/12").status_code == 404


def test_policy_is_saved_with_the_csrf_token(client: TestClient, services: FakeServices) -> None:
    csrf = _sign_in(client)
    r = client.post("/devices/dev-1/policy", data={"csrf": csrf, "mode": "latest", "feed": "beta"})
    assert (r.status_code, r.headers["location"]) == (303, "/devices/dev-1?saved=policy#policy")
    put = services.seen[-1]
    assert (put.method, json.loads(put.content)) == ("PUT", {"mode": "latest", "feed": "beta"})
    assert put.headers["authorization"] == "Bearer opkey"
    assert "The policy was saved." in client.get(r.headers["location"]).text


def test_policy_validation_error_shows_inline_with_the_form_as_sent(
    client: TestClient, services: FakeServices
) -> None:
    csrf = _sign_in(client)
    r = client.post(
        "/devices/dev-1/policy", data={"csrf": csrf, "mode": "assigned", "feed": "beta"}
    )
    assert r.status_code == 400
    assert 'id="policy-refused"' in r.text
    assert "mode assigned needs a software_id" in r.text
    assert 'value="assigned" checked' in r.text
    assert 'id="policy-feed" name="feed" value="beta"' in r.text
    assert services.policy["mode"] == "rollout"


@pytest.mark.parametrize(
    "path", ["/devices/dev-1/policy", "/devices/dev-1/actions/12/cancel", "/software/5/delete"]
)
@pytest.mark.parametrize("token", [None, "forged"])
def test_posts_without_the_csrf_token_are_refused(
    client: TestClient, services: FakeServices, path: str, token: str | None
) -> None:
    _sign_in(client)
    before = len(services.seen)
    r = client.post(path, data={"mode": "pinned"} | ({"csrf": token} if token else {}))
    assert r.status_code == 403
    assert "CSRF" in r.text
    assert len(services.seen) == before  # nothing was asked of any service
    assert (services.deleted, services.canceled) == ([], [])


def test_cancel_and_its_refusal(client: TestClient, services: FakeServices) -> None:
    csrf = _sign_in(client)
    r = client.post("/devices/dev-1/actions/12/cancel", data={"csrf": csrf})
    assert (r.status_code, r.headers["location"]) == (303, "/devices/dev-1?canceled=12")
    assert services.canceled == ["12"]
    r = client.post("/devices/dev-1/actions/9/cancel", data={"csrf": csrf})
    assert r.status_code == 409
    assert "answered 409 (refused): action &#39;9&#39; is finished" in r.text


def test_a_refused_part_shows_its_403_and_the_rest_shows(client: TestClient) -> None:
    csrf = _sign_in(client, "viewkey")
    r = client.post("/devices/dev-1/actions/12/cancel", data={"csrf": csrf})
    assert r.status_code == 403
    assert "needs rollout:write" in r.text


def test_live_log_relays_the_registrys_stream_with_the_operators_key(
    client: TestClient, services: FakeServices
) -> None:
    _sign_in(client, "viewkey")
    with client.stream("GET", "/devices/dev-1/log") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert b"".join(r.iter_bytes()) == SSE
    asked = services.seen[-1]
    assert asked.url.path == "/api/v1/devices/dev-1/logs/stream"
    assert asked.headers["authorization"] == "Bearer viewkey"
    assert client.get("/devices/bad%20id/log").status_code == 400
    assert client.get("/devices/dev-2/log").status_code == 404


def test_live_log_needs_a_session(client: TestClient, services: FakeServices) -> None:
    r = client.get("/devices/dev-1/log")
    assert r.status_code == 401
    assert services.seen == []


# -- software -------------------------------------------------------------------------------------


def test_software_list_shows_hashes_trust_compatibility_and_paging(
    client: TestClient, services: FakeServices
) -> None:
    _sign_in(client)
    r = client.get("/software", params={"sort": "bogus", "limit": "7", "name": "press"})
    assert r.status_code == 200
    sent = services.seen[-1].url.params
    assert (sent["sort"], sent["limit"], sent["name"], sent["offset"]) == (
        "-created",
        "25",
        "press",
        "0",
    )
    html = r.text
    assert "c" * 64 in html and "b" * 40 in html and "a" * 32 in html
    assert 'class="badge trust-verified"' in html
    assert "press / *" in html
    assert "4.0 KiB" in html
    assert "1 to 1 of 30 software" in html
    assert 'href="/software?name=press&amp;offset=25" rel="next"' in html
    assert 'id="upload-form"' in html
    assert 'data-csrf-header="X-CSRF-Token"' in html
    assert 'href="/software/5/delete" data-delete="5"' in html
    assert '<dialog id="delete-dialog"' in html


def test_viewer_sees_no_upload_register_or_delete(client: TestClient) -> None:
    _sign_in(client, "viewkey")
    for path in ("/software", "/software/5"):
        html = client.get(path).text
        assert "c" * 64 in html
        for write in ('id="upload-form"', "/software/register", "data-delete", "<dialog"):
            assert write not in html, (path, write)
    html = client.get("/software/5/delete").text
    assert "Your key lacks <code>software:write</code>" in html
    assert 'action="/software/5/delete"' not in html


def test_software_refusal_is_shown(client: TestClient) -> None:
    _sign_in(client, "devonly")
    for path in ("/software", "/software/5"):
        r = client.get(path)
        assert r.status_code == 403
        assert "The artifacts service answered 403 (forbidden): needs software:read" in r.text


@pytest.mark.parametrize(
    ("path", "text"),
    [("/software/abc", "ids are numbers"), ("/software/99", "Artifacts knows no software 99")],
)
def test_bad_software_ids(client: TestClient, path: str, text: str) -> None:
    _sign_in(client)
    for suffix in ("", "/delete"):
        r = client.get(path + suffix)
        assert r.status_code == 404
        assert text in r.text


def test_software_detail_and_delete(client: TestClient, services: FakeServices) -> None:
    _sign_in(client)
    html = client.get("/software/5").text
    assert "CN=Builds" in html
    assert "d" * 64 in html
    assert "sw-description" in html
    page = client.get("/software/5/delete")
    assert "it and its image are removed for good" in page.text
    r = client.post("/software/5/delete", data={"csrf": _csrf(page.text)})
    assert (r.status_code, r.headers["location"]) == (303, "/software?deleted=5&how=hard")
    assert services.deleted == ["5"]
    assert services.seen[-1].headers["authorization"] == "Bearer opkey"
    assert "Software 5 was deleted (with its image)." in client.get(r.headers["location"]).text


def test_register_by_url_and_its_refusal(client: TestClient, services: FakeServices) -> None:
    csrf = _sign_in(client)
    r = client.post("/software/register", data={"csrf": csrf, "url": "https://example.org/a.swu"})
    assert (r.status_code, r.headers["location"]) == (303, "/software/6")
    assert json.loads(services.seen[-1].content) == {"url": "https://example.org/a.swu"}
    r = client.post(
        "/software/register", data={"csrf": csrf, "url": "https://nowhere.example/a.swu"}
    )
    assert r.status_code == 422
    assert 'id="register-error"' in r.text
    assert "could not fetch the image" in r.text
    assert 'value="https://nowhere.example/a.swu"' in r.text
    r = client.post("/software/register", data={"csrf": csrf, "url": "ftp://x/a.swu"})
    assert r.status_code == 400
    assert "http:// or https:// URL" in r.text


def test_upload_passes_the_body_and_the_key_on(client: TestClient, services: FakeServices) -> None:
    csrf = _sign_in(client)
    data = b"swu image " * 1000
    r = client.post(
        "/software/upload",
        content=data,
        headers={"X-CSRF-Token": csrf, "X-Filename": "press%201.1.swu"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(data)
    assert b"".join(services.uploaded) == data
    sent = services.seen[-1]
    assert sent.headers["authorization"] == "Bearer opkey"
    assert sent.headers["content-length"] == str(len(data))
    assert sent.url.params["filename"] == "press 1.1.swu"
    assert sent.headers["content-disposition"] == 'attachment; filename="press%201.1.swu"'


def test_upload_refusal_from_artifacts_is_passed_on(client: TestClient) -> None:
    csrf = _sign_in(client)
    r = client.post(
        "/software/upload", content=b"bad image", headers={"X-CSRF-Token": csrf, "X-Filename": "b"}
    )
    assert r.status_code == 422
    assert "member 'payload.bin' does not match the sha256" in r.json()["message"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Filename": "a.swu"}, 403),
        ({"X-Filename": "a.swu", "X-CSRF-Token": "forged"}, 403),
        ({"X-CSRF-Token": "<good>"}, 400),
    ],
)
def test_upload_is_refused_before_anything_is_sent(
    client: TestClient, services: FakeServices, headers: dict[str, str], status: int
) -> None:
    csrf = _sign_in(client)
    before = len(services.seen)
    headers = {k: csrf if v == "<good>" else v for k, v in headers.items()}
    r = client.post("/software/upload", content=b"image", headers=headers)
    assert r.status_code == status
    assert r.json()["message"]
    assert len(services.seen) == before
    assert services.uploaded == []


def test_upload_without_software_write_is_refused_before_streaming(
    client: TestClient, services: FakeServices
) -> None:
    csrf = _sign_in(client, "viewkey")
    before = len(services.seen)
    r = client.post(
        "/software/upload", content=b"image", headers={"X-CSRF-Token": csrf, "X-Filename": "a"}
    )
    assert r.status_code == 403
    assert "lacks software:write" in r.json()["message"]
    assert len(services.seen) == before


async def test_upload_streams_each_chunk_on_as_it_arrives(services: FakeServices) -> None:
    """Artifacts sees the first chunk before the browser has sent the second: no buffering."""
    app = _app(services)
    chunks = [bytes([65 + i]) * 65536 for i in range(8)]
    given: list[int] = []
    seen_when: list[int] = []
    services.on_upload_chunk = lambda chunk: seen_when.append(len(given))

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            given.append(len(chunk))
            yield chunk

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://console"
        ) as browser,
    ):
        form = await browser.get("/sign-in")
        await browser.post("/sign-in", data={"csrf": _csrf(form.text), "key": "opkey"})
        csrf = _csrf((await browser.get("/software")).text)
        r = await browser.post(
            "/software/upload",
            content=body(),
            headers={
                "X-CSRF-Token": csrf,
                "X-Filename": "big.swu",
                "Content-Length": str(sum(map(len, chunks))),
            },
        )
    assert r.status_code == 201, r.text
    assert b"".join(services.uploaded) == b"".join(chunks)
    assert seen_when[0] < len(chunks)  # the first chunk went on before the last came in
    assert seen_when == sorted(seen_when)
