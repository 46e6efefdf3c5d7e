"""The gateway's in-memory mirror of the ``devices``, ``deployments`` and ``tenants`` KV buckets.

Each bucket is watched from start-up: the initial values fill a dictionary, later updates keep it
current. Values are parsed once, when they arrive, never per poll. If NATS goes away, the
dictionaries keep their last known state and polls are still answered; the watch restarts when
NATS is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE
from pydantic import BaseModel, ValidationError

from gaggle_contracts import names
from gaggle_contracts.kv import DeploymentEntry, DeviceEntry, TenantConfig

log = logging.getLogger(__name__)

V = TypeVar("V", bound=BaseModel)


class BucketMirror(Generic[V]):
    """One KV bucket as a dict of parsed values."""

    def __init__(self, bucket: str, model: type[V]) -> None:
        self.bucket = bucket
        self.model = model
        self.values: dict[str, V] = {}
        self.loaded = asyncio.Event()

    def apply(
        self, target: dict[str, V], key: str, operation: str | None, value: bytes | None
    ) -> None:
        """Apply one watch entry to ``target``."""
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
                        self.loaded.set()
                        continue
                    target = self.values if staging is None else staging
                    self.apply(target, entry.key, entry.operation, entry.value)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("KV watch interrupted; retrying bucket=%s", self.bucket, exc_info=True)
                await asyncio.sleep(1.0)


class Mirror:
    """All three read models the gateway answers from."""

    def __init__(self) -> None:
        self.devices = BucketMirror(names.BUCKET_DEVICES, DeviceEntry)
        self.deployments = BucketMirror(names.BUCKET_DEPLOYMENTS, DeploymentEntry)
        self.tenants = BucketMirror(names.BUCKET_TENANTS, TenantConfig)
        self.buckets: tuple[
            BucketMirror[DeviceEntry], BucketMirror[DeploymentEntry], BucketMirror[TenantConfig]
        ] = (self.devices, self.deployments, self.tenants)

    @property
    def loaded(self) -> bool:
        """Whether every bucket has delivered its initial values."""
        return all(b.loaded.is_set() for b in self.buckets)

    async def wait_loaded(self, timeout: float) -> None:
        """Wait until every bucket is loaded."""
        async with asyncio.timeout(timeout):
            for b in self.buckets:
                await b.loaded.wait()
