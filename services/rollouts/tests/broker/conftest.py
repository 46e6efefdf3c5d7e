"""Rollouts' subscribers on FastStream's in-memory broker, over a repository kept in a dict."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from gaggle_contracts.events import DeviceUpdated, Event, SoftwareCreated, SoftwareDeleted
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.app import subscribe
from gaggle_rollouts.decision import Decision
from gaggle_rollouts.domain import Action, Applied, Report
from gaggle_rollouts.usecases import UseCases


class FakeConn:
    """A connection whose transaction does nothing (the fakes keep no transactions)."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()


class FakeDatabase:
    """Gives :class:`FakeConn` as the pool does connections."""

    @property
    def pool(self) -> FakeDatabase:
        return self

    def acquire(self) -> contextlib.AbstractAsyncContextManager[FakeConn]:
        return contextlib.nullcontext(FakeConn())


@dataclass
class FakeRepo:
    """The repositories (actions, catalogue, policies) and the chooser as the use cases call them.

    One object in a few dicts plays them all; every choice asked for is recorded in ``calls``.
    """

    actions: dict[int, Action] = field(default_factory=dict)
    software: dict[tuple[str, str], SoftwareCreated] = field(default_factory=dict)
    deleted: set[tuple[str, str]] = field(default_factory=set)
    devices: dict[tuple[str, str], DeviceUpdated] = field(default_factory=dict)
    auto_confirm: dict[tuple[str, str], bool] = field(default_factory=dict)
    latest: list[str] = field(default_factory=list)
    history: list[Report] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    waiting_in_rollouts: set[str] = field(default_factory=set)

    def add(self, action: Action) -> Action:
        self.actions[action.id] = action
        return action

    async def upsert_software(self, event: SoftwareCreated) -> None:
        self.software[(event.tenant, event.software_id)] = event

    async def delete_software(self, event: SoftwareDeleted) -> None:
        self.deleted.add((event.tenant, event.software_id))

    async def latest_mode_devices(self, tenant: str) -> list[str]:
        return list(self.latest)

    async def choose_chunked(self, tenant: str, controller_ids: Sequence[str]) -> None:
        self.calls.append(("choose", (tenant, tuple(controller_ids))))

    async def choose(self, tenant: str, controller_id: str) -> Decision:
        self.calls.append(("choose", (tenant, (controller_id,))))
        return Decision(None, "fake")

    async def choose_batch(self, tenant: str, ids: Sequence[str]) -> dict[str, Decision]:
        self.calls.append(("choose", (tenant, tuple(ids))))
        return {c: Decision(None, "fake") for c in ids}

    async def may_want_more(self, action: Action) -> bool:
        return action.rollout_id is None or action.controller_id in self.waiting_in_rollouts

    async def may_want_more_many(self, actions: Sequence[Action]) -> list[Action]:
        return [a for a in actions if await self.may_want_more(a)]

    async def lock(
        self, conn: FakeConn, reports: Sequence[Report]
    ) -> dict[tuple[str, int], tuple[Action, datetime | None]]:
        ids = {r.action_id for r in reports}
        return {(a.tenant, a.id): (a, None) for a in self.actions.values() if a.id in ids}

    async def seen(self, conn: FakeConn, reports: Sequence[Report]) -> set[object]:
        recorded = {r.event_id for r in self.history}
        return {r.event_id for r in reports if r.event_id in recorded}

    async def record(self, conn: FakeConn, applied: Applied) -> None:
        self.history.extend(report for _, report, _ in applied.entries)
        for action, _ in applied.moved:
            self.actions[action.id] = action
        self.events.extend(applied.events)

    async def record_devices(self, events: list[DeviceUpdated]) -> list[None]:
        for e in events:
            self.devices[(e.tenant, e.controller_id)] = e
        return [None] * len(events)

    async def record_device(self, event: DeviceUpdated) -> None:
        self.devices.pop((event.tenant, event.controller_id), None)

    async def open_action_of(self, tenant: str, controller_id: str) -> Action | None:
        return next(
            (
                a
                for a in self.actions.values()
                if a.tenant == tenant and a.controller_id == controller_id and a.active
            ),
            None,
        )

    async def set_auto_confirm(
        self, conn: FakeConn, tenant: str, controller_id: str, active: bool
    ) -> None:
        self.auto_confirm[(tenant, controller_id)] = active


@dataclass
class FakeEngine:
    """Records the rollouts it was told to look at."""

    poked: list[int] = field(default_factory=list)

    def poke(self, rollout_id: int | None) -> None:
        if rollout_id is not None:
            self.poked.append(rollout_id)


@pytest.fixture
def repo() -> FakeRepo:
    return FakeRepo()


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def broker(repo: FakeRepo, engine: FakeEngine) -> AsyncIterator[NatsBroker]:
    """The rollouts subscribers, wired as the service wires them, on an in-memory broker."""
    real = NatsBroker()
    subscribe(real, CommonSettings(), UseCases(FakeDatabase(), repo, repo, repo, repo, engine))  # type: ignore[arg-type]
    async with TestNatsBroker(real) as br:
        yield br


@pytest.fixture
def action() -> Action:
    """An open action outside rollouts, id 7, on device ``d1`` of tenant ``t``."""
    return Action(7, "t", "d1", "s1", "1.0", "forced", "running", True)
