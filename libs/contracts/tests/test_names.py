from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from gaggle_contracts import names


@pytest.mark.parametrize(
    ("raw", "normal"), [("DEFAULT", "default"), ("Fleet_1", "fleet_1"), ("a-b", "a-b")]
)
def test_tenants_are_compared_case_insensitively(raw: str, normal: str) -> None:
    assert names.normalize_tenant(raw) == normal


@pytest.mark.parametrize("raw", ["", "a.b", "a b", "x" * 65, "ä", "a/b", "a*"])
def test_tenant_with_odd_characters_is_rejected(raw: str) -> None:
    with pytest.raises(names.InvalidNameError):
        names.normalize_tenant(raw)


@pytest.mark.parametrize(
    "cid",
    [
        "dev-1",
        "a.b",
        "x" * 256,
        "mac:00:11:22",
        "dev~1@site+2",
        # Ids the reference clients use (client-traffic.md), and dots that are no dot segment.
        "swu-dev",
        "rauc-dev",
        "...",
        ".hidden",
        "..x",
        "x.",
        "." + "x" * 255,
        ".." + "x" * 254,
        "00:11:22:33:44:55",
        "serial_123",
    ],
)
def test_url_safe_controller_ids_are_accepted(cid: str) -> None:
    assert names.check_controller_id(cid) == cid


@pytest.mark.parametrize(
    "cid",
    [
        "",
        "x" * 257,
        "." + "x" * 256,
        "a b",
        " dev",
        "dev ",
        "\tdev",
        "a/b",
        "/dev",
        "dev/",
        "a\\b",
        "é",
        "a\nb",
        "a\x00b",
        "a\x7fb",
        "a%2F",
        "%2e%2e",
        "dev?x=1",
        "dev#frag",
        "a;b",
        "a=b",
    ],
)
def test_controller_ids_that_are_empty_long_or_odd_are_rejected(cid: str) -> None:
    with pytest.raises(names.InvalidNameError):
        names.check_controller_id(cid)


@pytest.mark.parametrize("cid", [".", ".."])
def test_dot_segments_cannot_be_controller_ids(cid: str) -> None:
    # Clients drop them from a URL path (RFC 3986 §5.2.4): the device could never be reached.
    with pytest.raises(names.InvalidNameError, match="dot segment"):
        names.check_controller_id(cid)


@pytest.mark.parametrize("cid", [".", "..", "a/b", "a b"])
def test_fields_with_the_controller_id_pattern_refuse_what_the_check_refuses(cid: str) -> None:
    class Named(BaseModel):
        controller_id: str = Field(pattern=names.CONTROLLER_ID_RE.pattern)

    with pytest.raises(ValidationError):
        Named(controller_id=cid)
    assert Named(controller_id="...").controller_id == "..."


@pytest.mark.parametrize("cid", ["dev-1", "dev_2", "a.b", "mac:00:11", "=x", "~@+", "x" * 256])
def test_kv_keys_round_trip_and_stay_valid_nats_keys(cid: str) -> None:
    key = names.kv_key("default", cid)
    assert names.parse_kv_key(key) == ("default", cid)
    tenant, _, rest = key.partition(".")
    assert tenant == "default"
    # A KV key token may hold only these characters, and no dot inside the device part.
    assert all(c.isalnum() or c in "-_=" for c in rest)


def test_plain_ids_are_kept_readable_in_kv_keys() -> None:
    assert names.kv_key("default", "dev-1") == "default.dev-1"


def test_subjects_durables_and_subscriptions_follow_the_naming_scheme() -> None:
    assert names.subject("default", "device.discovered") == "ota.v1.default.device.discovered"
    assert names.subscription("device.seen") == "ota.v1.*.device.seen"
    assert names.durable("registry", "device.seen") == "registry_device_seen"
    assert names.tenant_of_subject("ota.v1.acme.action.feedback") == "acme"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", 1),
        ("007", 7),
        ("9" * 18, int("9" * 18)),
        ("9" * 19, None),
        ("", None),
        ("-1", None),
        ("1.0", None),
        ("١٢", None),  # Arabic-Indic digits: isdigit() says yes, a bigint says no
        (" 1", None),
    ],
)
def test_a_row_id_is_short_ascii_decimal(raw: str, expected: int | None) -> None:
    assert names.parse_row_id(raw) == expected
