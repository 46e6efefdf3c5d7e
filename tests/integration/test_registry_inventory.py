"""The registry's inventory: redelivery, device tokens, filters, update state, live logs."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.events import (
    Compatibility,
    DeviceConfigReported,
    DeviceDiscovered,
    SoftwareCreated,
)
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker, publish_raw
from gaggle_storage import LocalStore, StorageSettings
from gaggle_testing import eventually

pytestmark = pytest.mark.integration


async def test_a_redelivered_event_changes_nothing(
    common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    pool = registry.app.state.service.db.pool
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    discovered = DeviceDiscovered(tenant=tenant, controller_id="r1", address="192.0.2.1")
    config = DeviceConfigReported(
        tenant=tenant,
        controller_id="r1",
        mode="merge",
        data={"hw_boardname": "b", "sw_version": "1.0"},
    )
    try:
        for event in (discovered, config):
            await publish_raw(broker, event.subject, event.model_dump_json().encode(), None)

        async def settled() -> Any:
            return await pool.fetchrow(
                "SELECT * FROM registry.devices WHERE tenant = $1 AND hw_model = 'b'", tenant
            )

        before = await eventually(settled)
        # The same events again, past JetStream's de-duplication (as after a consumer crash).
        for event in (discovered, config):
            await publish_raw(broker, event.subject, event.model_dump_json().encode(), None)
        js = broker.connection.jetstream()

        async def consumed() -> bool:
            infos = [
                await js.consumer_info(names.STREAM, names.durable("registry", kind))
                for kind in ("device.discovered", "device.config_reported")
            ]
            return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

        await eventually(consumed)
        after = await pool.fetchrow("SELECT * FROM registry.devices WHERE tenant = $1", tenant)
        same = {k: v for k, v in dict(before).items() if k != "updated_at"}
        assert {k: v for k, v in dict(after).items() if k != "updated_at"} == same
        assert (
            await pool.fetchval("SELECT count(*) FROM registry.devices WHERE tenant = $1", tenant)
            == 1
        )
    finally:
        await broker.stop()


@pytest.fixture
async def fleet(common: CommonSettings, serve, tenant: str, tmp_path: Path) -> dict[str, Any]:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    registry = await serve(build_registry(common, RegistrySettings()))
    await serve(build_artifacts(common, ArtifactsSettings(), storage))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(seen_flush_s=0.2), storage))
    return {
        "registry": registry.url,
        "rollouts": rollouts.url,
        "gateway": gateway.url,
        "tenant": tenant,
        "store": LocalStore(storage.dir),
    }


async def test_a_config_report_redelivered_late_does_not_undo_a_newer_one(
    common: CommonSettings, serve, tenant: str
) -> None:
    registry = await serve(build_registry(common, RegistrySettings()))
    pool = registry.app.state.service.db.pool
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    now = datetime.now(UTC)

    def report(at: datetime, mode: str, data: dict[str, str]) -> DeviceConfigReported:
        return DeviceConfigReported(
            tenant=tenant, controller_id="late1", mode=mode, data=data, occurred_at=at
        )

    async def device() -> Any:
        return await pool.fetchrow(
            "SELECT * FROM registry.devices WHERE tenant = $1 AND controller_id = 'late1'", tenant
        )

    try:
        newer = report(now, "merge", {"hw_boardname": "b", "sw_version": "2.0.0"})
        await publish_raw(broker, newer.subject, newer.model_dump_json().encode(), None)
        await eventually(lambda: _version_is(device, "2.0.0"))
        # The report the device sent before its update, delivered again only now: its old
        # version must not come back, while a key the device has not reported since is kept.
        older = report(
            now - timedelta(seconds=10),
            "merge",
            {"sw_version": "1.0.0", "boot_slot": "a"},
        )
        replaced = report(now - timedelta(seconds=5), "replace", {"sw_version": "0.9.0"})
        for event in (older, replaced):
            await publish_raw(broker, event.subject, event.model_dump_json().encode(), None)

        async def merged() -> Any:
            row = await device()
            return row if row["attributes"].get("boot_slot") == "a" else None

        row = await eventually(merged)
        js = broker.connection.jetstream()

        async def consumed() -> bool:
            info = await js.consumer_info(
                names.STREAM, names.durable("registry", "device.config_reported")
            )
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(consumed)
        row = await device()
        assert row["sw_version"] == "2.0.0"
        assert dict(row["attributes"]) == {
            "hw_boardname": "b",
            "sw_version": "2.0.0",
            "boot_slot": "a",
        }
        # A newer report applies as always.
        newest = report(now + timedelta(seconds=1), "merge", {"sw_version": "2.0.1"})
        await publish_raw(broker, newest.subject, newest.model_dump_json().encode(), None)
        await eventually(lambda: _version_is(device, "2.0.1"))
    finally:
        await broker.stop()


async def _version_is(device: Any, version: str) -> bool:
    row = await device()
    return row is not None and row["sw_version"] == version


async def test_device_tokens_created_rotated_revoked(
    operator_auth: httpx.Auth, fleet: dict[str, Any]
) -> None:
    t, reg = fleet["tenant"], fleet["registry"]
    poll = f"{fleet['gateway']}/{t}/controller/v1/tok-1"
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        r = await client.post(
            f"{reg}/api/v1/devices",
            params={"tenant": t},
            json={"controller_id": "tok-1", "name": "Lab 1", "tags": ["lab"]},
        )
        assert r.status_code == 201, r.text
        created = r.json()
        token = created["token"]
        assert created["has_token"] is True
        assert created["registered_via"] == "api"
        assert (
            "token"
            not in (await client.get(f"{reg}/api/v1/devices/tok-1", params={"tenant": t})).json()
        )
        dup = await client.post(
            f"{reg}/api/v1/devices", params={"tenant": t}, json={"controller_id": "tok-1"}
        )
        assert dup.status_code == 409

        async def status(tok: str | None) -> int:
            headers = {"Authorization": f"TargetToken {tok}"} if tok else {}
            return (await client.get(poll, headers=headers)).status_code

        await eventually(lambda: _is(status(token), 200))
        assert await status("wrong") == 401
        assert await status(None) == 401  # a device with a token must present it

        rotated = (
            await client.post(f"{reg}/api/v1/devices/tok-1/token", params={"tenant": t})
        ).json()["token"]
        assert rotated != token
        await eventually(lambda: _is(status(token), 401))
        assert await status(rotated) == 200

        r = await client.delete(f"{reg}/api/v1/devices/tok-1/token", params={"tenant": t})
        assert r.json()["has_token"] is False
        await eventually(lambda: _is(status(None), 200))  # anonymous tenant again


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_listing_filters_sorts_and_pages(
    operator_auth: httpx.Auth, fleet: dict[str, Any]
) -> None:
    t, reg, gw = fleet["tenant"], fleet["registry"], fleet["gateway"]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for i in range(25):
            base = f"{gw}/{t}/controller/v1/dev-{i:02d}"
            await client.get(base)
            await client.put(
                f"{base}/configData",
                json={
                    "data": {
                        "hw_boardname": "alpha" if i % 2 else "beta",
                        "hw_revision": "1",
                        "sw_version": f"1.{i % 3}",
                    }
                },
            )
        # Every device's configData has landed, the last one (dev-24, beta) included.
        await eventually(lambda: _count(client, reg, t, {"hw_model": "alpha"}, 12))
        await eventually(lambda: _count(client, reg, t, {"hw_model": "beta"}, 13))
        await client.patch(
            f"{reg}/api/v1/devices/dev-03",
            params={"tenant": t},
            json={"name": "Kitchen sensor", "tags": ["kitchen", "eu"]},
        )

        async def ids(**params: Any) -> list[str]:
            r = await client.get(f"{reg}/api/v1/devices", params={"tenant": t, **params})
            assert r.status_code == 200, r.text
            return [d["controller_id"] for d in r.json()["items"]]

        assert await ids(hw_model="beta", sw_version="1.0") == [
            "dev-00",
            "dev-06",
            "dev-12",
            "dev-18",
            "dev-24",
        ]
        assert await ids(tag="kitchen") == ["dev-03"]
        assert await ids(q="kitchen") == ["dev-03"]
        assert await ids(q="dev-1") == [f"dev-1{i}" for i in range(10)]
        assert await ids(q="%") == []  # a literal percent sign, not a wildcard
        assert await ids(state="unknown", limit=3) == ["dev-00", "dev-01", "dev-02"]
        assert (await ids(sort="-controller_id", limit=2)) == ["dev-24", "dev-23"]

        # Keyset pages cover everything exactly once, in every sort order.
        for sort in ("controller_id", "-last_seen", "created", "-created"):
            seen: list[str] = []
            cursor = None
            while True:
                params = {"tenant": t, "limit": 7, "sort": sort}
                if cursor:
                    params["cursor"] = cursor
                page = (await client.get(f"{reg}/api/v1/devices", params=params)).json()
                seen += [d["controller_id"] for d in page["items"]]
                cursor = page["next"]
                if cursor is None:
                    break
            assert sorted(seen) == [f"dev-{i:02d}" for i in range(25)], sort
            assert len(seen) == 25

        now = (await client.get(f"{reg}/api/v1/devices/dev-00", params={"tenant": t})).json()
        assert await ids(seen_after=now["last_seen_at"], hw_model="beta", limit=1000)

        for params, name in [
            ({"cursor": "garbage"}, "cursor"),
            ({"state": "happy"}, "state"),
            ({"limit": 0}, "limit"),
            ({"sort": "size"}, "sort"),
            ({"seen_after": "yesterday"}, "seen_after"),
            ({"seen_after": "2026-01-01T00:00:00"}, "seen_after"),  # fixed-date-ok: no zone
        ]:
            r = await client.get(f"{reg}/api/v1/devices", params={"tenant": t, **params})
            assert r.status_code == 400, (params, r.text)
            assert name in r.json()["message"], r.json()
        assert (
            await client.get(f"{reg}/api/v1/devices/nope", params={"tenant": t})
        ).status_code == 404
        bad_patch = await client.patch(
            f"{reg}/api/v1/devices/dev-03", params={"tenant": t}, json={"tags": ["a b"]}
        )
        assert bad_patch.status_code == 400


async def _count(client: httpx.AsyncClient, reg: str, t: str, params: dict, n: int) -> bool:
    r = await client.get(f"{reg}/api/v1/devices", params={"tenant": t, **params})
    return len(r.json()["items"]) == n


async def _software(common: CommonSettings, tenant: str, store: LocalStore) -> str:
    payload = b"image bytes" * 100

    async def chunks():  # type: ignore[no-untyped-def]
        yield payload

    await store.write("k/img.swu", chunks())
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    event = SoftwareCreated(
        tenant=tenant,
        software_id="5",
        name="img",
        version="2.0.0",
        filename="img.swu",
        size=len(payload),
        md5=hashlib.md5(payload).hexdigest(),  # noqa: S324
        sha1=hashlib.sha1(payload).hexdigest(),  # noqa: S324
        sha256=hashlib.sha256(payload).hexdigest(),
        compatibility=[Compatibility(hw_model="*", hw_revision="*")],
        object_key="k/img.swu",
    )
    await publish_raw(broker, event.subject, event.model_dump_json().encode(), event.message_id)
    await broker.stop()
    return "5"


async def test_update_state_follows_the_action_and_live_logs_stream_feedback(
    operator_auth: httpx.Auth, fleet: dict[str, Any], common: CommonSettings
) -> None:
    t, reg, ro, gw = fleet["tenant"], fleet["registry"], fleet["rollouts"], fleet["gateway"]
    sid = await _software(common, t, fleet["store"])
    base = f"{gw}/{t}/controller/v1/upd-1"
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(base)

        async def state() -> str:
            r = await client.get(f"{reg}/api/v1/devices/upd-1", params={"tenant": t})
            return str(r.json().get("update_state")) if r.status_code == 200 else ""

        await eventually(lambda: _is(state(), "unknown"))

        async def assigned() -> Any:
            r = await client.post(
                f"{ro}/api/v1/devices/upd-1/actions",
                params={"tenant": t},
                json={"software_id": sid},
            )
            return r.json() if r.status_code == 201 else None

        action = await eventually(assigned)
        await eventually(lambda: _is(state(), "pending"))

        lines: list[tuple[float, str]] = []
        opened = asyncio.Event()

        async def listen() -> None:
            async with client.stream(
                "GET", f"{reg}/api/v1/devices/upd-1/logs/stream", params={"tenant": t}, timeout=None
            ) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                async for line in r.aiter_lines():
                    if line.startswith(":"):
                        opened.set()
                    if line.startswith("data:"):
                        lines.append((time.monotonic(), line))

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(opened.wait(), 5)
        fb_url = f"{base}/deploymentBase/{action['id']}/feedback"

        async def offered() -> bool:
            return "deploymentBase" in (await client.get(base)).json()["_links"]

        await eventually(offered)
        sent_at = time.monotonic()
        r = await client.post(
            fb_url,
            json={
                "status": {
                    "execution": "proceeding",
                    "result": {"finished": "none"},
                    "details": ["Downloading 40%"],
                }
            },
        )
        assert r.status_code == 200
        try:
            await eventually(lambda: _has(lines), timeout=5)
        except AssertionError:
            raise AssertionError(
                f"no live line; listener done={listener.done()} {listener}"
            ) from None
        arrived, line = lines[0]
        assert "Downloading 40%" in line
        assert arrived - sent_at < 1.0, f"live log line took {arrived - sent_at:.2f} s"
        await eventually(lambda: _is(state(), "installing"))

        r = await client.post(
            fb_url,
            json={
                "status": {
                    "execution": "closed",
                    "result": {"finished": "success"},
                    "details": ["done"],
                }
            },
        )
        assert r.status_code == 200
        await eventually(lambda: _is(state(), "success"))
        device = (await client.get(f"{reg}/api/v1/devices/upd-1", params={"tenant": t})).json()
        assert device["installed_version"] == "2.0.0"
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def _has(items: list[Any]) -> bool:
    return bool(items)


async def test_deleting_a_device_removes_it_and_cancels_its_open_action(
    operator_auth: httpx.Auth, fleet: dict[str, Any], common: CommonSettings
) -> None:
    t, reg, ro, gw = fleet["tenant"], fleet["registry"], fleet["rollouts"], fleet["gateway"]
    sid = await _software(common, t, fleet["store"])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(f"{gw}/{t}/controller/v1/del-1")
        await eventually(lambda: _status(client, f"{reg}/api/v1/devices/del-1", t, 200))

        async def assigned() -> Any:
            r = await client.post(
                f"{ro}/api/v1/devices/del-1/actions",
                params={"tenant": t},
                json={"software_id": sid},
            )
            return r.json() if r.status_code == 201 else None

        action = await eventually(assigned)
        r = await client.delete(f"{reg}/api/v1/devices/del-1", params={"tenant": t})
        assert r.json()["deleted"] is True
        assert (
            await client.get(f"{reg}/api/v1/devices/del-1", params={"tenant": t})
        ).status_code == 404

        async def canceled() -> bool:
            r = await client.get(f"{ro}/api/v1/actions/{action['id']}", params={"tenant": t})
            return bool(r.json()["status"] == "canceled")

        await eventually(canceled)
        assert (
            await client.delete(f"{reg}/api/v1/devices/del-1", params={"tenant": t})
        ).status_code == 404


async def _status(client: httpx.AsyncClient, url: str, t: str, code: int) -> bool:
    return (await client.get(url, params={"tenant": t})).status_code == code


async def test_policies_set_the_feed_the_registry_filters_by(
    operator_auth: httpx.Auth, fleet: dict[str, Any], common: CommonSettings
) -> None:
    t, reg, ro, gw = fleet["tenant"], fleet["registry"], fleet["rollouts"], fleet["gateway"]
    sid = await _software(common, t, fleet["store"])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in ("f-1", "f-2", "f-3"):
            await client.get(f"{gw}/{t}/controller/v1/{cid}")
        for cid in ("f-1", "f-2"):  # their first polls register them asynchronously
            await eventually(lambda c=cid: _status(client, f"{reg}/api/v1/devices/{c}", t, 200))
        policy = await client.get(f"{ro}/api/v1/devices/f-1/policy", params={"tenant": t})
        assert policy.json() == {
            "controller_id": "f-1",
            "mode": "rollout",
            "feed": "default",
            "software_id": None,
        }
        r = await client.put(
            f"{ro}/api/v1/devices/f-1/policy",
            params={"tenant": t},
            json={"mode": "rollout", "feed": "beta"},
        )
        assert r.status_code == 200, r.text
        r = await client.put(
            f"{ro}/api/v1/devices/f-2/policy",
            params={"tenant": t},
            json={"mode": "latest", "feed": "beta"},
        )
        assert r.status_code == 200

        # A device created through the API, that never polled, gets a policy at once.
        r = await client.post(
            f"{reg}/api/v1/devices", params={"tenant": t}, json={"controller_id": "pre-1"}
        )
        assert r.status_code == 201, r.text

        async def assignable() -> bool:
            r = await client.put(
                f"{ro}/api/v1/devices/pre-1/policy",
                params={"tenant": t},
                json={"mode": "assigned", "software_id": sid, "feed": "beta"},
            )
            return r.status_code == 200

        await eventually(assignable)  # the software event reaches rollouts asynchronously

        async def beta() -> list[str]:
            r = await client.get(f"{reg}/api/v1/devices", params={"tenant": t, "feed": "beta"})
            return [d["controller_id"] for d in r.json()["items"]]

        await eventually(lambda: _is(beta(), ["f-1", "f-2", "pre-1"]))
        pre = (await client.get(f"{reg}/api/v1/devices/pre-1", params={"tenant": t})).json()
        assert pre["registered_via"] == "api"
        # A device that no service knows gets no policy.
        r = await client.put(
            f"{ro}/api/v1/devices/pre-2/policy", params={"tenant": t}, json={"feed": "beta"}
        )
        assert r.status_code == 404, r.text

        async def default() -> list[str]:
            r = await client.get(f"{reg}/api/v1/devices", params={"tenant": t, "feed": "default"})
            return [d["controller_id"] for d in r.json()["items"]]

        # f-3's first poll registers it asynchronously, like every first poll.
        await eventually(lambda: _is(default(), ["f-3"]))

        for body, status in [
            ({"mode": "assigned"}, 400),
            ({"mode": "assigned", "software_id": "999"}, 404),
            ({"mode": "latest", "software_id": sid}, 400),
            ({"mode": "sometimes"}, 400),
            ({"feed": "a b"}, 400),
            ({"mode": "pinned", "extra": 1}, 400),
        ]:
            r = await client.put(f"{ro}/api/v1/devices/f-3/policy", params={"tenant": t}, json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["message"]
        still = await client.get(f"{ro}/api/v1/devices/f-3/policy", params={"tenant": t})
        assert still.json()["mode"] == "rollout"


async def test_registry_start_rebuilds_the_devices_kv_and_drops_stale_keys(
    common: CommonSettings, serve, tenant: str
) -> None:
    import nats as nats_client

    from gaggle_runtime.jetstream import ensure_all

    nc = await nats_client.connect(common.nats_url)
    try:
        await ensure_all(nc.jetstream(), common)
        kv = await nc.jetstream().key_value(names.BUCKET_DEVICES)
        stale = names.kv_key(tenant, "ghost")
        await kv.put(stale, b'{"token_hash": null, "config_requested": true}')
        registry = await serve(build_registry(common, RegistrySettings()))
        pool = registry.app.state.service.db.pool
        await pool.execute(
            "INSERT INTO registry.devices (tenant, controller_id, token_hash) VALUES ($1, $2, $3)",
            tenant,
            "only-in-db",
            "ab" * 32,
        )
        await registry.stop()
        await serve(build_registry(common, RegistrySettings()))

        async def rebuilt() -> bool:
            try:
                keys = set(await kv.keys())
            except nats_client.js.errors.NoKeysError:  # between the deletes and the puts
                return False
            return names.kv_key(tenant, "only-in-db") in keys and stale not in keys

        await eventually(rebuilt)
        entry = await kv.get(names.kv_key(tenant, "only-in-db"))
        assert b"abab" in (entry.value or b"")
    finally:
        await nc.close()
