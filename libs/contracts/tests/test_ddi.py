"""Request bodies as real clients send them (shared/reference/client-traffic.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from gaggle_contracts.ddi import (
    QUOTA_ERROR,
    AutoConfirmBody,
    ConfigDataBody,
    ConfirmationFeedbackBody,
    FeedbackBody,
    InstalledBaseBody,
    replaced_note,
    sleep_seconds,
    storable,
)

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


def _quota_error(exc: ValidationError) -> bool:
    return exc.errors()[0]["type"] == QUOTA_ERROR


def test_hawkbit_quotas_fail_as_quota_errors() -> None:
    with pytest.raises(ValidationError) as attrs:
        ConfigDataBody.model_validate({"data": {f"k{i}": "v" for i in range(101)}})
    assert _quota_error(attrs.value)
    details = {"execution": "proceeding", "result": {"finished": "none"}, "details": ["x"] * 51}
    with pytest.raises(ValidationError) as messages:
        FeedbackBody.model_validate({"status": details})
    assert _quota_error(messages.value)
    with pytest.raises(ValidationError) as confirmation:
        ConfirmationFeedbackBody.model_validate(
            {"confirmation": "confirmed", "details": ["x"] * 51}
        )
    assert _quota_error(confirmation.value)
    # Exactly at the quota is fine.
    assert len(ConfigDataBody.model_validate({"data": {f"k{i}": "v" for i in range(100)}}).data)
    details["details"] = ["x"] * 50
    assert len(FeedbackBody.model_validate({"status": details}).to_status().details) == 50


@pytest.mark.parametrize(
    ("raw", "clean", "replaced"),
    [
        ("plain", "plain", 0),
        ("a\x00b", "a\ufffdb", 1),
        ("\ud800", "\ufffd", 1),
        ("x\udc00\ud800\x00", "x\ufffd\ufffd\ufffd", 3),
        ("\U0001f600 ok", "\U0001f600 ok", 0),  # a real pair decoded as one character stays
        ({"k\x00": ["v\ud800", 1, None]}, {"k\ufffd": ["v\ufffd", 1, None]}, 2),
    ],
)
def test_text_the_store_cannot_keep_is_replaced_and_counted(
    raw: object, clean: object, replaced: int
) -> None:
    assert storable(raw) == (clean, replaced)


def test_clean_values_are_returned_as_they_are() -> None:
    value = {"a": ["b", {"c": "d"}]}
    assert storable(value)[0] is value


def test_config_data_keys_and_values_are_made_storable() -> None:
    body = ConfigDataBody.model_validate(
        {"data": {"hw_boardname": "board\x00", "note\ud800": "x", "sw_version": "1.0"}}
    )
    assert body.data == {"hw_boardname": "board\ufffd", "note\ufffd": "x", "sw_version": "1.0"}
    assert body.replaced == 2


def test_feedback_with_replaced_text_says_so_in_its_details() -> None:
    fb = FeedbackBody.model_validate(
        {
            "status": {
                "execution": "closed",
                "result": {"finished": "success", "progress": {"cnt\x00": 1}},
                "details": ["done\x00", "log \udcff line"],
            }
        }
    )
    status = fb.to_status()
    assert (status.execution, status.finished) == ("closed", "success")
    assert status.details[:2] == ["done\ufffd", "log \ufffd line"]
    assert status.details[2] == replaced_note(3)
    assert status.progress == {"cnt\ufffd": 1}
    # The event is JSON that encodes to UTF-8 and holds no NUL escape.
    encoded = status.model_dump_json().encode()
    assert b"\\u0000" not in encoded


def test_clean_feedback_gets_no_note() -> None:
    fb = FeedbackBody.model_validate(
        {"status": {"execution": "closed", "result": {"finished": "success"}, "details": ["ok"]}}
    )
    assert fb.replaced == 0
    assert fb.to_status().details == ["ok"]


def test_every_device_body_is_made_storable() -> None:
    confirmation = ConfirmationFeedbackBody.model_validate(
        {"confirmation": "denied", "details": ["no\x00"]}
    )
    assert confirmation.noted(confirmation.details) == ["no\ufffd", replaced_note(1)]
    auto = AutoConfirmBody.model_validate({"initiator": "op\ud800", "remark": "r\x00"})
    assert (auto.initiator, auto.remark, auto.replaced) == ("op\ufffd", "r\ufffd", 2)
    installed = InstalledBaseBody.model_validate({"name": "img\x00", "version": "1.0\udfff"})
    assert (installed.name, installed.version) == ("img\ufffd", "1.0\ufffd")
