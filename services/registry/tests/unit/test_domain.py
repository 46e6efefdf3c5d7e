from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gaggle_registry.domain import (
    MAX_STORED_ATTRIBUTES,
    REVERT,
    Device,
    TooManyAttributesError,
    finished_state,
    installed_or_reported,
    kv_changes,
    late_data,
    lifted,
    merge_attributes,
)
from gaggle_registry.listing import LIST_COLUMNS

CURRENT = {"hw_boardname": "b", "sw_version": "1.0", "extra": "x"}


@pytest.mark.parametrize(
    ("mode", "data", "expected"),
    [
        (
            "merge",
            {"sw_version": "2.0", "new": "n"},
            {"hw_boardname": "b", "sw_version": "2.0", "extra": "x", "new": "n"},
        ),
        ("replace", {"sw_version": "2.0"}, {"sw_version": "2.0"}),
        ("remove", {"extra": "", "missing": ""}, {"hw_boardname": "b", "sw_version": "1.0"}),
    ],
)
def test_config_modes_follow_the_ddi_spec(
    mode: str, data: dict[str, str], expected: dict[str, str]
) -> None:
    assert merge_attributes(CURRENT, mode, data) == expected


def test_reports_the_gateway_acknowledged_past_the_quota_are_kept_up_to_twice_the_quota() -> None:
    # The gateway refuses past 100 from KV; reports racing its mirror may still add more.
    current = {f"k{i}": "v" for i in range(100)}
    assert len(merge_attributes(current, "merge", {"one-more": "v"})) == 101
    full = {f"k{i}": "v" for i in range(MAX_STORED_ATTRIBUTES)}
    with pytest.raises(TooManyAttributesError, match="at most 200"):
        merge_attributes(full, "merge", {"one-more": "v"})
    # A device already that far along may still change or drop what it has.
    assert merge_attributes(full, "merge", {"k0": "w"})["k0"] == "w"
    assert len(merge_attributes(full, "replace", {"a": "b"})) == 1


def test_the_gateway_learns_the_attribute_names_sorted() -> None:
    device = Device("t", "d", attributes={"sw_version": "1", "hw_boardname": "b"})
    assert device.kv_entry().attribute_keys == ("hw_boardname", "sw_version")


def test_hw_boardname_is_our_hw_model() -> None:
    assert lifted({"hw_boardname": "b", "hw_revision": "2", "client": "x"}) == {
        "hw_model": "b",
        "hw_revision": "2",
        "sw_version": None,
    }


def _encode(value: str) -> bytes:
    return value.encode()


def test_kv_changes_put_what_is_missing_or_different_and_delete_what_no_device_has() -> None:
    held = {"t.same": b"1", "t.changed": b"old", "t.stale": b"x"}
    wanted = [("t.same", "1"), ("t.changed", "new"), ("t.missing", "m")]
    puts, deletes = kv_changes(held, [], wanted, _encode)
    assert puts == [("t.changed", "new"), ("t.missing", "m")]
    assert deletes == ["t.stale"]


def test_kv_changes_count_queued_writes_as_done() -> None:
    held = {"t.a": b"old", "t.b": b"1", "t.gone": b"x"}
    pending = [
        ("kv_put", "t.a", b"stale"),
        ("kv_put", "t.a", b"new"),  # the last queued write is what the bucket will hold
        ("kv_delete", "t.b", b""),
        ("kv_delete", "t.gone", b""),
        ("kv_put", "t.c", b"3"),
    ]
    wanted = [("t.a", "new"), ("t.b", "1"), ("t.c", "3")]
    puts, deletes = kv_changes(held, pending, wanted, _encode)
    assert puts == [("t.b", "1")]  # its queued delete would lose it
    assert deletes == []


def test_kv_changes_of_a_matching_bucket_are_none() -> None:
    held = {f"t.d{i}": b"v" for i in range(100)}
    assert kv_changes(held, [], [(k, "v") for k in held], _encode) == ([], [])


def test_a_listed_device_has_exactly_the_fields_of_a_single_one() -> None:
    assert list(LIST_COLUMNS) == list(Device(tenant="t", controller_id="d").public())


def test_a_late_config_report_only_adds_keys_not_reported_since() -> None:
    current = {"sw_version": "2.0.0", "hw_boardname": "b"}
    assert late_data(current, "merge", {"sw_version": "1.0.0", "slot": "a"}) == {"slot": "a"}
    assert late_data(current, "replace", {"sw_version": "1.0.0"}) == {}
    assert late_data(current, "remove", {"sw_version": ""}) == {}


T = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("reported", "reported_at", "expected"),
    [
        (None, None, "2.0"),  # the device never reported: what the action installed
        ("1.0", T - timedelta(seconds=5), "2.0"),  # reported before its success: stale
        ("1.0", T, "2.0"),
        ("1.0", T + timedelta(seconds=5), "1.0"),  # reported after it: fell back, its word stands
        ("2.0", T + timedelta(seconds=5), "2.0"),
    ],
)
def test_the_installed_version_yields_to_what_the_device_reported_after_its_success(
    reported: str | None, reported_at: datetime | None, expected: str
) -> None:
    assert installed_or_reported("2.0", T, reported, reported_at) == expected


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("finished", "success"),
        ("downloaded", "success"),
        ("error", "error"),
        ("timed_out", "error"),
        ("canceled", REVERT),
    ],
)
def test_update_state_after_an_action_closed(status: str, state: str) -> None:
    assert finished_state(status) == state
