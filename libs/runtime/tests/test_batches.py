"""A pull consumed as one batch: decoded one by one, handled at once, each event settled alone."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest
from pydantic import BaseModel

from gaggle_contracts.settings import CommonSettings
from gaggle_runtime import batches
from gaggle_runtime.batches import BatchRunner
from gaggle_runtime.bus import decode_each, guard_fetches
from gaggle_runtime.deadletters import REPLAY_FOR, ConsumerFailures, Letter

CONSUMER = "svc_thing_happened"


class Thing(BaseModel):
    name: str


@dataclass
class Raw:
    """A JetStream message as nats-py gives it, recording how it was answered."""

    data: bytes
    seq: int
    headers: dict[str, str] = field(default_factory=dict)
    delivered: int = 1
    answers: list[tuple[str, float | None]] = field(default_factory=list)
    subject: str = "ota.v1.acme.thing.happened"

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(
            consumer=CONSUMER,
            num_delivered=self.delivered,
            sequence=SimpleNamespace(stream=self.seq, consumer=self.seq),
        )

    async def ack(self) -> None:
        self.answers.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.answers.append(("nak", delay))

    async def term(self) -> None:
        self.answers.append(("term", None))


def raw(seq: int, name: str, **extra: Any) -> Raw:
    return Raw(json.dumps({"name": name}).encode(), seq, {"Nats-Msg-Id": f"m{seq}"}, **extra)


@dataclass
class Store:
    letters: list[Letter] = field(default_factory=list)

    async def park(self, letter: Letter) -> int:
        self.letters.append(letter)
        return len(self.letters)


def policy(store: Store, after: int = 3) -> ConsumerFailures:
    common = CommonSettings(retry_delay_s=0.5, retry_delay_max_s=4, dead_letter_after=after)
    return ConsumerFailures("svc", common, store)  # type: ignore[arg-type]


async def consume_batch(failures: ConsumerFailures, raws: list[Raw], handle: Any) -> dict[str, int]:
    """What the subscriber does with a pull: its payloads decoded each, then the batch."""
    decoded = decode_each(Thing)(SimpleNamespace(body=[r.data for r in raws]))
    return await batches.consume_batch(failures, raws, decoded, Thing.model_validate_json, handle)


class Handler:
    """Handles a batch: records the names it got; fails the names it is told to."""

    def __init__(self, failing: dict[str, Exception] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.failing = failing or {}

    async def __call__(self, things: list[Thing]) -> list[Exception | None]:
        self.calls.append([t.name for t in things])
        return [self.failing.get(t.name) for t in things]


async def test_every_event_of_a_pull_is_handled_in_one_call_and_acked_after_it() -> None:
    raws = [raw(i, f"t{i}") for i in range(1, 6)]
    seen_acked: list[int] = []

    async def handle(things: list[Thing]) -> list[Exception | None]:
        seen_acked.append(sum(len(r.answers) for r in raws))
        return [None] * len(things)

    outcomes = await consume_batch(policy(Store()), raws, handle)
    assert outcomes == {"ok": 5}
    assert seen_acked == [0]  # nothing was answered before the handler returned
    assert [r.answers for r in raws] == [[("ack", None)]] * 5


async def test_an_invalid_event_is_parked_alone_and_the_others_of_its_pull_are_handled() -> None:
    store = Store()
    raws = [raw(1, "a"), Raw(b"{not json", 2, {"Nats-Msg-Id": "m2"}), raw(3, "c")]
    raws.insert(2, Raw(b'{"other": 1}', 4, {"Nats-Msg-Id": "m4"}))  # JSON, not a Thing
    handler = Handler()
    outcomes = await consume_batch(policy(store), raws, handler)
    assert handler.calls == [["a", "c"]]
    assert outcomes == {"ok": 2, "dead_letter": 2}
    assert [(letter.msg_id, letter.reason) for letter in store.letters] == [
        ("m2", "invalid"),
        ("m4", "invalid"),
    ]
    assert all(r.answers == [("ack", None)] for r in raws)


async def test_an_event_whose_outcome_is_a_failure_is_retried_then_parked_the_others_acked() -> (
    None
):
    store = Store()
    failures = policy(store, after=2)
    handler = Handler({"bad": ValueError("refused")})
    first = [raw(1, "good"), raw(2, "bad"), raw(3, "fine")]
    assert await consume_batch(failures, first, handler) == {
        "ok": 2,
        "retry": 1,
    }
    assert [r.answers for r in first] == [[("ack", None)], [("nak", 0.5)], [("ack", None)]]
    again = [raw(2, "bad", delivered=2)]
    assert await consume_batch(failures, again, handler) == {"dead_letter": 1}
    assert again[0].answers == [("ack", None)]
    assert [(letter.msg_id, letter.reason, letter.attempts) for letter in store.letters] == [
        ("m2", "failed", 2)
    ]


async def test_a_transient_failure_of_the_whole_batch_retries_every_event_unparked() -> None:
    store = Store()

    async def away(things: list[Thing]) -> list[Exception | None]:
        raise ConnectionResetError("database away")

    raws = [raw(i, f"t{i}", delivered=3) for i in range(1, 4)]
    assert await consume_batch(policy(store), raws, away) == {"retry": 3}
    assert [r.answers for r in raws] == [[("nak", 2.0)]] * 3
    assert store.letters == []


async def test_a_replay_for_another_consumer_is_acked_untouched() -> None:
    handler = Handler()
    replay = raw(1, "r")
    replay.headers[REPLAY_FOR] = "other_consumer"
    raws = [replay, raw(2, "mine")]
    outcomes = await consume_batch(policy(Store()), raws, handler)
    assert handler.calls == [["mine"]]
    assert outcomes == {"skipped": 1, "ok": 1}
    assert [r.answers for r in raws] == [[("ack", None)], [("ack", None)]]


async def test_the_runner_keeps_at_most_its_batches_in_flight_and_closes_after_them() -> None:
    runner = BatchRunner(2)
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    def work(n: int) -> Any:
        async def run() -> None:
            started.append(n)
            await release.wait()
            finished.append(n)

        return run

    await runner.submit([], work(1))
    await runner.submit([], work(2))
    third = asyncio.create_task(runner.submit([], work(3)))
    await asyncio.sleep(0.01)
    assert started == [1, 2] and not third.done()  # waits for a slot
    release.set()
    await third
    closing = asyncio.create_task(runner.close())
    await asyncio.sleep(0)
    late = raw(9, "late")
    await runner.submit([late], work(4))  # closed: given back at once, not run
    await closing
    assert sorted(finished) == [1, 2, 3]
    assert late.answers == [("nak", None)]


async def test_a_bare_timeout_of_a_fetch_becomes_the_one_faststream_expects() -> None:
    class Subscription:
        def __init__(self) -> None:
            self.calls = 0

        async def fetch(self, batch: int, timeout: float) -> list[Any]:
            self.calls += 1
            if self.calls == 1:
                return ["m"]
            raise TimeoutError  # what nats-py raises from some empty fetches

    subscription = Subscription()
    broker = SimpleNamespace(
        subscribers=[SimpleNamespace(subscription=subscription), SimpleNamespace()]
    )
    assert guard_fetches(broker) == 1  # type: ignore[arg-type]
    assert guard_fetches(broker) == 0  # type: ignore[arg-type]  # not wrapped twice
    assert await subscription.fetch(batch=2, timeout=0.05) == ["m"]
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(batch=2, timeout=0.05)
