"""Verified images through the API: trust store, policy from KV ``tenants``, refusals that leave
nothing behind, and revocation. Against real PostgreSQL, NATS JetStream and a local store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from cryptography.hazmat.primitives import hashes

from gaggle_artifacts.app import build_app
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.kv import TenantConfig
from gaggle_contracts.settings import CommonSettings
from gaggle_storage import StorageSettings
from gaggle_swu import build_swu, make_rawfile_swu, read_archive, sign_cms, write_archive
from gaggle_swu.pki import Identity, make_identity

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


class Artifacts:
    def __init__(self, running: Any, tenant: str, nats_url: str) -> None:
        self.url = running.url
        self.app = running.app
        self.tenant = tenant
        self.nats_url = nats_url
        self.pool = running.app.state.service.db.pool
        self.root = Path(running.app.state.store.root)

    def params(self, **extra: Any) -> dict[str, Any]:
        return {"tenant": self.tenant, **extra}

    async def upload(self, client: httpx.AsyncClient, data: bytes) -> httpx.Response:
        return await client.post(
            f"{self.url}/api/v1/software",
            params=self.params(filename="update.swu"),
            content=data,
        )

    async def trust(self, client: httpx.AsyncClient, who: Identity, name: str) -> dict[str, Any]:
        r = await client.post(
            f"{self.url}/api/v1/trust",
            params=self.params(),
            json={"name": name, "pem": who.cert_pem.decode()},
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def set_policy(self, **policy: bool) -> None:
        """Write the tenant's settings into KV tenants, as registry does; wait till followed."""
        config = TenantConfig(**policy)
        nc = await nats.connect(self.nats_url)
        try:
            kv = await nc.jetstream().key_value(names.BUCKET_TENANTS)
            await kv.put(self.tenant, config.model_dump_json().encode())
        finally:
            await nc.close()
        mirror = self.app.state.gate.policies.mirror
        for _ in range(200):
            if mirror.values.get(self.tenant) == config:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("policy not followed")

    async def nothing_left(self) -> None:
        """No row, no stored object, no software event."""
        rows = await self.pool.fetchval(
            "SELECT count(*) FROM artifacts.software WHERE tenant = $1", self.tenant
        )
        events = await self.pool.fetchval(
            "SELECT count(*) FROM artifacts.outbox WHERE target LIKE $1",
            names.subject(self.tenant, "software.%"),
        )
        assert (rows, events) == (0, 0)
        assert [p for p in self.root.rglob("*") if p.is_file()] == []
        nc = await nats.connect(self.nats_url)
        try:
            info = await nc.jetstream().stream_info(
                names.STREAM, subjects_filter=names.subject(self.tenant, "software.>")
            )
        finally:
            await nc.close()
        assert not info.state.subjects


@pytest.fixture
async def artifacts(
    common: CommonSettings, serve: Any, tenant: str, tmp_path: Path, nats_url: str
) -> Artifacts:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    app = build_app(common, ArtifactsSettings(max_upload_bytes=4 * 1024 * 1024), storage)
    return Artifacts(await serve(app), tenant, nats_url)


@pytest.fixture(scope="module")
def signer() -> Identity:
    return make_identity("release signer", NOW)


def signed_image(
    tmp_path: Path, who: Identity, version: str = "1.0.0", payload: bytes | None = None
) -> bytes:
    key, cert = who.write(tmp_path, "signer")
    return make_rawfile_swu(
        payload if payload is not None else os.urandom(8192),
        version=version,
        board="board",
        revisions=["1.0"],
        install_path="/tmp/x",
        key=key,
        cert=cert,
    )


async def test_an_image_signed_by_a_trusted_certificate_is_verified(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        entry = await artifacts.trust(client, signer, "release")
        assert entry["subject"] == "CN=release signer"
        r = await artifacts.upload(client, signed_image(tmp_path, signer))
        assert r.status_code == 201, r.text
        sw = r.json()
        assert sw["trust"] == "verified"
        signature = sw["signature"]
        assert signature["method"] == "cms"
        assert signature["signer"] == {
            "subject": "CN=release signer",
            "fingerprint": entry["fingerprint"],
        }
        verified_at = datetime.fromisoformat(signature["verified_at"])
        assert abs((verified_at - datetime.now(UTC)).total_seconds()) < 60
        assert sw["image_check"] == {
            "checked": ["payload.bin"],
            "missing": [],
            "unhashed": [],
            "unreferenced": [],
        }
        listed = await client.get(f"{artifacts.url}/api/v1/trust", params=artifacts.params())
        assert [e["fingerprint"] for e in listed.json()["items"]] == [entry["fingerprint"]]
        assert listed.json()["policy"]["require_signature"] is False


async def test_a_json_sw_description_signed_with_openssl_is_verified(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, tmp_path: Path
) -> None:
    payload = os.urandom(1000)
    desc = json.dumps(
        {
            "software": {
                "version": "2.0.0",
                "board": {
                    "hardware-compatibility": ["1.0"],
                    "images": [
                        {
                            "filename": "rootfs.img",
                            "sha256": hashlib.sha256(payload).hexdigest(),
                            "type": "raw",
                        }
                    ],
                },
            }
        }
    )
    key, cert = signer.write(tmp_path, "json")
    image = build_swu(desc, [("rootfs.img", payload)], signature=sign_cms(desc.encode(), key, cert))
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await artifacts.trust(client, signer, "release")
        await artifacts.set_policy(require_signature=True, require_image_hashes=True)
        r = await artifacts.upload(client, image)
        assert r.status_code == 201, r.text
        assert r.json()["trust"] == "verified"


async def test_an_unknown_signer_is_unverified_or_refused_when_the_tenant_requires_signatures(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, tmp_path: Path
) -> None:
    stranger = make_identity("stranger", NOW)
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await artifacts.trust(client, signer, "release")
        await artifacts.set_policy(require_signature=True)
        refused = await artifacts.upload(client, signed_image(tmp_path, stranger))
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "signature_required"
        assert "not in the trust store" in refused.json()["message"]
        plain = make_rawfile_swu(
            b"x", version="1", board="b", revisions=["1"], install_path="/x", key=None, cert=None
        )
        refused = await artifacts.upload(client, plain)
        assert refused.json()["error"] == "signature_required"
        assert refused.json()["signature"] == "unsigned"
        await artifacts.nothing_left()

        await artifacts.set_policy(require_signature=False)
        taken = await artifacts.upload(client, signed_image(tmp_path, stranger))
        assert taken.status_code == 201, taken.text
        sw = taken.json()
        assert sw["trust"] == "unverified"
        assert sw["signature"]["signer"]["subject"] == "CN=stranger"
        assert "not in the trust store" in sw["signature"]["reason"]


def replace_member(image: bytes, name: str, data: bytes) -> bytes:
    members = [(m.name, data if m.name == name else d) for m, d in read_archive(image)]
    return write_archive(members)


@pytest.mark.parametrize("require", [False, True])
async def test_a_payload_altered_after_signing_is_refused_naming_the_member(
    operator_auth: httpx.Auth,
    artifacts: Artifacts,
    signer: Identity,
    tmp_path: Path,
    require: bool,
) -> None:
    image = signed_image(tmp_path, signer, payload=b"good" * 1000)
    altered = replace_member(image, "payload.bin", b"evil" * 1000)
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await artifacts.trust(client, signer, "release")
        await artifacts.set_policy(require_signature=require, require_image_hashes=require)
        r = await artifacts.upload(client, altered)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["error"] == "image_hash_mismatch"
        assert body["member"] == "payload.bin"
        assert "payload.bin" in body["message"]
        assert body["found"] == hashlib.sha256(b"evil" * 1000).hexdigest()
        await artifacts.nothing_left()


async def test_a_sw_description_altered_after_signing_is_refused(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, tmp_path: Path
) -> None:
    image = signed_image(tmp_path, signer, version="1.0.0")
    desc = {m.name: d for m, d in read_archive(image)}["sw-description"]
    altered = replace_member(image, "sw-description", desc.replace(b"1.0.0", b"9.0.0"))
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await artifacts.trust(client, signer, "release")
        r = await artifacts.upload(client, altered)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "signature_invalid"
        await artifacts.nothing_left()


async def test_removing_the_certificate_makes_the_software_untrusted(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, tmp_path: Path
) -> None:
    other = make_identity("other signer", NOW)
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        entry = await artifacts.trust(client, signer, "release")
        await artifacts.trust(client, other, "other")
        mine = (await artifacts.upload(client, signed_image(tmp_path, signer))).json()
        theirs = (await artifacts.upload(client, signed_image(tmp_path, other))).json()
        assert (mine["trust"], theirs["trust"]) == ("verified", "verified")

        r = await client.delete(
            f"{artifacts.url}/api/v1/trust/{entry['id']}", params=artifacts.params()
        )
        assert r.status_code == 200, r.text
        assert r.json()["untrusted"] == [mine["id"]]
        got = await client.get(
            f"{artifacts.url}/api/v1/software/{mine['id']}", params=artifacts.params()
        )
        assert got.json()["trust"] == "untrusted"
        assert "release" in got.json()["signature"]["reason"]
        kept = await client.get(
            f"{artifacts.url}/api/v1/software/{theirs['id']}", params=artifacts.params()
        )
        assert kept.json()["trust"] == "verified"
        again = await client.delete(
            f"{artifacts.url}/api/v1/trust/{entry['id']}", params=artifacts.params()
        )
        assert again.status_code == 404

    nc = await nats.connect(artifacts.nats_url)
    try:
        js = nc.jetstream()
        for _ in range(100):
            try:
                msg = await js.get_last_msg(
                    names.STREAM, names.subject(artifacts.tenant, "software.untrusted")
                )
                break
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("no software.untrusted event")
    finally:
        await nc.close()
    event = json.loads(msg.data)
    assert event["software_id"] == mine["id"]
    assert "release" in event["reason"]


async def test_the_trust_store_needs_its_own_permission_and_is_audited(
    artifacts: Artifacts, issue_key: Any, signer: Identity
) -> None:
    operator = await issue_key(artifacts.tenant, ["operator"])
    trustee = await issue_key(artifacts.tenant, ["software:read", "trust:write"])
    body = {"name": "release", "pem": signer.cert_pem.decode()}
    url = f"{artifacts.url}/api/v1/trust"
    async with httpx.AsyncClient(timeout=30) as client:
        denied = await client.post(url, json=body, auth=operator.auth)
        assert denied.status_code == 403
        added = await client.post(url, json=body, auth=trustee.auth)
        assert added.status_code == 201, added.text
        twice = await client.post(url, json=body, auth=trustee.auth)
        assert twice.status_code == 409
        bad = await client.post(url, json={"name": "x", "pem": "nope"}, auth=trustee.auth)
        assert bad.status_code == 422
        assert bad.json()["error"] == "invalid_trust_entry"
        secret = await client.post(
            url, json={"name": "x", "pem": signer.key_pem.decode()}, auth=trustee.auth
        )
        assert secret.status_code == 422
        assert "private key" in secret.json()["message"]
        listed = await client.get(url, auth=operator.auth)
        assert listed.status_code == 200
        assert len(listed.json()["items"]) == 1
    # The audit records go out through the outbox to the stream (registry keeps the log).
    wanted = {("add_trust", "denied"), ("add_trust", "success"), ("add_trust", "rejected")}
    subject = names.subject(artifacts.tenant, "audit.recorded")
    nc = await nats.connect(artifacts.nats_url)
    try:
        sub = await nc.jetstream().subscribe(subject, ordered_consumer=True)
        seen: set[tuple[str, str]] = set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while not wanted <= seen:
                    msg = await sub.next_msg(timeout=10)
                    event = json.loads(msg.data)
                    seen.add((event["action"], event["outcome"]))
    finally:
        await nc.close()
    assert wanted <= seen, seen


async def test_monotonic_versions_refuse_an_older_image_for_the_same_board(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await artifacts.set_policy(monotonic_versions=True)
        first = await artifacts.upload(client, signed_image(tmp_path, signer, "1.10.0"))
        assert first.status_code == 201, first.text
        older = await artifacts.upload(client, signed_image(tmp_path, signer, "1.9.0"))
        assert older.status_code == 422
        assert older.json()["error"] == "version_not_newer"
        assert older.json()["newest"] == "1.10.0"
        newer = await artifacts.upload(client, signed_image(tmp_path, signer, "1.11.0"))
        assert newer.status_code == 201, newer.text


@pytest.fixture
def altered_server(tmp_path: Path, signer: Identity) -> Iterator[str]:
    image = signed_image(tmp_path, signer, payload=b"good" * 100)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "bad.swu").write_bytes(replace_member(image, "payload.bin", b"evil" * 100))
    (tmp_path / "www" / "good.swu").write_bytes(image)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tmp_path / "www"), **k
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_external_software_gets_the_same_checks(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, altered_server: str
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await artifacts.trust(client, signer, "release")
        bad = await client.post(
            f"{artifacts.url}/api/v1/software",
            params=artifacts.params(),
            json={"url": f"{altered_server}/bad.swu"},
        )
        assert bad.status_code == 422, bad.text
        assert (bad.json()["error"], bad.json()["member"]) == ("image_hash_mismatch", "payload.bin")
        await artifacts.nothing_left()
        good = await client.post(
            f"{artifacts.url}/api/v1/software",
            params=artifacts.params(),
            json={"url": f"{altered_server}/good.swu"},
        )
        assert good.status_code == 201, good.text
        assert good.json()["trust"] == "verified"


async def test_a_signer_removed_while_the_image_is_recorded_is_a_conflict(
    artifacts: Artifacts, signer: Identity
) -> None:
    from gaggle_artifacts.domain import NewSoftware, TrustChangedError

    repo = artifacts.app.state.repo
    new = NewSoftware(
        tenant=artifacts.tenant,
        name="n",
        version="1.0",
        filename="n.swu",
        size=1,
        md5="0" * 32,
        sha1="0" * 40,
        sha256="0" * 64,
        object_key="k",
        external_url=None,
        compatibility=[("*", "*")],
        trust="verified",
        trusted_by=[signer.cert.fingerprint(hashes.SHA256()).hex()],
    )
    with pytest.raises(TrustChangedError):
        await repo.insert(new)
    await artifacts.nothing_left()


async def test_uploads_wait_for_the_tenants_policy(
    operator_auth: httpx.Auth, artifacts: Artifacts, signer: Identity, tmp_path: Path
) -> None:
    loaded = artifacts.app.state.gate.policies.mirror.loaded
    loaded.clear()  # as before KV tenants was read
    try:
        async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
            r = await artifacts.upload(client, signed_image(tmp_path, signer))
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "policy_unknown"
            await artifacts.nothing_left()
    finally:
        loaded.set()
