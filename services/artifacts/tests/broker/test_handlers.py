"""The artifacts service's subscriber: an action created marks its software used."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from gaggle_artifacts.handlers import build_router, on_action_created, provide
from gaggle_contracts.events import ActionCreated, Event
from gaggle_contracts.settings import CommonSettings


@dataclass
class FakeCatalogue:
    """The catalogue's ``mark_used``, kept in memory."""

    used: list[tuple[str, int]] = field(default_factory=list)

    async def mark_used(self, tenant: str, software_id: int) -> None:
        self.used.append((tenant, software_id))


@dataclass
class Wired:
    broker: NatsBroker
    catalogue: FakeCatalogue

    async def deliver(self, event: Event) -> None:
        await self.broker.publish(
            event.encode(), event.subject, headers={"content-type": "application/json"}
        )


@pytest.fixture
async def artifacts() -> AsyncIterator[Wired]:
    catalogue = FakeCatalogue()
    broker = NatsBroker()
    broker.include_router(build_router(CommonSettings()))
    provide(broker, catalogue)  # type: ignore[arg-type]
    async with TestNatsBroker(broker) as test_broker:
        yield Wired(test_broker, catalogue)


def created(software_id: str) -> ActionCreated:
    return ActionCreated(
        tenant="acme", controller_id="dev-1", action_id="9", software_id=software_id, version="1"
    )


async def test_action_created_marks_its_software_used(artifacts: Wired) -> None:
    await artifacts.deliver(created("42"))
    assert artifacts.catalogue.used == [("acme", 42)]


@pytest.mark.parametrize("software_id", ["abc", "-1", "1" * 19, "4²"])
async def test_action_of_a_software_id_no_row_can_have_marks_nothing(
    artifacts: Wired, software_id: str
) -> None:
    await artifacts.deliver(created(software_id))
    assert artifacts.catalogue.used == []


async def test_the_handler_is_a_plain_function_of_its_catalogue() -> None:
    catalogue = FakeCatalogue()
    await on_action_created(created("7"), catalogue)  # type: ignore[arg-type]
    assert catalogue.used == [("acme", 7)]
