"""Transient or permanent, and what a consumer does with each (fakes, no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
import pytest
from faststream.exceptions import RejectMessage
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from gaggle_contracts.events import MessageTooLargeError
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.deadletters import (
    REPLAY_FOR,
    REPLAY_OF,
    ConsumerFailures,
    Letter,
    delivery,
)
from gaggle_runtime.failures import (
    Parked,
    PermanentPublishError,
    Retry,
    Skipped,
    TransientError,
    describe,
    is_permanent,
    is_transient,
    retry_delay,
)


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        OSError("network unreachable"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.CannotConnectNowError("starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize"),
        asyncpg.InterfaceError("pool is closed"),
        nats.errors.ConnectionClosedError(),
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(code=503),
        TransientError("object store away"),
        _raised_from(RuntimeError("could not record"), ConnectionResetError()),
        ExceptionGroup("all away", [OSError(), nats.errors.NoServersError()]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_dependency_that_is_away_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)
    assert not is_permanent(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        KeyError("missing"),
        asyncpg.exceptions.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        asyncpg.exceptions.RaiseError("refused by a trigger"),
        asyncpg.exceptions.DataError("invalid input for query argument"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        nats.errors.MaxPayloadError(),
        nats.js.errors.BadRequestError(code=400, description="message size exceeds maximum"),
        MessageTooLargeError("action.created event", 2_000_000, 1_000_000),
        PermanentPublishError("bad subject"),
        # A refusal stays permanent even when raised while the connection was in trouble.
        _raised_from(nats.errors.MaxPayloadError(), ConnectionResetError()),
        ExceptionGroup("mixed", [OSError(), ValueError()]),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failure_of_the_event_itself_is_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_the_delay_doubles_from_the_first_and_stops_at_the_longest() -> None:
    assert [retry_delay(n, 0.5, 10) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert retry_delay(10_000, 0.5, 10) == 10
    assert retry_delay(0, 0.5, 10) == 0.5


def test_a_description_names_the_error_and_its_causes() -> None:
    exc = _raised_from(RuntimeError("could not record"), ConnectionResetError("reset by peer"))
    assert describe(exc) == "RuntimeError: could not record <- ConnectionResetError: reset by peer"
    assert len(describe(ValueError("x" * 5000), limit=100)) == 100


# --- ConsumerFailures with fake messages ----------------------------------------------------


@dataclass
class FakeRaw:
    subject: str
    data: bytes
    headers: dict[str, str]
    metadata: Any


@dataclass
class FakeMsg:
    raw_message: FakeRaw


def message(
    seq: int,
    delivered: int = 1,
    consumer: str = "svc_thing_happened",
    headers: dict[str, str] | None = None,
) -> FakeMsg:
    meta = SimpleNamespace(
        consumer=consumer,
        num_delivered=delivered,
        sequence=SimpleNamespace(stream=seq, consumer=seq),
    )
    return FakeMsg(
        FakeRaw(
            "ota.v1.acme.thing.happened",
            b'{"tenant": "acme"}',
            {"Nats-Msg-Id": f"m{seq}", "traceparent": "00-ab-cd-01", **(headers or {})},
            meta,
        )
    )


@dataclass
class FakeStore:
    letters: list[Letter] = field(default_factory=list)
    away: bool = False

    async def park(self, letter: Letter) -> int:
        if self.away:
            raise ConnectionRefusedError(111, "database away")
        self.letters.append(letter)
        return len(self.letters)


def policy(store: FakeStore | None, after: int = 3) -> ConsumerFailures:
    common = CommonSettings(retry_delay_s=0.5, retry_delay_max_s=4, dead_letter_after=after)
    return ConsumerFailures("svc", common, store)  # type: ignore[arg-type]


def failing(exc: BaseException) -> Callable[[Any], Awaitable[Any]]:
    async def handler(_: Any) -> Any:
        raise exc

    return handler


async def ok(_: Any) -> str:
    return "done"


async def test_a_transient_failure_is_retried_with_a_growing_delay_and_never_parked() -> None:
    store = FakeStore()
    failures = policy(store)
    delays = []
    for delivered in range(1, 41):
        with pytest.raises(Retry) as caught:
            await failures.handle(failing(ConnectionResetError()), message(7, delivered))
        delays.append(caught.value.extra_options["delay"])
    assert delays[:5] == [0.5, 1, 2, 4, 4]
    assert set(delays[5:]) == {4}
    assert store.letters == []
    assert await failures.handle(ok, message(7, 41)) == "done"


async def test_a_permanent_failure_is_retried_then_parked_with_its_message() -> None:
    store = FakeStore()
    failures = policy(store, after=3)
    handler = failing(ValueError("no such board"))
    with pytest.raises(Retry) as first:
        await failures.handle(handler, message(9, 1))
    with pytest.raises(Retry) as second:
        await failures.handle(handler, message(9, 2))
    assert (first.value.extra_options["delay"], second.value.extra_options["delay"]) == (0.5, 1)
    with pytest.raises(Parked):
        await failures.handle(handler, message(9, 3))
    [letter] = store.letters
    assert letter.source == "consumer"
    assert (letter.consumer, letter.tenant, letter.kind) == (
        "svc_thing_happened",
        "acme",
        "thing.happened",
    )
    assert (letter.msg_id, letter.reason, letter.attempts) == ("m9", "failed", 3)
    assert letter.payload == b'{"tenant": "acme"}'
    assert letter.error == "ValueError: no such board"
    assert letter.headers == {"traceparent": "00-ab-cd-01"}
    # Its count was forgotten: the same sequence failing again starts over.
    with pytest.raises(Retry):
        await failures.handle(handler, message(9, 4))


async def test_transient_failures_in_between_do_not_count_towards_parking() -> None:
    store = FakeStore()
    failures = policy(store, after=2)
    with pytest.raises(Retry):
        await failures.handle(failing(ValueError("bad")), message(3, 1))
    for delivered in range(2, 30):
        with pytest.raises(Retry):
            await failures.handle(failing(OSError("away")), message(3, delivered))
    assert store.letters == []
    with pytest.raises(Parked):
        await failures.handle(failing(ValueError("bad")), message(3, 30))


async def test_a_success_forgets_earlier_failures() -> None:
    store = FakeStore()
    failures = policy(store, after=2)
    with pytest.raises(Retry):
        await failures.handle(failing(ValueError("bad")), message(4, 1))
    assert await failures.handle(ok, message(4, 2)) == "done"
    with pytest.raises(Retry):
        await failures.handle(failing(ValueError("bad")), message(4, 3))


class Thing(BaseModel):
    tenant: str
    size: int


async def test_an_invalid_or_rejected_event_is_parked_at_once() -> None:
    store = FakeStore()
    failures = policy(store, after=5)
    try:
        Thing.model_validate({"tenant": "acme"})
    except ValidationError as exc:
        invalid = exc
    with pytest.raises(Parked):
        await failures.handle(failing(invalid), message(1))
    with pytest.raises(Parked):
        await failures.handle(failing(_raised_from(RejectMessage(), KeyError("quota"))), message(2))
    assert [(x.reason, x.attempts) for x in store.letters] == [("invalid", 1), ("rejected", 1)]
    assert "size" in store.letters[0].error
    assert store.letters[1].error == "KeyError: 'quota'"


async def test_an_event_is_retried_while_its_dead_letter_cannot_be_stored() -> None:
    store = FakeStore(away=True)
    failures = policy(store, after=1)
    with pytest.raises(Retry):
        await failures.handle(failing(ValueError("bad")), message(5))
    store.away = False
    with pytest.raises(Parked):
        await failures.handle(failing(ValueError("bad")), message(5, 2))
    assert len(store.letters) == 1


async def test_without_a_store_a_permanent_failure_is_terminated() -> None:
    failures = policy(None, after=1)
    with pytest.raises(RejectMessage):
        await failures.handle(failing(ValueError("bad")), message(6))


async def test_a_replay_is_handled_by_its_consumer_and_skipped_by_the_others() -> None:
    store = FakeStore()
    failures = policy(store, after=1)
    replay = {REPLAY_FOR: "svc_thing_happened", REPLAY_OF: "m1", "Nats-Msg-Id": "m1:replay:1"}
    called = []

    async def handler(_: Any) -> str:
        called.append(1)
        return "done"

    with pytest.raises(Skipped):
        await failures.handle(handler, message(8, consumer="other_thing_happened", headers=replay))
    assert called == []
    assert await failures.handle(handler, message(8, headers=replay)) == "done"
    assert called == [1]
    # Parked again, it is the original message id that names it.
    with pytest.raises(Parked):
        await failures.handle(failing(ValueError("still bad")), message(9, headers=replay))
    assert store.letters[0].msg_id == "m1"
    assert REPLAY_FOR not in store.letters[0].headers


async def test_cancellation_is_not_treated_as_a_failure() -> None:
    failures = policy(FakeStore(), after=1)
    with pytest.raises(asyncio.CancelledError):
        await failures.handle(failing(asyncio.CancelledError()), message(1))


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.OTA.rollouts_action_feedback.3.1042.17.1733600000000000000.5",
        "$JS.ACK.hub.ACCHASH.OTA.rollouts_action_feedback.3.1042.17.1733600000000000000.5",
        "$JS.ACK.hub.ACCHASH.OTA.rollouts_action_feedback.3.1042.17.1733600000000000000.5.xyz",
    ],
)
def test_delivery_reads_what_nats_py_reads_from_the_reply_subject(reply: str) -> None:
    msg = Msg(None, subject="ota.v1.t.action.feedback", reply=reply)  # type: ignore[arg-type]
    meta = msg.metadata
    assert delivery(msg) == (
        meta.consumer,
        (meta.consumer, meta.sequence.stream),
        meta.num_delivered,
    )


def test_delivery_of_a_message_that_is_not_from_jetstream_has_no_key() -> None:
    plain = Msg(None, subject="ota.v1.t.action.feedback", reply="_INBOX.abc")  # type: ignore[arg-type]
    assert delivery(plain) == ("", None, 1)
    assert delivery(SimpleNamespace(subject="s")) == ("", None, 1)
