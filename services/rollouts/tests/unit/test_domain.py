from __future__ import annotations

import dataclasses
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gaggle_contracts.events import FeedbackStatus
from gaggle_contracts.kv import ArtifactDoc
from gaggle_rollouts.domain import (
    Action,
    EventIds,
    Software,
    action_hash,
    cancel_feedback_status,
    deployment_entry,
    feedback_status,
    handling,
    with_status,
)


def act(status: str = "running", active: bool = True, type_: str = "forced") -> Action:
    return Action(1, "t", "d", "40", "1.0", type_, status, active)  # type: ignore[arg-type]


def fb(execution: str, finished: str = "none") -> FeedbackStatus:
    return FeedbackStatus(execution=execution, finished=finished)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("execution", "finished", "expected"),
    [
        ("closed", "success", ("finished", False)),
        ("closed", "none", ("finished", False)),
        ("closed", "failure", ("error", False)),
        ("canceled", "none", ("canceled", False)),
        ("rejected", "none", ("warning", True)),
        ("download", "none", ("download", True)),
        ("downloaded", "none", ("downloaded", True)),
        ("proceeding", "none", ("running", True)),
        ("scheduled", "none", ("running", True)),
        ("resumed", "none", ("running", True)),
        # rauc-hawkbit reports proceeding + failure before its closed/failure: not final.
        ("proceeding", "failure", ("running", True)),
    ],
)
def test_feedback_moves_an_open_action_as_hawkbit_does(
    execution: str, finished: str, expected: tuple[str, bool]
) -> None:
    assert feedback_status(act(), fb(execution, finished)) == expected


def test_downloaded_closes_a_download_only_action() -> None:
    assert feedback_status(act(type_="downloadonly"), fb("downloaded")) == ("downloaded", False)


@pytest.mark.parametrize("status", ["finished", "error", "canceled"])
@pytest.mark.parametrize("execution", ["proceeding", "closed", "canceled", "download"])
def test_a_closed_action_never_reopens(status: str, execution: str) -> None:
    assert feedback_status(act(status, active=False), fb(execution)) == (status, False)


def test_progress_while_canceling_keeps_the_cancel_pending() -> None:
    assert feedback_status(act("canceling"), fb("proceeding")) == ("canceling", True)
    # ...but a device that finished anyway has finished.
    assert feedback_status(act("canceling"), fb("closed", "success")) == ("finished", False)


@pytest.mark.parametrize(
    ("execution", "finished", "expected"),
    [
        ("closed", "success", ("canceled", False)),  # SWUpdate's "cancellation acknowledged."
        ("closed", "none", ("canceled", False)),
        ("canceled", "none", ("canceled", False)),
        ("rejected", "success", ("cancel_rejected", True)),  # rauc-hawkbit always rejects
        ("closed", "failure", ("cancel_rejected", True)),
        ("proceeding", "none", ("canceling", True)),
    ],
)
def test_cancel_feedback(execution: str, finished: str, expected: tuple[str, bool]) -> None:
    assert cancel_feedback_status(act("canceling"), fb(execution, finished)) == expected


def test_cancel_feedback_for_an_action_not_being_canceled_changes_nothing() -> None:
    assert cancel_feedback_status(act("running"), fb("closed", "success")) == ("running", True)


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        ("forced", ("forced", "forced")),
        ("soft", ("attempt", "attempt")),
        ("downloadonly", ("forced", "skip")),
    ],
)
def test_action_types_map_to_ddi_handling(type_: str, expected: tuple[str, str]) -> None:
    assert handling(type_) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("type_", "window_open", "force_due", "expected"),
    [
        # hawkBit's table (ddi-api.md): timeforced is soft until its forcetime, forced after
        ("timeforced", None, False, ("attempt", "attempt")),
        ("timeforced", None, True, ("forced", "forced")),
        ("timeforced", True, False, ("attempt", "attempt")),
        ("timeforced", True, True, ("forced", "forced")),
        ("timeforced", False, False, ("attempt", "skip")),
        ("timeforced", False, True, ("forced", "skip")),
        # the force time means nothing to the other types
        ("soft", None, True, ("attempt", "attempt")),
        ("forced", None, False, ("forced", "forced")),
        ("downloadonly", True, True, ("forced", "skip")),
        # a closed window holds back the install whatever the type
        ("soft", False, False, ("attempt", "skip")),
        ("forced", False, False, ("forced", "skip")),
        ("forced", True, False, ("forced", "forced")),
    ],
)
def test_handling_by_type_window_and_force_time(
    type_: str, window_open: bool | None, force_due: bool, expected: tuple[str, str]
) -> None:
    assert handling(type_, window_open, force_due) == expected  # type: ignore[arg-type]


def test_a_time_forced_action_changes_its_hash_when_it_turns_forced() -> None:
    soft = replace(act(type_="timeforced"), forcetime=datetime(2026, 1, 1, tzinfo=UTC))
    forced = replace(soft, force_due=True)
    before = deployment_entry((soft, SW, []), None, [])
    after = deployment_entry((forced, SW, []), None, [])
    assert before is not None and before.open is not None
    assert after is not None and after.open is not None
    assert (before.open.deployment.download, before.open.deployment.update) == (
        "attempt",
        "attempt",
    )
    assert (after.open.deployment.download, after.open.deployment.update) == ("forced", "forced")
    assert before.open.c != after.open.c


HASHES = {"md5": "m" * 32, "sha1": "s" * 40, "sha256": "h" * 64}
FILE = ArtifactDoc(filename="img-1.0.swu", size=10, object_key="k", **HASHES)
SW = Software("t", "40", "img", "1.0", FILE, (("*", "*"),))


def test_deployment_entry_offers_open_action_with_history_newest_first() -> None:
    entry = deployment_entry((act(), SW, ["newest", "older"]), None, [])
    assert entry is not None and entry.open is not None
    assert entry.open.action_id == "1"
    assert entry.open.state == "deployment"
    assert entry.open.c == action_hash(1, "forced", "forced")
    assert entry.open.history == ["newest", "older"]
    art = entry.open.deployment.chunks[0].artifacts[0]
    assert art == FILE
    assert (art.md5, art.sha1, art.sha256, art.object_key) == ("m" * 32, "s" * 40, "h" * 64, "k")


def test_canceling_action_is_offered_as_cancel() -> None:
    entry = deployment_entry((act("canceling"), SW, []), None, [])
    assert entry is not None and entry.open is not None
    assert entry.open.state == "canceling"


def test_nothing_to_say_deletes_the_key() -> None:
    assert deployment_entry(None, None, []) is None
    closed_only = deployment_entry(None, None, [3, 2])
    assert closed_only is not None and closed_only.closed == ["3", "2"]


def test_hash_changes_with_handling() -> None:
    assert action_hash(1, "forced", "forced") != action_hash(1, "attempt", "attempt")
    assert action_hash(1, "forced", "forced") != action_hash(2, "forced", "forced")


def test_with_status_copies_every_other_field_and_leaves_the_action_as_it_was() -> None:
    action = Action(7, "t", "d", "40", "1.0", "soft", "running", True, rollout_id=3)
    closed = with_status(action, "finished", False)
    assert closed == dataclasses.replace(action, status="finished", active=False)
    assert (action.status, action.active) == ("running", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        closed.status = "error"  # type: ignore[misc]


def test_event_ids_are_fresh_random_uuids_across_blocks() -> None:
    ids = EventIds()
    drawn = [ids() for _ in range(3 * EventIds.BLOCK + 5)]
    assert len(set(drawn)) == len(drawn)
    assert {(u.version, u.variant) for u in drawn} == {(4, uuid.RFC_4122)}
