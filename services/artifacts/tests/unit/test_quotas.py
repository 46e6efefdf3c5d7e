"""Image metadata quotas, and the largest software event they allow."""

from __future__ import annotations

from typing import Any

import pytest

from gaggle_artifacts.domain import (
    MAX_COMPATIBILITY,
    MAX_DESCRIPTION,
    MAX_FILENAME,
    MAX_HW,
    MAX_IMAGES,
    MAX_MEMBERS,
    MAX_NAME,
    MAX_URL,
    MAX_VERSION,
    QuotaExceededError,
    Software,
    check_quotas,
)
from gaggle_contracts.events import Compatibility, SoftwareCreated
from gaggle_contracts.rpc import SoftwareFound

NATS_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``."""
BUDGET = 256 * 1024
"""What a software event may take at most: well under the bus's limit, room for headers."""
ESCAPED = "\x01"
"""A character JSON writes as six bytes (``\\u0001``): the costliest text can be."""


def at_limit(**over: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "n" * MAX_NAME,
        "version": "1" * MAX_VERSION,
        "description": "d" * MAX_DESCRIPTION,
        "compatibility": [("b" * MAX_HW, "r" * MAX_HW)] * MAX_COMPATIBILITY,
        "images": MAX_IMAGES,
        "members": MAX_MEMBERS,
    }
    return {**metadata, **over}


def test_metadata_at_every_limit_is_taken() -> None:
    check_quotas(**at_limit())
    check_quotas(**at_limit(name=None, description=None, compatibility=[], images=0, members=0))


@pytest.mark.parametrize(
    ("over", "quota"),
    [
        ({"name": "n" * (MAX_NAME + 1)}, "name"),
        ({"version": "1" * (MAX_VERSION + 1)}, "version"),
        ({"description": "d" * (MAX_DESCRIPTION + 1)}, "description"),
        ({"compatibility": [("b", "r")] * (MAX_COMPATIBILITY + 1)}, "hardware_compatibility"),
        ({"compatibility": [("b" * (MAX_HW + 1), "*")]}, "hardware_compatibility_value"),
        ({"compatibility": [("*", "r" * (MAX_HW + 1))]}, "hardware_compatibility_value"),
        ({"images": MAX_IMAGES + 1}, "images"),
        ({"members": MAX_MEMBERS + 1}, "members"),
    ],
)
def test_one_more_than_a_limit_is_refused_saying_which(over: dict[str, Any], quota: str) -> None:
    with pytest.raises(QuotaExceededError) as info:
        check_quotas(**at_limit(**over))
    assert info.value.quota == quota
    assert info.value.found == info.value.limit + 1
    assert f"the limit is {info.value.limit}" in str(info.value)


def worst_case() -> Software:
    """The largest software the quotas let through: every text at its limit, all escaped."""
    tenant = "t" * 64
    return Software(
        id=2**63 - 1,
        tenant=tenant,
        name=ESCAPED * MAX_NAME,
        version="9" * MAX_VERSION,  # a version is ASCII without spaces or quotes
        filename="f" * MAX_FILENAME,
        size=2**63 - 1,
        md5="0" * 32,
        sha1="0" * 40,
        sha256="0" * 64,
        object_key=f"{tenant}/{'0' * 32}/{'f' * MAX_FILENAME}",
        external_url=ESCAPED * MAX_URL,  # only one of the two is ever set; here both
        compatibility=[(ESCAPED * MAX_HW, ESCAPED * MAX_HW)] * MAX_COMPATIBILITY,
        description=ESCAPED * MAX_DESCRIPTION,
    )


def test_the_largest_software_event_the_quotas_allow_is_well_under_the_bus_limit() -> None:
    event = worst_case().created_event()
    size = len(event.model_dump_json().encode())
    assert size < BUDGET < NATS_MAX_PAYLOAD, size
    # The read-through answer carries the same event.
    found = SoftwareFound(software=event, deleted=True)
    assert len(found.model_dump_json().encode()) < BUDGET


def test_without_the_entry_quota_a_legal_sw_description_would_overflow_the_bus() -> None:
    # 30,000 short revisions fit a 256 KiB sw-description: the announcement of such an image
    # would be larger than NATS accepts, which is why the number of entries has a quota.
    pairs = [Compatibility(hw_model="b", hw_revision=str(i)) for i in range(30_000)]
    event = worst_case().created_event().model_copy(update={"compatibility": pairs})
    assert len(", ".join(f'"{i}"' for i in range(30_000))) < 256 * 1024
    assert len(event.model_dump_json().encode()) > NATS_MAX_PAYLOAD
    assert isinstance(event, SoftwareCreated)
