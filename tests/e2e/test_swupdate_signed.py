"""Verified images and the real SWUpdate: what Gaggle verifies SWUpdate installs, and what Gaggle
refuses SWUpdate refuses too (``swupdate -c`` with the same key).

The images are made as a user makes them (``openssl cms -sign`` through ``gaggle_swu``), the
certificates in the test with validity relative to now. The artifacts service runs with the
tenant's policy ``require_signature`` and ``require_image_hashes`` (set in registry, followed
through KV ``tenants``) and the signer's certificate in its trust store.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_storage import StorageSettings
from gaggle_swu import make_rawfile_swu, read_archive, write_archive
from gaggle_swu.pki import Identity, make_identity
from tests.e2e.conftest import BOARD, CLOSED_STATUSES, REVISION, E2EStack, has_detail, random_id
from tests.e2e.swupdate_harness import FAILURE_LINE, SUCCESS_LINE, SwupdateDevice

pytestmark = pytest.mark.e2e

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


@dataclass
class Artifacts:
    url: str
    app: Any
    client: httpx.AsyncClient
    tenant: str

    async def upload(self, data: bytes, name: str) -> httpx.Response:
        return await self.client.post(
            f"{self.url}/api/v1/software",
            params={"tenant": self.tenant, "filename": name},
            content=data,
        )

    async def trust(self, who: Identity, name: str) -> None:
        r = await self.client.post(
            f"{self.url}/api/v1/trust",
            params={"tenant": self.tenant},
            json={"name": name, "pem": who.cert_pem.decode()},
        )
        assert r.status_code == 201, r.text


async def strict_artifacts(
    common: CommonSettings,
    serve: Any,
    registry_url: str,
    client: httpx.AsyncClient,
    tenant: str,
    objects: Path,
) -> Artifacts:
    """The artifacts service on ``objects``, its tenant requiring signatures and image hashes."""
    running = await serve(
        build_artifacts(common, ArtifactsSettings(), StorageSettings(backend="local", dir=objects))
    )
    r = await client.put(
        f"{registry_url}/api/v1/tenants/{tenant}",
        # The devices of these tests poll every second, as the e2e gateway's default says.
        json={"require_signature": True, "require_image_hashes": True, "polling_sleep": "00:00:01"},
    )
    assert r.status_code in (200, 201), r.text
    policies = running.app.state.gate.policies
    for _ in range(200):
        if policies.policy(tenant).require_signature:
            break
        await asyncio.sleep(0.02)
    assert policies.policy(tenant).require_image_hashes
    return Artifacts(running.url, running.app, client, tenant)


def image(
    tmp_path: Path, who: Identity, install_path: Path, payload: bytes, version: str = "1.0.1"
) -> bytes:
    key, cert = who.write(tmp_path / "keys", who.cert.serial_number.to_bytes(20, "big").hex())
    return make_rawfile_swu(
        payload,
        version=version,
        board=BOARD,
        revisions=[REVISION],
        install_path=str(install_path),
        key=key,
        cert=cert,
    )


UNREAD_SIGNATURE = "cannot be parsed as DER-encoded CMS"
"""What swupdate logs when it reads a signature it has just extracted as no CMS blob at all."""


def swupdate_check(binary: str, swu: Path, trusted: Path, workdir: Path) -> tuple[bool, str]:
    """``swupdate -c -i image -k cert``: whether SWUpdate accepts the image, and its log.

    The verdict is read from the log (``SWUPDATE successful`` or ``SWUPDATE failed [1]``, exactly
    one of them): swupdate 2022.12 sometimes exits 1 after a check it logged as successful
    (4 runs of 15 of the same good image), so its exit status says nothing. Now and then a run
    also ends without a verdict (killed by SIGSEGV) or reads the signature it has just extracted
    as no CMS blob at all, which every image here carries well-formed: such a run tells nothing
    about the image, and the check is run again, three times at most.
    """
    for attempt in range(3):
        tmp = workdir / f"tmp-{attempt}"
        tmp.mkdir(parents=True, exist_ok=True)
        command = [binary, "-c", "-i", str(swu), "-k", str(trusted), "-H", f"{BOARD}:{REVISION}"]
        proc = subprocess.run(
            [*command, "-l", "4"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "TMPDIR": str(tmp)},
            cwd=workdir,
        )
        text = proc.stdout + proc.stderr
        accepted, refused = SUCCESS_LINE in text, FAILURE_LINE in text
        if accepted != refused and UNREAD_SIGNATURE not in text:
            break
    assert accepted != refused, f"swupdate -c gave no verdict (exit {proc.returncode}):\n{text}"
    return accepted, text


@pytest.mark.timeout(180)
async def test_swupdate_refuses_what_gaggle_refuses_and_accepts_what_it_verifies(
    e2e_stack: E2EStack, common: CommonSettings, serve: Any, tmp_path: Path, swupdate_bin: str
) -> None:
    root = make_identity("e2e root", NOW, usage="ca", eku=None, ca=True)
    signer = make_identity("e2e signer", NOW, issuer=root)
    self_signed = make_identity("e2e self-signed", NOW)
    stranger = make_identity("e2e stranger", NOW)
    expired = make_identity("e2e expired", NOW, issuer=root, not_before=-30 * DAY, not_after=-DAY)
    for_tls = make_identity("e2e tls", NOW, issuer=root, eku=["serverAuth"])
    artifacts = await strict_artifacts(
        common,
        serve,
        e2e_stack.registry.url,
        e2e_stack.client,
        e2e_stack.tenant,
        tmp_path / "objects",
    )
    await artifacts.trust(root, "root")
    await artifacts.trust(self_signed, "self-signed")
    trusted = tmp_path / "trusted.pem"  # SWUpdate's -k: the same certificates
    trusted.write_bytes(root.cert_pem + self_signed.cert_pem)
    out = tmp_path / "device" / "installed.bin"

    def signed_by(who: Identity, payload: bytes = b"p" * 4096) -> bytes:
        return image(tmp_path, who, out, payload)

    good = signed_by(signer)
    members = read_archive(good)
    desc = members[0][1]

    def altered(name: str, data: bytes) -> bytes:
        return write_archive([(m.name, data if m.name == name else d) for m, d in members])

    unsigned_desc = desc.replace(b"1.0.1", b"1.0.2")
    cases: dict[str, bytes] = {
        "signed through the trusted root": good,
        "self-signed and trusted": signed_by(self_signed),
        "signed by a stranger": signed_by(stranger),
        "signer expired": signed_by(expired),
        "signer for TLS only": signed_by(for_tls),
        "payload altered after signing": altered("payload.bin", b"q" * 4096),
        "sw-description altered after signing": altered("sw-description", unsigned_desc),
        "unsigned": make_rawfile_swu(
            b"p" * 4096,
            version="1.0.3",
            board=BOARD,
            revisions=[REVISION],
            install_path=str(out),
            key=None,
            cert=None,
        ),
    }
    verdicts = {}
    for n, (what, data) in enumerate(cases.items()):
        swu = tmp_path / f"case-{n}.swu"
        swu.write_bytes(data)
        r = await artifacts.upload(data, f"case-{n}.swu")
        assert r.status_code in (201, 422), (what, r.text)
        swupdate_ok, text = await asyncio.to_thread(
            swupdate_check, swupdate_bin, swu, trusted, tmp_path / f"check-{n}"
        )
        verdicts[what] = (r.status_code, swupdate_ok)
        gaggle_ok = r.status_code == 201
        assert gaggle_ok == swupdate_ok, f"{what}: Gaggle {r.text}\nswupdate -c:\n{text[-3000:]}"
        if gaggle_ok:
            assert r.json()["trust"] == "verified", what
    # Both kinds occurred: two accepted, the rest refused by both.
    accepted = ("signed through the trusted root", "self-signed and trusted")
    assert verdicts == {
        what: (201, True) if what in accepted else (422, False) for what in cases
    }, verdicts


@pytest.mark.timeout(180)
async def test_swupdate_installs_an_image_gaggle_verified(
    e2e_stack: E2EStack, common: CommonSettings, serve: Any, tmp_path: Path, swupdate_bin: str
) -> None:
    signer = make_identity("e2e release", NOW)
    # The gateway serves the artifacts service's objects: one store for both.
    artifacts = await strict_artifacts(
        common,
        serve,
        e2e_stack.registry.url,
        e2e_stack.client,
        e2e_stack.tenant,
        tmp_path / "objects",
    )
    await artifacts.trust(signer, "release")
    install_path = tmp_path / "device" / "installed.bin"
    payload = os.urandom(200 * 1024)
    r = await artifacts.upload(image(tmp_path, signer, install_path, payload), "release.swu")
    assert r.status_code == 201, r.text
    software = r.json()
    assert software["trust"] == "verified"
    assert software["signature"]["signer"]["subject"] == "CN=e2e release"

    cid = random_id("swu")
    action_id = (await e2e_stack.create_action(cid, software["id"], "forced"))["id"]
    cert = tmp_path / "release.cert.pem"
    cert.write_bytes(signer.cert_pem)
    dev = SwupdateDevice(
        server_url=e2e_stack.gateway_url,
        tenant=e2e_stack.tenant,
        controller_id=cid,
        workdir=tmp_path / "device",
        public_cert=cert,
        board=BOARD,
        revision=REVISION,
        sw_version="0.0.1",
        binary=swupdate_bin,
    )
    with dev:
        await dev.run_phase1_async(
            install_path,
            expected_payload=payload,
            until=e2e_stack.action_condition(
                action_id, lambda a: has_detail(a, "All Chunks Installed.")
            ),
            timeout=60,
        )
        assert install_path.read_bytes() == payload
        await dev.run_phase2_async(
            e2e_stack.action_condition(action_id, lambda a: a["status"] in CLOSED_STATUSES),
            sw_version="1.0.1",
            timeout=45,
        )
    final = await e2e_stack.get_action(action_id)
    assert final["history"][-1]["finished"] == "success", final
