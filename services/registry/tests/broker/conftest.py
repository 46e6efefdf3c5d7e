"""Fakes of the registry's stores, and its subscribers on a broker that needs no server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from gaggle_contracts.settings import CommonSettings
from gaggle_registry.handlers import Parts, build_router

from .fakes import FakeAccess, FakePresence, FakeRepo, Wired


@pytest.fixture
async def registry() -> AsyncIterator[Wired]:
    """The registry's subscribers on ``TestNatsBroker``, writing to fakes."""
    repo, presence, access = FakeRepo(), FakePresence(), FakeAccess()
    broker = NatsBroker()
    parts = Parts.of(repo, presence, access)  # type: ignore[arg-type]
    broker.include_router(build_router(CommonSettings(), parts))
    async with TestNatsBroker(broker) as test_broker:
        yield Wired(test_broker, repo, presence, access)
