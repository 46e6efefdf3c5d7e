"""Request bodies as real clients send them (shared/reference/client-traffic.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from gaggle_contracts.ddi import ConfigDataBody, FeedbackBody, sleep_seconds

SWUPDATE_CONFIG = {
    "id": "",
    "time": "20261123T182543",
    "status": {"result": {"finished": "success"}, "execution": "closed", "details": [""]},
    "data": {
        "client": "swupdate-suricatta",
        "hw_revision": "1.0",
        "hw_boardname": "e2eboard",
        "sw_version": "0.0.1",
    },
}


def test_swupdate_config_data_is_accepted_as_merge() -> None:
    body = ConfigDataBody.model_validate(SWUPDATE_CONFIG)
    assert body.effective_mode == "merge"
    assert body.data["hw_boardname"] == "e2eboard"


@pytest.mark.parametrize(
    ("mode", "effective"),
    [(None, "merge"), ("replace", "replace"), ("remove", "remove"), ("merge", "merge")],
)
def test_config_mode_null_means_merge(mode: str | None, effective: str) -> None:
    body = ConfigDataBody.model_validate({"mode": mode, "data": {"k": "v"}})
    assert body.effective_mode == effective


@pytest.mark.parametrize(
    "bad",
    [
        {"data": {}},
        {"mode": "upsert", "data": {"k": "v"}},
        {"data": {"k" * 129: "v"}},
        {"data": {"k": "v" * 129}},
        {"data": {f"k{i}": "v" for i in range(101)}},
        {"data": {"k": {"nested": 1}}},
        {},
    ],
)
def test_config_data_outside_hawkbit_limits_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ConfigDataBody.model_validate(bad)


def test_scalar_attribute_values_become_strings() -> None:
    body = ConfigDataBody.model_validate({"data": {"n": 3, "ok": True}})
    assert body.data == {"n": "3", "ok": "true"}


@pytest.mark.parametrize(
    "body",
    [
        # SWUpdate: numeric id, cnt > of in log uploads.
        {
            "id": 1,
            "time": "20261123T182554",
            "status": {
                "result": {"progress": {"cnt": 2, "of": 0}, "finished": "none"},
                "execution": "proceeding",
                "details": ["log line"] * 50,
            },
        },
        # rauc-hawkbit: empty progress, string id.
        {
            "id": "2",
            "time": "20261123T182224",
            "status": {
                "result": {"progress": {}, "finished": "success"},
                "execution": "closed",
                "details": ["done"],
            },
        },
        # rauc-hawkbit progress callback.
        {
            "id": "2",
            "status": {
                "result": {"progress": {"percentage": 40}, "finished": "none"},
                "execution": "proceeding",
            },
        },
        # hawkBit today: epoch-ms timestamp, code.
        {
            "timestamp": 1733218554123,
            "status": {
                "execution": "proceeding",
                "result": {"finished": "none", "progress": {"cnt": 2, "of": 5}},
                "code": 200,
                "details": ["40%"],
            },
        },
    ],
)
def test_feedback_from_every_client_is_accepted(body: dict[str, object]) -> None:
    fb = FeedbackBody.model_validate(body)
    status = fb.to_status()
    assert status.execution in {"proceeding", "closed"}


def test_feedback_time_comes_from_timestamp_or_legacy_time() -> None:
    fb = FeedbackBody.model_validate(
        {
            "time": "20261123T182554",
            "status": {"execution": "closed", "result": {"finished": "success"}},
        }
    )
    assert fb.device_time() == datetime(2026, 11, 23, 18, 25, 54, tzinfo=UTC)
    fb = FeedbackBody.model_validate(
        {"timestamp": 0, "status": {"execution": "closed", "result": {"finished": "success"}}}
    )
    assert fb.device_time() == datetime(1970, 1, 1, tzinfo=UTC)
    fb = FeedbackBody.model_validate(
        {"time": "yesterday", "status": {"execution": "closed", "result": {"finished": "none"}}}
    )
    assert fb.device_time() is None


@pytest.mark.parametrize(
    "bad",
    [
        {"status": {"execution": "exploded", "result": {"finished": "none"}}},
        {"status": {"execution": "closed", "result": {"finished": "maybe"}}},
        {"status": {"execution": "closed"}},
        {"status": {"execution": "closed", "result": {"finished": "none"}, "details": ["x"] * 51}},
        {},
    ],
)
def test_feedback_with_unknown_enums_or_missing_parts_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FeedbackBody.model_validate(bad)


def test_progress_keeps_only_integer_counters() -> None:
    fb = FeedbackBody.model_validate(
        {
            "status": {
                "execution": "proceeding",
                "result": {
                    "finished": "none",
                    "progress": {"cnt": 1, "of": 2, "note": "x", "flag": True},
                },
            }
        }
    )
    assert fb.to_status().progress == {"cnt": 1, "of": 2}


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:00:10", 10), ("01:02:03", 3723), ("23:59:59", 86399)]
)
def test_sleep_is_read_as_hh_mm_ss(text: str, seconds: int) -> None:
    assert sleep_seconds(text) == seconds


@pytest.mark.parametrize("text", ["24:00:00", "1:00:00", "00:60:00", "PT5M", "00:00"])
def test_sleep_beyond_a_day_or_malformed_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM:SS"):
        sleep_seconds(text)
