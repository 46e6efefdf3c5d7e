"""Fixtures of the cross-service tests (the servers and ``serve`` come from the root conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime import telemetry
from gaggle_storage import LocalStore, StorageSettings
from tests.integration.support import Stack


@pytest.fixture
async def stack(common: CommonSettings, serve, tenant: str, tmp_path: Path) -> Stack:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    await serve(build_registry(common, RegistrySettings()))
    # Asked by rollouts about software ids it was not told of (unknown ones are then 404).
    await serve(build_artifacts(common, ArtifactsSettings(), storage))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(polling_sleep="00:00:05"), storage))
    return Stack(gateway, rollouts, tenant, LocalStore(storage.dir))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every service built during the test traces into this exporter."""
    exporter = InMemorySpanExporter()
    telemetry.export_to(exporter)
    yield exporter
    telemetry.export_to(None)
