"""Uploads, the catalogue, downloads and deletes, against PostgreSQL, NATS and both stores."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from gaggle_artifacts.app import build_app
from gaggle_artifacts.domain import (
    MAX_COMPATIBILITY,
    MAX_DESCRIPTION,
    MAX_HW,
    MAX_IMAGES,
    MAX_MEMBERS,
    MAX_NAME,
    MAX_SW_DESCRIPTION,
    MAX_VERSION,
)
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.events import ActionCreated, SoftwareCreated, SoftwareDeleted
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_storage import ObjectNotFoundError, StorageSettings
from gaggle_swu.build import build_swu, make_rawfile_swu

pytestmark = pytest.mark.integration


def image(version: str = "1.2.3", board: str = "board", payload: bytes | None = None) -> bytes:
    return make_rawfile_swu(
        payload if payload is not None else os.urandom(4096),
        version=version,
        board=board,
        revisions=["1.0", "2.0"],
        install_path="/tmp/x",
        key=None,
        cert=None,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str) -> StorageSettings:
    if request.param == "local":
        return StorageSettings(backend="local", dir=tmp_path / "objects")
    return StorageSettings(
        backend="s3",
        s3_endpoint=s3_endpoint,
        s3_bucket=f"b{os.urandom(4).hex()}",
        s3_access_key="testing",
        s3_secret_key="testing",
    )


class Artifacts:
    def __init__(self, running: Any, tenant: str) -> None:
        self.url = running.url
        self.app = running.app
        self.tenant = tenant
        self.store = running.app.state.store
        self.pool = running.app.state.service.db.pool

    def params(self, **extra: Any) -> dict[str, Any]:
        return {"tenant": self.tenant, **extra}

    async def upload(
        self,
        client: httpx.AsyncClient,
        data: bytes,
        name: str = "img-1.swu",
        multipart: bool = False,
    ) -> httpx.Response:
        if multipart:
            return await client.post(
                f"{self.url}/api/v1/software",
                params=self.params(),
                files={"file": (name, data, "application/octet-stream")},
            )
        return await client.post(
            f"{self.url}/api/v1/software", params=self.params(filename=name), content=data
        )

    async def objects(self) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT object_key FROM artifacts.software WHERE object_key IS NOT NULL"
        )
        return [r["object_key"] for r in rows]

    async def upload_streamed(
        self, client: httpx.AsyncClient, data: bytes, name: str = "big.swu"
    ) -> httpx.Response:
        """The raw body in pieces, without Content-Length: limits bite mid-stream."""

        async def streamed() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        return await client.post(
            f"{self.url}/api/v1/software", params=self.params(filename=name), content=streamed()
        )

    async def stored(self) -> list[str]:
        """Every object in the store, temporary files and unfinished uploads included."""
        if hasattr(self.store, "root"):
            return [str(p) for p in Path(self.store.root).rglob("*") if p.is_file()]
        found = await asyncio.to_thread(
            lambda: list(self.store.client.list_objects(self.store.bucket, recursive=True))
        )
        uploads = await asyncio.to_thread(
            lambda: list(self.store.client._list_multipart_uploads(self.store.bucket).uploads)
        )
        return [o.object_name for o in found] + [u.object_name for u in uploads]

    async def announced(self, nats_url: str) -> int:
        """software.created events of this tenant in the outbox plus those on the stream."""
        queued = await self.pool.fetchval(
            "SELECT count(*) FROM artifacts.outbox WHERE target = $1",
            names.subject(self.tenant, "software.created"),
        )
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info(
                names.STREAM, subjects_filter=names.subject(self.tenant, "software.created")
            )
        finally:
            await nc.close()
        return int(queued) + sum((info.state.subjects or {}).values())

    async def rows(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM artifacts.software WHERE tenant = $1", self.tenant
            )
        )


@pytest.fixture
async def artifacts(
    common: CommonSettings, serve, tenant: str, storage: StorageSettings
) -> Artifacts:
    app = build_app(common, ArtifactsSettings(max_upload_bytes=2 * 1024 * 1024), storage)
    return Artifacts(await serve(app), tenant)


async def last_event(nats_url: str, tenant: str, kind: str) -> bytes:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for _ in range(100):
            try:
                msg = await js.get_last_msg(names.STREAM, names.subject(tenant, kind))
                return bytes(msg.data or b"")
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind} event")
    finally:
        await nc.close()


@pytest.mark.parametrize("multipart", [False, True])
async def test_upload_parses_hashes_stores_and_announces(
    operator_auth: httpx.Auth, artifacts: Artifacts, common: CommonSettings, multipart: bool
) -> None:
    data = image("2.4.1", board="myboard")
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await artifacts.upload(client, data, "update-2.4.1.swu", multipart=multipart)
        assert r.status_code == 201, r.text
        sw = r.json()
        assert sw["version"] == "2.4.1"
        assert sw["filename"] == "update-2.4.1.swu"
        assert sw["size"] == len(data)
        assert sw["hashes"] == {
            "md5": hashlib.md5(data).hexdigest(),  # noqa: S324
            "sha1": hashlib.sha1(data).hexdigest(),  # noqa: S324
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        assert {"hw_model": "myboard", "hw_revision": "1.0"} in sw["compatibility"]
        assert sw["files"][0]["name"] == "sw-description"
        assert sw["signed"] is False

        got = await client.get(
            f"{artifacts.url}/api/v1/software/{sw['id']}", params=artifacts.params()
        )
        assert got.json() == sw
        full = await client.get(
            f"{artifacts.url}/api/v1/software/{sw['id']}/download", params=artifacts.params()
        )
        assert full.status_code == 200
        assert full.content == data
        assert full.headers["etag"] == f'"{sw["hashes"]["sha1"]}"'
        part = await client.get(
            f"{artifacts.url}/api/v1/software/{sw['id']}/download",
            params=artifacts.params(),
            headers={"Range": "bytes=10-19"},
        )
        assert part.status_code == 206
        assert part.content == data[10:20]
        head = await client.head(
            f"{artifacts.url}/api/v1/software/{sw['id']}/download", params=artifacts.params()
        )
        assert head.headers["content-length"] == str(len(data))

    event = SoftwareCreated.model_validate_json(
        await last_event(common.nats_url, artifacts.tenant, "software.created")
    )
    assert event.software_id == sw["id"]
    assert event.sha256 == sw["hashes"]["sha256"]
    assert event.object_key is not None


async def test_duplicate_content_is_reported_not_stored_twice(
    operator_auth: httpx.Auth, artifacts: Artifacts
) -> None:
    data = image()
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        first = (await artifacts.upload(client, data)).json()
        again = await artifacts.upload(client, data, name="other-name.swu")
    assert again.status_code == 409
    assert again.json()["error"] == "duplicate"
    assert again.json()["software_id"] == first["id"]
    assert await artifacts.rows() == 1
    # The second copy's bytes were removed again.
    keys = await artifacts.objects()
    assert len(keys) == 1


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"this is no cpio archive at all", "invalid_image.not_cpio"),
        (b"", "invalid_image"),
        (build_swu('software = { version = "1.0"; };', [])[:200], "invalid_image.truncated"),
        (build_swu("not libconfig {{{", []), "invalid_image.bad_sw_description"),
        (build_swu('software = { description = "x"; };', []), "invalid_image.no_version"),
        (build_swu('software = { version = "not-a-version!"; };', []), "invalid_image.bad_version"),
        (b"070701" + b"Z" * 200, "invalid_image.bad_header"),
    ],
)
async def test_bad_images_are_refused_and_leave_nothing_behind(
    operator_auth: httpx.Auth, artifacts: Artifacts, data: bytes, code: str
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await artifacts.upload(client, data)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(code)
    assert r.json()["message"]
    assert await artifacts.rows() == 0
    assert await artifacts.objects() == []
    if hasattr(artifacts.store, "root"):  # local folder: not even a temporary file is left
        leftovers = [p for p in Path(artifacts.store.root).rglob("*") if p.is_file()]
        assert leftovers == []


async def test_sw_description_not_first_is_refused(
    operator_auth: httpx.Auth, artifacts: Artifacts
) -> None:
    from gaggle_swu.cpio import write_archive

    data = write_archive([("payload.bin", b"x"), ("sw-description", b'software={version="1";};')])
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await artifacts.upload(client, data)
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_image.no_sw_description"


async def test_upload_over_the_limit_is_413_and_leaves_nothing(
    artifacts: Artifacts, operator_auth: httpx.Auth
) -> None:
    data = image(payload=os.urandom(3 * 1024 * 1024))
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await artifacts.upload_streamed(client, data)
        assert r.status_code == 413
        declared = await artifacts.upload(client, data)
        assert declared.status_code == 413
    assert await artifacts.rows() == 0
    assert await artifacts.objects() == []


@pytest.mark.parametrize("name", ["../evil.swu", "a/b.swu", "..", ".hidden", "x" * 300, "a b"])
async def test_odd_file_names_are_refused(
    operator_auth: httpx.Auth, artifacts: Artifacts, name: str
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await artifacts.upload(client, image(), name=name)
    assert r.status_code == 400
    assert "filename" in r.json()["message"] or r.json()["error"] == "invalid_filename"
    assert await artifacts.rows() == 0


async def test_list_filters_sorts_and_paginates(
    operator_auth: httpx.Auth, artifacts: Artifacts
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        for version, board in [("1.10.0", "alpha"), ("1.9.0", "alpha"), ("2.0.0", "beta")]:
            r = await artifacts.upload(client, image(version, board), f"{board}-{version}.swu")
            assert r.status_code == 201, r.text

        async def listed(**params: Any) -> list[str]:
            r = await client.get(
                f"{artifacts.url}/api/v1/software", params=artifacts.params(**params)
            )
            assert r.status_code == 200, r.text
            return [s["version"] for s in r.json()["items"]]

        assert await listed(sort="version") == ["1.9.0", "1.10.0", "2.0.0"]
        assert await listed(sort="-version") == ["2.0.0", "1.10.0", "1.9.0"]
        assert await listed(hw_model="alpha", sort="version") == ["1.9.0", "1.10.0"]
        assert await listed(hw_model="beta", hw_revision="2.0") == ["2.0.0"]
        assert await listed(hw_model="beta", hw_revision="3.0") == []
        assert await listed(version="1.9.0") == ["1.9.0"]
        page = await client.get(
            f"{artifacts.url}/api/v1/software", params=artifacts.params(sort="version", limit=2)
        )
        assert page.json()["next_offset"] == 2
        assert page.json()["total"] == 3
        assert await listed(sort="version", limit=2, offset=2) == ["2.0.0"]
        bad = await client.get(
            f"{artifacts.url}/api/v1/software", params=artifacts.params(sort="size")
        )
        assert bad.status_code == 400
        assert "sort" in bad.json()["message"]


async def test_delete_is_hard_unless_a_device_ever_had_it(
    operator_auth: httpx.Auth, artifacts: Artifacts, common: CommonSettings
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        unused = (await artifacts.upload(client, image("1.0.0"), "a.swu")).json()
        used = (await artifacts.upload(client, image("2.0.0"), "b.swu")).json()
        used_key = await artifacts.pool.fetchval(
            "SELECT object_key FROM artifacts.software WHERE id = $1", int(used["id"])
        )
        broker = make_broker(common.nats_url, "test")
        await broker.connect()
        await publish_event(
            broker,
            ActionCreated(
                tenant=artifacts.tenant,
                controller_id="d",
                action_id="1",
                software_id=used["id"],
                version="2.0.0",
            ),
        )
        await broker.stop()
        for _ in range(100):
            if await artifacts.pool.fetchval(
                "SELECT used FROM artifacts.software WHERE id = $1", int(used["id"])
            ):
                break
            await asyncio.sleep(0.05)

        r = await client.delete(
            f"{artifacts.url}/api/v1/software/{unused['id']}", params=artifacts.params()
        )
        assert r.json() == {"id": unused["id"], "deleted": "hard"}
        r = await client.delete(
            f"{artifacts.url}/api/v1/software/{used['id']}", params=artifacts.params()
        )
        assert r.json() == {"id": used["id"], "deleted": "soft"}

        listed = (
            await client.get(f"{artifacts.url}/api/v1/software", params=artifacts.params())
        ).json()
        assert listed["items"] == []
        assert (
            await client.get(
                f"{artifacts.url}/api/v1/software/{used['id']}", params=artifacts.params()
            )
        ).status_code == 404
        assert (
            await client.delete(
                f"{artifacts.url}/api/v1/software/{used['id']}", params=artifacts.params()
            )
        ).status_code == 404
        # The soft-deleted row stays for history; its bytes are gone.
        row = await artifacts.pool.fetchrow(
            "SELECT deleted, version FROM artifacts.software WHERE id = $1", int(used["id"])
        )
        assert (row["deleted"], row["version"]) == (True, "2.0.0")
        assert (
            await artifacts.pool.fetchval(
                "SELECT count(*) FROM artifacts.software WHERE id = $1", int(unused["id"])
            )
            == 0
        )
        with pytest.raises(ObjectNotFoundError):
            await artifacts.store.stat(used_key)
        # The same image can be uploaded again after a soft delete.
        again = await artifacts.upload(client, image("2.0.0"), "b.swu")
        assert again.status_code in (201, 409)
    deleted = SoftwareDeleted.model_validate_json(
        await last_event(common.nats_url, artifacts.tenant, "software.deleted")
    )
    assert deleted.software_id == used["id"]
    assert deleted.hard is False


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    data = image("3.1.4", "ext")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "ext-3.1.4.swu").write_bytes(data)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "www"), **k
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ext-3.1.4.swu", data
    server.shutdown()


async def test_external_software_is_fetched_once_and_devices_go_to_its_url(
    operator_auth: httpx.Auth, artifacts: Artifacts, image_server: tuple[str, bytes]
) -> None:
    url, data = image_server
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await client.post(
            f"{artifacts.url}/api/v1/software", params=artifacts.params(), json={"url": url}
        )
        assert r.status_code == 201, r.text
        sw = r.json()
        assert (sw["version"], sw["filename"], sw["external_url"]) == (
            "3.1.4",
            "ext-3.1.4.swu",
            url,
        )
        assert sw["hashes"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert await artifacts.objects() == []
        dl = await client.get(
            f"{artifacts.url}/api/v1/software/{sw['id']}/download", params=artifacts.params()
        )
        assert dl.status_code == 302
        assert dl.headers["location"] == url
        missing = await client.post(
            f"{artifacts.url}/api/v1/software",
            params=artifacts.params(),
            json={"url": url + ".nope"},
        )
        assert missing.status_code == 422
        bad = await client.post(
            f"{artifacts.url}/api/v1/software",
            params=artifacts.params(),
            json={"url": "ftp://example.invalid/x.swu"},
        )
        assert bad.status_code == 400


def described(text: str, files: list[tuple[str, bytes]] | None = None) -> bytes:
    return build_swu(text, files or [])


def software(**fields: Any) -> str:
    return json.dumps({"software": {"version": "1.0.0", **fields}})


def revisions(n: int, width: int = 0) -> str:
    return software(board={"hardware-compatibility": [f"{i:0{width}}" for i in range(n)]})


QUOTAS = [
    ("name", described(software(name="n" * (MAX_NAME + 1)))),
    ("description", described(software(description="d" * (MAX_DESCRIPTION + 1)))),
    ("hardware_compatibility", described(revisions(MAX_COMPATIBILITY + 1))),
    # What once made software.created larger than NATS accepts and jammed the outbox.
    ("hardware_compatibility", described(revisions(30_000))),
    ("hardware_compatibility_value", described(revisions(1, width=MAX_HW + 1))),
    ("images", described(software(files=[{"filename": "x"}] * (MAX_IMAGES + 1)))),
    (
        "members",
        described(software(), [(f"f{i}", b"") for i in range(MAX_MEMBERS)]),  # + sw-description
    ),
]


async def nothing_left(artifacts: Artifacts, common: CommonSettings) -> None:
    """No row, no object (not even a temporary one), no software.created queued or sent."""
    assert await artifacts.rows() == 0
    assert await artifacts.stored() == []
    assert await artifacts.announced(common.nats_url) == 0


async def refused(artifacts: Artifacts, auth: httpx.Auth, data: bytes) -> dict[str, Any]:
    """The body of the 422 an upload of ``data`` is answered."""
    async with httpx.AsyncClient(auth=auth, timeout=30) as client:
        r = await artifacts.upload(client, data)
    assert r.status_code == 422, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize(("quota", "data"), QUOTAS, ids=[f"{q}-{len(d)}" for q, d in QUOTAS])
async def test_an_upload_over_a_metadata_quota_is_422_and_leaves_nothing(
    operator_auth: httpx.Auth, artifacts: Artifacts, common: CommonSettings, quota: str, data: bytes
) -> None:
    body = await refused(artifacts, operator_auth, data)
    assert body["error"] == "quota_exceeded"
    assert body["quota"] == quota
    assert body["found"] > body["limit"]
    assert f"the limit is {body['limit']}" in body["message"]
    await nothing_left(artifacts, common)


async def test_a_quota_stops_the_upload_at_the_sw_description(
    operator_auth: httpx.Auth, artifacts: Artifacts
) -> None:
    # The payload after the sw-description is over the 2 MiB upload limit: an upload read to
    # its end would be refused for its size, not for its metadata.
    data = described(revisions(MAX_COMPATIBILITY + 1), [("big", os.urandom(3 * 1024 * 1024))])
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await artifacts.upload_streamed(client, data)
    assert r.status_code == 422, r.text
    assert r.json()["quota"] == "hardware_compatibility"
    assert await artifacts.rows() == 0
    assert await artifacts.stored() == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (described(software(version="1." + "0" * MAX_VERSION)), "invalid_image.bad_version"),
        (
            described(software(description="d" * MAX_SW_DESCRIPTION)),
            "invalid_image.bad_sw_description",
        ),
    ],
)
async def test_a_version_or_sw_description_too_long_is_422_and_leaves_nothing(
    operator_auth: httpx.Auth, artifacts: Artifacts, common: CommonSettings, data: bytes, code: str
) -> None:
    assert (await refused(artifacts, operator_auth, data))["error"] == code
    await nothing_left(artifacts, common)


async def test_an_image_at_every_quota_is_taken_and_announced(
    operator_auth: httpx.Auth, artifacts: Artifacts, common: CommonSettings
) -> None:
    data = described(
        software(
            name="n" * MAX_NAME,
            description="d" * MAX_DESCRIPTION,
            board={
                "hardware-compatibility": [f"{i:0{MAX_HW}}" for i in range(MAX_COMPATIBILITY)],
                "files": [{"filename": f"f{i}"} for i in range(MAX_MEMBERS - 1)],
            },
        ),
        [(f"f{i}", b"x") for i in range(MAX_MEMBERS - 1)],
    )
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await artifacts.upload(client, data)
    assert r.status_code == 201, r.text
    assert len(r.json()["compatibility"]) == MAX_COMPATIBILITY
    assert len(r.json()["files"]) == MAX_MEMBERS
    event = await last_event(common.nats_url, artifacts.tenant, "software.created")
    assert SoftwareCreated.model_validate_json(event).software_id == r.json()["id"]
    assert await artifacts.announced(common.nats_url) >= 1  # queued, or sent, or both for now
    assert len(await artifacts.stored()) == 1
