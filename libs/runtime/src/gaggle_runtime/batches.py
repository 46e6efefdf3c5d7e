"""Consuming a pull's events as one batch: decoded one by one, handled at once, settled each.

A consumer subscribed with ``consumer_options(..., whole=True)`` gets the raw messages of one
pull. :func:`consume_batch` decodes each (an invalid one is parked alone), hands the valid events
to the handler in one call, and answers JetStream for each event by its own outcome with
:meth:`ConsumerFailures.settle <gaggle_runtime.deadletters.ConsumerFailures.settle>`: acked
once the handler returned (so after its transaction committed), retried or parked when its
outcome is an exception. One bad event so never holds back the others of its pull.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from gaggle_runtime.failures import Skipped

E = TypeVar("E")


class Settles(Protocol):
    """What answers JetStream for one event (a service's ``ConsumerFailures``)."""

    def skips(self, raw: Any) -> bool:
        """Whether ``raw`` is a replay meant for another consumer."""

    async def settle(self, raw: Any, exc: BaseException | None) -> str:
        """Ack, retry or park ``raw`` by its outcome."""


async def consume_batch(
    failures: Settles,
    raws: Sequence[Any],
    decode: Callable[[bytes], E],
    handle: Callable[[list[E]], Awaitable[Sequence[BaseException | None]]],
) -> dict[str, int]:
    """Decode, handle together, settle each; how many events ended how (``ok``, ``retry``...).

    ``handle`` gets the decoded events in pull order and returns one outcome per event (None:
    done). If it raises, every event of the call gets that exception as its outcome: a
    transient one is retried later, anything else counts towards parking each event.
    """
    outcomes: dict[str, int] = {}

    async def settle(raw: Any, exc: BaseException | None) -> None:
        outcome = await failures.settle(raw, exc)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    valid: list[tuple[Any, E]] = []
    for raw in raws:
        if failures.skips(raw):
            await settle(raw, Skipped())
            continue
        try:
            valid.append((raw, decode(raw.data)))
        except Exception as exc:
            await settle(raw, exc)
    if not valid:
        return outcomes
    results: Sequence[BaseException | None]
    try:
        results = await handle([event for _, event in valid])
    except Exception as exc:
        results = [exc] * len(valid)
    for (raw, _), result in zip(valid, results, strict=True):
        await settle(raw, result)
    return outcomes
