from __future__ import annotations

import pytest

from gaggle_registry.domain import TooManyAttributesError, lifted, merge_attributes

CURRENT = {"hw_boardname": "b", "sw_version": "1.0", "extra": "x"}


@pytest.mark.parametrize(
    ("mode", "data", "expected"),
    [
        (
            "merge",
            {"sw_version": "2.0", "new": "n"},
            {"hw_boardname": "b", "sw_version": "2.0", "extra": "x", "new": "n"},
        ),
        ("replace", {"sw_version": "2.0"}, {"sw_version": "2.0"}),
        ("remove", {"extra": "", "missing": ""}, {"hw_boardname": "b", "sw_version": "1.0"}),
    ],
)
def test_config_modes_follow_the_ddi_spec(
    mode: str, data: dict[str, str], expected: dict[str, str]
) -> None:
    assert merge_attributes(CURRENT, mode, data) == expected


def test_more_than_a_hundred_attributes_are_refused() -> None:
    current = {f"k{i}": "v" for i in range(100)}
    with pytest.raises(TooManyAttributesError, match="at most 100"):
        merge_attributes(current, "merge", {"one-more": "v"})
    assert len(merge_attributes(current, "replace", {"a": "b"})) == 1


def test_hw_boardname_is_our_hw_model() -> None:
    assert lifted({"hw_boardname": "b", "hw_revision": "2", "client": "x"}) == {
        "hw_model": "b",
        "hw_revision": "2",
        "sw_version": None,
    }
