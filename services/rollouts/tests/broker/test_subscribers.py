"""Each rollouts subscriber: an event in, the use case's calls and the action's new state out."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
from faststream.nats import NatsBroker

from gaggle_contracts.events import (
    ActionFeedback,
    ActionFinished,
    ActionUpdated,
    AutoConfirmChanged,
    CancelFeedback,
    ConfirmationFeedback,
    DeviceUpdated,
    Event,
    SoftwareCreated,
    SoftwareDeleted,
)
from gaggle_rollouts.domain import Action


async def send(broker: NatsBroker, event: Event) -> None:
    """Publish, and wait until the feedback batches it may have started are applied."""
    await broker.publish(event.model_dump(mode="json"), event.subject, stream="OTA")
    await broker.context.get("feedback_runner").idle()


def feedback(execution: str, finished: str = "none", action_id: str = "7") -> dict[str, Any]:
    return {
        "tenant": "t",
        "controller_id": "d1",
        "action_id": action_id,
        "status": {"execution": execution, "finished": finished},
    }


def confirmation(answer: str, details: list[str] | None = None) -> ConfirmationFeedback:
    """The device's answer about action 7, which waits for its confirmation."""
    return ConfirmationFeedback.model_validate(
        {
            "tenant": "t",
            "controller_id": "d1",
            "action_id": "7",
            "confirmation": answer,
            "details": details or [],
        }
    )


SOFTWARE = {
    "tenant": "t",
    "software_id": "s2",
    "name": "img",
    "version": "2.0",
    "filename": "img.swu",
    "size": 1,
    "md5": "0",
    "sha1": "0",
    "sha256": "0",
    "compatibility": [{"hw_model": "*", "hw_revision": "*"}],
}


async def test_software_created_is_catalogued_and_devices_in_latest_are_chosen_for(
    broker: NatsBroker, repo: Any
) -> None:
    repo.latest = ["d1", "d2"]
    await send(broker, SoftwareCreated.model_validate(SOFTWARE))
    assert ("t", "s2") in repo.software
    assert repo.calls == [("choose", ("t", ("d1", "d2")))]


async def test_software_deleted_is_marked_deleted(broker: NatsBroker, repo: Any) -> None:
    await send(broker, SoftwareDeleted(tenant="t", software_id="s2"))
    assert repo.deleted == {("t", "s2")}
    assert repo.calls == []


async def test_action_feedback_closing_an_action_chooses_for_its_device_again(
    broker: NatsBroker, repo: Any, engine: Any, action: Action
) -> None:
    repo.add(action)
    await send(broker, ActionFeedback.model_validate(feedback("closed", "success")))
    assert (repo.actions[7].status, repo.actions[7].active) == ("finished", False)
    assert [(type(e), e.status) for e in repo.events] == [(ActionFinished, "finished")]
    assert [r.kind for r in repo.history] == ["feedback"]
    assert repo.calls == [("choose", ("t", ("d1",)))]
    assert engine.poked == []


async def test_action_feedback_of_a_rollout_pokes_it_and_spares_the_choice(
    broker: NatsBroker, repo: Any, engine: Any, action: Action
) -> None:
    repo.add(replace(action, rollout_id=3))
    await send(broker, ActionFeedback.model_validate(feedback("closed", "failure")))
    assert repo.actions[7].status == "error"
    assert engine.poked == [3]
    assert repo.calls == []


async def test_action_feedback_in_progress_keeps_the_action_open(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(action)
    await send(broker, ActionFeedback.model_validate(feedback("download")))
    assert (repo.actions[7].status, repo.actions[7].active) == ("download", True)
    assert [(type(e), e.status) for e in repo.events] == [(ActionUpdated, "download")]
    assert repo.calls == []


async def test_action_feedback_for_an_id_that_cannot_be_a_row_touches_nothing(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(action)
    await send(broker, ActionFeedback.model_validate(feedback("closed", action_id="1" * 19)))
    assert (repo.history, repo.events) == ([], [])
    assert repo.actions[7] == action


async def test_a_redelivered_action_feedback_changes_nothing(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(action)
    event = ActionFeedback.model_validate(feedback("download"))
    await send(broker, event)
    await send(broker, event)
    assert len(repo.history) == 1
    assert len(repo.events) == 1


async def test_cancel_feedback_accepted_cancels_the_action(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(replace(action, status="canceling"))
    await send(broker, CancelFeedback.model_validate(feedback("closed", "success")))
    assert (repo.actions[7].status, repo.actions[7].active) == ("canceled", False)
    assert [r.kind for r in repo.history] == ["cancel_feedback"]


async def test_confirmation_confirmed_runs_the_waiting_action_with_the_devices_words(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(replace(action, status="wait_for_confirmation"))
    await send(broker, confirmation("confirmed", ["ok"]))
    assert repo.actions[7].status == "running"
    assert repo.history[0].note == ["Confirmed by the device.", "ok"]


async def test_confirmation_denied_keeps_the_action_waiting(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(replace(action, status="wait_for_confirmation"))
    await send(broker, confirmation("denied"))
    assert repo.actions[7].status == "wait_for_confirmation"
    assert [r.kind for r in repo.history] == ["denied"]


async def test_device_updated_keeps_the_inventory_and_chooses_for_the_device(
    broker: NatsBroker, repo: Any
) -> None:
    await send(
        broker,
        DeviceUpdated(tenant="t", controller_id="d1", change="attributes", hw_model="board"),
    )
    assert repo.devices[("t", "d1")].hw_model == "board"
    assert repo.calls == [("choose", ("t", ("d1",)))]


async def test_device_deleted_cancels_its_open_action_and_pokes_its_rollout(
    broker: NatsBroker, repo: Any, engine: Any, action: Action
) -> None:
    repo.add(replace(action, rollout_id=4))
    repo.devices[("t", "d1")] = None
    await send(broker, DeviceUpdated(tenant="t", controller_id="d1", change="deleted"))
    assert ("t", "d1") not in repo.devices
    assert (repo.actions[7].status, repo.actions[7].active) == ("canceled", False)
    assert repo.history[0].note == ["Device deleted."]
    assert engine.poked == [4]


async def test_auto_confirm_switched_on_confirms_a_waiting_action(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(replace(action, status="wait_for_confirmation"))
    await send(
        broker, AutoConfirmChanged(tenant="t", controller_id="d1", active=True, initiator="me")
    )
    assert repo.auto_confirm[("t", "d1")] is True
    assert repo.actions[7].status == "running"
    assert repo.history[0].note == ["Confirmed automatically (me)."]


async def test_auto_confirm_switched_off_leaves_a_waiting_action_waiting(
    broker: NatsBroker, repo: Any, action: Action
) -> None:
    repo.add(replace(action, status="wait_for_confirmation"))
    await send(broker, AutoConfirmChanged(tenant="t", controller_id="d1", active=False))
    assert repo.auto_confirm[("t", "d1")] is False
    assert repo.actions[7].status == "wait_for_confirmation"
    assert repo.history == []


async def test_the_actions_a_pull_closes_are_logged_in_one_line(
    broker: NatsBroker, repo: Any, action: Action, caplog: pytest.LogCaptureFixture
) -> None:
    repo.add(action)
    repo.add(replace(action, id=8, controller_id="d2"))
    repo.add(replace(action, id=9, controller_id="d3"))
    events = [
        ActionFeedback.model_validate(feedback("closed", "success")),
        ActionFeedback.model_validate(
            {**feedback("closed", "failure", "8"), "controller_id": "d2"}
        ),
        ActionFeedback.model_validate(
            {**feedback("download", action_id="9"), "controller_id": "d3"}
        ),
        ActionFeedback.model_validate(feedback("closed", action_id="99")),
    ]
    with caplog.at_level(logging.INFO, logger="gaggle_rollouts.usecases"):
        outcomes = await broker.context.get("usecases").feedback_batch(events)
    assert outcomes == [None] * 4
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "action.feedback for unknown action tenant=t action=99"),
        ("INFO", "actions closed count=2 error=1 finished=1"),
    ]
    assert [(a.status, a.active) for a in map(repo.actions.get, (7, 8, 9))] == [
        ("finished", False),
        ("error", False),
        ("download", True),
    ]
