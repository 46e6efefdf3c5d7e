"""Revocation across services: a certificate removed from the trust store in artifacts makes the
software it verified untrusted, and rollouts pause the running rollout on it and refuse to start
or resume one. Artifacts and rollouts on one real NATS JetStream and PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.events import DeviceUpdated
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_storage import StorageSettings
from gaggle_swu import make_rawfile_swu
from gaggle_swu.pki import make_identity
from gaggle_testing import eventually

pytestmark = pytest.mark.integration


async def test_removing_the_signer_pauses_the_rollout_and_refuses_new_starts(
    common: CommonSettings, serve: Any, operator_auth: httpx.Auth, tenant: str, tmp_path: Path
) -> None:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    artifacts = await serve(build_artifacts(common, ArtifactsSettings(), storage))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    signer = make_identity("release", datetime.now(UTC))
    key, cert = signer.write(tmp_path, "release")
    await rollouts.app.state.policies.record_devices(
        [
            DeviceUpdated(
                tenant=tenant,
                controller_id=f"dev-{i}",
                change="registered",
                hw_model="board",
                hw_revision="1.0",
                sw_version="0.9.0",
            )
            for i in range(4)
        ]
    )
    params = {"tenant": tenant}
    async with httpx.AsyncClient(auth=operator_auth, timeout=10, params=params) as client:
        r = await client.post(
            f"{artifacts.url}/api/v1/trust",
            json={"name": "release", "pem": signer.cert_pem.decode()},
        )
        assert r.status_code == 201, r.text
        entry_id = r.json()["id"]
        image = make_rawfile_swu(
            os.urandom(4096),
            version="1.0.0",
            board="board",
            revisions=["1.0"],
            install_path="/tmp/x",
            key=key,
            cert=cert,
        )
        r = await client.post(
            f"{artifacts.url}/api/v1/software", params={"filename": "u.swu"}, content=image
        )
        assert r.status_code == 201, r.text
        software_id = r.json()["id"]

        async def started(**body: Any) -> str:
            r = await client.post(
                f"{rollouts.url}/api/v1/rollouts",
                json={"name": f"r-{secrets.token_hex(2)}", "software_id": software_id, **body},
            )
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        # The software reaches rollouts by its software.created event.
        running = await eventually(lambda: started(start=True), timeout=20)
        waiting = await started(start=False)
        url = f"{rollouts.url}/api/v1/rollouts"
        assert (await client.get(f"{url}/{running}")).json()["state"] == "running"

        removed = await client.delete(f"{artifacts.url}/api/v1/trust/{entry_id}")
        assert removed.json()["untrusted"] == [software_id]

        async def paused() -> dict[str, Any]:
            doc: dict[str, Any] = (await client.get(f"{url}/{running}")).json()
            assert doc["state"] == "paused", doc
            return doc

        doc = await eventually(paused, timeout=15)
        assert "untrusted" in doc["reason"]
        assert "release" in doc["reason"]

        resumed = await client.post(f"{url}/{running}/resume")
        assert resumed.status_code == 409, resumed.text
        assert resumed.json()["error"] == "software_untrusted"
        start = await client.post(f"{url}/{waiting}/start")
        assert start.status_code == 409
        assert start.json()["error"] == "software_untrusted"
        fresh = await client.post(
            url, json={"name": "again", "software_id": software_id, "start": True}
        )
        assert fresh.status_code == 409
        assert (await client.get(f"{url}/{waiting}")).json()["state"] == "created"
