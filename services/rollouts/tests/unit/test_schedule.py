"""Maintenance windows: daily windows and cron schedules in a time zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

import pytest

from gaggle_rollouts.schedule import ScheduleError, Window


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(raw: dict[str, Any]) -> Window:
    parsed = Window.parse(raw)
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("start", "end", "clock", "is_open"),
    [
        ("02:00", "04:00", "03:00", True),
        ("02:00", "04:00", "04:00", False),
        ("02:00", "04:00", "01:59", False),
        ("22:00", "02:00", "23:30", True),  # across midnight
        ("22:00", "02:00", "01:59", True),
        ("22:00", "02:00", "12:00", False),
    ],
)
def test_a_stored_window_without_zone_is_daily_in_utc(
    start: str, end: str, clock: str, is_open: bool
) -> None:
    day = datetime(2026, 11, 23, tzinfo=UTC).date()
    now = datetime.combine(day, time.fromisoformat(clock), UTC)
    assert window({"start": start, "end": end}).is_open(now) is is_open


# Europe/Berlin in 2026: clocks go forward on 29 March at 01:00 UTC (02:00 CET -> 03:00 CEST) and
# back on 25 October at 01:00 UTC (03:00 CEST -> 02:00 CET).
BERLIN_NIGHT = {"timezone": "Europe/Berlin", "start": "02:00", "end": "04:00"}


@pytest.mark.parametrize(
    ("instant", "is_open"),
    [
        # a winter day: 02:00-04:00 CET is 01:00-03:00 UTC
        ("2026-03-28T00:59:59", False),
        ("2026-03-28T01:00:00", True),
        ("2026-03-28T02:59:59", True),
        ("2026-03-28T03:00:00", False),
        # clocks go forward: 02:00-03:00 does not exist, the window is 03:00-04:00 CEST
        ("2026-03-29T00:59:59", False),  # 01:59:59 CET
        ("2026-03-29T01:00:00", True),  # 03:00 CEST
        ("2026-03-29T01:59:59", True),  # 03:59:59 CEST
        ("2026-03-29T02:00:00", False),  # 04:00 CEST
        # a summer day: 02:00-04:00 CEST is 00:00-02:00 UTC
        ("2026-03-29T23:59:59", False),
        ("2026-03-30T00:00:00", True),
        ("2026-03-30T02:00:00", False),
        # clocks go back: 02:00-03:00 happens twice, the window lasts three hours
        ("2026-10-24T23:59:59", False),  # 01:59:59 CEST
        ("2026-10-25T00:00:00", True),  # 02:00 CEST
        ("2026-10-25T00:59:59", True),  # 02:59:59 CEST
        ("2026-10-25T01:00:00", True),  # 02:00 CET, the second time
        ("2026-10-25T02:59:59", True),  # 03:59:59 CET
        ("2026-10-25T03:00:00", False),  # 04:00 CET
        ("2026-10-26T00:59:59", False),  # winter again: 01:59:59 CET
        ("2026-10-26T01:00:00", True),
    ],
)
def test_a_berlin_night_window_follows_the_wall_clock_across_dst(
    instant: str, is_open: bool
) -> None:
    assert window(BERLIN_NIGHT).is_open(utc(instant)) is is_open


BERLIN_CRON = {"timezone": "Europe/Berlin", "schedule": "0 2 * * *", "duration": "02:00:00"}


@pytest.mark.parametrize(
    ("instant", "is_open"),
    [
        ("2026-03-28T00:59:59", False),
        ("2026-03-28T01:00:00", True),  # 02:00 CET
        ("2026-03-28T02:59:59", True),
        ("2026-03-28T03:00:00", False),
        # 02:00 does not exist: it fires at the change (03:00 CEST) and lasts two real hours
        ("2026-03-29T00:59:59", False),
        ("2026-03-29T01:00:00", True),
        ("2026-03-29T02:59:59", True),
        ("2026-03-29T03:00:00", False),
        ("2026-03-30T00:00:00", True),  # 02:00 CEST
        ("2026-03-30T01:59:59", True),
        ("2026-03-30T02:00:00", False),
        # 02:00 happens twice: it fires the first time, for two real hours
        ("2026-10-24T23:59:59", False),
        ("2026-10-25T00:00:00", True),  # 02:00 CEST
        ("2026-10-25T01:59:59", True),  # 02:59:59 CET
        ("2026-10-25T02:00:00", False),  # 03:00 CET
        ("2026-10-26T01:00:00", True),  # 02:00 CET
    ],
)
def test_a_berlin_cron_window_lasts_its_duration_across_dst(instant: str, is_open: bool) -> None:
    assert window(BERLIN_CRON).is_open(utc(instant)) is is_open


@pytest.mark.parametrize(
    ("raw", "instant", "is_open"),
    [
        # weekdays only: 2026-11-27 is a Friday, 28 a Saturday
        ({"start": "09:00", "end": "17:00", "days": ["mon", "fri"]}, "2026-11-27T10:00", True),
        ({"start": "09:00", "end": "17:00", "days": ["mon", "fri"]}, "2026-11-28T10:00", False),
        # a Friday-night window reaches into Saturday, not into Friday morning
        ({"start": "22:00", "end": "02:00", "days": ["fri"]}, "2026-11-28T01:00", True),
        ({"start": "22:00", "end": "02:00", "days": ["fri"]}, "2026-11-27T01:00", False),
        ({"start": "22:00", "end": "02:00", "days": ["fri"]}, "2026-11-27T23:00", True),
        # several windows
        (
            {"windows": [{"start": "01:00", "end": "02:00"}, {"start": "13:00", "end": "14:00"}]},
            "2026-11-27T13:30",
            True,
        ),
        (
            {"windows": [{"start": "01:00", "end": "02:00"}, {"start": "13:00", "end": "14:00"}]},
            "2026-11-27T12:30",
            False,
        ),
        # a fixed offset, as hawkBit gives it: 02:00+02:00 is 00:00 UTC
        ({"timezone": "+02:00", "start": "02:00", "end": "03:00"}, "2026-11-27T00:30", True),
        ({"timezone": "+02:00", "start": "02:00", "end": "03:00"}, "2026-11-27T02:30", False),
        # cron on weekdays, a window longer than the gap between fires
        (
            {"schedule": "0 22 * * 5", "duration": "30:00:00"},
            "2026-11-29T03:59",  # Friday 22:00 + 30 h = Sunday 04:00
            True,
        ),
        ({"schedule": "0 22 * * 5", "duration": "30:00:00"}, "2026-11-29T04:00", False),
        ({"schedule": "*/15 * * * *", "duration": "00:05:00"}, "2026-11-29T10:35", False),
        ({"schedule": "*/15 * * * *", "duration": "00:05:00"}, "2026-11-29T10:46", True),
    ],
)
def test_days_several_windows_offsets_and_cron(
    raw: dict[str, Any], instant: str, is_open: bool
) -> None:
    assert window(raw).is_open(utc(instant)) is is_open


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"timezone": "Mars/Olympus", "start": "02:00", "end": "04:00"}, "unknown time zone"),
        ({"timezone": "Europe", "start": "02:00", "end": "04:00"}, "unknown time zone"),
        ({"timezone": "../etc/passwd", "start": "02:00", "end": "04:00"}, "timezone"),
        ({"timezone": "+25:00", "start": "02:00", "end": "04:00"}, "out of range"),
        ({"start": "25:00", "end": "04:00"}, "start"),
        ({"start": "2:00", "end": "04:00"}, "HH:MM"),
        ({"start": "02:00", "end": "02:00"}, "differ"),
        ({"start": "02:00"}, "end"),
        ({"start": "02:00", "end": "04:00", "days": ["someday"]}, "someday"),
        ({"start": "02:00", "end": "04:00", "days": []}, "days"),
        ({"windows": []}, "windows"),
        ({"windows": ["02:00"]}, "windows[0]"),
        ({"start": "02:00", "end": "04:00", "schedule": "0 2 * * *"}, "exactly one"),
        ({}, "exactly one"),
        ({"schedule": "0 2 * * *"}, "needs a duration"),
        ({"schedule": "0 0 2 ? * *", "duration": "01:00:00"}, "5 fields"),
        ({"schedule": "61 2 * * *", "duration": "01:00:00"}, "not a valid cron"),
        ({"schedule": "0 0 30 2 *", "duration": "01:00:00"}, "never fires"),
        ({"schedule": "0 2 * * *", "duration": "2h"}, "HH:MM:SS"),
        ({"schedule": "0 2 * * *", "duration": "00:00:00"}, "above"),
        ({"schedule": "0 2 * * *", "duration": "169:00:00"}, "168"),
        ({"schedule": "0 2 * * *", "duration": "01:60:00"}, "59"),
        ({"schedule": "0 2 * * *", "duration": "\u0661:00:00"}, "HH:MM:SS"),  # ASCII digits only
        ({"start": "02:00", "end": "04:00", "duration": "01:00:00"}, "duration goes"),
    ],
)
def test_bad_windows_are_refused_naming_the_part(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("[", r"\[").replace("?", r"\?")):
        Window.parse(raw)


def test_no_window_is_none() -> None:
    assert Window.parse(None) is None
