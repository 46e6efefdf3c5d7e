"""Which failures pass by themselves (a dependency away) and which the event itself causes.

A consumer retries a *transient* failure for as long as it lasts, with a growing delay, and never
counts it towards giving up on the event: the database restarting, NATS reconnecting, a deadlock
that PostgreSQL broke. Anything else is *permanent*, a failure that the same event would meet
again (a value the database refuses, a bug): it is retried a few times, then parked as a dead
letter. The same test decides whether the outbox relay keeps a row waiting in order or parks it.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import nats.errors
import nats.js.errors
from faststream.exceptions import AckMessage, NackMessage

from gaggle_contracts.events import MessageTooLargeError

_CAUSE_DEPTH = 8


class TransientError(Exception):
    """Raised by a handler when a dependency other than the database or the bus is away."""


class PermanentPublishError(Exception):
    """The bus refused a message for good (too large, a subject it cannot hold)."""


class Retry(NackMessage):
    """A consumer's answer to a failed event: nack with a delay, it comes back later."""


class Parked(AckMessage):
    """A consumer's answer to an event parked as a dead letter: ack, the ones behind flow on."""


class Skipped(AckMessage):
    """A consumer's answer to a replay meant for another consumer of the subject: ack."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,  # refused or reset connections, unreachable hosts; TimeoutError is one too
    asyncpg.PostgresConnectionError,  # class 08: connection failure, does not exist
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # 40: deadlock detected, serialization failure
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a replica promoted while we wrote
    asyncpg.exceptions.PostgresSystemError,  # 58: I/O errors on the server
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,  # JetStream electing a leader, or restarting
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.SlowConsumerError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)

_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentPublishError,
    MessageTooLargeError,
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
    nats.js.errors.InvalidKeyError,
    nats.js.errors.BadRequestError,
)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was explicitly raised from (``raise ... from``), nearest first."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < _CAUSE_DEPTH:
        yield current
        current = current.__cause__
        seen += 1


def _transient_alone(exc: BaseException) -> bool:
    if type(exc) is asyncpg.InterfaceError:
        # Connection closed, pool closing, and the like. Its subclasses (DataError for a value
        # that does not fit its column type, unsupported features) are the event's or a bug's.
        return True
    if isinstance(exc, nats.js.errors.APIError) and exc.code is not None:
        return exc.code >= 500
    return isinstance(exc, _TRANSIENT)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says a dependency is away, not that the work itself is wrong.

    An exception raised from another (``raise X from cause``) is transient when any of the chain
    is, unless one of them is a permanent refusal of the bus (too large, bad subject).
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(e) for e in exc.exceptions)
    if is_permanent(exc):
        return False
    return any(_transient_alone(e) for e in _causes(exc))


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a refusal that no retry changes."""
    return any(isinstance(e, _PERMANENT) for e in _causes(exc))


def retry_delay(attempt: int, first_s: float, max_s: float) -> float:
    """Seconds before try ``attempt + 1``: ``first_s``, doubled per try, at most ``max_s``."""
    exponent = min(max(attempt, 1) - 1, 32)
    return float(min(first_s * (2**exponent), max_s))


def describe(exc: BaseException, limit: int = 2000) -> str:
    """``Type: message`` of ``exc`` and its causes, for logs and dead letters."""
    parts = []
    for e in _causes(exc):
        text = str(e).strip()
        parts.append(f"{type(e).__name__}: {text}" if text else type(e).__name__)
    joined = " <- ".join(parts)
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"
