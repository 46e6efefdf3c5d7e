"""How a report moves an action, table-driven: every rule of apply_report, then a batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from gaggle_contracts.events import ActionFinished, ActionUpdated, FeedbackStatus
from gaggle_rollouts.domain import (
    Action,
    ActionType,
    Report,
    ReportKind,
    apply_report,
    apply_reports,
)


def act(status: str = "running", active: bool = True, type_: ActionType = "forced") -> Action:
    return Action(1, "t", "d1", "s1", "1.0", type_, status, active)


def fb(execution: str, finished: str = "none") -> FeedbackStatus:
    return FeedbackStatus.model_validate({"execution": execution, "finished": finished})


OPEN = act()
CLOSED = act("finished", active=False)
WAITING = act("wait_for_confirmation")
CANCELING = act("canceling")


@pytest.mark.parametrize(
    ("kind", "action", "report", "expected"),
    [
        # feedback: hawkBit's deploymentBase feedback, forward only
        ("feedback", OPEN, fb("closed", "success"), ("finished", False)),
        ("feedback", OPEN, fb("closed", "failure"), ("error", False)),
        ("feedback", OPEN, fb("canceled"), ("canceled", False)),
        ("feedback", OPEN, fb("downloaded"), ("downloaded", True)),
        ("feedback", act(type_="downloadonly"), fb("downloaded"), ("downloaded", False)),
        ("feedback", CANCELING, fb("proceeding"), ("canceling", True)),
        ("feedback", WAITING, fb("proceeding"), ("wait_for_confirmation", True)),
        ("feedback", OPEN, fb("rejected"), ("warning", True)),
        ("feedback", OPEN, fb("download"), ("download", True)),
        ("feedback", OPEN, fb("proceeding"), ("running", True)),
        ("feedback", OPEN, fb("scheduled"), ("running", True)),
        ("feedback", CLOSED, fb("proceeding"), ("finished", False)),
        # cancel_feedback: only a canceling action moves (hawkBit #952: closed means accepted)
        ("cancel_feedback", CANCELING, fb("canceled"), ("canceled", False)),
        ("cancel_feedback", CANCELING, fb("closed", "success"), ("canceled", False)),
        ("cancel_feedback", CANCELING, fb("rejected"), ("cancel_rejected", True)),
        ("cancel_feedback", CANCELING, fb("closed", "failure"), ("cancel_rejected", True)),
        ("cancel_feedback", CANCELING, fb("proceeding"), ("canceling", True)),
        ("cancel_feedback", OPEN, fb("canceled"), ("running", True)),
        ("cancel_feedback", CLOSED, fb("canceled"), ("finished", False)),
        # the device's confirmation: confirmed runs a waiting action, denied keeps it waiting
        ("confirmed", WAITING, None, ("running", True)),
        ("confirmed", OPEN, None, ("running", True)),
        ("confirmed", CLOSED, None, ("finished", False)),
        ("denied", WAITING, None, ("wait_for_confirmation", True)),
        # an operator's cancel: an open action waits for the device
        ("cancel_requested", OPEN, None, ("canceling", True)),
        ("cancel_requested", WAITING, None, ("canceling", True)),
        ("cancel_requested", CLOSED, None, ("finished", False)),
        # a deleted device: its open action is canceled at once
        ("device_deleted", OPEN, None, ("canceled", False)),
        ("device_deleted", CLOSED, None, ("finished", False)),
    ],
)
def test_apply_report(
    kind: ReportKind, action: Action, report: FeedbackStatus | None, expected: tuple[str, bool]
) -> None:
    assert apply_report(action, kind, report) == expected


@pytest.mark.parametrize("kind", ["feedback", "cancel_feedback"])
def test_a_feedback_report_without_its_feedback_is_refused(kind: ReportKind) -> None:
    with pytest.raises(ValueError, match="needs the device's feedback"):
        apply_report(OPEN, kind, None)


NOW = datetime.now(UTC)


def report(execution: str, at: datetime, finished: str = "none", event_id: object = None) -> Report:
    return Report("t", 1, event_id or uuid4(), at, fb(execution, finished), "feedback")


def test_a_batch_applies_reports_in_order_and_announces_each_move() -> None:
    current = {("t", 1): (OPEN, NOW - timedelta(minutes=1))}
    applied = apply_reports(
        current,
        [report("download", NOW), report("closed", NOW + timedelta(seconds=1), "success")],
        set(),
    )
    assert [(a.status, a.active) for a in applied.results if a] == [
        ("download", True),
        ("finished", False),
    ]
    assert [type(e) for e in applied.events] == [ActionUpdated, ActionFinished]
    assert [status for _, _, status in applied.entries] == ["download", "finished"]
    assert [(a.status, at) for a, at in applied.moved] == [("finished", NOW + timedelta(seconds=1))]
    assert applied.rendered == {"t": {"d1"}}


def test_a_report_older_than_the_status_only_joins_the_history() -> None:
    current = {("t", 1): (OPEN, NOW)}
    applied = apply_reports(current, [report("download", NOW - timedelta(seconds=5))], set())
    assert applied.results == [OPEN]
    assert [status for _, _, status in applied.entries] == ["running"]
    assert applied.moved == []


def test_an_older_report_that_closes_the_action_still_closes_it() -> None:
    current = {("t", 1): (OPEN, NOW)}
    applied = apply_reports(
        current, [report("closed", NOW - timedelta(seconds=5), "failure")], set()
    )
    assert [(a.status, a.active) for a in applied.results if a] == [("error", False)]
    assert applied.moved[0][1] == NOW


def test_a_redelivered_report_changes_nothing() -> None:
    seen_id = uuid4()
    applied = apply_reports(
        {("t", 1): (OPEN, None)}, [report("closed", NOW, "success", seen_id)], {seen_id}
    )
    assert applied.results == [OPEN]
    assert (applied.entries, applied.moved, applied.events) == ([], [], [])


def test_a_report_for_an_unknown_action_answers_none() -> None:
    applied = apply_reports({}, [report("proceeding", NOW)], set())
    assert applied.results == [None]
    assert applied.rendered == {}


def test_feedback_on_a_closed_action_is_recorded_but_not_announced() -> None:
    applied = apply_reports({("t", 1): (CLOSED, NOW)}, [report("proceeding", NOW)], set())
    assert applied.results == [CLOSED]
    assert len(applied.entries) == 1
    assert (applied.events, applied.rendered) == ([], {})
