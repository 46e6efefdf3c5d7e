"""Empty pull fetches at a service's start are quiet: no ERROR, no traceback (real NATS)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from faststream._internal.endpoint.subscriber import supervisor
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js.client import JetStreamContext

from gaggle_runtime.bus import guard_fetches, guard_pull_fetches, make_broker

pytestmark = pytest.mark.integration

NATS_FETCH = JetStreamContext.PullSubscription.fetch
"""The fetch in use before this module's tests (nats-py's own, or it guarded)."""


async def start_and_idle(
    nats_url: str, *, batch: bool, after_start: Callable[[NatsBroker], Any] | None = None
) -> None:
    """Start a broker with pull subscribers on an empty stream and let them fetch for a while.

    Two, as a service has several: the first one's task fetches while the broker subscribes the
    second.
    """
    name = f"idle{secrets.token_hex(4)}"
    broker = make_broker(nats_url, "test")
    stream = JStream(name, subjects=[f"{name}.>"])

    async def handle(_: Any) -> None:
        return None

    for kind in ("one", "two"):
        broker.subscriber(
            f"{name}.{kind}",
            stream=stream,
            durable=f"{name}_{kind}",
            pull_sub=PullSub(batch_size=10, timeout=0.05, batch=batch),
        )(handle)
    await broker.start()
    if after_start is not None:
        after_start(broker)
    try:
        await asyncio.sleep(0.6)  # about ten empty fetches
    finally:
        await broker.stop()


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def first_fetch_ends_in_a_bare_timeout(calls: list[object]) -> Callable[..., Any]:
    """nats-py's fetch, whose first call ends as nats-py's first empty fetch often does.

    When the answer to its no-wait probe comes after the deadline (a busy start), nats-py
    raises ``asyncio.TimeoutError`` itself instead of its ``nats.errors.TimeoutError``.
    """

    async def fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(self)
        if len(calls) == 1:
            await asyncio.sleep(kwargs.get("timeout") or 0.05)
            raise TimeoutError
        return await NATS_FETCH(self, *args, **kwargs)

    return fetch


@pytest.fixture
def fresh_supervisor(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """FastStream logs each kind of error once per process: forget those it already logged."""

    def forget() -> None:
        cache = supervisor._SupervisorCache()
        attribute = "_TaskCallbackSupervisor__cache"
        monkeypatch.setattr(supervisor.TaskCallbackSupervisor, attribute, cache)

    forget()
    return forget


async def test_a_bare_timeout_of_the_first_fetch_logs_no_error(
    nats_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    fresh_supervisor: Callable[[], None],
) -> None:
    caplog.set_level(logging.DEBUG)
    pull = JetStreamContext.PullSubscription
    # Guarding the started broker's subscriptions comes too late for the fetch already running:
    # its bare TimeoutError kills the pull task, and FastStream's supervisor logs that as an
    # ERROR with the traceback before it restarts the task.
    calls: list[object] = []
    monkeypatch.setattr(pull, "fetch", first_fetch_ends_in_a_bare_timeout(calls))
    await start_and_idle(nats_url, batch=False, after_start=guard_fetches)
    logged = errors(caplog)
    assert logged and all("raised an exception" in r.getMessage() for r in logged)
    assert any(r.exc_info and type(r.exc_info[1]) is TimeoutError for r in logged)

    # Guarded before the broker starts, the first fetch is covered too.
    caplog.clear()
    fresh_supervisor()
    calls.clear()
    monkeypatch.setattr(pull, "fetch", first_fetch_ends_in_a_bare_timeout(calls))
    assert guard_pull_fetches() is True
    assert guard_pull_fetches() is False  # wrapped once
    await start_and_idle(nats_url, batch=False)
    assert len(calls) > 2  # the first ended in the bare timeout; fetching went on
    assert errors(caplog) == []
    assert not any("raised an exception" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("batch", [False, True])
async def test_empty_fetches_of_a_started_service_log_no_error(
    nats_url: str,
    caplog: pytest.LogCaptureFixture,
    fresh_supervisor: Callable[[], None],
    batch: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    guard_pull_fetches()  # as Service.start does, before the broker starts
    await start_and_idle(nats_url, batch=batch)
    assert errors(caplog) == []
