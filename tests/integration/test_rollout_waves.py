"""Rollouts in waves, driven by a simulated fleet speaking DDI to the gateway.

Registry, rollouts and gateway run in the test's event loop, once for the module, against the
session's NATS and a database of the module's own. A thousand devices register once (first
poll, then configData), which is most of the module's time; each test rolls out its own software,
and the small tests use devices of their own feeds. Devices find the rollout's action in their
poll and post their final feedback over HTTP, as real clients would; at most ``CONCURRENCY``
requests are in flight, because thousands of concurrent httpx requests cost more CPU than the
services under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import nats
import pytest
import uvicorn
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.events import (
    DeviceUpdated,
    RolloutProgressed,
    SoftwareCreated,
    SoftwareDeleted,
)
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_runtime.serve import uvicorn_config
from gaggle_servers import free_port
from gaggle_storage import LocalStore, StorageSettings
from gaggle_testing import publish_software as announce_software
from tests.integration.support import Stack

pytestmark = pytest.mark.integration

BOARD = "waveboard"
REVISION = "1.0"
OLD = "1.0.0"
NEW = "2.0.0"
CONCURRENCY = 50
FLEET = 1000


# -- the operator's and the artifacts service's side ---------------------------------------------


async def publish_software(
    common: CommonSettings,
    tenant: str,
    sid: str,
    version: str = NEW,
    board: str = BOARD,
) -> None:
    """Announce a software for ``board`` (any revision) as the artifacts service would."""
    await announce_software(common, tenant, sid, version, [(board, "*")])


async def delete_software(common: CommonSettings, tenant: str, sid: str) -> None:
    """Soft-delete a software as the artifacts service would (``software.deleted``)."""
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        await publish_event(broker, SoftwareDeleted(tenant=tenant, software_id=sid, hard=False))
    finally:
        await broker.stop()


class Operator:
    """The rollouts API as an operator uses it."""

    def __init__(self, s: Stack, client: httpx.AsyncClient) -> None:
        self.s = s
        self.client = client

    def url(self, path: str) -> str:
        return f"{self.s.ro}/api/v1{path}"

    @property
    def params(self) -> dict[str, str]:
        return {"tenant": self.s.tenant}

    async def post_rollout(self, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(self.url("/rollouts"), params=self.params, json=body)

    async def create(self, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """POST a rollout; 404 is retried while rollouts has not consumed the software yet."""
        deadline = time.monotonic() + timeout
        while True:
            r = await self.post_rollout(body)
            if r.status_code != 404 or time.monotonic() > deadline:
                assert r.status_code == 201, f"POST /rollouts {body} -> {r.status_code} {r.text}"
                doc: dict[str, Any] = r.json()
                return doc
            await asyncio.sleep(0.1)

    async def get(self, rid: str) -> dict[str, Any]:
        r = await self.client.get(self.url(f"/rollouts/{rid}"), params=self.params)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def command(self, rid: str, verb: str) -> httpx.Response:
        return await self.client.post(self.url(f"/rollouts/{rid}/{verb}"), params=self.params)

    async def members(self, rid: str, limit: int = FLEET) -> list[dict[str, Any]]:
        r = await self.client.get(
            self.url(f"/rollouts/{rid}/devices"), params={**self.params, "limit": str(limit)}
        )
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    async def wait(
        self,
        rid: str,
        check: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 20,
        interval: float = 0.1,
    ) -> dict[str, Any]:
        """Poll the rollout until ``check`` holds; fail with the last document otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            doc = await self.get(rid)
            if check(doc):
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"rollout {rid}: {what} not reached in {timeout} s: {doc}")
            await asyncio.sleep(interval)

    async def action(self, action_id: str) -> dict[str, Any]:
        r = await self.client.get(self.url(f"/actions/{action_id}"), params=self.params)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def set_feed(self, cid: str, feed: str, mode: str = "rollout") -> None:
        deadline = time.monotonic() + 10
        while True:
            r = await self.client.put(
                self.url(f"/devices/{cid}/policy"),
                params=self.params,
                json={"mode": mode, "feed": feed},
            )
            if r.status_code != 404 or time.monotonic() > deadline:
                assert r.status_code == 200, r.text
                return
            await asyncio.sleep(0.05)


def counters(doc: dict[str, Any]) -> dict[str, int]:
    c: dict[str, int] = doc["counters"]
    return c


def successes(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: counters(doc)["success"] >= n


def in_wave(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: bool(doc["current_wave"] == n)


def by_wave(items: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    waves: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        waves.setdefault(int(item["wave"]), []).append(item)
    return waves


def assert_4xx(r: httpx.Response, *mentions: str) -> None:
    """A refusal: 4xx with a JSON explanation that names what was wrong."""
    assert 400 <= r.status_code < 500, f"{r.status_code} {r.text}"
    body = r.json()
    assert body.get("message") or body.get("detail"), body
    for text in mentions:
        assert text in r.text, f"{text!r} not named in {r.text}"


# -- the devices' side ----------------------------------------------------------------------------


class Fleet:
    """Simulated devices: DDI over HTTP to the gateway, ``CONCURRENCY`` requests at a time."""

    def __init__(self, s: Stack, client: httpx.AsyncClient) -> None:
        self.s = s
        self.client = client
        self.sem = asyncio.Semaphore(CONCURRENCY)

    async def each(self, ids: Iterable[str], fn: Callable[[str], Awaitable[Any]]) -> list[Any]:
        async def one(cid: str) -> Any:
            async with self.sem:
                return await fn(cid)

        return list(await asyncio.gather(*(one(cid) for cid in ids)))

    async def register(
        self, ids: Iterable[str], board: str = BOARD, version: str = OLD, revision: str = REVISION
    ) -> None:
        """First poll, then configData with board, revision and installed version."""

        async def one(cid: str) -> None:
            first = await self.client.get(self.s.dev(cid))
            assert first.status_code == 200, first.text
            assert "configData" in first.json()["_links"], first.text
            r = await self.client.put(
                f"{self.s.dev(cid)}/configData",
                json={
                    "mode": "merge",
                    "data": {"hw_boardname": board, "hw_revision": revision, "sw_version": version},
                },
            )
            assert r.status_code == 200, r.text

        await self.each(ids, one)

    async def links(self, cid: str) -> dict[str, Any]:
        r = await self.client.get(self.s.dev(cid))
        assert r.status_code == 200, r.text
        links: dict[str, Any] = r.json().get("_links") or {}
        return links

    async def offered(self, cid: str, timeout: float = 10) -> str:
        """Poll until a deploymentBase link shows up; its action id."""
        deadline = time.monotonic() + timeout
        while True:
            links = await self.links(cid)
            if "deploymentBase" in links:
                href: str = links["deploymentBase"]["href"]
                return href.split("/deploymentBase/", 1)[1].split("?", 1)[0]
            assert time.monotonic() < deadline, f"{cid}: no deploymentBase offered: {links}"
            await asyncio.sleep(0.2)

    async def offered_all(self, ids: Iterable[str]) -> dict[str, str]:
        ids = list(ids)
        return dict(zip(ids, await self.each(ids, self.offered), strict=True))

    async def report(self, cid: str, action_id: str, finished: str) -> None:
        r = await self.client.post(
            f"{self.s.dev(cid)}/deploymentBase/{action_id}/feedback",
            json={
                "id": action_id,
                "status": {
                    "execution": "closed",
                    "result": {"finished": finished},
                    "details": [f"install {finished}"],
                },
            },
        )
        assert r.status_code == 200, f"{cid} feedback {finished}: {r.status_code} {r.text}"

    async def report_all(self, actions: dict[str, str], ids: Iterable[str], finished: str) -> None:
        async def one(cid: str) -> None:
            await self.report(cid, actions[cid], finished)

        await self.each(ids, one)

    async def nothing_offered(self, ids: Iterable[str]) -> None:
        """None of ``ids`` sees a deployment or a cancel request in its poll."""

        async def one(cid: str) -> None:
            links = await self.links(cid)
            assert "deploymentBase" not in links and "cancelAction" not in links, (cid, links)

        await self.each(ids, one)


# -- the bus --------------------------------------------------------------------------------------


async def wait_rollouts_know(
    nc: NatsClient, tenant: str, ids: Iterable[str], version: str = OLD, timeout: float = 30
) -> None:
    """Wait until rollouts has consumed every device's inventory (board and version).

    The registry announces each device's configData with ``device.updated``; membership is
    snapshotted when a rollout is created, so it must not be created before rollouts has them.
    """
    js = nc.jetstream()
    want = set(ids)
    last_seq = 0
    sub = await js.subscribe(names.subject(tenant, DeviceUpdated.kind), ordered_consumer=True)
    try:
        async with asyncio.timeout(timeout):
            while want:
                msg = await sub.next_msg(timeout=timeout)
                event = DeviceUpdated.model_validate_json(msg.data)
                if event.hw_model is not None and event.sw_version == version:
                    want.discard(event.controller_id)
                    last_seq = max(last_seq, msg.metadata.sequence.stream)
            durable = names.durable("rollouts", DeviceUpdated.kind)
            while True:
                info = await js.consumer_info(names.STREAM, durable)
                if info.delivered.stream_seq >= last_seq and info.num_ack_pending == 0:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        missing = f"{len(want)} devices, e.g. {sorted(want)[:5]}"
        raise AssertionError(f"rollouts did not learn {missing}") from None
    finally:
        await sub.unsubscribe()


async def wait_consumed(nc: NatsClient, kind: str, timeout: float = 10) -> None:
    """Wait until rollouts has handled (acked) every ``kind`` event in the stream."""
    js = nc.jetstream()
    durable = names.durable("rollouts", kind)
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(names.STREAM, durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        assert time.monotonic() < deadline, f"{durable} not drained: {info}"
        await asyncio.sleep(0.05)


class Progress:
    """Every ``rollout.progressed`` event of the tenant, from the stream, in order."""

    def __init__(self) -> None:
        self.events: list[RolloutProgressed] = []
        self.sub: Any = None

    async def start(self, nc: NatsClient, tenant: str) -> Progress:
        async def on(msg: Msg) -> None:
            self.events.append(RolloutProgressed.model_validate_json(msg.data))

        self.sub = await nc.jetstream().subscribe(
            names.subject(tenant, RolloutProgressed.kind), cb=on, ordered_consumer=True
        )
        return self

    def of(self, rid: str) -> list[RolloutProgressed]:
        return [e for e in self.events if e.rollout_id == rid]

    async def wait(
        self, rid: str, check: Callable[[RolloutProgressed], bool], timeout: float = 10
    ) -> RolloutProgressed:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.of(rid):
                if check(event):
                    return event
            if time.monotonic() > deadline:
                tail = [e.model_dump(mode="json") for e in self.of(rid)[-5:]]
                raise AssertionError(f"rollout.progressed of {rid}: none matched; last {tail}")
            await asyncio.sleep(0.05)


async def connect(common: CommonSettings) -> NatsClient:
    return await nats.connect(common.nats_url, connect_timeout=5)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(n)]


def http(auth: httpx.Auth) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        auth=auth,
        timeout=20,
        # Idle connections are dropped before uvicorn closes them (after 5 s): reusing one the
        # server is closing fails the request.
        limits=httpx.Limits(
            max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=2
        ),
    )


# -- one stack and one fleet for the whole module -------------------------------------------------


@dataclass
class FleetStack:
    """The running services, their settings, and the registered fleet."""

    s: Stack
    common: CommonSettings
    fleet_ids: list[str]
    pinned: str
    elsewhere: str
    other_board: str
    auth: httpx.Auth


async def serve_app(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Serve ``app`` in this event loop on a free port until the server is stopped."""
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped while starting")
            await asyncio.sleep(0.02)
    return server, task, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def fleet_stack(
    nats_url: str,
    module_database: str,
    tmp_path_factory: pytest.TempPathFactory,
    issue_key: Callable[..., Awaitable[Any]],
) -> AsyncIterator[FleetStack]:
    """Registry, rollouts, gateway and artifacts; FLEET devices registered with configData."""
    common = CommonSettings(nats_url=nats_url, database_url=module_database, log_json=False)
    tenant = f"t{secrets.token_hex(5)}"
    key = await issue_key(tenant, ["admin"])
    storage = StorageSettings(backend="local", dir=tmp_path_factory.mktemp("objects"))
    running = []
    try:
        for app in (
            build_registry(
                common, RegistrySettings(bootstrap_key=key.bootstrap, bootstrap_tenant=tenant)
            ),
            build_rollouts(common, RolloutsSettings()),
            build_gateway(common, GatewaySettings(polling_sleep="00:00:05"), storage),
            build_artifacts(common, ArtifactsSettings(), storage),
        ):
            running.append(await serve_app(app))
        rollouts, gateway = (SimpleNamespace(url=r[2]) for r in running[1:3])
        s = Stack(gateway, rollouts, tenant, LocalStore(storage.dir))
        fs = FleetStack(
            s,
            common,
            ids("dev", FLEET),
            "odd-pinned",
            "odd-other-feed",
            "odd-other-board",
            key.auth,
        )
        nc = await connect(common)
        try:
            async with http(fs.auth) as client:
                fleet, op = Fleet(s, client), Operator(s, client)
                await fleet.register([*fs.fleet_ids, fs.pinned, fs.elsewhere])
                await fleet.register([fs.other_board], board="another-board")
                await wait_rollouts_know(
                    nc, tenant, [*fs.fleet_ids, fs.pinned, fs.elsewhere, fs.other_board]
                )
                await op.set_feed(fs.pinned, "default", mode="pinned")
                await op.set_feed(fs.elsewhere, "other")
        finally:
            await nc.close()
        yield fs
    finally:
        for server, task, _ in reversed(running):
            server.should_exit = True
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await task


@pytest.fixture
async def nc(fleet_stack: FleetStack) -> AsyncIterator[NatsClient]:
    client = await connect(fleet_stack.common)
    yield client
    await client.close()


@pytest.fixture
async def progress(fleet_stack: FleetStack, nc: NatsClient) -> AsyncIterator[Progress]:
    watch = await Progress().start(nc, fleet_stack.s.tenant)
    yield watch
    await watch.sub.unsubscribe()


async def small_fleet(
    fs: FleetStack, nc: NatsClient, client: httpx.AsyncClient, feed: str, n: int, **reported: str
) -> list[str]:
    """``n`` more devices, registered, known to rollouts, in ``feed``."""
    devices = ids(feed, n)
    await Fleet(fs.s, client).register(devices, **reported)
    await wait_rollouts_know(nc, fs.s.tenant, devices, version=reported.get("version", OLD))
    op = Operator(fs.s, client)
    for cid in devices:
        await op.set_feed(cid, feed)
    return devices


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)  # the module's fleet registers in the first test's set-up
async def test_three_waves_complete_one_after_the_other(
    fleet_stack: FleetStack, nc: NatsClient, progress: Progress
) -> None:
    fs, t = fleet_stack, fleet_stack.s.tenant
    await publish_software(fs.common, t, "w1", NEW)
    async with http(fs.auth) as client:
        fleet, op = Fleet(fs.s, client), Operator(fs.s, client)
        created = await op.create(
            {
                "name": "waves",
                "software_id": "w1",
                "feed": "default",
                "waves": [{"percent": 10}, {"percent": 30}, {"percent": 60}],
                "success_threshold": 80,
                "error_threshold": 20,
                "error_action": "pause",
                "action_type": "forced",
            }
        )
        rid = created["id"]
        assert created["state"] == "created"
        assert created["current_wave"] == 0
        assert created["software_id"] == "w1" and created["version"] == NEW
        assert [w["size"] for w in created["waves"]] == [100, 300, 600]
        assert all(w["started_at"] is None for w in created["waves"])
        assert counters(created)["total"] == FLEET
        assert counters(created)["success"] == 0

        members = await op.members(rid)
        # Only compatible devices of the feed in mode rollout are members.
        assert sorted(m["controller_id"] for m in members) == fs.fleet_ids
        assert all(m["action_id"] is None for m in members)
        waves = {n: [m["controller_id"] for m in ms] for n, ms in by_wave(members).items()}
        assert {n: len(w) for n, w in waves.items()} == {1: 100, 2: 300, 3: 600}
        # Nothing is offered before the start.
        await fleet.nothing_offered(waves[1][:10])

        started = await op.command(rid, "start")
        assert started.status_code == 200, started.text
        assert started.json()["state"] == "running"
        assert started.json()["current_wave"] == 1

        done = 0
        for n in (1, 2, 3):
            actions = await fleet.offered_all(waves[n])
            listed = {m["controller_id"]: m["action_id"] for m in await op.members(rid)}
            assert {cid: listed[cid] for cid in waves[n]} == actions
            if n == 3:
                await fleet.report_all(actions, waves[n], "success")
                break
            needed = math.ceil(len(waves[n]) * 0.8)
            short = waves[n][: needed - 1]
            await fleet.report_all(actions, short, "success")
            doc = await op.wait(rid, successes(done + len(short)), "successes counted")
            # One success short of the condition: the next wave has not started.
            assert counters(doc)["success"] == done + len(short), doc
            assert doc["current_wave"] == n, doc
            assert doc["waves"][n]["started_at"] is None, doc
            later = [m for m in await op.members(rid) if m["wave"] > n]
            assert [m for m in later if m["action_id"]] == []
            await fleet.nothing_offered(waves[n + 1][:: len(waves[n + 1]) // 10])

            await fleet.report_all(actions, waves[n][needed - 1 : needed], "success")
            doc = await op.wait(rid, in_wave(n + 1), "next wave")
            assert doc["waves"][n]["started_at"] is not None
            await fleet.report_all(actions, waves[n][needed:], "success")
            done += len(waves[n])

        final = await op.wait(rid, lambda d: d["state"] == "finished", "finished", timeout=30)
        assert counters(final)["success"] == FLEET
        assert counters(final)["total"] == FLEET
        assert counters(final)["failure"] == 0
        assert final["finished_at"] is not None
        starts = [w["started_at"] for w in final["waves"]]
        assert all(starts) and starts == sorted(starts), starts
        assert all(m["state"] == "success" for m in await op.members(rid))
        # Devices outside the rollout were never offered anything; finished ones nothing more.
        await fleet.nothing_offered([fs.pinned, fs.elsewhere, fs.other_board])
        await fleet.nothing_offered(fs.fleet_ids[::100])

    last = await progress.wait(rid, lambda e: e.state == "finished")
    assert (last.total, last.success, last.failure) == (FLEET, FLEET, 0)
    first_of_wave: dict[int, RolloutProgressed] = {}
    for event in progress.of(rid):
        if event.wave is not None:
            first_of_wave.setdefault(event.wave, event)
    assert set(first_of_wave) >= {1, 2, 3}, progress.of(rid)[:5]
    # Each wave started once the one before had 80 % successes (earlier waves complete).
    assert first_of_wave[2].success >= 80
    assert first_of_wave[3].success >= 100 + 240
    assert progress.of(rid)[-1].state == "finished"


@pytest.mark.timeout(90)
async def test_failures_past_the_error_threshold_abort_in_the_first_wave(
    fleet_stack: FleetStack, nc: NatsClient, progress: Progress
) -> None:
    fs, t = fleet_stack, fleet_stack.s.tenant
    await publish_software(fs.common, t, "a1", "3.0.0")
    async with http(fs.auth) as client:
        fleet, op = Fleet(fs.s, client), Operator(fs.s, client)
        doc = await op.create(
            {
                "name": "abort",
                "software_id": "a1",
                "waves": [{"percent": 10}, {"percent": 30}, {"percent": 60}],
                "success_threshold": 80,
                "error_threshold": 20,
                "error_action": "abort",
                "start": True,
            }
        )
        rid = doc["id"]
        assert doc["state"] == "running" and doc["current_wave"] == 1
        assert counters(doc)["total"] == FLEET
        members = by_wave(await op.members(rid))
        waves = {n: [m["controller_id"] for m in ms] for n, ms in members.items()}
        first = waves[1]
        assert len(first) == 100
        actions = await fleet.offered_all(first)

        # 30 % of the fleet fails; of the first wave, 50 succeed, 30 fail, 20 stay silent.
        ok, failing, silent = first[:50], first[50:80], first[80:]
        await fleet.report_all(actions, ok, "success")
        await op.wait(rid, lambda d: counters(d)["success"] == 50, "50 successes")
        await fleet.report_all(actions, failing, "failure")
        doc = await op.wait(rid, lambda d: d["state"] == "aborted", "aborted")
        assert doc["reason"], doc
        assert counters(doc)["failure"] > 20, doc
        assert counters(doc)["success"] == 50
        assert doc["current_wave"] == 1
        assert all(w["started_at"] is None for w in doc["waves"][1:]), doc

        # The silent devices are asked to cancel; they confirm.
        async def cancels(cid: str) -> None:
            deadline = time.monotonic() + 10
            while "cancelAction" not in (links := await fleet.links(cid)):
                assert time.monotonic() < deadline, (cid, links)
                await asyncio.sleep(0.2)
            assert "deploymentBase" not in links, (cid, links)
            href = links["cancelAction"]["href"]
            assert href.endswith(f"/cancelAction/{actions[cid]}"), href
            r = await client.post(
                f"{href}/feedback",
                json={
                    "id": actions[cid],
                    "status": {"execution": "closed", "result": {"finished": "success"}},
                },
            )
            assert r.status_code == 200, r.text

        await fleet.each(silent, cancels)

        async def closed(cid: str) -> None:
            deadline = time.monotonic() + 10
            while (action := await op.action(actions[cid]))["active"]:
                assert time.monotonic() < deadline, action
                await asyncio.sleep(0.2)
            assert action["status"] == ("canceled" if cid in silent else "error"), action

        await fleet.each([*failing, *silent], closed)
        doc = await op.get(rid)
        assert doc["state"] == "aborted"
        wave1 = doc["waves"][0]["counters"]
        assert (wave1["success"], wave1["pending"], wave1["running"]) == (50, 0, 0), doc
        assert wave1["failure"] + wave1["canceled"] == 50, doc
        assert counters(doc)["success"] == 50
        # Later waves never started: none of their devices succeeded, failed or is pending.
        for later in doc["waves"][1:]:
            assert later["started_at"] is None, doc
            assert later["counters"]["success"] + later["counters"]["failure"] == 0, doc
            assert later["counters"]["pending"] + later["counters"]["running"] == 0, doc

        # No device outside the first wave ever got an action.
        items = await op.members(rid)
        assert [m for m in items if m["wave"] > 1 and m["action_id"]] == []
        await fleet.nothing_offered([*waves[2][::30], *waves[3][::60]])
        # An aborted rollout stays aborted.
        assert (await op.command(rid, "resume")).status_code == 409
        assert (await op.command(rid, "start")).status_code == 409

    event = await progress.wait(rid, lambda e: e.state == "aborted")
    assert event.failure > 20


async def test_failures_past_the_error_threshold_pause_and_keep_open_actions(
    fleet_stack: FleetStack, nc: NatsClient
) -> None:
    fs = fleet_stack
    await publish_software(fs.common, fs.s.tenant, "p1", NEW)
    async with http(fs.auth) as client:
        fleet, op = Fleet(fs.s, client), Operator(fs.s, client)
        await small_fleet(fs, nc, client, "pause", 20)
        doc = await op.create(
            {
                "name": "pause",
                "software_id": "p1",
                "feed": "pause",
                "waves": [{"count": 10}],
                "success_threshold": 100,
                "error_threshold": 20,
                "error_action": "pause",
                "start": True,
            }
        )
        rid = doc["id"]
        assert [w["size"] for w in doc["waves"]] == [10, 10]  # the rest form a last wave
        waves = {
            n: [m["controller_id"] for m in ms] for n, ms in by_wave(await op.members(rid)).items()
        }
        actions = await fleet.offered_all(waves[1])
        await fleet.report_all(actions, waves[1][:3], "failure")
        doc = await op.wait(rid, lambda d: d["state"] == "paused", "paused")
        assert doc["reason"], doc
        assert counters(doc)["failure"] == 3
        # Pausing keeps open actions offered; the second wave has not started.
        for cid in waves[1][3:6]:
            assert "deploymentBase" in await fleet.links(cid)
        await fleet.nothing_offered(waves[2])
        assert all(m["action_id"] is None for m in await op.members(rid) if m["wave"] == 2)


async def test_operator_pauses_resumes_and_devices_on_the_version_count_at_once(
    fleet_stack: FleetStack, nc: NatsClient
) -> None:
    fs = fleet_stack
    await publish_software(fs.common, fs.s.tenant, "o1", NEW)
    async with http(fs.auth) as client:
        fleet, op = Fleet(fs.s, client), Operator(fs.s, client)
        behind = await small_fleet(fs, nc, client, "ops", 4)
        current = await small_fleet(fs, nc, client, "ops-new", 2, version=NEW)
        for cid in current:
            await op.set_feed(cid, "ops")
        doc = await op.create({"name": "ops", "software_id": "o1", "feed": "ops"})
        rid = doc["id"]
        assert doc["state"] == "created"
        assert counters(doc)["total"] == 6
        # The two already running 2.0.0 count as successes from the start, with no action.
        assert counters(doc)["success"] == 2
        assert [w["size"] for w in doc["waves"]] == [6]
        assert (await op.command(rid, "resume")).status_code == 409  # not paused

        r = await op.command(rid, "start")
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
        assert (await op.command(rid, "start")).status_code == 409
        actions = await fleet.offered_all(behind)
        doc = await op.wait(rid, successes(2), "devices on the version counted")
        assert counters(doc)["success"] == 2, doc
        await fleet.nothing_offered(current)
        states = {m["controller_id"]: m for m in await op.members(rid)}
        assert [states[cid]["state"] for cid in current] == ["success", "success"]
        assert [states[cid]["action_id"] for cid in current] == [None, None]

        r = await op.command(rid, "pause")
        assert r.status_code == 200 and r.json()["state"] == "paused", r.text
        listed = await client.get(
            op.url("/rollouts"), params={**op.params, "feed": "ops", "state": "paused"}
        )
        assert [x["id"] for x in listed.json()["items"]] == [rid]
        r = await op.command(rid, "resume")
        assert r.status_code == 200 and r.json()["state"] == "running", r.text

        await fleet.report_all(actions, behind, "success")
        doc = await op.wait(rid, lambda d: d["state"] == "finished", "finished")
        assert counters(doc)["success"] == 6
        for verb in ("pause", "resume", "start", "abort"):
            r = await op.command(rid, verb)
            assert r.status_code == 409, f"{verb} of a finished rollout: {r.status_code} {r.text}"
            assert r.json().get("message"), r.text
        listed = await client.get(
            op.url("/rollouts"), params={**op.params, "feed": "ops", "state": "finished"}
        )
        assert [x["id"] for x in listed.json()["items"]] == [rid]
        unknown = await client.get(op.url("/rollouts/999999"), params=op.params)
        assert unknown.status_code == 404


async def test_bad_rollout_requests_get_a_clear_4xx(
    fleet_stack: FleetStack, nc: NatsClient
) -> None:
    fs, t = fleet_stack, fleet_stack.s.tenant
    await publish_software(fs.common, t, "b1", "5.0.0")
    await publish_software(fs.common, t, "b2", "5.0.0", board="no-such-board")
    await publish_software(fs.common, t, "b3", "6.0.0")
    async with http(fs.auth) as client:
        op = Operator(fs.s, client)
        await small_fleet(fs, nc, client, "bad", 3)
        good = {"name": "bad", "software_id": "b1", "feed": "bad"}
        # Known software: a valid rollout can be created (this waits for the catalogue).
        ok = await op.create({**good, "name": "fine"})
        assert ok["state"] == "created"
        await wait_consumed(nc, SoftwareCreated.kind)

        r = await op.post_rollout({**good, "software_id": "999999"})
        assert r.status_code == 404, r.text
        assert_4xx(r)
        for name, value in [
            ("success_threshold", 0),
            ("success_threshold", 101),
            ("error_threshold", -1),
            ("error_threshold", 101),
        ]:
            assert_4xx(await op.post_rollout({**good, name: value}), name)
        for waves in ([], [{"percent": 0}], [{"percent": 60}, {"percent": 60}], [{"count": 0}]):
            assert_4xx(await op.post_rollout({**good, "waves": waves}), "waves")
        assert_4xx(await op.post_rollout({**good, "error_action": "explode"}), "error_action")
        assert_4xx(await op.post_rollout({**good, "feed": "nobody-here"}))
        assert_4xx(await op.post_rollout({**good, "filter": {"hw_model": "nope"}}))
        # Software no device of the feed can run.
        assert_4xx(await op.post_rollout({**good, "software_id": "b2"}))

        await delete_software(fs.common, t, "b3")
        await wait_consumed(nc, SoftwareDeleted.kind)
        assert_4xx(await op.post_rollout({**good, "software_id": "b3"}), "deleted")
