"""The gateway's in-memory mirror of the ``devices``, ``deployments`` and ``tenants`` KV buckets.

Each bucket is watched from start-up: the initial values fill a dictionary, later updates keep it
current. Values are parsed once, when they arrive, never per poll. If NATS goes away, the
dictionaries keep their last known state, but the mirror is not current (``/readyz`` says so)
and no action is offered from it: such requests are answered 429 (``core.py``); each bucket is
reloaded as soon as NATS is back.

Which tenants exist comes from these and from the ``api_keys`` bucket every service follows
(``gaggle_runtime.auth``): a tenant with an operator key exists.
"""

from __future__ import annotations

import asyncio

from gaggle_contracts import names
from gaggle_contracts.access import ApiKeyEntry
from gaggle_contracts.kv import DeploymentEntry, DeviceEntry, TenantConfig
from gaggle_runtime.mirror import BucketMirror


class KeyTenants:
    """The tenants that have at least one live API key, from the followed ``api_keys`` bucket."""

    def __init__(self, keys: BucketMirror[ApiKeyEntry]) -> None:
        self.keys = keys
        self._tenants: frozenset[str] = frozenset()
        self._seen: tuple[int, float | None] | None = None

    def __contains__(self, tenant: object) -> bool:
        # Rebuilt only after the bucket changed (or a reload swapped in a new dictionary).
        seen = (id(self.keys.values), self.keys.updated_at)
        if seen != self._seen:
            self._tenants = frozenset(entry.tenant for entry in self.keys.values.values())
            self._seen = seen
        return tenant in self._tenants


class Mirror:
    """All three read models the gateway answers from, and the tenants with API keys."""

    def __init__(self, keys: BucketMirror[ApiKeyEntry] | None = None) -> None:
        self.key_tenants = KeyTenants(keys or BucketMirror(names.BUCKET_API_KEYS, ApiKeyEntry))
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

    @property
    def current(self) -> bool:
        """Whether every bucket follows NATS now (none is disconnected or reloading)."""
        return all(b.current for b in self.buckets) and self.key_tenants.keys.current

    async def wait_loaded(self, timeout: float) -> None:
        """Wait until every bucket is loaded."""
        async with asyncio.timeout(timeout):
            for b in self.buckets:
                await b.loaded.wait()
