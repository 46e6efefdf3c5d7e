"""A KV bucket followed into memory: initial values first, then every change as it happens.

Values are parsed once, when they arrive, never per read. If NATS goes away, the dictionary keeps
its last known state; the watch restarts when NATS is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

V = TypeVar("V", bound=BaseModel)


class BucketMirror(Generic[V]):
    """One KV bucket as a dict of parsed values."""

    def __init__(self, bucket: str, model: type[V]) -> None:
        self.bucket = bucket
        self.model = model
        self.values: dict[str, V] = {}
        self.loaded = asyncio.Event()
        self.updated_at: float | None = None
        """When ``values`` last changed or was loaded (``time.time()``), for the metrics."""

    def apply(
        self, target: dict[str, V], key: str, operation: str | None, value: bytes | None
    ) -> None:
        """Apply one watch entry to ``target``."""
        self.updated_at = time.time()
        if operation in (KV_DEL, KV_PURGE) or value is None:
            target.pop(key, None)
            return
        try:
            target[key] = self.model.model_validate_json(value)
        except ValidationError:
            log.warning("ignored malformed KV value bucket=%s key=%s", self.bucket, key)

    async def watch(self, js_factory: Callable[[], JetStreamContext]) -> None:
        """Follow the bucket forever, restarting the watch after errors.

        The first load fills ``values`` directly; a reload after an interruption fills a fresh
        dict and swaps it in when complete, so polls see the old state until then.
        """
        while True:
            try:
                kv = await js_factory().key_value(self.bucket)
                watcher = await kv.watchall()
                staging: dict[str, V] | None = {} if self.loaded.is_set() else None
                async for entry in watcher:
                    if entry is None:  # the initial values are all in
                        if staging is not None:
                            self.values, staging = staging, None
                        self.updated_at = time.time()
                        self.loaded.set()
                        continue
                    target = self.values if staging is None else staging
                    self.apply(target, entry.key, entry.operation, entry.value)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("KV watch interrupted; retrying bucket=%s", self.bucket, exc_info=True)
                await asyncio.sleep(1.0)
