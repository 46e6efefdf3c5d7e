"""A gateway on faststream's in-memory NATS broker: its requests in, the events it publishes out.

The gateway has no durable subscribers; what it does to the bus is publish. Each event kind it
publishes gets a test subscriber here, whose mock records the decoded events. The fast lane and
the FastAPI routes are served from one gateway core, as ``app.py`` wires them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from faststream.nats import JStream, NatsBroker, TestNatsBroker

from gaggle_contracts import names
from gaggle_contracts.events import (
    ActionFeedback,
    AutoConfirmChanged,
    CancelFeedback,
    ConfirmationFeedback,
    DeviceConfigReported,
    DeviceDiscovered,
    DeviceSeen,
)
from gaggle_gateway.core import Gateway, make_publisher
from gaggle_gateway.errors import install_handlers
from gaggle_gateway.fastlane import PollFastLane
from gaggle_gateway.mirror import Mirror
from gaggle_gateway.reporting import DeviceReporter
from gaggle_gateway.routes import router
from gaggle_gateway.settings import GatewaySettings
from gaggle_storage import StorageSettings, open_store

from .fakes import Bus, acked

KINDS = (
    DeviceConfigReported,
    ActionFeedback,
    CancelFeedback,
    ConfirmationFeedback,
    AutoConfirmChanged,
    DeviceDiscovered,
    DeviceSeen,
)
MAX_PAYLOAD = 1 << 20
"""What a NATS server takes by default; the fake connection has no limit of its own."""


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[Bus]:
    broker = NatsBroker()
    stream = JStream(names.STREAM, declare=False)
    sinks = {}
    for event in KINDS:

        async def sink(body: dict[str, Any]) -> None:
            """Records the event on its mock."""

        sinks[event.kind] = broker.subscriber(names.subscription(event.kind), stream=stream)(sink)
    async with TestNatsBroker(broker) as fake:
        fake.connection.max_payload = MAX_PAYLOAD
        fake.publish = acked(fake.publish)  # type: ignore[method-assign]
        settings = GatewaySettings()
        storage = StorageSettings(backend="local", dir=tmp_path / "objects")
        reporter = DeviceReporter(fake, rediscover_after_s=30, flush_s=1)
        mirror = Mirror()
        for bucket in mirror.buckets:  # filled by the tests, as current as a watch keeps it
            bucket.current = True
        gateway = Gateway(
            settings,
            mirror,
            reporter,
            open_store(storage),
            storage,
            make_publisher(fake, settings.publish_timeout_s),
        )
        routes = FastAPI()
        install_handlers(routes)
        routes.state.gateway = gateway
        routes.include_router(router)
        yield Bus(gateway, PollFastLane(routes, gateway), routes, sinks)
