"""Each tenant's cap on updates in flight and approval rule, from registry's KV ``tenants``.

Registry owns tenants and their settings; rollouts follows the bucket into memory (as the gateway
does) and never reads registry's tables. A tenant without an entry has the default cap and asks
for no approval.
"""

from __future__ import annotations

from typing import Protocol

from gaggle_contracts import names
from gaggle_contracts.kv import MAX_UPDATES_IN_FLIGHT, TenantConfig
from gaggle_runtime.mirror import BucketMirror


class Caps(Protocol):
    """Where the number of devices a tenant may have with an open action comes from."""

    def cap(self, tenant: str) -> int | None:
        """The tenant's cap; None while it is not known yet (nothing opens meanwhile)."""


class FixedCaps:
    """The same cap for every tenant (tests, tools)."""

    def __init__(self, cap: int = MAX_UPDATES_IN_FLIGHT, **per_tenant: int) -> None:
        self.default = cap
        self.per_tenant = per_tenant

    def cap(self, tenant: str) -> int | None:
        """``per_tenant``'s value for ``tenant``, else the default."""
        return self.per_tenant.get(tenant, self.default)


class TenantCaps:
    """Caps from the followed ``tenants`` bucket."""

    def __init__(self, mirror: BucketMirror[TenantConfig] | None = None) -> None:
        self.mirror = mirror or BucketMirror(names.BUCKET_TENANTS, TenantConfig)

    def cap(self, tenant: str) -> int | None:
        """The tenant's configured cap, or the default for a tenant never configured.

        None before the bucket's initial values arrived: a cap set lower must not be overrun.
        """
        if not self.mirror.loaded.is_set():
            return None
        config = self.mirror.values.get(tenant)
        return MAX_UPDATES_IN_FLIGHT if config is None else max(1, config.max_updates_in_flight)


class TenantApprovals:
    """Whether a tenant's new rollouts wait for an approver (followed ``tenants`` bucket)."""

    def __init__(self, mirror: BucketMirror[TenantConfig]) -> None:
        self.mirror = mirror

    def required(self, tenant: str) -> bool | None:
        """The tenant's ``rollout_approval``; None before the bucket's initial values arrived."""
        if not self.mirror.loaded.is_set():
            return None
        config = self.mirror.values.get(tenant)
        return config is not None and config.rollout_approval
