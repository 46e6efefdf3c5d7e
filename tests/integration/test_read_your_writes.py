"""Read-your-writes for operators: an id one service just answered works at once in the others.

Registry, artifacts and rollouts run against a real NATS and PostgreSQL. Rollouts learns of
software and devices by events; an id it was not told of yet is read through to its owner
(request-reply on ``ota.rpc.<service>.<verb>``), so an operator's script never sees a 404 for
what it just created, and gets a 404 only for what exists nowhere.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.events import DeviceConfigReported, DeviceUpdated
from gaggle_contracts.rpc import FindDevices, FindSoftware
from gaggle_contracts.settings import CommonSettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_storage import StorageSettings
from gaggle_swu.build import make_rawfile_swu
from gaggle_testing import eventually

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

ROUNDS = 100
FEED = ("feed-1", "feed-2")
"""Devices that reported their inventory: every rollout of a fitting software has members."""


def image(version: str) -> bytes:
    return make_rawfile_swu(
        os.urandom(512),
        version=version,
        board="board",
        revisions=["1.0"],
        install_path="/tmp/x",
        key=None,
        cert=None,
    )


@dataclass
class Trio:
    registry: str
    artifacts: str
    rollouts: str
    tenant: str
    common: CommonSettings
    client: httpx.AsyncClient
    registry_app: Any = None

    @property
    def params(self) -> dict[str, str]:
        return {"tenant": self.tenant}

    async def upload(self, data: bytes, name: str = "image.swu") -> str:
        r = await self.client.post(
            f"{self.artifacts}/api/v1/software",
            params={**self.params, "filename": name},
            content=data,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def create_device(self, controller_id: str) -> None:
        r = await self.client.post(
            f"{self.registry}/api/v1/devices",
            params=self.params,
            json={"controller_id": controller_id},
        )
        assert r.status_code == 201, r.text

    async def assign(self, controller_id: str, software_id: str) -> httpx.Response:
        return await self.client.post(
            f"{self.rollouts}/api/v1/devices/{controller_id}/actions",
            params=self.params,
            json={"software_id": software_id},
        )

    async def rollout(self, software_id: str) -> httpx.Response:
        return await self.client.post(
            f"{self.rollouts}/api/v1/rollouts",
            params=self.params,
            json={
                "name": f"to {software_id}",
                "software_id": software_id,
                "filter": {"controller_ids": list(FEED)},
            },
        )

    async def policy(
        self, controller_id: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        url = f"{self.rollouts}/api/v1/devices/{controller_id}/policy"
        if body is None:
            return await self.client.get(url, params=self.params)
        return await self.client.put(url, params=self.params, json=body)


async def publish(common: CommonSettings, *events: Any) -> None:
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        for event in events:
            await publish_event(broker, event)
    finally:
        await broker.stop()


async def start_trio(
    common: CommonSettings, serve: Any, tenant: str, tmp_path: Path, client: httpx.AsyncClient
) -> Trio:
    registry = await serve(build_registry(common, RegistrySettings()))
    artifacts = await serve(
        build_artifacts(
            common, ArtifactsSettings(), StorageSettings(backend="local", dir=tmp_path / "objects")
        )
    )
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    return Trio(registry.url, artifacts.url, rollouts.url, tenant, common, client, registry.app)


@pytest.fixture
async def client(operator_auth: httpx.Auth) -> Any:
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        yield client


@pytest.fixture
async def trio(
    common: CommonSettings, serve: Any, tenant: str, tmp_path: Path, client: httpx.AsyncClient
) -> Trio:
    return await start_trio(common, serve, tenant, tmp_path, client)


async def feed_ready(trio: Trio) -> None:
    """The feed devices report their inventory, and rollouts has it (a rollout finds them)."""
    await publish(
        trio.common,
        *(
            DeviceConfigReported(
                tenant=trio.tenant,
                controller_id=cid,
                data={"hw_boardname": "board", "hw_revision": "1.0", "sw_version": "0.1"},
            )
            for cid in FEED
        ),
    )

    async def both_known() -> bool:
        r = await trio.client.put(
            f"{trio.rollouts}/api/v1/policies",
            params=trio.params,
            json={"filter": {"hw_model": "board"}, "policy": {"mode": "rollout"}},
        )
        return r.status_code == 200 and r.json()["matched"] == len(FEED)

    await eventually(both_known)


@pytest.mark.timeout(180)
async def test_an_upload_and_a_new_device_work_at_once_in_rollouts_every_time(trio: Trio) -> None:
    await feed_ready(trio)
    answers: list[tuple[str, int, str]] = []
    started = time.monotonic()
    for i in range(ROUNDS):
        controller_id = f"new-{i}"
        await trio.create_device(controller_id)
        software_id = await trio.upload(image(f"2.0.{i}"), f"image-{i}.swu")
        # Straight away, as an operator's script does: no waiting for events.
        assigned = await trio.assign(controller_id, software_id)
        rolled = await trio.rollout(software_id)
        answers += [
            ("assign", assigned.status_code, assigned.text),
            ("rollout", rolled.status_code, rolled.text),
        ]
    elapsed = time.monotonic() - started
    not_found = [a for a in answers if a[1] == 404]
    assert len(not_found) == 0, not_found[:3]
    assert [a for a in answers if a[1] != 201] == []
    assert len(answers) == 2 * ROUNDS
    log.info("%d rounds of create device, upload, assign, roll out: %.1f s", ROUNDS, elapsed)


async def test_a_device_created_in_the_registry_has_a_policy_at_once(trio: Trio) -> None:
    await trio.create_device("fresh-1")
    got = await trio.policy("fresh-1")
    assert got.status_code == 200, got.text
    assert got.json()["mode"] == "rollout"
    put = await trio.policy("fresh-2")
    assert put.status_code == 404
    await trio.create_device("fresh-2")
    put = await trio.policy("fresh-2", {"mode": "pinned"})
    assert put.status_code == 200, put.text
    assert put.json()["mode"] == "pinned"
    history = await trio.client.get(
        f"{trio.rollouts}/api/v1/devices/fresh-2/actions", params=trio.params
    )
    assert history.status_code == 200 and history.json() == {"items": []}
    # A bulk policy naming it by id finds it too.
    await trio.create_device("fresh-3")
    bulk = await trio.client.put(
        f"{trio.rollouts}/api/v1/policies",
        params=trio.params,
        json={"filter": {"controller_ids": ["fresh-3", "ghost"]}, "policy": {"mode": "latest"}},
    )
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["matched"] == 1


async def test_a_device_no_service_knows_is_404_for_actions_and_policies(trio: Trio) -> None:
    software_id = await trio.upload(image("3.0.0"))
    for response in (
        await trio.assign("ghost", software_id),
        await trio.policy("ghost"),
        await trio.policy("ghost", {"mode": "latest"}),
        await trio.client.get(f"{trio.rollouts}/api/v1/devices/ghost/actions", params=trio.params),
    ):
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "not_found", "message": "device 'ghost' not found"}
    # A known device with a software that exists nowhere: the software is what is missing.
    await trio.create_device("real-1")
    for response in (
        await trio.assign("real-1", "999999"),
        await trio.policy("real-1", {"mode": "assigned", "software_id": "999999"}),
        await trio.rollout("999999"),
    ):
        assert response.status_code == 404, response.text
        assert "software '999999'" in response.json()["message"]
    # Deleted in the registry: unknown again once rollouts heard of it; its history stays.
    assigned = await trio.assign("real-1", software_id)
    assert assigned.status_code == 201, assigned.text
    r = await trio.client.delete(f"{trio.registry}/api/v1/devices/real-1", params=trio.params)
    assert r.status_code == 200

    async def forgotten() -> bool:
        return (await trio.policy("real-1")).status_code == 404

    await eventually(forgotten)
    history = await trio.client.get(
        f"{trio.rollouts}/api/v1/devices/real-1/actions", params=trio.params
    )
    assert history.status_code == 200
    assert [a["id"] for a in history.json()["items"]] == [assigned.json()["id"]]


async def test_a_stuck_software_event_neither_hides_the_upload_nor_changes_it_later(
    common: CommonSettings,
    serve: Any,
    tenant: str,
    tmp_path: Path,
    client: httpx.AsyncClient,
    database_url: str,
) -> None:
    # Holding the artifacts relay's lock from before it starts keeps software.created in the
    # outbox, as a jammed outbox or a bus that is away would.
    holder = await asyncpg.connect(database_url)
    try:
        assert await holder.fetchval(
            "SELECT pg_try_advisory_lock(hashtext('gaggle-outbox:artifacts'))"
        )
        trio = await start_trio(common, serve, tenant, tmp_path, client)
        await feed_ready(trio)
        await trio.create_device("held-1")
        software_id = await trio.upload(image("4.0.0"))
        queued = await holder.fetchval(
            "SELECT count(*) FROM artifacts.outbox WHERE target LIKE '%.software.created'"
        )
        assert queued == 1
        assigned = await trio.assign("held-1", software_id)
        assert assigned.status_code == 201, assigned.text
        assert assigned.json()["version"] == "4.0.0"
        rolled = await trio.rollout(software_id)
        assert rolled.status_code == 201, rolled.text
        row = "SELECT * FROM rollouts.software WHERE tenant = $1 AND software_id = $2"
        learned = dict(await holder.fetchrow(row, trio.tenant, software_id))
    finally:
        await holder.close()  # the lock goes with the session: the relay sends the event now
    nc = await nats.connect(trio.common.nats_url)
    try:
        js = nc.jetstream()
        subject = names.subject(trio.tenant, "software.created")

        async def published() -> bool:
            try:
                await js.get_last_msg(names.STREAM, subject)
            except nats.js.errors.NotFoundError:
                return False
            return True

        await eventually(published, timeout=15)

        async def consumed() -> bool:
            info = await js.consumer_info(
                names.STREAM, names.durable("rollouts", "software.created")
            )
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(consumed)
    finally:
        await nc.close()
    conn = await asyncpg.connect(database_url)
    try:
        after = dict(await conn.fetchrow(row, trio.tenant, software_id))
    finally:
        await conn.close()
    assert after == learned


async def test_rollouts_answers_503_when_the_owner_does_not_answer(
    common: CommonSettings, serve: Any, tenant: str, operator_auth: httpx.Auth
) -> None:
    rollouts = await serve(build_rollouts(common, RolloutsSettings(lookup_timeout_s=0.5)))
    url = f"{rollouts.url}/api/v1"
    params = {"tenant": tenant}
    await publish(common, DeviceUpdated(tenant=tenant, controller_id="told-1", change="registered"))
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:

        async def told() -> bool:
            r = await client.get(f"{url}/devices/told-1/policy", params=params)
            return r.status_code == 200

        await eventually(told)
        # Nobody answers for artifacts or registry: no responders, at once.
        for response, owner in (
            (
                await client.post(
                    f"{url}/devices/told-1/actions", params=params, json={"software_id": "5"}
                ),
                "artifacts",
            ),
            (
                await client.post(
                    f"{url}/rollouts", params=params, json={"name": "r", "software_id": "5"}
                ),
                "artifacts",
            ),
            (await client.get(f"{url}/devices/nobody/policy", params=params), "registry"),
            (
                await client.post(
                    f"{url}/devices/nobody/actions", params=params, json={"software_id": "5"}
                ),
                "registry",
            ),
        ):
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["error"] == "unavailable"
            assert f"the {owner} service is not answering" in body["message"]
            assert "try again" in body["message"]

        # Something listens but never answers: 503 once the timeout has passed.
        nc = await nats.connect(common.nats_url)
        try:
            await nc.subscribe(FindSoftware.subject(), queue="artifacts", cb=_ignore)
            await nc.flush()
            started = time.monotonic()
            r = await client.post(
                f"{url}/devices/told-1/actions", params=params, json={"software_id": "5"}
            )
            waited = time.monotonic() - started
        finally:
            await nc.close()
        assert r.status_code == 503, r.text
        assert "did not answer within 0.5 s" in r.json()["message"]
        assert 0.5 <= waited < 5


async def _ignore(_: Any) -> None:
    return None


async def test_a_read_through_is_part_of_the_operators_request_trace(
    spans: InMemorySpanExporter, trio: Trio
) -> None:
    # A device only the registry's table holds: rollouts can learn of it only by asking.
    registry = trio.registry_app.state.service
    await registry.db.pool.execute(
        "INSERT INTO registry.devices (tenant, controller_id) VALUES ($1, 'traced-1')",
        trio.tenant,
    )
    r = await trio.policy("traced-1")
    assert r.status_code == 200, r.text

    def of(service: str, kind: SpanKind, name: str | None = None) -> list[Any]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.resource.attributes.get("service.name") == f"gaggle-{service}"
            and s.kind is kind
            and (name is None or s.name == name)
        ]

    async def answered() -> bool:
        return bool(of("registry", SpanKind.SERVER, f"{FindDevices.subject()} process"))

    await eventually(answered)
    (request,) = of("rollouts", SpanKind.SERVER, "GET /api/v1/devices/{controller_id}/policy")
    (asked,) = of("rollouts", SpanKind.CLIENT, f"{FindDevices.subject()} request")
    (answer,) = of("registry", SpanKind.SERVER, f"{FindDevices.subject()} process")
    trace_id = request.context.trace_id
    assert asked.context.trace_id == answer.context.trace_id == trace_id
    assert asked.parent.span_id == request.context.span_id
    assert answer.parent.span_id == asked.context.span_id
    sql = [s for s in of("registry", SpanKind.CLIENT) if s.context.trace_id == trace_id]
    assert sql and all(s.parent.span_id == answer.context.span_id for s in sql)
