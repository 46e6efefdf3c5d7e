"""Request-reply endpoints and the client, against a real NATS server."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient

from gaggle_contracts.events import utcnow
from gaggle_contracts.rpc import (
    DevicesFound,
    FindDevices,
    FindSoftware,
    KnownDevice,
    SoftwareFound,
)
from gaggle_runtime.rpc import Responder, RpcUnavailableError, ask

pytestmark = pytest.mark.integration


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


def lookup(tenant: str, *ids: str) -> FindDevices:
    return FindDevices(tenant=tenant, controller_ids=list(ids))


async def test_replicas_share_the_requests_and_each_is_answered_once(nc: NatsClient) -> None:
    tenant = f"t{secrets.token_hex(4)}"
    seen: list[str] = []

    def replica(name: str) -> Responder:
        responder = Responder("registry")

        async def find(request: FindDevices) -> DevicesFound:
            seen.append(name)
            return DevicesFound(
                devices=[
                    KnownDevice(controller_id=c, hw_model=name, updated_at=utcnow())
                    for c in request.controller_ids
                ]
            )

        responder.endpoint(FindDevices, find)
        return responder

    replicas = [replica("a"), replica("b")]
    for responder in replicas:
        await responder.start(nc)
    try:
        replies = [await ask(nc, lookup(tenant, "d1"), DevicesFound, 2.0) for _ in range(20)]
    finally:
        for responder in replicas:
            await responder.stop()
    assert len(seen) == 20
    assert {r.devices[0].hw_model for r in replies} == {"a", "b"}  # one of them alone: p = 2e-6
    assert [r.devices[0].controller_id for r in replies] == ["d1"] * 20


async def test_a_failing_or_silent_or_absent_responder_is_unavailable_not_an_answer(
    nc: NatsClient,
) -> None:
    responder = Responder("registry")

    async def broken(request: FindDevices) -> DevicesFound:
        raise ConnectionRefusedError("database away")

    responder.endpoint(FindDevices, broken)
    await responder.start(nc)
    try:
        with pytest.raises(RpcUnavailableError, match="could not answer"):
            await ask(nc, lookup("t", "d1"), DevicesFound, 2.0)
        # A request the responder cannot read is answered with an error too.
        reply = await nc.request(FindDevices.subject(), b"{}", timeout=2.0)
        assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "400"
    finally:
        await responder.stop()

    with pytest.raises(RpcUnavailableError, match="not answering"):
        await ask(nc, lookup("t", "d1"), DevicesFound, 2.0)

    silent = await nc.subscribe(FindSoftware.subject(), queue="artifacts")
    try:
        started = time.monotonic()
        with pytest.raises(RpcUnavailableError, match=r"did not answer within 0\.3 s"):
            await ask(nc, FindSoftware(tenant="t", software_id="1"), SoftwareFound, 0.3)
        assert 0.3 <= time.monotonic() - started < 2
    finally:
        await silent.unsubscribe()


def test_a_service_answers_only_its_own_requests() -> None:
    with pytest.raises(ValueError, match="answered by artifacts"):
        Responder("registry").endpoint(FindSoftware, lambda r: None)  # type: ignore[arg-type,return-value]
