"""Decisions, table-driven: gooseBit's selection rules and where Gaggle differs on purpose."""

from __future__ import annotations

import pytest

from gaggle_contracts.kv import ArtifactDoc
from gaggle_rollouts.decision import (
    DeviceView,
    PolicyView,
    RolloutView,
    choose_software,
    fits,
    same_version,
)
from gaggle_rollouts.domain import Software

BOARD = DeviceView("d1", hw_model="board", hw_revision="1.0", sw_version="1.0.0")
BARE = DeviceView("d2")  # never reported its hardware


def sw(
    software_id: str,
    version: str,
    compatibility: tuple[tuple[str, str], ...],
    deleted: bool = False,
) -> Software:
    """A software of the catalogue; its file plays no part in a decision."""
    file = ArtifactDoc(filename="f", size=1, md5="0", sha1="0", sha256="0")
    return Software("t", software_id, "img", version, file, compatibility, deleted)


CATALOGUE = {
    "10": sw("10", "1.0.0", (("board", "1.0"),)),
    "11": sw("11", "1.9.0", (("board", "*"),)),
    "12": sw("12", "1.10.0", (("board", "1.0"), ("board", "2.0"))),
    "13": sw("13", "9.0.0", (("other", "*"),)),
    "14": sw("14", "2.0.0", (("board", "1.0"),), deleted=True),
    "15": sw("15", "0.5", (("*", "*"),)),
    "16": sw("16", "not-a-version!", (("board", "*"),)),
}


def rollout(
    rid: str,
    sid: str,
    order: int,
    *,
    feed: str = "default",
    running: bool = True,
    includes: bool = True,
) -> RolloutView:
    return RolloutView(rid, feed, sid, "running" if running else "paused", order, includes)


@pytest.mark.parametrize(
    ("pairs", "device", "expected"),
    [
        ((("board", "1.0"),), BOARD, True),
        ((("board", "2.0"),), BOARD, False),
        ((("board", "*"),), BOARD, True),
        ((("*", "1.0"),), BOARD, True),
        ((("*", "*"),), BARE, True),
        ((("board", "*"),), BARE, False),
        ((("other", "1.0"), ("board", "1.0")), BOARD, True),
        ((), BOARD, False),
    ],
)
def test_compatibility(
    pairs: tuple[tuple[str, str], ...], device: DeviceView, expected: bool
) -> None:
    assert fits(pairs, device) is expected


@pytest.mark.parametrize(
    ("device", "policy", "rollouts", "failed", "expected", "reason"),
    [
        (BOARD, PolicyView("pinned"), [], frozenset(), None, "pinned"),
        (BOARD, PolicyView("assigned", software_id="12"), [], frozenset(), "12", "assigned"),
        (
            BOARD,
            PolicyView("assigned", software_id="13"),
            [],
            frozenset(),
            None,
            "assigned software does not fit the device",
        ),
        (
            BOARD,
            PolicyView("assigned", software_id="14"),
            [],
            frozenset(),
            None,
            "assigned software unknown or deleted",
        ),
        (BOARD, PolicyView("assigned", software_id="10"), [], frozenset(), None, "up to date"),
        # 1.10.0 beats 1.9.0 (not a string order); 9.0.0 does not fit; deleted 2.0.0 is skipped;
        # the unorderable version is never latest.
        (BOARD, PolicyView("latest"), [], frozenset(), "12", "latest"),
        (BARE, PolicyView("latest"), [], frozenset(), "15", "latest"),
        (BOARD, PolicyView("latest"), [], frozenset({"12"}), None, "failed on this device before"),
        (BOARD, PolicyView(), [rollout("r1", "11", 1)], frozenset(), "11", "rollout"),
        # The newest running rollout of the feed wins.
        (
            BOARD,
            PolicyView(),
            [rollout("r1", "11", 1), rollout("r2", "12", 2)],
            frozenset(),
            "12",
            "rollout",
        ),
        # A paused newest rollout pauses: the older one does not come back (differs from gooseBit).
        (
            BOARD,
            PolicyView(),
            [rollout("r1", "11", 1), rollout("r2", "12", 2, running=False)],
            frozenset(),
            None,
            "rollout paused",
        ),
        (
            BOARD,
            PolicyView(),
            [rollout("r1", "11", 1, running=False)],
            frozenset(),
            None,
            "rollout paused",
        ),
        (
            BOARD,
            PolicyView(),
            [RolloutView("r1", "default", "11", "finished", 1, True)],
            frozenset(),
            None,
            "no running rollout in the feed",
        ),
        (
            BOARD,
            PolicyView(feed="beta"),
            [rollout("r1", "11", 1)],
            frozenset(),
            None,
            "no running rollout in the feed",
        ),
        (
            BOARD,
            PolicyView(feed="beta"),
            [rollout("r1", "11", 1, feed="beta")],
            frozenset(),
            "11",
            "rollout",
        ),
        (
            BOARD,
            PolicyView(),
            [rollout("r1", "13", 1)],
            frozenset(),
            None,
            "rollout software does not fit the device",
        ),
        (
            BOARD,
            PolicyView(),
            [rollout("r1", "11", 1, includes=False)],
            frozenset(),
            None,
            "device not in a started wave",
        ),
    ],
)
def test_choose_software(
    device: DeviceView,
    policy: PolicyView,
    rollouts: list[RolloutView],
    failed: frozenset[str],
    expected: str | None,
    reason: str,
) -> None:
    decision = choose_software(device, policy, CATALOGUE, rollouts, failed)
    assert (decision.software_id, decision.reason) == (expected, reason)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.2", "1.2.0", True),
        ("1.2.0", "1.2.1", False),
        ("x", "x", True),
        ("x", "y", False),
        (None, "1.0", False),
    ],
)
def test_same_version(a: str | None, b: str | None, expected: bool) -> None:
    assert same_version(a, b) is expected


@pytest.mark.parametrize(
    ("device", "policy", "catalogue", "expected", "reason"),
    [
        (BOARD, PolicyView("latest"), {}, None, "no fitting software"),
        (BOARD, PolicyView("latest"), {"16": CATALOGUE["16"]}, None, "no fitting software"),
        (BOARD, PolicyView("latest"), {"13": CATALOGUE["13"]}, None, "no fitting software"),
        (
            BOARD,
            PolicyView("assigned", software_id="99"),
            CATALOGUE,
            None,
            "assigned software unknown or deleted",
        ),
        (BOARD, PolicyView("assigned"), CATALOGUE, None, "assigned software unknown or deleted"),
        (
            DeviceView("d3", hw_model="board", hw_revision="1.0", sw_version="1.10"),
            PolicyView("latest"),
            CATALOGUE,
            None,
            "up to date",
        ),
    ],
)
def test_choose_software_over_a_catalogue(
    device: DeviceView,
    policy: PolicyView,
    catalogue: dict[str, Software],
    expected: str | None,
    reason: str,
) -> None:
    decision = choose_software(device, policy, catalogue)
    assert (decision.software_id, decision.reason) == (expected, reason)


@pytest.mark.parametrize(
    ("device", "failed", "reason"),
    [
        (
            DeviceView("d1", hw_model="board", hw_revision="1.0", sw_version="1.9"),
            frozenset(),
            "up to date",
        ),
        (BOARD, frozenset({"11"}), "failed on this device before"),
    ],
)
def test_a_rollout_offers_nothing_to_a_device_up_to_date_or_failed_before(
    device: DeviceView, failed: frozenset[str], reason: str
) -> None:
    decision = choose_software(device, PolicyView(), CATALOGUE, [rollout("r1", "11", 1)], failed)
    assert (decision.software_id, decision.reason, decision.rollout_id) == (None, reason, "r1")
