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
from gaggle_contracts.kv import DeploymentDoc, DeploymentEntry, DeviceEntry, TenantConfig
from gaggle_runtime.mirror import BucketMirror

SHARED_DOCUMENTS = 256
"""Distinct deployment documents kept for sharing (see :class:`SharedDocuments`)."""


class SharedDocuments:
    """One parsed deployment document for all the device entries that carry an equal one.

    Every device of a rollout has the same document (chunks, artifacts, hashes) in its
    ``deployments`` entry, under its own action id: parsed per entry it costs about 3 KB a
    device, shared it costs a pointer. Documents are frozen, so sharing them changes nothing
    else. When this many distinct documents were kept, the memory starts again.
    """

    def __init__(self, limit: int = SHARED_DOCUMENTS) -> None:
        self.limit = limit
        self._docs: dict[str, DeploymentDoc] = {}

    def doc(self, doc: DeploymentDoc) -> DeploymentDoc:
        """The shared document equal to ``doc`` (``doc`` itself the first time)."""
        key = doc.model_dump_json()
        shared = self._docs.get(key)
        if shared is None:
            if len(self._docs) >= self.limit:
                self._docs.clear()
            shared = self._docs[key] = doc
        return shared

    def __call__(self, entry: DeploymentEntry) -> DeploymentEntry:
        """``entry`` with its documents replaced by the shared ones."""
        update: dict[str, object] = {}
        if entry.open is not None:
            doc = self.doc(entry.open.deployment)
            if doc is not entry.open.deployment:
                update["open"] = entry.open.model_copy(update={"deployment": doc})
        if entry.installed is not None:
            doc = self.doc(entry.installed.deployment)
            if doc is not entry.installed.deployment:
                update["installed"] = entry.installed.model_copy(update={"deployment": doc})
        return entry.model_copy(update=update) if update else entry


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
        self.deployments = BucketMirror(
            names.BUCKET_DEPLOYMENTS, DeploymentEntry, compact=SharedDocuments()
        )
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
