"""Several NATS servers in ``GAGGLE_NATS_URL``, and the replicas the stream and buckets ask for."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import BadRequestError, ServiceUnavailableError
from pydantic import ValidationError

from gaggle_contracts import names
from gaggle_contracts.settings import CommonSettings, nats_servers
from gaggle_runtime.bus import make_broker, patiently, public_url
from gaggle_runtime.jetstream import ReplicasRefused, ensure_all, ensure_stream
from gaggle_servers import free_port


def test_a_comma_separated_url_names_each_server() -> None:
    url = " nats://n1:4222, nats://n2:4222 ,,nats://user:pw@n3:4222 "
    assert nats_servers(url) == ["nats://n1:4222", "nats://n2:4222", "nats://user:pw@n3:4222"]
    assert CommonSettings(nats_url="nats://only:4222").nats_servers == ["nats://only:4222"]
    assert public_url("nats://user:pw@n3:4222") == "nats://n3:4222"


def test_a_url_without_a_server_is_refused() -> None:
    with pytest.raises(ValidationError, match="names no server"):
        CommonSettings(nats_url=" , ")


def test_nats_replicas_is_the_default_of_stream_and_kv_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GAGGLE_NATS_REPLICAS", "GAGGLE_STREAM_REPLICAS", "GAGGLE_KV_REPLICAS"):
        monkeypatch.delenv(name, raising=False)
    plain = CommonSettings()
    assert (plain.stream_replicas, plain.kv_replicas) == (1, 1)
    monkeypatch.setenv("GAGGLE_NATS_REPLICAS", "3")
    clustered = CommonSettings()
    assert (clustered.stream_replicas, clustered.kv_replicas) == (3, 3)
    monkeypatch.setenv("GAGGLE_KV_REPLICAS", "2")
    mixed = CommonSettings()
    assert (mixed.stream_replicas, mixed.kv_replicas) == (3, 2)
    with pytest.raises(ValidationError):
        CommonSettings(nats_replicas=0)


@pytest.mark.integration
async def test_the_broker_connects_through_the_first_server_that_answers(nats_url: str) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    broker = make_broker(f"{dead},{nats_url}", "test")
    await broker.connect()
    try:
        assert broker.connection.is_connected
        assert broker.connection.connected_url is not None
        assert broker.connection.connected_url.port == int(nats_url.rsplit(":", 1)[1])
        await ensure_all(broker.connection.jetstream(), CommonSettings(nats_url=nats_url))
    finally:
        await broker.stop()


@pytest.mark.integration
async def test_one_server_refuses_three_replicas_clearly_and_keeps_its_stream(
    nats_url: str,
) -> None:
    broker = make_broker(nats_url, "test")
    await broker.connect()
    try:
        js = broker.connection.jetstream()
        await ensure_all(js, CommonSettings(nats_url=nats_url))
        with pytest.raises(ReplicasRefused, match="at most the number of servers"):
            await ensure_stream(js, CommonSettings(nats_url=nats_url, nats_replicas=3))
        info = await js.stream_info(names.STREAM)
        assert info.config.num_replicas == 1
    finally:
        await broker.stop()


async def test_a_start_waits_out_jetstream_away_but_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    calls: list[int] = []

    async def electing() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServiceUnavailableError(code=503, description="JetStream not ready")
        return "started"

    assert await patiently(electing, "test") == "started"
    assert len(calls) == 3

    async def refused() -> None:
        calls.append(1)
        raise BadRequestError(code=400, description="bad configuration")

    calls.clear()
    with pytest.raises(BadRequestError):
        await patiently(refused, "test")
    assert len(calls) == 1

    async def never() -> None:
        raise ServiceUnavailableError(code=503, description="JetStream not ready")

    with pytest.raises(ServiceUnavailableError):
        await patiently(never, "test", patience_s=0.0)


_real_sleep = asyncio.sleep


async def _no_wait(_: float) -> None:
    await _real_sleep(0)
