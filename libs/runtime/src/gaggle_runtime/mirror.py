"""A KV bucket followed into memory: initial values first, then every change as it happens.

Values are parsed once, when they arrive, never per read. If NATS goes away, the dictionary keeps
its last known state, marked not current, and the bucket is reloaded as soon as NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

V = TypeVar("V", bound=BaseModel)

SHARED_PAYLOADS = 1024
"""Distinct payloads a mirror remembers to hand out one parsed value for equal ones.

A fleet's entries are mostly alike: every device without a TargetToken has the same ``devices``
value, byte for byte. Values are frozen models, so equal payloads can share one parsed value,
and a device then costs its key and a dictionary slot instead of a model of its own (about 570
bytes). When this many distinct payloads were remembered, the memory starts again (unique
payloads, such as entries with an action id, would otherwise pile up in it)."""


class BucketMirror(Generic[V]):
    """One KV bucket as a dict of parsed values."""

    def __init__(
        self, bucket: str, model: type[V], compact: Callable[[V], V] | None = None
    ) -> None:
        self.bucket = bucket
        self.model = model
        self.compact = compact
        """Applied to each newly parsed value: one that shares equal parts of values with others
        (the gateway's deployments share their deployment documents)."""
        self.values: dict[str, V] = {}
        self._parsed: dict[bytes, V] = {}
        """Recent payloads and their parsed values (``SHARED_PAYLOADS``)."""
        self.loaded = asyncio.Event()
        self.updated_at: float | None = None
        """When ``values`` last changed or was loaded (``time.time()``), for the metrics."""
        self.current = False
        """Whether ``values`` follow the bucket now: loaded, connected, no reload pending."""

    def apply(
        self, target: dict[str, V], key: str, operation: str | None, value: bytes | None
    ) -> None:
        """Apply one watch entry to ``target``."""
        self.updated_at = time.time()
        if operation in (KV_DEL, KV_PURGE) or value is None:
            target.pop(key, None)
            return
        parsed = self._parsed.get(value)
        if parsed is None:
            try:
                parsed = self.model.model_validate_json(value)
            except ValidationError:
                log.warning("ignored malformed KV value bucket=%s key=%s", self.bucket, key)
                return
            if self.compact is not None:
                parsed = self.compact(parsed)
            if len(self._parsed) >= SHARED_PAYLOADS:
                self._parsed.clear()
            self._parsed[value] = parsed
        target[key] = parsed

    async def watch(
        self, js_factory: Callable[[], JetStreamContext], check_every_s: float = 0.2
    ) -> None:
        """Follow the bucket forever, restarting the watch after errors and NATS reconnects.

        The watch's ordered consumer alone notices a lost connection only after two missed
        heartbeats, many seconds in which the mirror would silently fall behind: so the client is
        checked every ``check_every_s``, the mirror counts as not current while it is away, and
        the bucket is reloaded as soon as it has reconnected.

        The first load fills ``values`` directly; a reload after an interruption fills a fresh
        dict and swaps it in when complete, so polls see the old state until then.
        """
        while True:
            self.current = False
            try:
                js = js_factory()
                client = js._nc
                reconnects = client.stats["reconnects"]
                kv = await js.key_value(self.bucket)
                empty = not (await kv.status()).stream_info.state.messages
                watcher = await kv.watchall()
                feed = asyncio.create_task(self._feed(watcher, empty), name=f"kv-{self.bucket}")
                try:
                    while not feed.done():
                        await asyncio.wait({feed}, timeout=check_every_s)
                        if not client.is_connected:
                            self.current = False
                        elif client.stats["reconnects"] != reconnects:
                            log.info("NATS reconnected; reloading bucket=%s", self.bucket)
                            break
                    else:
                        feed.result()
                        raise RuntimeError("the watch ended")
                finally:
                    feed.cancel()
                    with contextlib.suppress(BaseException):
                        await feed
                    with contextlib.suppress(Exception):
                        # nats-py leaves stop() unannotated.
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception:
                self.current = False
                log.warning("KV watch interrupted; retrying bucket=%s", self.bucket, exc_info=True)
                await asyncio.sleep(1.0)

    async def _feed(self, watcher: KeyValue.KeyWatcher, empty: bool) -> None:
        """Apply the watch's entries until it ends; ``current`` once its initial values are in.

        The initial values are in at the entry the server counts nothing more pending after
        (``delta`` 0). nats-py's end marker (``None``) is trusted only when the bucket was
        ``empty`` or after entries: when the server answers the watcher's consumer info before
        the values it already sent have been read, that marker comes first.
        """
        staging: dict[str, V] | None = {} if self.loaded.is_set() else None
        initial = True
        seen = False
        async for entry in watcher:
            if entry is not None:
                seen = True
                target = self.values if staging is None else staging
                self.apply(target, entry.key, entry.operation, entry.value)
            if initial and (entry.delta == 0 if entry is not None else empty or seen):
                initial = False
                if staging is not None:
                    self.values, staging = staging, None
                self.updated_at = time.time()
                self.loaded.set()
                self.current = True
