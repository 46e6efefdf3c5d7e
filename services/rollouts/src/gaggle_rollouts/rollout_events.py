"""A rollout's progress, live: ``GET /api/v1/rollouts/{id}/events`` (Server-Sent Events).

The stream starts with the rollout's document as it is (``event: rollout``), then sends each
``rollout.progressed`` event of that rollout as it is published (``event: progressed``), each
burst of them followed by the rollout's document read again (its waves' counters are not in the
event). It ends once the rollout is finished or aborted.

It listens on the tenant's ``rollout.progressed`` subject with core NATS (no durable consumer: a
stream for whoever watches now). A slow reader never holds anything up: each stream keeps at
most :data:`QUEUED` events and drops the oldest (every event holds the whole counters, so the
newest says all). Comment lines every :data:`KEEPALIVE_S` keep proxies from closing an idle
stream; at most :data:`MAX_STREAMS` streams are open at once, more are answered 503.
"""

# Routes carry their documentation in summary= and description=: a docstring would become
# the OpenAPI description of the operation.
# ruff: noqa: D103

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from nats.aio.client import Client as NatsClient

from gaggle_contracts import names
from gaggle_contracts.events import RolloutProgressed
from gaggle_rollouts.deps import Reader, ReadsDep
from gaggle_rollouts.plan import CLOSED_STATES
from gaggle_rollouts.rollout_reads import RolloutReads
from gaggle_rollouts.rollout_routes import RolloutIdParam, parse_id
from gaggle_runtime.http import ApiError, NotFoundError

KEEPALIVE_S = 15.0
"""Seconds between comment lines on an idle stream."""
QUEUED = 32
"""Events each stream holds for a slow reader; the oldest go first."""
MAX_STREAMS = 200
"""Streams open at once in one process."""
RETRY_MS = 3000
"""How long a browser waits before it reconnects a dropped stream."""


class Streams:
    """How many event streams are open (one count per app)."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.open = 0

    def full(self) -> bool:
        """Whether no other stream may open now."""
        return self.open >= self.limit


def _streams(request: Request) -> Streams:
    state = request.app.state
    found: Streams | None = getattr(state, "rollout_streams", None)
    if found is None:
        found = state.rollout_streams = Streams()
    return found


def _nats(request: Request) -> NatsClient:
    nc: NatsClient = request.app.state.service.broker.connection
    return nc


def frame(event: str, data: Any) -> bytes:
    """One Server-Sent Event: its name and its data as one line of JSON."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


api = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


@api.get(
    "/{rollout_id}/events",
    summary="A rollout's progress, live (Server-Sent Events)",
    description=(
        "First `event: rollout` with the rollout's document (as `GET /api/v1/rollouts/{id}`), "
        "then `event: progressed` for each `rollout.progressed` event of the rollout, each burst "
        "followed by the document read again. Comment lines keep an idle stream open; the stream "
        "ends after the rollout is `finished` or `aborted`. A slow reader loses the oldest "
        f"events (at most {QUEUED} wait), never the newest. At most {MAX_STREAMS} streams are "
        "open at once: 503 beyond."
    ),
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream"}},
)
async def rollout_events(
    request: Request, tenant: Reader, rollout_id: RolloutIdParam, reads: ReadsDep
) -> StreamingResponse:
    tenant = tenant.lower()
    ident = parse_id(rollout_id)
    streams = _streams(request)
    if streams.full():
        raise ApiError(503, "unavailable", "too many rollout event streams are open; retry later")
    if await reads.get(tenant, ident) is None:
        raise NotFoundError("rollout", rollout_id)
    return StreamingResponse(
        progress_events(_nats(request), reads, streams, tenant, ident),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def progress_events(
    nc: NatsClient, reads: RolloutReads, streams: Streams, tenant: str, rollout_id: int
) -> AsyncIterator[bytes]:
    """The SSE lines of one rollout's stream (see the module's description)."""
    streams.open += 1
    queued: deque[dict[str, Any]] = deque(maxlen=QUEUED)
    arrived = asyncio.Event()
    wanted = str(rollout_id)

    async def on_message(msg: Any) -> None:
        try:
            data = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if isinstance(data, dict) and data.get("rollout_id") == wanted:
            queued.append(data)  # full: the oldest is dropped
            arrived.set()

    # Subscribed before the first read: nothing published in between is missed.
    sub = await nc.subscribe(names.subject(tenant, RolloutProgressed.kind), cb=on_message)
    try:
        yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
        doc = await reads.get(tenant, rollout_id)
        if doc is None:  # deleted in between: nothing more will come
            return
        yield frame("rollout", doc)
        while doc["state"] not in CLOSED_STATES:
            try:
                await asyncio.wait_for(arrived.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            arrived.clear()
            while queued:
                yield frame("progressed", queued.popleft())
            doc = await reads.get(tenant, rollout_id)
            if doc is None:
                return
            yield frame("rollout", doc)
    finally:
        streams.open -= 1
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
