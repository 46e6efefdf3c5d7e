"""The fleet overview's figures, from device listing rows: pure functions, no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

UNKNOWN = "(none)"
"""The label of devices that have not reported the value."""
TOP = 12
"""Bars per chart; the rest are summed into one ``(others)`` bar."""
OTHERS = "(others)"


@dataclass(frozen=True)
class Bar:
    """One bar of a chart: its label, its count and its share of the largest bar (0 to 1)."""

    label: str
    count: int
    share: float


@dataclass
class Fleet:
    """Counts over the devices seen: by update state, model/revision, version, and presence."""

    total: int = 0
    online: int = 0
    offline: int = 0
    never_seen: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)
    by_version: Counter[str] = field(default_factory=Counter)
    truncated: bool = False
    """More devices exist than were counted (the overview's cap)."""


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from the API (``Z`` or an offset), None when absent or not a time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def model_label(device: Mapping[str, Any]) -> str:
    """``model / revision``, or the model alone, or :data:`UNKNOWN`."""
    model, revision = device.get("hw_model"), device.get("hw_revision")
    if not model:
        return UNKNOWN
    return f"{model} / {revision}" if revision else str(model)


def count(devices: Iterable[Mapping[str, Any]], now: datetime, online_within: timedelta) -> Fleet:
    """Add up ``devices`` (rows of ``GET /api/v1/devices``) as of ``now``.

    A device is online when it was last seen at most ``online_within`` before ``now``; one never
    seen is neither online nor offline.
    """
    fleet = Fleet()
    for device in devices:
        fleet.total += 1
        fleet.by_state[str(device.get("update_state") or UNKNOWN)] += 1
        fleet.by_model[model_label(device)] += 1
        fleet.by_version[str(device.get("sw_version") or UNKNOWN)] += 1
        seen = parse_time(device.get("last_seen_at"))
        if seen is None:
            fleet.never_seen += 1
        elif now - seen <= online_within:
            fleet.online += 1
        else:
            fleet.offline += 1
    return fleet


def bars(counts: Mapping[str, int], top: int = TOP) -> list[Bar]:
    """The chart of ``counts``: largest first (ties by label), at most ``top`` bars.

    When there are more labels than ``top``, the last bar sums the smallest as :data:`OTHERS`.
    """
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if len(ordered) > top:
        rest = sum(n for _, n in ordered[top - 1 :])
        ordered = [*ordered[: top - 1], (OTHERS, rest)]
    largest = max((n for _, n in ordered), default=0)
    return [Bar(label, n, n / largest if largest else 0.0) for label, n in ordered]


def progress(counters: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(done, total, percent)`` of a rollout's counters: done is success plus failure."""
    total = _int(counters.get("total"))
    done = _int(counters.get("success")) + _int(counters.get("failure"))
    done = min(done, total) if total else done
    percent = round(100 * done / total) if total else 0
    return done, total, percent


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0
