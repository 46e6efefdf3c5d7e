"""Rollout health rules, pure: action timeouts, the soak after success, rollback detection.

An action is judged by what its device does, not only by what it reports:

- **Timeouts.** Two limits per action: how long it may go without a report from its device
  (``report_timeout``, default :data:`DEFAULT_REPORT_TIMEOUT_S`) and how long it may take to
  reach a final state (``action_timeout``, default :data:`DEFAULT_ACTION_TIMEOUT_S`). Both count
  from the action's *clock*: its opening, or the end of its wait for a confirmation or for its
  maintenance window (an action that waits is never timed out). Past either, the action closes
  as ``timed_out``: a failure of its rollout, with the reason in its history.
- **A late final report** (rule of :func:`after_timeout`): it always joins the history. If the
  gateway received it *before* the action timed out (the service was late, not the device), its
  outcome replaces ``timed_out``; received after, it changes nothing (the action stays
  ``timed_out`` and the counters stay where they are).
- **Soak.** A rollout may ask its devices to stay healthy for ``soak`` after they reported
  success: they keep polling and, after their reboot, report the new version. Until the soak
  ends their success does not count towards the next wave (:func:`soak_verdict`).
- **Rollback.** A device that, after its success, reports the version it ran before the action
  fell back (A/B): the action becomes ``rolled_back``, a failure of its rollout, and the software
  is not offered to the device again until an operator clears it. A report of some third version
  is an out-of-band change, recorded and not a failure (:func:`version_verdict`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gaggle_contracts.events import FeedbackStatus
from gaggle_contracts.versions import InvalidVersionError, SwVersion

DEFAULT_REPORT_TIMEOUT_S = 3600.0
"""An hour without a report from the device (a poll is not a report; feedback is)."""
DEFAULT_ACTION_TIMEOUT_S = 86400.0
"""A day to reach a final state."""
MAX_DURATION_S = 365 * 86400.0
"""The longest limit or soak accepted (a year)."""

TIMED_OUT = "timed_out"
ROLLED_BACK = "rolled_back"
WAITING = frozenset({"wait_for_confirmation"})
"""Statuses in which an action waits for someone else than its device: its clocks stand still."""

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration like ``30m``, ``1h30m``, ``90s``, ``1.5s`` or ``2d``.

    Raises:
        ValueError: not such a duration, zero, or longer than :data:`MAX_DURATION_S`.
    """
    raw = text.strip().lower()
    if not raw or _PART.sub("", raw):
        raise ValueError(f"{text!r} is not a duration like 30m, 1h30m, 90s or 2d")
    seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(raw))
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{text!r}: a duration may be a year at most")
    return seconds


def format_duration(seconds: float | None) -> str | None:
    """``seconds`` as the shortest duration text :func:`parse_duration` reads back."""
    if seconds is None:
        return None
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    left, out = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out or "0s"


@dataclass(frozen=True)
class Limits:
    """An action's two limits, in seconds; None stands for the default."""

    report_timeout_s: float | None = None
    action_timeout_s: float | None = None

    @property
    def report_s(self) -> float:
        """The limit without a report, the default filled in."""
        return self.report_timeout_s or DEFAULT_REPORT_TIMEOUT_S

    @property
    def action_s(self) -> float:
        """The limit to a final state, the default filled in."""
        return self.action_timeout_s or DEFAULT_ACTION_TIMEOUT_S


def timeout_reason(
    *,
    now: datetime,
    status: str,
    active: bool,
    window_open: bool | None,
    clock_from: datetime,
    reported_at: datetime | None,
    limits: Limits,
) -> str | None:
    """Why an open action is timed out at ``now``; None while it is within its limits.

    Args:
        now: The time of the check.
        status: The action's status; one that waits (:data:`WAITING`) is never timed out.
        active: Whether the action is open; a closed one is never timed out.
        window_open: False while its maintenance window is closed (it waits then, too).
        clock_from: When its clocks started (opening, or the end of its last wait).
        reported_at: The device's last report on it, if any.
        limits: Its limits.
    """
    if not active or status in WAITING or window_open is False:
        return None
    running = (now - clock_from).total_seconds()
    if running > limits.action_s:
        return (
            f"Timed out: no final state within {format_duration(limits.action_s)} (action timeout)."
        )
    last = clock_from if reported_at is None or reported_at < clock_from else reported_at
    if (now - last).total_seconds() > limits.report_s:
        since = "since the last report" if last is reported_at else "since it started"
        return (
            f"Timed out: no report from the device for {format_duration(limits.report_s)} "
            f"{since} (report timeout)."
        )
    return None


def timed_out_status(active: bool, status: str) -> tuple[str, bool]:
    """(status, active) of an action the health check found past a limit.

    An open action closes as ``timed_out``; a finished one (its soak failed: the device went
    silent) becomes ``timed_out``; anything else stays as it is (it closed meanwhile).
    """
    if active or status == "finished":
        return TIMED_OUT, False
    return status, active


def rolled_back_status(active: bool, status: str) -> tuple[str, bool]:
    """(status, active) of an action whose device fell back to its old version.

    Only a finished action can be rolled back; anything else stays as it is.
    """
    if not active and status == "finished":
        return ROLLED_BACK, False
    return status, active


def after_timeout(
    status: str, closed_at: datetime | None, fb: FeedbackStatus, received_at: datetime
) -> tuple[str, bool]:
    """(status, active) of a ``timed_out`` action after a late deploymentBase feedback.

    The domain rule for late final reports: a final report (closed or canceled) the gateway
    received before the action timed out (``received_at <= closed_at``) gives the action its
    real outcome, and the rollout's counters follow; one received later only joins the history.
    Informational feedback never reopens the action.
    """
    if status != TIMED_OUT or closed_at is None or received_at > closed_at:
        return status, False
    if fb.execution == "closed":
        return ("error", False) if fb.finished == "failure" else ("finished", False)
    if fb.execution == "canceled":
        return "canceled", False
    return status, False


SoakVerdict = Literal["soaking", "healthy", "silent"]


def soak_verdict(
    *,
    now: datetime,
    succeeded_at: datetime,
    soak_until: datetime,
    seen_at: datetime | None,
    report_timeout_s: float,
) -> SoakVerdict:
    """Where a device stands in the soak after its success.

    Healthy once the soak is over if the device came back after its success (it polled or
    reported after it) and has not been silent for longer than its report timeout since.
    A device that fell back to its old version meanwhile is caught by :func:`version_verdict`.

    Args:
        now: The time of the check.
        succeeded_at: When its action finished.
        soak_until: When its soak ends.
        seen_at: Its last poll or report after the success, if any.
        report_timeout_s: The action's report timeout.
    """
    if now < soak_until:
        return "soaking"
    if seen_at is None or seen_at <= succeeded_at:
        return "silent"
    if (now - seen_at) > timedelta(seconds=report_timeout_s):
        return "silent"
    return "healthy"


def silent_reason(soak_s: float) -> str:
    """The history note of a device that went silent in its soak."""
    return (
        f"Went silent after its success: not seen back within the soak time of "
        f"{format_duration(soak_s)}; the success counts as a failure."
    )


VersionVerdict = Literal["confirmed", "rolled_back", "out_of_band", "earlier"]


def _same(a: str, b: str) -> bool:
    try:
        return SwVersion.parse(a) == SwVersion.parse(b)
    except InvalidVersionError:
        return a == b


def version_verdict(
    *,
    reported: str,
    reported_at: datetime,
    installed: str,
    previous: str | None,
    succeeded_at: datetime,
) -> VersionVerdict:
    """What a device's report of its running version says of its last successful action.

    Args:
        reported: The version the device reports (configData ``sw_version``, installedBase).
        reported_at: When it reported.
        installed: The version the action installed.
        previous: What the device reported running when the action opened (None: unknown).
        succeeded_at: When the action finished.

    Returns:
        ``earlier`` for a report from before the success (says nothing), ``confirmed`` when
        it runs the installed version, ``rolled_back`` when it runs the previous one again, and
        ``out_of_band`` for any other version.
    """
    if reported_at <= succeeded_at:
        return "earlier"
    if _same(reported, installed):
        return "confirmed"
    if previous is not None and _same(reported, previous):
        return "rolled_back"
    return "out_of_band"


def rolled_back_reason(installed: str, reported: str) -> str:
    """The history note of a rolled-back action."""
    return (
        f"Rolled back: the device reports {reported} again after installing {installed} "
        f"(A/B fallback); not offered {installed} again until an operator clears it."
    )


def out_of_band_reason(installed: str, reported: str) -> str:
    """The history note of a version change no action made."""
    return (
        f"Out-of-band change: the device reports {reported} after installing {installed}; "
        f"recorded, not counted as a failure."
    )
