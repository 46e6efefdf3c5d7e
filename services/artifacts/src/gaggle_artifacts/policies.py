"""Each tenant's image policy, as registry publishes it in KV ``tenants``.

Registry owns tenants and their settings; artifacts follows the bucket into memory (as the
gateway and rollouts do) and never reads registry's tables. A tenant without an entry has the
default policy: nothing required.
"""

from __future__ import annotations

from typing import Protocol

from gaggle_artifacts.verification import Policy
from gaggle_contracts import names
from gaggle_contracts.kv import TenantConfig
from gaggle_runtime.mirror import BucketMirror


class PolicyUnknownError(Exception):
    """The tenants' settings have not been loaded yet: no image can be judged."""


class Policies(Protocol):
    """Where a tenant's image policy comes from."""

    def policy(self, tenant: str) -> Policy:
        """The tenant's policy.

        Raises:
            PolicyUnknownError: not known yet.
        """


class FixedPolicies:
    """Policies given by hand (tests, tools): ``default`` for every tenant not named."""

    def __init__(self, default: Policy | None = None, **per_tenant: Policy) -> None:
        self.default = default or Policy()
        self.per_tenant = per_tenant

    def policy(self, tenant: str) -> Policy:
        """``per_tenant``'s policy for ``tenant``, else the default."""
        return self.per_tenant.get(tenant, self.default)


class TenantPolicies:
    """Policies from the followed ``tenants`` bucket."""

    def __init__(self, mirror: BucketMirror[TenantConfig] | None = None) -> None:
        self.mirror = mirror or BucketMirror(names.BUCKET_TENANTS, TenantConfig)

    def policy(self, tenant: str) -> Policy:
        """The tenant's configured policy, or the default for a tenant never configured.

        Raises:
            PolicyUnknownError: before the bucket's initial values arrived (a tenant that
                requires signatures must not get an unsigned image in meanwhile).
        """
        if not self.mirror.loaded.is_set():
            raise PolicyUnknownError
        return Policy.of(self.mirror.values.get(tenant))
