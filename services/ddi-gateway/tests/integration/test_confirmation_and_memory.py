"""Confirmation endpoints, installedBase declarations, and downloads in bounded memory."""

from __future__ import annotations

from pathlib import Path

import httpx
import nats
import pytest

from gaggle_contracts import kv, names
from gaggle_contracts.events import AutoConfirmChanged, ConfirmationFeedback, DeviceConfigReported
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.jetstream import ensure_all
from gaggle_storage import StorageSettings
from gaggle_testing import eventually

pytestmark = pytest.mark.integration

ART = kv.ArtifactDoc(
    filename="big.swu",
    size=0,
    md5="m" * 32,
    sha1="s" * 40,
    sha256="h" * 64,
    object_key="big/big.swu",
)


def entry(state: str = "deployment", auto_confirm: bool = False) -> kv.DeploymentEntry:
    chunk = kv.ChunkDoc(module_id="7", name="img", version="2.0", artifacts=[ART])
    return kv.DeploymentEntry(
        open=kv.OpenAction(
            action_id="12",
            c="77",
            state=state,  # type: ignore[arg-type]
            deployment=kv.DeploymentDoc(
                download="attempt", update="attempt", maintenance_window="available", chunks=[chunk]
            ),
            history=["newest", "older", "oldest"],
        ),
        auto_confirm=auto_confirm,
    )


class Bus:
    def __init__(self, nc: nats.NATS, tenant: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.tenant = tenant

    async def put(self, bucket: str, cid: str, value: kv.KvValue) -> None:
        key = names.kv_key(self.tenant, cid)
        await (await self.js.key_value(bucket)).put(key, value.model_dump_json().encode())

    async def last(self, kind: str) -> bytes:
        msg = await self.js.get_last_msg(names.STREAM, names.subject(self.tenant, kind))
        return bytes(msg.data or b"")


@pytest.fixture
async def bus(common: CommonSettings, tenant: str):  # type: ignore[no-untyped-def]
    """The test's NATS, with its tenant created (as the registry's tenant API would)."""
    nc = await nats.connect(common.nats_url)
    await ensure_all(nc.jetstream(), common)
    tenants = await nc.jetstream().key_value(names.BUCKET_TENANTS)
    await tenants.put(tenant, kv.TenantConfig().model_dump_json().encode())
    yield Bus(nc, tenant)
    await nc.close()


async def test_confirmation_flow_endpoints(
    common: CommonSettings, serve, tenant: str, bus: Bus
) -> None:
    app = build_gateway(common, GatewaySettings())
    gw = await serve(app)
    mirror = app.state.gateway.mirror
    await bus.put(names.BUCKET_DEVICES, "c1", kv.DeviceEntry(config_requested=False))
    await bus.put(names.BUCKET_DEPLOYMENTS, "c1", entry("wait_for_confirmation"))
    key = names.kv_key(tenant, "c1")
    await eventually(
        lambda: key in mirror.deployments.values and key in mirror.devices.values, timeout=5
    )
    base = f"{gw.url}/{tenant}/controller/v1/c1"
    async with httpx.AsyncClient(timeout=10) as client:
        poll = (await client.get(base)).json()
        assert poll["_links"] == {"confirmationBase": {"href": f"{base}/confirmationBase/12?c=77"}}
        state = (await client.get(f"{base}/confirmationBase")).json()
        assert state == {
            "autoConfirm": {"active": False},
            "_links": {
                "activateAutoConfirm": {"href": f"{base}/confirmationBase/activateAutoConfirm"},
                "confirmationBase": {"href": f"{base}/confirmationBase/12?c=77"},
            },
        }
        body = (await client.get(f"{base}/confirmationBase/12?actionHistory=2")).json()
        assert body["id"] == "12"
        assert body["confirmation"]["maintenanceWindow"] == "available"
        assert body["confirmation"]["download"] == "attempt"
        assert body["actionHistory"] == {"status": "RUNNING", "messages": ["newest", "older"]}
        # Not offered as a deployment while it awaits confirmation.
        assert (await client.get(f"{base}/deploymentBase/12")).status_code == 404
        fb = {"status": {"execution": "proceeding", "result": {"finished": "none"}}}
        assert (await client.post(f"{base}/deploymentBase/12/feedback", json=fb)).status_code == 404

        r = await client.post(
            f"{base}/confirmationBase/12/feedback",
            json={"confirmation": "confirmed", "code": 200, "details": ["ok"]},
        )
        assert r.status_code == 200
        sent = ConfirmationFeedback.model_validate_json(await bus.last("confirmation.feedback"))
        assert (sent.action_id, sent.confirmation, sent.details) == ("12", "confirmed", ["ok"])
        bad = await client.post(
            f"{base}/confirmationBase/12/feedback", json={"confirmation": "maybe"}
        )
        assert bad.status_code == 400

        r = await client.post(
            f"{base}/confirmationBase/activateAutoConfirm",
            json={"initiator": "tech", "remark": "night shift"},
        )
        assert r.status_code == 200
        sent_ac = AutoConfirmChanged.model_validate_json(await bus.last("device.auto_confirm"))
        assert (sent_ac.active, sent_ac.initiator, sent_ac.remark) == (True, "tech", "night shift")

        await bus.put(names.BUCKET_DEPLOYMENTS, "c1", entry("deployment", auto_confirm=True))
        await eventually(lambda: mirror.deployments.values[key].auto_confirm, timeout=5)
        again = await client.post(f"{base}/confirmationBase/activateAutoConfirm")
        assert again.status_code == 409
        state = (await client.get(f"{base}/confirmationBase")).json()
        assert state["autoConfirm"]["active"] is True
        assert "deactivateAutoConfirm" in state["_links"]
        assert (
            await client.post(f"{base}/confirmationBase/deactivateAutoConfirm")
        ).status_code == 200
        assert (await client.get(f"{base}/confirmationBase/12")).status_code == 404
        deployment = (await client.get(f"{base}/deploymentBase/12")).json()
        assert deployment["deployment"]["maintenanceWindow"] == "available"


async def test_declaring_installed_software_reports_it(
    common: CommonSettings, serve, tenant: str, bus: Bus
) -> None:
    app = build_gateway(common, GatewaySettings())
    gw = await serve(app)
    base = f"{gw.url}/{tenant}/controller/v1/decl"
    async with httpx.AsyncClient(timeout=10) as client:
        # Unknown devices cannot declare anything.
        r = await client.put(f"{base}/installedBase", json={"name": "os", "version": "3.1.0"})
        assert r.status_code == 404
        await bus.put(names.BUCKET_DEVICES, "decl", kv.DeviceEntry())
        key = names.kv_key(tenant, "decl")
        await eventually(lambda: key in app.state.gateway.mirror.devices.values, timeout=5)
        r = await client.put(f"{base}/installedBase", json={"name": "os", "version": "3.1.0"})
        assert r.status_code == 200
        assert (await client.put(f"{base}/installedBase", json={"name": "os"})).status_code == 400
    sent = DeviceConfigReported.model_validate_json(await bus.last("device.config_reported"))
    assert sent.data == {"sw_version": "3.1.0", "sw_name": "os"}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_large_download_streams_in_bounded_memory(
    common: CommonSettings, serve, tenant: str, bus: Bus, tmp_path: Path
) -> None:
    size = 512 * 1024 * 1024
    objects = tmp_path / "objects"
    (objects / "big").mkdir(parents=True)
    with (objects / "big" / "big.swu").open("wb") as f:
        f.truncate(size)  # sparse: the test costs no disk space
    app = build_gateway(common, GatewaySettings(), StorageSettings(backend="local", dir=objects))
    gw = await serve(app)
    await bus.put(names.BUCKET_DEVICES, "big", kv.DeviceEntry())
    art = ART.model_copy(update={"size": size})
    doc = entry().model_copy(
        update={
            "open": entry().open.model_copy(  # type: ignore[union-attr]
                update={
                    "deployment": kv.DeploymentDoc(
                        chunks=[
                            kv.ChunkDoc(module_id="7", name="img", version="2.0", artifacts=[art])
                        ]
                    )
                }
            )
        }
    )
    await bus.put(names.BUCKET_DEPLOYMENTS, "big", doc)
    key = names.kv_key(tenant, "big")
    mirror = app.state.gateway.mirror
    await eventually(lambda: key in mirror.deployments.values, timeout=5)
    url = f"{gw.url}/{tenant}/controller/v1/big/softwaremodules/7/artifacts/big.swu"
    before = _rss_kib()
    peak = before
    received = 0
    async with httpx.AsyncClient(timeout=60) as client, client.stream("GET", url) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == str(size)
        async for chunk in r.aiter_raw():
            received += len(chunk)
            peak = max(peak, _rss_kib())
    assert received == size
    # Server and client share this process; half a gigabyte went through it.
    assert peak - before < 64 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"
