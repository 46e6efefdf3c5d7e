"""What the gateway remembers of its acknowledgements: final reports and status counts."""

from __future__ import annotations

from gaggle_contracts.events import FeedbackStatus
from gaggle_contracts.kv import ChunkDoc, DeploymentDoc, DeploymentEntry, OpenAction
from gaggle_gateway.acks import Acks, fingerprint
from gaggle_gateway.ids import WINDOW_S, report_id, stamp

DOC = DeploymentDoc(chunks=[ChunkDoc(module_id="1", name="n", version="1", artifacts=[])])
SUCCESS = FeedbackStatus(execution="closed", finished="success", details=["done"])


def open_entry(action_id: str) -> DeploymentEntry:
    return DeploymentEntry(open=OpenAction(action_id=action_id, deployment=DOC))


def test_a_final_report_is_remembered_for_its_action_only() -> None:
    acks = Acks(keep_s=60, max_finals=10)
    acks.acknowledged("t.d", "5", fingerprint("action.feedback", SUCCESS), now=0)
    final = acks.final("t.d", "5")
    assert final is not None
    assert final.fingerprint == fingerprint("action.feedback", SUCCESS)
    assert acks.final("t.d", "6") is None
    assert acks.final("t.other", "5") is None


def test_the_same_report_has_the_same_fingerprint_and_another_one_not() -> None:
    same = FeedbackStatus(execution="closed", finished="success", details=["done"])
    assert fingerprint("action.feedback", same) == fingerprint("action.feedback", SUCCESS)
    failure = FeedbackStatus(execution="closed", finished="failure", details=["done"])
    assert fingerprint("action.feedback", failure) != fingerprint("action.feedback", SUCCESS)
    assert fingerprint("cancel.feedback", SUCCESS) != fingerprint("action.feedback", SUCCESS)


def test_statuses_are_counted_per_open_action_and_reset_by_a_final_report() -> None:
    acks = Acks(keep_s=60, max_finals=10)
    for _ in range(3):
        acks.acknowledged("t.d", "5", None, now=0)
    assert acks.count("t.d", "5") == 3
    assert acks.count("t.d", "6") == 0
    acks.acknowledged("t.d", "6", None, now=0)  # a new action starts over
    assert acks.count("t.d", "6") == 1
    acks.acknowledged("t.d", "6", b"final", now=0)
    assert acks.count("t.d", "6") == 0


def test_finals_are_kept_while_the_mirror_shows_the_action_open_and_then_for_the_retry_window():
    acks = Acks(keep_s=60, max_finals=10)
    acks.acknowledged("t.d", "5", b"f", now=100)
    mirror = {"t.d": open_entry("5")}
    acks.sweep(mirror, now=1000)  # long past the window, but the mirror has not caught up
    assert acks.final("t.d", "5") is not None
    acks.sweep({}, now=150)  # caught up, still inside the retry window
    assert acks.final("t.d", "5") is not None
    acks.sweep({"t.d": open_entry("6")}, now=161)  # replaced by another action, window over
    assert acks.final("t.d", "5") is None


def test_status_counts_go_once_the_mirror_no_longer_shows_their_action() -> None:
    acks = Acks(keep_s=60, max_finals=10)
    acks.acknowledged("t.a", "1", None, now=0)
    acks.acknowledged("t.b", "2", None, now=0)
    mirror = {"t.a": open_entry("1"), "t.b": DeploymentEntry()}
    acks.sweep(mirror, now=1, statuses=False)  # counts are walked less often
    assert acks.count("t.b", "2") == 1
    acks.sweep(mirror, now=1)
    assert acks.count("t.a", "1") == 1
    assert acks.count("t.b", "2") == 0


def test_at_most_max_finals_are_remembered_the_oldest_go_first() -> None:
    acks = Acks(keep_s=60, max_finals=3)
    for i in range(5):
        acks.acknowledged(f"t.d{i}", "1", b"f", now=i)
    assert list(acks.finals) == ["t.d2", "t.d3", "t.d4"]
    acks.acknowledged("t.d2", "1", b"g", now=9)  # a newer final of a device moves to the end
    assert list(acks.finals) == ["t.d3", "t.d4", "t.d2"]


def test_an_unsure_final_report_is_remembered_until_acknowledged_or_its_window_ends() -> None:
    acks = Acks(keep_s=60, max_finals=10)
    acks.sent_unsure("t.d", "5", b"f", now=100)
    unsure = acks.unsure_final("t.d", "5")
    assert unsure is not None
    assert (unsure.unsure, unsure.fingerprint) == (True, b"f")
    assert acks.final("t.d", "5") is None  # not acknowledged: still offered
    assert acks.unsure_final("t.d", "6") is None
    acks.sweep({}, now=150)
    assert acks.unsure_final("t.d", "5") is not None
    acks.sweep({}, now=161)
    assert acks.unsure_final("t.d", "5") is None

    acks.sent_unsure("t.d", "5", b"f", now=200)
    acks.acknowledged("t.d", "5", b"f", now=201)  # the retry got its acknowledgement
    assert acks.unsure_final("t.d", "5") is None
    final = acks.final("t.d", "5")
    assert final is not None
    assert not final.unsure


def test_a_report_id_is_the_same_for_the_same_report_and_differs_for_any_other() -> None:
    content = {"status": SUCCESS.model_dump(mode="json"), "time": "20261123T182554"}
    same = report_id("action.feedback", "t", "d", "5", dict(reversed(list(content.items()))))
    assert report_id("action.feedback", "t", "d", "5", content) == same
    others = {
        report_id("cancel.feedback", "t", "d", "5", content),
        report_id("action.feedback", "u", "d", "5", content),
        report_id("action.feedback", "t", "e", "5", content),
        report_id("action.feedback", "t", "d", "6", content),
        report_id("action.feedback", "t", "d", "5", {**content, "time": "20261123T182555"}),
        report_id("action.feedback", "t", "d", "5", {**content, "status": None}),
        report_id("action.feedback", "t", "d/5", None, content),  # no ambiguity in the joins
    }
    assert same not in others
    assert len(others) == 7


def test_a_report_without_a_device_time_is_stamped_with_the_window_of_the_clock() -> None:
    start = 1000 * WINDOW_S
    assert stamp(None, None, start) == stamp(None, None, start + WINDOW_S - 0.5)
    assert stamp(None, None, start) != stamp(None, None, start + WINDOW_S)
    # The device's time, when it sends one, wins over the clock.
    assert stamp("20261123T182554", None, start) == stamp("20261123T182554", None, start + 999)
    assert stamp("20261123T182554", None, start) != stamp(None, 1764000000000, start)
