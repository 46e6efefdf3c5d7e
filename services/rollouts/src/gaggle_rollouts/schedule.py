"""Maintenance windows, pure: when a device may install, in the operator's time zone.

A window is given in one of two forms, both in a time zone (an IANA name such as
``Europe/Berlin``, a fixed offset such as ``+02:00`` as hawkBit takes it, or ``UTC``, the default):

- daily windows: ``{"start": "02:00", "end": "04:00", "days": ["sat", "sun"]}``, or several as
  ``{"windows": [...]}``. Times are wall-clock times of the zone; ``end`` before ``start`` spans
  midnight (the window then belongs to the day it starts on); no ``days`` means every day.
- a cron expression and a duration, as hawkBit's ``schedule``/``duration``:
  ``{"schedule": "0 2 * * 1-5", "duration": "02:00:00"}``. The expression has the five fields of
  crontab(5) (minute, hour, day of month, month, day of week); it is matched by ``croniter``
  against the zone's wall-clock time, and each window lasts ``duration`` of real time.

Daylight saving time follows the wall clock: in ``Europe/Berlin`` a 02:00-04:00 window lasts one
hour on the day clocks go forward (02:00-03:00 does not exist) and three hours on the day they go
back (02:00-03:00 happens twice). A cron time that does not exist that day (02:30 when clocks
jump from 02:00 to 03:00) fires one hour later by the wall clock, the same instant in real time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names, in ``datetime.weekday()`` order."""
MAX_WINDOWS = 20
MAX_DURATION = timedelta(days=7)
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):(\d{2})$", re.ASCII)
_CLOCK_RE = re.compile(r"^\d{2}:\d{2}$", re.ASCII)
_DURATION_RE = re.compile(r"^(\d{1,3}):(\d{2}):(\d{2})$", re.ASCII)
_DST_SLACK = timedelta(hours=3)
"""More than any shift of a zone's clocks: how far around ``now`` cron fire times are looked at."""


class ScheduleError(ValueError):
    """A maintenance window that cannot be understood; the message says which part and why."""


def zone(name: str) -> tzinfo:
    """The time zone ``name`` names: ``UTC``, an IANA name, or a fixed offset ``±HH:MM``.

    Raises:
        ScheduleError: an unknown zone or a malformed offset.
    """
    if name in ("UTC", "Z"):
        return UTC
    offset = _OFFSET_RE.match(name)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta >= timedelta(hours=24) or int(minutes) >= 60:
            raise ScheduleError(f"timezone: offset {name!r} is out of range")
        return timezone(-delta if sign == "-" else delta)
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        raise ScheduleError(f"timezone: {name!r} is not a time zone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleError(
            f"timezone: unknown time zone {name!r} (an IANA name such as 'Europe/Berlin', "
            "or an offset such as '+02:00')"
        ) from exc


def clock(value: str, what: str) -> time:
    """A wall-clock time ``HH:MM``.

    Raises:
        ScheduleError: not a time of day.
    """
    if not isinstance(value, str) or not _CLOCK_RE.match(value):
        raise ScheduleError(f"{what}: expected HH:MM, got {value!r}")
    try:
        return time.fromisoformat(value)
    except ValueError as exc:
        raise ScheduleError(f"{what}: {value!r} is not a time of day") from exc


def duration(value: str) -> timedelta:
    """A duration ``HH:MM:SS`` (hawkBit's form), above zero and at most a week.

    Raises:
        ScheduleError: malformed, zero, or too long.
    """
    found = _DURATION_RE.match(value) if isinstance(value, str) else None
    if found is None:
        raise ScheduleError(f"duration: expected HH:MM:SS, got {value!r}")
    hours, minutes, seconds = (int(g) for g in found.groups())
    if minutes >= 60 or seconds >= 60:
        raise ScheduleError(f"duration: {value!r} has more than 59 minutes or seconds")
    delta = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if not timedelta(0) < delta <= MAX_DURATION:
        raise ScheduleError(f"duration: {value!r} must be above 00:00:00 and at most 168:00:00")
    return delta


def cron(expression: str) -> str:
    """A five-field cron expression, checked.

    Raises:
        ScheduleError: not five fields, or a field croniter does not accept.
    """
    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ScheduleError(
            f"schedule: expected a cron expression of 5 fields (minute hour day-of-month month "
            f"day-of-week), got {expression!r}"
        )
    if not croniter.is_valid(expression):
        raise ScheduleError(f"schedule: {expression!r} is not a valid cron expression")
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)  # noqa: DTZ001 - wall time
    except CroniterError as exc:
        raise ScheduleError(f"schedule: {expression!r} never fires") from exc
    return expression


@dataclass(frozen=True)
class Daily:
    """A window on the wall clock, on some days of the week (None: every day)."""

    start: time
    end: time
    days: frozenset[int] | None = None

    def is_open(self, local: datetime) -> bool:
        """Whether the wall-clock time ``local`` lies in the window."""
        t, day = local.time().replace(tzinfo=None), local.weekday()
        if self.start < self.end:
            return self.start <= t < self.end and self._on(day)
        # Spans midnight: the part after midnight belongs to the day before.
        return (t >= self.start and self._on(day)) or (t < self.end and self._on((day - 1) % 7))

    def _on(self, day: int) -> bool:
        return self.days is None or day in self.days

    @classmethod
    def parse(cls, raw: Mapping[str, Any], what: str) -> Daily:
        """From ``{"start", "end", "days"?}``.

        Raises:
            ScheduleError: a bad part.
        """
        if not isinstance(raw, Mapping):
            raise ScheduleError(f"{what}: expected an object with start and end")
        start = clock(raw.get("start"), f"{what}.start")  # type: ignore[arg-type]
        end = clock(raw.get("end"), f"{what}.end")  # type: ignore[arg-type]
        if start == end:
            raise ScheduleError(f"{what}: start and end must differ")
        days = raw.get("days")
        if days is None:
            return cls(start, end)
        if not isinstance(days, list) or not days:
            raise ScheduleError(f"{what}.days: expected a non-empty list of {', '.join(DAYS)}")
        unknown = [d for d in days if d not in DAYS]
        if unknown:
            raise ScheduleError(f"{what}.days: unknown day {unknown[0]!r} (use {', '.join(DAYS)})")
        return cls(start, end, frozenset(DAYS.index(d) for d in days))


@dataclass(frozen=True)
class Window:
    """A maintenance window: daily windows or a cron schedule with a duration, in a time zone."""

    tz: tzinfo
    daily: tuple[Daily, ...] = ()
    schedule: str | None = None
    length: timedelta | None = None

    def is_open(self, now: datetime) -> bool:
        """Whether the aware instant ``now`` lies in the window."""
        local = now.astimezone(self.tz)
        if self.schedule is None:
            return any(d.is_open(local) for d in self.daily)
        latest = self.last_start(now)
        return latest is not None and self.length is not None and now < latest + self.length

    def last_start(self, now: datetime) -> datetime | None:
        """The latest instant at or before ``now`` at which the cron schedule fires."""
        if self.schedule is None:
            return None
        wall = now.astimezone(self.tz).replace(tzinfo=None)
        fires = croniter(self.schedule, wall + _DST_SLACK, ret_type=datetime)
        latest: datetime | None = None
        for _ in range(10_000):
            try:
                fire: datetime = fires.get_prev(datetime)
            except CroniterError:
                break
            # fold=0: the first of a repeated wall time. In UTC, so that adding a duration adds
            # real time (aware arithmetic within one zone is wall-clock arithmetic).
            at = fire.replace(tzinfo=self.tz).astimezone(UTC)
            if at <= now and (latest is None or at > latest):
                latest = at
            # Near a clock change wall times and instants may be out of order: look a little
            # further back than the first fire found.
            if latest is not None and fire < wall - _DST_SLACK:
                break
        return latest

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Window | None:
        """From the stored (or requested) form; None for None.

        Raises:
            ScheduleError: a bad or ambiguous window, with a message naming the part.
        """
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ScheduleError("maintenance_window: expected an object")
        tz = zone(raw.get("timezone") or "UTC")
        forms = [
            name
            for name, given in (
                ("start/end", "start" in raw or "end" in raw),
                ("windows", raw.get("windows") is not None),
                ("schedule", raw.get("schedule") is not None),
            )
            if given
        ]
        if len(forms) != 1:
            raise ScheduleError(
                "maintenance_window: give exactly one of start/end, windows, or schedule with "
                f"duration (got {', '.join(forms) or 'none'})"
            )
        if "duration" in raw and forms != ["schedule"]:
            raise ScheduleError("maintenance_window: duration goes with a schedule")
        if forms == ["schedule"]:
            if raw.get("duration") is None:
                raise ScheduleError("maintenance_window: a schedule needs a duration (HH:MM:SS)")
            if "days" in raw:
                raise ScheduleError("maintenance_window: give days in the cron schedule")
            return cls(tz, schedule=cron(raw["schedule"]), length=duration(raw["duration"]))
        if forms == ["start/end"]:
            return cls(tz, (Daily.parse(raw, "maintenance_window"),))
        windows = raw["windows"]
        if not isinstance(windows, Sequence) or not windows or len(windows) > MAX_WINDOWS:
            raise ScheduleError(f"windows: expected 1 to {MAX_WINDOWS} windows")
        if "days" in raw:
            raise ScheduleError("maintenance_window: give days in each of the windows")
        return cls(tz, tuple(Daily.parse(w, f"windows[{i}]") for i, w in enumerate(windows)))
