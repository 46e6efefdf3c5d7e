"""The rollout event stream's generator, against a fake NATS client and fake reads.

A slow reader loses the oldest events, never the newest; an idle stream sends comment lines; the
stream ends after a final state and gives its place back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import pytest
from nats.aio.client import Client as NatsClient

from gaggle_rollouts import rollout_events
from gaggle_rollouts.rollout_events import QUEUED, Streams, progress_events
from gaggle_rollouts.rollout_reads import RolloutReads

Callback = Callable[[Any], Awaitable[None]]


class Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data


class FakeNats:
    """Keeps the subscription's callback; ``publish`` calls it as core NATS would."""

    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.callback: Callback | None = None
        self.unsubscribed = False

    async def subscribe(self, subject: str, cb: Callback) -> FakeNats:
        self.subjects.append(subject)
        self.callback = cb
        return self

    async def unsubscribe(self) -> None:
        self.unsubscribed = True

    async def publish(self, event: dict[str, Any]) -> None:
        assert self.callback is not None
        await self.callback(Msg(orjson.dumps(event)))


class FakeReads:
    def __init__(self) -> None:
        self.state = "running"
        self.reads = 0

    async def get(self, tenant: str, rollout_id: int) -> dict[str, Any] | None:
        self.reads += 1
        return {"id": str(rollout_id), "state": self.state, "waves": []}


def parse(chunk: bytes) -> tuple[str, Any]:
    """(event name, data) of one frame; ("comment", text) of comment lines."""
    text = chunk.decode()
    if text.startswith((":", "retry:")):
        return "comment", text
    head, data = text.strip().split("\n", 1)
    return head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))


def stream(
    nc: FakeNats, reads: FakeReads, streams: Streams
) -> Any:  # the async generator under test
    return progress_events(cast(NatsClient, nc), cast(RolloutReads, reads), streams, "acme", 7)


async def test_a_slow_reader_keeps_the_newest_events() -> None:
    nc, reads, streams = FakeNats(), FakeReads(), Streams()
    events = stream(nc, reads, streams)
    assert parse(await anext(events))[0] == "comment"
    assert nc.subjects == ["ota.v1.acme.rollout.progressed"]
    assert parse(await anext(events)) == ("rollout", {"id": "7", "state": "running", "waves": []})
    assert streams.open == 1
    for n in range(QUEUED * 3):  # nobody reads meanwhile
        await nc.publish({"rollout_id": "7", "state": "running", "success": n})
    await nc.publish({"rollout_id": "8", "state": "running", "success": 999})  # another one's
    got = []
    while True:
        name, data = parse(await anext(events))
        if name == "rollout":
            break
        got.append(data["success"])
    assert got == list(range(QUEUED * 2, QUEUED * 3))
    assert reads.reads == 2  # one read for the whole burst
    await events.aclose()
    assert nc.unsubscribed
    assert streams.open == 0


async def test_an_idle_stream_sends_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout_events, "KEEPALIVE_S", 0.01)
    nc, reads, streams = FakeNats(), FakeReads(), Streams()
    events = stream(nc, reads, streams)
    await anext(events)
    await anext(events)
    assert await asyncio.wait_for(anext(events), 1) == b": keep-alive\n\n"
    await events.aclose()


async def test_the_stream_ends_after_a_final_state() -> None:
    nc, reads, streams = FakeNats(), FakeReads(), Streams()
    events = stream(nc, reads, streams)
    await anext(events)
    await anext(events)
    reads.state = "finished"
    await nc.publish({"rollout_id": "7", "state": "finished", "success": 3})
    rest = [parse(chunk) async for chunk in events]
    assert [name for name, _ in rest] == ["progressed", "rollout"]
    assert rest[-1][1]["state"] == "finished"
    assert streams.open == 0 and nc.unsubscribed


async def test_a_closed_rollout_is_sent_once() -> None:
    nc, reads, streams = FakeNats(), FakeReads(), Streams()
    reads.state = "aborted"
    sent = [parse(chunk) async for chunk in stream(nc, reads, streams)]
    assert [name for name, _ in sent] == ["comment", "rollout"]
    assert streams.open == 0
