from __future__ import annotations

import itertools

import pytest
import semver
from hypothesis import given, settings
from hypothesis import strategies as st

from gaggle_contracts.versions import InvalidVersionError, SwVersion

PROPERTY = settings(max_examples=400, deadline=None, database=None)


def v(text: str) -> SwVersion:
    return SwVersion.parse(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1", "numeric"),
        ("1.2.3", "numeric"),
        ("1.2.3.4", "numeric"),
        ("1.2.3.4.5", "numeric"),
        ("01.002", "numeric"),
        ("65535.65535.65535.65535", "numeric"),
        ("1.0-rc1", "semver"),
        ("1.2.3+build.5", "semver"),
        ("1.70000.0", "semver"),
        ("8.8.1-12-g302f635+189128", "semver"),
        ("1.0.0-alpha.1", "semver"),
    ],
)
def test_version_kind_follows_swupdate(text: str, kind: str) -> None:
    version = v(text)
    assert version.kind == kind
    assert version.text == text
    assert str(version) == text
    assert repr(version) == f"SwVersion({text!r})"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\t",
        " 1.0",
        "1.0 ",
        "1.0\n",
        "1. 0",
        "v1.0",
        "latest",
        "1..2",
        ".1",
        "1.",
        "1.2.3.4.x",
        "1.2.3.70000",
        "1.2.3.4-rc1",
        "1.0.0-",
        "1.0.0+",
        "1.0.0-01",
        "01.0.0-rc",
        "1.0.0-rc..1",
        "\u0661.\u0662",
        "1" * 129,
        "1.2.3." + "4" * 124,
    ],
)
def test_text_that_is_neither_numeric_nor_semver_is_invalid(text: str) -> None:
    with pytest.raises(InvalidVersionError):
        SwVersion.parse(text)


def test_invalid_version_error_is_a_value_error() -> None:
    assert issubclass(InvalidVersionError, ValueError)


def test_128_characters_are_accepted() -> None:
    text = "1.2.3.4." + "5" * 120
    assert len(text) == 128
    assert v(text) == v("1.2.3.4")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0", "1.0.0"),
        ("1.2", "1.2.0.0"),
        ("1.2.3.4", "1.2.3.4.5"),
        ("1.2.3.4.5", "1.2.3.4.99999999"),
        ("01.2", "1.2"),
        ("0", "0.0.0"),
        ("0.0", "00.0.0.0"),
        ("1.0.0+a", "1.0.0+b"),
        ("1.0-rc.1", "1.0.0-rc.1"),
        ("1.2.3", "1.2.3+build"),
        ("1.70000", "1.70000.0"),
    ],
)
def test_equal_versions_are_equal_and_hash_alike(a: str, b: str) -> None:
    assert v(a) == v(b)
    assert hash(v(a)) == hash(v(b))
    assert v(a) <= v(b)
    assert v(a) >= v(b)
    assert not v(a) < v(b)
    assert not v(a) > v(b)
    assert len({v(a), v(b)}) == 1


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        # numeric: packed 16 bits per field
        ("1.2.3", "1.2.4"),
        ("1.2.3", "1.2.3.1"),
        ("1.9", "1.10"),
        ("0.65535.65535.65535", "1"),
        ("9", "10"),
        # SemVer 2 precedence, the spec's own example chain
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-alpha.beta", "1.0.0-beta"),
        ("1.0.0-beta", "1.0.0-beta.2"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-beta.11", "1.0.0-rc.1"),
        ("1.0.0-rc.1", "1.0.0+build"),
        ("1.70000.0", "1.70001.0"),
        # mixed: by meaning (gooseBit's SemVer comparison where it has one)
        ("1.2.3-rc1", "1.2.3"),
        ("1.2.3", "1.2.4-rc1"),
        ("1.2.3-rc1", "1.2.3.4"),
        ("1.65535.0", "1.70000.0"),
        ("2.0.0-rc", "10"),
        ("2.0.0-rc", "9"),
    ],
)
def test_versions_order_by_meaning(lower: str, higher: str) -> None:
    a, b = v(lower), v(higher)
    assert a < b
    assert a <= b
    assert b > a
    assert b >= a
    assert a != b
    assert max(a, b) is b


def test_mixed_comparison_is_transitive_where_a_string_fallback_would_cycle() -> None:
    # As strings "10" < "2.0.0-rc" < "9", while 9 < 10 as numbers: no order satisfies all three.
    assert sorted([v("10"), v("2.0.0-rc"), v("9")]) == [v("2.0.0-rc"), v("9"), v("10")]


def test_versions_do_not_compare_with_strings() -> None:
    assert v("1.0") != "1.0"
    with pytest.raises(TypeError):
        assert v("1.0") < "1.1"  # type: ignore[operator]


def test_sorting_mixed_versions() -> None:
    texts = ["1.0.0-rc.1", "0.9", "1.0", "1.0.0.1", "1.0.1-alpha", "1.0.1", "2", "1.0-beta"]
    expected = ["0.9", "1.0-beta", "1.0.0-rc.1", "1.0", "1.0.0.1", "1.0.1-alpha", "1.0.1", "2"]
    assert [x.text for x in sorted(map(v, texts))] == expected


# properties -------------------------------------------------------------------------------

_field = st.integers(0, 65535) | st.integers(0, 3)
_numeric = st.builds(
    lambda fields, zero: ".".join(("0" if zero else "") + str(f) for f in fields),
    st.lists(_field, min_size=1, max_size=6),
    st.booleans(),
)
_ident = st.sampled_from(["alpha", "beta", "rc", "0", "1", "2", "11", "x-y", "RC"])
_semver = st.builds(
    lambda core, pre, build: (
        core + (f"-{'.'.join(pre)}" if pre else "") + (f"+{'.'.join(build)}" if build else "")
    ),
    st.sampled_from(["0", "1", "2"])
    | st.builds(
        lambda m, n, p: f"{m}.{n}.{p}",
        st.integers(0, 2),
        st.integers(0, 2) | st.just(70000),
        st.integers(0, 2),
    )
    | st.builds(lambda m, n: f"{m}.{n}", st.integers(0, 2), st.integers(0, 2)),
    st.lists(_ident, max_size=3),
    st.lists(st.sampled_from(["b1", "001", "sha.5"]), max_size=1),
)
versions = st.builds(SwVersion.parse, _numeric | _semver)


def _packed(text: str) -> int:
    fields = [int(f) for f in text.split(".")[:4]]
    fields += [0] * (4 - len(fields))
    return (fields[0] << 48) | (fields[1] << 32) | (fields[2] << 16) | fields[3]


@PROPERTY
@given(versions, versions)
def test_ordering_is_antisymmetric_and_consistent(a: SwVersion, b: SwVersion) -> None:
    assert [a < b, a == b, a > b].count(True) == 1
    assert (a <= b) == (a < b or a == b)
    assert (a >= b) == (a > b or a == b)
    assert (a < b) == (b > a)
    assert (a != b) is not (a == b)
    if a == b:
        assert hash(a) == hash(b)
        assert b == a


@PROPERTY
@given(versions, versions, versions)
def test_ordering_is_transitive(a: SwVersion, b: SwVersion, c: SwVersion) -> None:
    for x, y, z in itertools.permutations((a, b, c)):
        if x <= y and y <= z:
            assert x <= z
        if x < y and y <= z:
            assert x < z
        if x == y and y == z:
            assert x == z


@PROPERTY
@given(versions, versions)
def test_same_kind_versions_compare_like_swupdate(a: SwVersion, b: SwVersion) -> None:
    def sign(n: int) -> int:
        return (n > 0) - (n < 0)

    ours = (a > b) - (a < b)
    if a.kind == b.kind == "numeric":
        assert ours == sign(_packed(a.text) - _packed(b.text))
    elif a.kind == b.kind == "semver":
        sa = semver.Version.parse(a.text, optional_minor_and_patch=True)
        sb = semver.Version.parse(b.text, optional_minor_and_patch=True)
        assert ours == sa.compare(sb)


@PROPERTY
@given(st.lists(versions, max_size=8))
def test_sorted_versions_are_pairwise_ordered(items: list[SwVersion]) -> None:
    ordered = sorted(items)
    for i, j in itertools.combinations(range(len(ordered)), 2):
        assert ordered[i] <= ordered[j]
