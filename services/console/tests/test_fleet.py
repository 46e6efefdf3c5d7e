"""The overview's figures: counts, presence, bars and rollout progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gaggle_console import fleet

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WITHIN = timedelta(minutes=5)


def _seen(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("last_seen", "online", "offline", "never"),
    [
        (None, 0, 0, 1),
        ("", 0, 0, 1),
        ("not a time", 0, 0, 1),
        ("2030-01-01T11:58:00", 0, 0, 1),  # no time zone: not trusted
        (_seen(0), 1, 0, 0),
        (_seen(5), 1, 0, 0),
        (_seen(5.01), 0, 1, 0),
        (_seen(60 * 24), 0, 1, 0),
        ("2030-01-01T13:58:00+02:00", 1, 0, 0),  # 11:58 UTC
    ],
)
def test_presence(last_seen: Any, online: int, offline: int, never: int) -> None:
    counted = fleet.count([{"last_seen_at": last_seen}], NOW, WITHIN)
    assert (counted.online, counted.offline, counted.never_seen) == (online, offline, never)


def test_counts_by_state_model_and_version() -> None:
    devices = [
        {"update_state": "up_to_date", "hw_model": "board", "hw_revision": "b", "sw_version": "1"},
        {"update_state": "up_to_date", "hw_model": "board", "hw_revision": "b", "sw_version": "2"},
        {"update_state": "error", "hw_model": "board", "hw_revision": None, "sw_version": "2"},
        {"update_state": None, "hw_model": None, "hw_revision": "x", "sw_version": None},
    ]
    counted = fleet.count(devices, NOW, WITHIN)
    assert counted.total == 4
    assert counted.by_state == {"up_to_date": 2, "error": 1, fleet.UNKNOWN: 1}
    assert counted.by_model == {"board / b": 2, "board": 1, fleet.UNKNOWN: 1}
    assert counted.by_version == {"1": 1, "2": 2, fleet.UNKNOWN: 1}


@pytest.mark.parametrize(
    ("counts", "top", "expected"),
    [
        ({}, 3, []),
        ({"a": 1}, 3, [("a", 1, 1.0)]),
        ({"b": 2, "a": 2, "c": 4}, 3, [("c", 4, 1.0), ("a", 2, 0.5), ("b", 2, 0.5)]),
        ({"a": 5, "b": 4, "c": 1, "d": 1}, 3, [("a", 5, 1.0), ("b", 4, 0.8), ("(others)", 2, 0.4)]),
        ({"a": 0}, 3, [("a", 0, 0.0)]),
    ],
)
def test_bars(counts: dict[str, int], top: int, expected: list[tuple[str, int, float]]) -> None:
    assert [(b.label, b.count, b.share) for b in fleet.bars(counts, top)] == expected


@pytest.mark.parametrize(
    ("counters", "expected"),
    [
        ({}, (0, 0, 0)),
        ({"total": 10, "success": 3, "failure": 1}, (4, 10, 40)),
        ({"total": 3, "success": 3}, (3, 3, 100)),
        ({"total": 2, "success": 5}, (2, 2, 100)),  # never above the total
        ({"total": "x", "success": -1}, (0, 0, 0)),  # not counts: ignored
    ],
)
def test_progress(counters: dict[str, Any], expected: tuple[int, int, int]) -> None:
    assert fleet.progress(counters) == expected
