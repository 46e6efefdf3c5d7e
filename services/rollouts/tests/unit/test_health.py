"""Rollout health rules, table-driven: durations, time-outs, late reports, soaks, rollbacks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gaggle_contracts.events import ActionFinished, ActionRolledBack, FeedbackStatus
from gaggle_rollouts import health
from gaggle_rollouts.domain import Action, Report, apply_report, apply_reports
from gaggle_rollouts.health import (
    DEFAULT_ACTION_TIMEOUT_S,
    DEFAULT_REPORT_TIMEOUT_S,
    Limits,
    after_timeout,
    format_duration,
    parse_duration,
    soak_verdict,
    timeout_reason,
    version_verdict,
)
from gaggle_rollouts.plan import Progress, next_step

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fb(execution: str, finished: str = "none") -> FeedbackStatus:
    return FeedbackStatus.model_validate({"execution": execution, "finished": finished})


# -- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("1h30m", 5400),
        ("90s", 90),
        ("2d", 172800),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        (" 10M ", 600),
        ("1d2h3m4s", 93784),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "30", "m", "30x", "1h 30m", "-5m", "0s", "0m", "400d", "1e3s"]
)
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1800, "30m"), (5400, "1h30m"), (86400, "1d"), (3, "3s"), (0.25, "250ms"), (None, None)],
)
def test_durations_format_and_read_back(seconds: float | None, text: str | None) -> None:
    assert format_duration(seconds) == text
    if text is not None:
        assert parse_duration(text) == pytest.approx(seconds)


# -- time-outs -----------------------------------------------------------------------------------

LIMITS = Limits(report_timeout_s=10, action_timeout_s=60)


@pytest.mark.parametrize(
    ("now", "status", "active", "window", "reported", "limits", "expected"),
    [
        # within both limits
        (s(5), "running", True, None, None, LIMITS, None),
        (s(30), "download", True, None, s(25), LIMITS, None),
        # no report for longer than the report timeout: since it started, or since the last
        (s(11), "running", True, None, None, LIMITS, "report timeout"),
        (s(40), "download", True, None, s(29), LIMITS, "report timeout"),
        (s(39), "download", True, None, s(29), LIMITS, None),
        # reports keep coming, but no final state within the action timeout
        (s(61), "download", True, None, s(60), LIMITS, "action timeout"),
        # waiting for a confirmation or a closed maintenance window: never timed out
        (s(1000), "wait_for_confirmation", True, None, None, LIMITS, None),
        (s(1000), "running", True, False, None, LIMITS, None),
        (s(1000), "running", True, True, None, LIMITS, "action timeout"),
        # a cancel the device never answers times out too
        (s(11), "canceling", True, None, None, LIMITS, "report timeout"),
        # closed actions are never timed out
        (s(1000), "finished", False, None, None, LIMITS, None),
        # the defaults: an hour without a report, a day to a final state
        (s(DEFAULT_REPORT_TIMEOUT_S - 1), "running", True, None, None, Limits(), None),
        (s(DEFAULT_REPORT_TIMEOUT_S + 1), "running", True, None, None, Limits(), "report"),
        (
            s(DEFAULT_ACTION_TIMEOUT_S + 1),
            "running",
            True,
            None,
            s(DEFAULT_ACTION_TIMEOUT_S),
            Limits(),
            "action timeout",
        ),
    ],
)
def test_timeout_reason(
    now: datetime,
    status: str,
    active: bool,
    window: bool | None,
    reported: datetime | None,
    limits: Limits,
    expected: str | None,
) -> None:
    reason = timeout_reason(
        now=now,
        status=status,
        active=active,
        window_open=window,
        clock_from=T0,
        reported_at=reported,
        limits=limits,
    )
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason and reason.startswith("Timed out")


def test_a_report_from_before_the_clock_started_does_not_count() -> None:
    # Confirmed at T0 after a report at T0-100: the report timeout counts from T0.
    reason = timeout_reason(
        now=s(9),
        status="running",
        active=True,
        window_open=None,
        clock_from=T0,
        reported_at=s(-100),
        limits=LIMITS,
    )
    assert reason is None


# -- the late final report of a timed-out action (the domain rule) -----------------------------


@pytest.mark.parametrize(
    ("received", "report", "expected"),
    [
        # received by the gateway before the time-out: the device was in time, its outcome counts
        (s(-1), fb("closed", "success"), ("finished", False)),
        (s(0), fb("closed", "failure"), ("error", False)),
        (s(-1), fb("canceled"), ("canceled", False)),
        # informational feedback never reopens it
        (s(-1), fb("proceeding"), ("timed_out", False)),
        (s(-1), fb("download"), ("timed_out", False)),
        # received after the time-out: history only, the action stays timed out
        (s(1), fb("closed", "success"), ("timed_out", False)),
        (s(1), fb("closed", "failure"), ("timed_out", False)),
    ],
)
def test_a_late_final_report_counts_only_if_received_before_the_time_out(
    received: datetime, report: FeedbackStatus, expected: tuple[str, bool]
) -> None:
    assert after_timeout("timed_out", T0, report, received) == expected
    action = Action(1, "t", "d1", "s1", "2.0", "forced", "timed_out", False, closed_at=T0)
    assert apply_report(action, "feedback", report, received) == expected


def test_only_deployment_feedback_can_replace_a_time_out() -> None:
    action = Action(1, "t", "d1", "s1", "2.0", "forced", "timed_out", False, closed_at=T0)
    # cancel feedback for a timed-out action changes nothing
    assert apply_report(action, "cancel_feedback", fb("closed", "success"), s(-1)) == (
        "timed_out",
        False,
    )


@pytest.mark.parametrize(
    ("kind", "status", "active", "expected"),
    [
        ("timed_out", "running", True, ("timed_out", False)),
        ("timed_out", "download", True, ("timed_out", False)),
        ("timed_out", "canceling", True, ("timed_out", False)),
        ("timed_out", "finished", False, ("timed_out", False)),  # silent in its soak
        ("timed_out", "error", False, ("error", False)),  # closed meanwhile: stays
        ("timed_out", "canceled", False, ("canceled", False)),
        ("rolled_back", "finished", False, ("rolled_back", False)),
        ("rolled_back", "running", True, ("running", True)),  # only a success rolls back
        ("rolled_back", "error", False, ("error", False)),
        ("rolled_back", "timed_out", False, ("timed_out", False)),
    ],
)
def test_health_reports_move_an_action(
    kind: str, status: str, active: bool, expected: tuple[str, bool]
) -> None:
    action = Action(1, "t", "d1", "s1", "2.0", "forced", status, active)
    assert apply_report(action, kind, None) == expected  # type: ignore[arg-type]


def test_a_time_out_is_recorded_with_its_reason_and_announced_as_finished() -> None:
    action = Action(7, "t", "d1", "s1", "2.0", "forced", "download", True, rollout_id=3)
    note = ["Timed out: no report from the device for 10s since the last report (report timeout)."]
    applied = apply_reports(
        {("t", 7): (action, s(0))}, [Report("t", 7, None, s(20), None, "timed_out", note)], set()
    )
    ((moved, _),) = applied.moved
    assert (moved.status, moved.active) == ("timed_out", False)
    (event,) = applied.events
    assert isinstance(event, ActionFinished) and event.status == "timed_out"
    assert applied.rows()[0][3] == "timed_out"
    assert note[0] in applied.rows()[0][7]
    assert applied.rendered == {"t": {"d1"}}  # the KV entry is rendered again (closed)


def test_a_rollback_is_announced_with_both_versions() -> None:
    action = Action(
        7, "t", "d1", "s1", "2.0", "forced", "finished", False, rollout_id=3, from_version="1.0"
    )
    applied = apply_reports(
        {("t", 7): (action, s(0))}, [Report("t", 7, None, s(20), None, "rolled_back", ["x"])], set()
    )
    (event,) = applied.events
    assert isinstance(event, ActionRolledBack)
    assert (event.version, event.reported_version, event.rollout_id) == ("2.0", "1.0", "3")


def test_a_late_report_received_after_the_time_out_only_joins_the_history() -> None:
    action = Action(7, "t", "d1", "s1", "2.0", "forced", "timed_out", False, closed_at=T0)
    report = Report("t", 7, "e1", s(5), fb("closed", "success"), "feedback")
    applied = apply_reports({("t", 7): (action, T0)}, [report], set())
    assert applied.moved == [] and applied.events == []
    assert [r[3] for r in applied.rows()] == ["timed_out"]  # in the history all the same
    in_time = replace(report, at=s(-5), event_id="e2")
    applied = apply_reports({("t", 7): (action, T0)}, [in_time], set())
    assert [a.status for a, _ in applied.moved] == ["finished"]
    assert isinstance(applied.events[0], ActionFinished) and applied.events[0].status == "finished"


# -- soak ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "seen", "expected"),
    [
        (s(5), None, "soaking"),  # the soak runs until T0+10
        (s(9), s(8), "soaking"),
        (s(10), s(4), "healthy"),  # came back after its success
        (s(10), None, "silent"),  # never seen again
        (s(10), s(0), "silent"),  # seen only at its success (before its reboot)
        (s(100), s(50), "silent"),  # seen back, then silent for longer than the report timeout
        (s(100), s(95), "healthy"),
    ],
)
def test_soak_verdict(now: datetime, seen: datetime | None, expected: str) -> None:
    assert (
        soak_verdict(now=now, succeeded_at=T0, soak_until=s(10), seen_at=seen, report_timeout_s=30)
        == expected
    )


def progress(*waves: dict[str, int], soaking: int = 0) -> Progress:
    rows = []
    for i, w in enumerate(waves, 1):
        for state, n in w.items():
            rows.append((i, state, n, soaking if state == "success" and i == 1 else 0))
    return Progress.of(rows)


@pytest.mark.parametrize(
    ("waves", "soaking", "kind"),
    [
        # 80 % succeeded, but 5 are still in their soak: 75 % count, no next wave yet
        (({"success": 80, "running": 20}, {"waiting": 100}), 5, "none"),
        (({"success": 80, "running": 20}, {"waiting": 100}), 0, "next_wave"),
        # the last wave ends only when its soaks ended
        (({"success": 10},), 2, "none"),
        (({"success": 10},), 0, "finish"),
    ],
)
def test_the_next_wave_and_the_end_wait_for_the_soak(
    waves: tuple[dict[str, int], ...], soaking: int, kind: str
) -> None:
    step = next_step(
        current_wave=1,
        wave_count=len(waves),
        progress=progress(*waves, soaking=soaking),
        success_threshold=80,
        error_threshold=20,
        error_action="pause",
    )
    assert step.kind == kind


def test_timed_out_and_rolled_back_are_failures_of_their_own_kind() -> None:
    p = progress({"success": 85, "timed_out": 4, "rolled_back": 10, "failure": 1})
    c = p.overall()
    assert (c.failure, c.timed_out, c.rolled_back, c.success) == (15, 4, 10, 85)
    step = next_step(
        current_wave=1,
        wave_count=2,
        progress=progress(
            {"success": 85, "timed_out": 4, "rolled_back": 10, "failure": 1}, {"waiting": 900}
        ),
        success_threshold=80,
        error_threshold=10,
        error_action="abort",
    )
    assert step.kind == "abort"
    assert step.reason == (
        "error threshold exceeded: 15 of 100 devices failed (15.0 % > 10 %); "
        "so far 1 failed, 4 timed out, 10 rolled back"
    )


# -- rollback detection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "at", "previous", "expected"),
    [
        ("2.0.0", s(5), "1.0.0", "confirmed"),
        ("2.0", s(5), "1.0.0", "confirmed"),  # same version, other spelling
        ("1.0.0", s(5), "1.0.0", "rolled_back"),  # A/B fallback
        ("1.0", s(5), "1.0.0", "rolled_back"),
        ("1.5.0", s(5), "1.0.0", "out_of_band"),  # some other version: not a failure
        ("3.0.0", s(5), "1.0.0", "out_of_band"),
        ("1.0.0", s(5), None, "out_of_band"),  # what it ran before is unknown
        ("1.0.0", s(-5), "1.0.0", "earlier"),  # a report from before the success
        ("1.0.0", T0, "1.0.0", "earlier"),
    ],
)
def test_version_verdict(reported: str, at: datetime, previous: str | None, expected: str) -> None:
    verdict = version_verdict(
        reported=reported,
        reported_at=at,
        installed="2.0.0",
        previous=previous,
        succeeded_at=T0,
    )
    assert verdict == expected


def test_reasons_say_what_happened() -> None:
    assert "1.0.0 again after installing 2.0.0" in health.rolled_back_reason("2.0.0", "1.0.0")
    assert "Out-of-band" in health.out_of_band_reason("2.0.0", "1.5.0")
    assert "10m" in health.silent_reason(600)
