"""The gateway's in-memory mirror of the ``devices``, ``deployments`` and ``tenants`` KV buckets.

Each bucket is watched from start-up: the initial values fill a dictionary, later updates keep it
current. Values are parsed once, when they arrive, never per poll. If NATS goes away, the
dictionaries keep their last known state and polls are still answered; the watch restarts when
NATS is back.
"""

from __future__ import annotations

import asyncio

from gaggle_contracts import names
from gaggle_contracts.kv import DeploymentEntry, DeviceEntry, TenantConfig
from gaggle_runtime.mirror import BucketMirror


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
