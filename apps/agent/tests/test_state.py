"""The state file: round trip, atomic replacement, and an unreadable file set aside."""

from __future__ import annotations

import json
from pathlib import Path

from gaggle_agent.state import DONE_MEMORY, ActionState, HookClock, PendingReport, State, StateStore


def test_state_survives_a_save_and_load(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "sub" / "state.json")
    assert store.load() == State()
    action = ActionState(
        "12",
        "http://h/dep/12?c=1",
        "2.0.0",
        phase="restarting",
        files=["/d/12/a.swu"],
        meta={"action_id": "12"},
        clocks={"ready": HookClock(100.0, 2)},
        noted=["window"],
    )
    state = State(
        action=action,
        pending=[PendingReport("http://h/f", {"id": 12})],
        done={"10": 1.0, "11": 2.0},
        installed_version="1.0.0",
        config_href="http://h/c",
    )
    store.save(state)
    assert store.load() == state
    assert store.load().action is not None and not store.load().action.cancellable  # type: ignore[union-attr]
    # Nothing but the state file is left in its folder (the temporary file was renamed).
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]


def test_saving_replaces_the_whole_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save(State(done={str(i): float(i) for i in range(5)}))
    store.save(State())
    assert json.loads(store.path.read_text())["done"] == {}


def test_only_the_last_finished_actions_are_kept() -> None:
    state = State()
    for i in range(30):
        state.mark_done(str(i), 1000.0 + i)
    state.mark_done("15", 1100.0)
    assert len(state.done) == 20 and list(state.done)[-1] == "15" and "5" not in state.done


def test_a_finished_action_is_remembered_for_a_while_only() -> None:
    state = State()
    state.mark_done("7", 1000.0)
    assert state.recently_done("7", 1000.0 + DONE_MEMORY - 1)
    assert not state.recently_done("7", 1000.0 + DONE_MEMORY)
    assert not state.recently_done("8", 1000.0)


def test_an_unreadable_state_file_is_kept_aside_and_the_agent_starts_afresh(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "state.json")
    store.path.write_text('{"version": 1, "action": {"action_id": "1"}}')
    assert store.load() == State()
    assert (tmp_path / "state.json.bad").exists() and not store.path.exists()
    store.path.write_text("not json")
    assert store.load() == State()
