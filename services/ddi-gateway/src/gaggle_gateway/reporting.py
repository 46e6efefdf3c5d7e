"""What the gateway tells the bus about devices it sees: discoveries and batched sightings.

Discoveries are announced once per unknown device (again after ``rediscover_after_s`` if it is
still unknown, in case the first announcement was lost) with a per-device message id, so many
gateways announcing the same device produce one stored event. Sightings are collected per tenant
and flushed as one ``device.seen`` event about once a second, never per poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime

import orjson
from faststream.nats import NatsBroker

from gaggle_contracts import names
from gaggle_contracts.events import DeviceDiscovered, DeviceSeen, utcnow
from gaggle_runtime.bus import publish_event, publish_raw

log = logging.getLogger(__name__)

MAX_SIGHTINGS_PER_EVENT = 5000
RENDER_SLICE = 1000
"""Sightings rendered between two yields to the event loop."""


class DeviceReporter:
    """Announces discoveries and flushes sightings."""

    def __init__(self, broker: NatsBroker, *, rediscover_after_s: float, flush_s: float) -> None:
        self.broker = broker
        self.rediscover_after_s = rediscover_after_s
        self.flush_s = flush_s
        self._announced: dict[tuple[str, str], float] = {}
        self._sightings: dict[str, dict[str, tuple[float, str | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def discovered(self, tenant: str, controller_id: str, address: str | None) -> None:
        """Announce an unknown device, unless it was announced recently."""
        key = (tenant, controller_id)
        now = time.monotonic()
        last = self._announced.get(key)
        if last is not None and now - last < self.rediscover_after_s:
            return
        self._announced[key] = now
        task = asyncio.create_task(self._announce(key, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, key: tuple[str, str], address: str | None) -> None:
        tenant, controller_id = key
        try:
            await publish_event(
                self.broker,
                DeviceDiscovered(tenant=tenant, controller_id=controller_id, address=address),
            )
        except Exception:
            # Not announced: let the next poll try again.
            self._announced.pop(key, None)
            log.warning(
                "could not announce device tenant=%s controller_id=%s",
                tenant,
                controller_id,
                exc_info=True,
            )

    def seen(self, tenant: str, controller_id: str, address: str | None) -> None:
        """Record a sighting for the next flush (the latest per device wins).

        This runs on every poll, so it only stores a float and the address.
        """
        batch = self._sightings.get(tenant)
        if batch is None:
            batch = self._sightings[tenant] = {}
        batch[controller_id] = (time.time(), address)

    async def flush(self) -> int:
        """Publish the collected sightings; return how many were sent.

        The ``device.seen`` JSON is written directly (the shape ``DeviceSeen`` reads, checked by
        the tests) in slices that yield to the event loop, so a flush of thousands of sightings
        neither builds thousands of models nor stalls the polls queued behind it.
        """
        batches, self._sightings = self._sightings, {}
        sent = 0
        for tenant, seen in batches.items():
            items = list(seen.items())
            for start in range(0, len(items), MAX_SIGHTINGS_PER_EVENT):
                chunk = items[start : start + MAX_SIGHTINGS_PER_EVENT]
                event_id = str(uuid.uuid4())
                payload = await render_sightings(tenant, event_id, chunk)
                try:
                    await publish_raw(
                        self.broker, names.subject(tenant, DeviceSeen.kind), payload, event_id
                    )
                    sent += len(chunk)
                except Exception:
                    # Sightings are advisory: a lost batch only delays "last seen".
                    log.warning(
                        "could not publish sightings tenant=%s count=%d", tenant, len(chunk)
                    )
        return sent

    def _forget_old_announcements(self) -> None:
        cutoff = time.monotonic() - self.rediscover_after_s
        if self._announced:
            self._announced = {k: t for k, t in self._announced.items() if t >= cutoff}

    async def run(self) -> None:
        """Flush every ``flush_s`` seconds until cancelled; flush once more on the way out."""
        try:
            while True:
                await asyncio.sleep(self.flush_s)
                await self.flush()
                self._forget_old_announcements()
        finally:
            await asyncio.shield(self.flush())


async def render_sightings(
    tenant: str, event_id: str, chunk: list[tuple[str, tuple[float, str | None]]]
) -> bytes:
    """The JSON of one ``device.seen`` event, yielding to the loop every ``RENDER_SLICE``."""
    sightings = []
    for i, (cid, (at, address)) in enumerate(chunk):
        sightings.append(
            {"controller_id": cid, "seen_at": datetime.fromtimestamp(at, UTC), "address": address}
        )
        if i % RENDER_SLICE == RENDER_SLICE - 1:
            await asyncio.sleep(0)
    event = {
        "event_id": event_id,
        "tenant": tenant,
        "occurred_at": utcnow(),
        "schema_version": 1,
        "sightings": sightings,
    }
    return orjson.dumps(event, option=orjson.OPT_UTC_Z)
