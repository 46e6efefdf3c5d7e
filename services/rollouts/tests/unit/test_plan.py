"""Rollout rules, table-driven: wave sizes, when the next wave starts, when a rollout stops."""

from __future__ import annotations

import pytest

from gaggle_rollouts.plan import (
    Progress,
    WaveSpec,
    approval_after,
    approval_on_create,
    free_slots,
    next_step,
    refusal,
    transition,
    wave_sizes,
)

P, C = (lambda n: WaveSpec(percent=n)), (lambda n: WaveSpec(count=n))


@pytest.mark.parametrize(
    ("total", "specs", "sizes"),
    [
        (1000, [P(10), P(30), P(60)], [100, 300, 600]),
        (7, [P(10), P(30), P(60)], [1, 2, 4]),  # the first wave is never empty; rest to the last
        (10, [P(50)], [5, 5]),  # what the percentages leave over is one more wave
        (1000, [C(10), C(100)], [10, 100, 890]),
        (5, [C(10), C(100)], [5, 0]),
        (3, [P(100)], [3]),
        (0, [P(100)], [0]),
    ],
)
def test_wave_sizes(total: int, specs: list[WaveSpec], sizes: list[int]) -> None:
    assert wave_sizes(total, specs) == sizes
    assert sum(sizes) == total


def progress(*waves: dict[str, int]) -> Progress:
    return Progress.of((i, state, n) for i, w in enumerate(waves, 1) for state, n in w.items())


@pytest.mark.parametrize(
    ("current", "waves", "forgiven", "kind"),
    [
        # 20 % tolerated: 20 of 100 failed is still fine, 21 is not.
        (1, [{"failure": 20, "running": 80}, {"waiting": 900}], 0, "none"),
        (1, [{"failure": 21, "running": 79}, {"waiting": 900}], 0, "pause"),
        # Failures count against every started device, not only those done.
        (1, [{"failure": 5, "success": 5, "running": 90}, {"waiting": 900}], 0, "none"),
        # The success condition (80 %) starts the next wave.
        (1, [{"success": 79, "running": 21}, {"waiting": 900}], 0, "none"),
        (1, [{"success": 80, "running": 20}, {"waiting": 900}], 0, "next_wave"),
        # Past the threshold no next wave, even with the success condition met.
        (1, [{"success": 79, "failure": 21}, {"waiting": 900}], 0, "pause"),
        # Resumed after 21 failures: those no longer count.
        (1, [{"success": 79, "failure": 21}, {"waiting": 900}], 21, "none"),
        # The last wave: finished once nobody is pending or running.
        (2, [{"success": 100}, {"success": 890, "running": 10}], 0, "none"),
        (2, [{"success": 100}, {"success": 880, "failure": 10, "canceled": 10}], 0, "finish"),
        # An empty wave meets its condition at once.
        (1, [{}, {"waiting": 5}], 0, "next_wave"),
    ],
)
def test_next_step(current: int, waves: list[dict[str, int]], forgiven: int, kind: str) -> None:
    step = next_step(
        current_wave=current,
        wave_count=len(waves),
        progress=progress(*waves),
        success_threshold=80,
        error_threshold=20,
        error_action="pause",
        failures_forgiven=forgiven,
    )
    assert step.kind == kind
    if kind == "pause":
        assert step.reason is not None and "error threshold exceeded" in step.reason


def test_zero_error_threshold_stops_at_the_first_failure_and_abort_is_honoured() -> None:
    step = next_step(
        current_wave=1,
        wave_count=2,
        progress=progress({"failure": 1, "running": 99}, {"waiting": 10}),
        success_threshold=100,
        error_threshold=0,
        error_action="abort",
    )
    assert step.kind == "abort"


def test_counters_fold_waiting_into_pending_and_count_the_queued_apart() -> None:
    overall = progress({"success": 3, "running": 1}, {"waiting": 4, "pending": 2}).overall()
    assert overall.public() == {
        "total": 10,
        "pending": 6,
        "queued": 2,
        "running": 1,
        "success": 3,
        "failure": 0,
        "canceled": 0,
        "timed_out": 0,
        "rolled_back": 0,
        "soaking": 0,
    }


@pytest.mark.parametrize(
    ("cap", "in_flight", "chunk", "free"),
    [
        (3, 0, 500, 3),  # an idle tenant fills its cap
        (3, 1, 500, 2),
        (3, 3, 500, 0),  # at the cap: everyone else waits
        (3, 5, 500, 0),  # over it (the cap was lowered): never negative
        (1000, 10, 500, 500),  # a chunk per transaction at most
        (None, 0, 500, 0),  # the cap is not known yet: nothing opens
    ],
)
def test_free_slots_are_what_the_cap_leaves_a_chunk_at_most(
    cap: int | None, in_flight: int, chunk: int, free: int
) -> None:
    assert free_slots(cap, in_flight, chunk) == free


def test_queued_devices_are_neither_successes_nor_failures_for_the_next_wave() -> None:
    # Wave 1 of 10 under a cap of 3: 2 succeeded, 1 runs, 7 queued; 80 % success is 8 of 10.
    queued = progress({"success": 2, "running": 1, "pending": 7}, {"waiting": 10})
    kwargs = {"current_wave": 1, "wave_count": 2, "success_threshold": 80, "error_threshold": 20}
    assert next_step(progress=queued, error_action="pause", **kwargs).kind == "none"
    done = progress({"success": 8, "running": 1, "pending": 1}, {"waiting": 10})
    assert next_step(progress=done, error_action="pause", **kwargs).kind == "next_wave"


def test_failures_trip_the_error_threshold_against_the_whole_wave_queued_included() -> None:
    # 2 failures of a wave of 10 is 20 %, not over it; the queued still count in the wave.
    kwargs = {"current_wave": 1, "wave_count": 1, "success_threshold": 100, "error_threshold": 20}
    at = progress({"failure": 2, "running": 1, "pending": 7})
    assert next_step(progress=at, error_action="abort", **kwargs).kind == "none"
    over = progress({"failure": 3, "pending": 7})
    assert next_step(progress=over, error_action="abort", **kwargs).kind == "abort"


def test_a_last_wave_with_queued_devices_is_not_finished() -> None:
    queued = progress({"success": 9, "pending": 1})
    step = next_step(
        current_wave=1,
        wave_count=1,
        progress=queued,
        success_threshold=100,
        error_threshold=100,
        error_action="pause",
    )
    assert step.kind == "none"
    assert queued.overall().queued == 1


@pytest.mark.parametrize(
    ("state", "command", "to"),
    [
        ("created", "start", "running"),
        ("running", "pause", "paused"),
        ("paused", "resume", "running"),
        ("paused", "abort", "aborted"),
        ("finished", "pause", None),
        ("aborted", "resume", None),
        ("running", "start", None),
        ("finished", "abort", None),
    ],
)
def test_transitions(state: str, command: str, to: str | None) -> None:
    assert transition(state, command) == to


@pytest.mark.parametrize(
    ("state", "approval", "command", "to"),
    [
        # no approval asked: as before
        ("created", None, "start", "running"),
        ("created", None, "approve", None),
        ("created", None, "deny", None),
        # waiting for approval: no start; approve keeps it created, deny aborts it
        ("created", "pending", "start", None),
        ("created", "pending", "approve", "created"),
        ("created", "pending", "deny", "aborted"),
        ("created", "pending", "abort", "aborted"),
        # approved: starts like any other, and is approved only once
        ("created", "approved", "start", "running"),
        ("created", "approved", "approve", None),
        ("created", "approved", "deny", None),
        ("running", "approved", "pause", "paused"),
        # denied: aborted, nothing more
        ("aborted", "denied", "start", None),
        ("aborted", "denied", "approve", None),
    ],
)
def test_approval_gates_the_start(
    state: str, approval: str | None, command: str, to: str | None
) -> None:
    assert transition(state, command, approval) == to


@pytest.mark.parametrize(
    ("state", "approval", "command", "words"),
    [
        ("created", "pending", "start", "waits for approval"),
        ("created", None, "approve", "needs no approval"),
        ("created", "approved", "approve", "approved already"),
        ("aborted", "denied", "approve", "denied already"),
        ("finished", None, "pause", "cannot pause a finished rollout"),
    ],
)
def test_refusals_say_why(state: str, approval: str | None, command: str, words: str) -> None:
    assert words in refusal(state, command, approval)


def test_a_new_rollout_waits_for_approval_only_where_the_tenant_asks() -> None:
    assert approval_on_create(True) == "pending"
    assert approval_on_create(False) is None
    assert (approval_after("approve"), approval_after("deny")) == ("approved", "denied")
