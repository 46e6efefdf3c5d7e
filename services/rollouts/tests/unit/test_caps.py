"""Each tenant's cap on updates in flight, as rollouts reads it from the followed KV bucket."""

from __future__ import annotations

from gaggle_contracts import names
from gaggle_contracts.kv import MAX_UPDATES_IN_FLIGHT, TenantConfig
from gaggle_rollouts.caps import FixedCaps, TenantCaps
from gaggle_runtime.mirror import BucketMirror


def test_no_cap_is_known_before_the_bucket_is_loaded_then_configured_or_default() -> None:
    mirror = BucketMirror(names.BUCKET_TENANTS, TenantConfig)
    caps = TenantCaps(mirror)
    mirror.values["acme"] = TenantConfig(max_updates_in_flight=3)
    assert caps.cap("acme") is None
    mirror.loaded.set()
    assert caps.cap("acme") == 3
    assert caps.cap("never-configured") == MAX_UPDATES_IN_FLIGHT


def test_a_cap_below_one_in_the_bucket_still_lets_one_update_through() -> None:
    mirror = BucketMirror(names.BUCKET_TENANTS, TenantConfig)
    mirror.apply(mirror.values, "odd", None, b'{"max_updates_in_flight": 0}')
    mirror.loaded.set()
    assert TenantCaps(mirror).cap("odd") == 1


def test_fixed_caps_give_one_tenant_its_own() -> None:
    caps = FixedCaps(5, acme=2)
    assert (caps.cap("acme"), caps.cap("other")) == (2, 5)
