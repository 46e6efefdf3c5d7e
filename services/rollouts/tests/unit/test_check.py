"""Attended upgrade checks, table-driven: what is offered under each mode, and what never is."""

from __future__ import annotations

import pytest

from gaggle_contracts.kv import ArtifactDoc
from gaggle_rollouts.check import RolloutSeen, answer, revision
from gaggle_rollouts.decision import DeviceView, PolicyView
from gaggle_rollouts.domain import Software


def sw(sid: str, version: str, *compat: tuple[str, str], deleted: bool = False) -> Software:
    file = ArtifactDoc(filename="f.swu", size=1, md5="0", sha1="0", sha256=sid)
    return Software("t", sid, "img", version, file, compat or (("board", "1.0"),), deleted)


CATALOGUE = {
    "1": sw("1", "1.0.0"),
    "2": sw("2", "1.2.0"),
    "3": sw("3", "1.5.0", ("board", "*")),
    "4": sw("4", "2.0.0", deleted=True),
    "5": sw("5", "3.0.0", ("other", "*")),
    "6": sw("6", "1.9.0"),
}
UNTRUSTED = frozenset({"6"})


def device(version: str = "1.0.0", model: str | None = "board") -> DeviceView:
    return DeviceView("d", model, "1.0", version)


def running(state: str = "running", member: str | None = "pending", sid: str = "2") -> RolloutSeen:
    return RolloutSeen("7", state, sid, member)


@pytest.mark.parametrize(
    ("policy", "rollout", "version", "outcome", "offered"),
    [
        # latest: the newest fitting, trusted, live software (6 is untrusted, 4 deleted, 5 other)
        (PolicyView("latest"), None, "1.0.0", "update", "3"),
        (PolicyView("latest"), None, "1.5.0", "up_to_date", None),
        (PolicyView("latest"), None, "1.6", "up_to_date", None),
        # assigned: that one, if it is newer and fits
        (PolicyView("assigned", software_id="2"), None, "1.0.0", "update", "2"),
        (PolicyView("assigned", software_id="2"), None, "1.2", "up_to_date", None),
        (PolicyView("assigned", software_id="5"), None, "1.0.0", "up_to_date", None),
        (PolicyView("assigned", software_id="6"), None, "1.0.0", "up_to_date", None),
        (PolicyView("assigned", software_id="4"), None, "1.0.0", "up_to_date", None),
        # pinned: never
        (PolicyView("pinned"), None, "0.1.0", "up_to_date", None),
        # rollout: the feed's running rollout, for devices of its started waves
        (PolicyView("rollout"), running(), "1.0.0", "update", "2"),
        (PolicyView("rollout"), running(member="waiting"), "1.0.0", "up_to_date", None),
        (PolicyView("rollout"), running(member=None), "1.0.0", "up_to_date", None),
        (PolicyView("rollout"), running(state="paused"), "1.0.0", "up_to_date", None),
        (PolicyView("rollout"), running(sid="6"), "1.0.0", "up_to_date", None),
        (PolicyView("rollout"), None, "1.0.0", "up_to_date", None),
        # a version that does not order cannot be answered
        (PolicyView("latest"), None, "one point oh", "unprocessable", None),
    ],
)
def test_what_a_check_offers(
    policy: PolicyView,
    rollout: RolloutSeen | None,
    version: str,
    outcome: str,
    offered: str | None,
) -> None:
    found = answer(device(version), policy, CATALOGUE, rollout=rollout, untrusted=UNTRUSTED)
    assert found.outcome == outcome, found.reason
    assert (found.offer.software_id if found.offer else None) == offered
    assert found.reason


def test_untrusted_software_is_never_offered_even_when_newest() -> None:
    trusted = answer(device(), PolicyView("latest"), CATALOGUE)
    assert trusted.offer is not None and trusted.offer.software_id == "6"
    untrusted = answer(device(), PolicyView("latest"), CATALOGUE, untrusted=UNTRUSTED)
    assert untrusted.offer is not None and untrusted.offer.software_id == "3"
    verdicts = {c.software_id: c.verdict for c in untrusted.considered}
    assert verdicts["6"].startswith("untrusted")
    assert verdicts["4"] == "deleted"
    assert verdicts["5"].startswith("does not fit")
    assert verdicts["1"] == "not newer"
    assert verdicts["3"] == "newer, fits"


def test_blocked_and_failed_software_is_not_offered_again() -> None:
    policy = PolicyView("assigned", software_id="2")
    blocked = answer(device(), policy, CATALOGUE, blocked=frozenset({"2"}))
    assert (blocked.outcome, blocked.offer) == ("up_to_date", None)
    assert "rolled back" in blocked.reason
    failed = answer(device(), policy, CATALOGUE, failed=frozenset({"2"}))
    assert (failed.outcome, failed.offer) == ("up_to_date", None)
    assert "failed" in failed.reason


def test_a_device_without_hardware_fits_only_software_for_any_board() -> None:
    catalogue = {**CATALOGUE, "8": sw("8", "1.1.0", ("*", "*"))}
    found = answer(device(model=None), PolicyView("latest"), catalogue, untrusted=UNTRUSTED)
    assert found.offer is not None and found.offer.software_id == "8"


def test_the_revision_changes_with_what_the_answer_was_made_from() -> None:
    base = revision(device(), PolicyView("latest"), CATALOGUE, None, (UNTRUSTED,))
    assert base == revision(
        device("9.9.9"), PolicyView("latest"), dict(CATALOGUE), None, (UNTRUSTED,)
    )
    changed = [
        revision(device(), PolicyView("pinned"), CATALOGUE, None, (UNTRUSTED,)),
        revision(device(model="x"), PolicyView("latest"), CATALOGUE, None, (UNTRUSTED,)),
        revision(
            device(), PolicyView("latest"), {**CATALOGUE, "9": sw("9", "4.0")}, None, (UNTRUSTED,)
        ),
        revision(device(), PolicyView("latest"), CATALOGUE, running(), (UNTRUSTED,)),
        revision(device(), PolicyView("latest"), CATALOGUE, None, (frozenset(),)),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)
