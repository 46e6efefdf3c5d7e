"""Inner hashes, signature policy and version order: the pure rules images are judged by."""

from __future__ import annotations

import hashlib
import json

import pytest

from gaggle_artifacts.signatures import Verdict
from gaggle_artifacts.verification import (
    ImageRefusedError,
    Policy,
    check_images,
    check_newer,
    check_signature,
)
from gaggle_swu import build_swu, parse_swu
from gaggle_swu.parser import SwuStreamParser

A, B = b"payload a" * 100, b"payload b"
SHA_A, SHA_B = hashlib.sha256(A).hexdigest(), hashlib.sha256(B).hexdigest()
STRICT = Policy(require_image_hashes=True)


def info(desc: str, files: list[tuple[str, bytes]]):  # type: ignore[no-untyped-def]
    parser = SwuStreamParser(hash_members=True)
    parser.feed(build_swu(desc, files))
    return parser.finish()


LIBCONFIG = f"""
software = {{
  version = "1.0";
  myboard = {{
    hardware-compatibility = ["1.0"];
    stable = {{
      copy-1 = {{ images: ({{ filename = "a"; sha256 = "{SHA_A}"; type = "raw"; }}); }};
    }};
    scripts: ({{ filename = "b"; sha256 = "{SHA_B.upper()}"; type = "lua"; }});
  }};
  files: ({{ type = "archive"; path = "/x"; }});
}};
"""
JSON = json.dumps(
    {
        "software": {
            "version": "1.0",
            "files": [{"filename": "a", "sha256": SHA_A}],
            "other": {"scripts": [{"filename": "b", "sha256": SHA_B}]},
        }
    }
)


@pytest.mark.parametrize("desc", [LIBCONFIG, JSON], ids=["libconfig", "json"])
def test_hashes_of_board_collection_and_script_entries_are_checked(desc: str) -> None:
    with pytest.raises(ImageRefusedError) as refused:
        check_images(info(desc, [("a", A), ("b", B), ("extra", b"x")]), STRICT)
    assert (refused.value.code, refused.value.details["member"]) == ("image_unreferenced", "extra")
    assert check_images(info(desc, [("a", A), ("b", B)]), STRICT)["unreferenced"] == []
    report = check_images(info(desc, [("a", A), ("b", B), ("extra", b"x")]), Policy())
    report["checked"].sort()
    assert report == {
        "checked": ["a", "b"],
        "missing": [],
        "unhashed": [],
        "unreferenced": ["extra"],
    }


@pytest.mark.parametrize("desc", [LIBCONFIG, JSON], ids=["libconfig", "json"])
@pytest.mark.parametrize("policy", [Policy(), STRICT])
def test_a_member_altered_after_signing_is_refused_naming_it(desc: str, policy: Policy) -> None:
    with pytest.raises(ImageRefusedError) as refused:
        check_images(info(desc, [("a", A), ("b", B + b"!")]), policy)
    assert refused.value.code == "image_hash_mismatch"
    assert refused.value.details["member"] == "b"
    assert refused.value.details["found"] == hashlib.sha256(B + b"!").hexdigest()
    assert "'b'" in str(refused.value)


@pytest.mark.parametrize(
    ("desc", "files", "code", "member", "report"),
    [
        (
            'software = { version = "1"; images: ({ filename = "a"; }); };',
            [("a", A)],
            "image_hash_missing",
            "a",
            {"checked": [], "missing": [], "unhashed": ["a"], "unreferenced": []},
        ),
        (
            'software = { version = "1"; images: ({ filename = "gone"; sha256 = "'
            + SHA_A
            + '"; }); };',
            [],
            "image_missing",
            "gone",
            {"checked": [], "missing": ["gone"], "unhashed": [], "unreferenced": []},
        ),
    ],
)
def test_missing_hashes_and_files_are_reported_or_refused_by_policy(
    desc: str, files: list[tuple[str, bytes]], code: str, member: str, report: dict[str, list[str]]
) -> None:
    image = info(desc, files)
    assert check_images(image, Policy()) == report
    with pytest.raises(ImageRefusedError) as refused:
        check_images(image, STRICT)
    assert (refused.value.code, refused.value.details["member"]) == (code, member)


def test_member_hashes_do_not_depend_on_how_the_bytes_arrive() -> None:
    image = build_swu(LIBCONFIG, [("a", A), ("b", B)])
    parser = SwuStreamParser(hash_members=True)
    for i in range(0, len(image), 7):
        parser.feed(image[i : i + 7])
    assert parser.finish().sha256["a"] == SHA_A
    assert parse_swu(image).sha256 == {}  # only when asked for


@pytest.mark.parametrize(
    ("state", "policy", "refused"),
    [
        ("verified", Policy(require_signature=True), False),
        ("unverified", Policy(require_signature=True), True),
        ("unsigned", Policy(require_signature=True), True),
        ("unverified", Policy(), False),
        ("unsigned", Policy(), False),
    ],
)
def test_signatures_are_required_only_by_policy(state: str, policy: Policy, refused: bool) -> None:
    verdict = Verdict(state, reason="why")  # type: ignore[arg-type]
    if refused:
        with pytest.raises(ImageRefusedError, match="why") as error:
            check_signature(verdict, policy)
        assert error.value.code == "signature_required"
    else:
        check_signature(verdict, policy)


ANY = ("*", "*")


@pytest.mark.parametrize(
    ("version", "compatibility", "catalogue", "refused_for"),
    [
        ("2.0", [("b1", "1")], [("1.9", [("b1", "1")])], None),
        ("1.9", [("b1", "1")], [("2.0", [("b1", "1")])], "b1"),
        ("2.0", [("b1", "1")], [("2.0", [("b1", "2")])], "b1"),  # equal is not newer
        ("1.0", [("b1", "1")], [("2.0", [("b2", "1")])], None),  # another board
        ("1.0", [("b1", "1")], [("2.0", [ANY])], "*"),  # any board includes b1
        ("1.0", [ANY], [("2.0", [("b2", "1")])], "b2"),
        ("1.10", [("b1", "1")], [("1.9", [("b1", "1")])], None),  # not text order
        ("1.0", [("b1", "1")], [("not a version!", [("b1", "1")])], None),
    ],
)
def test_monotonic_versions_need_a_newer_version_per_board(
    version: str,
    compatibility: list[tuple[str, str]],
    catalogue: list[tuple[str, list[tuple[str, str]]]],
    refused_for: str | None,
) -> None:
    if refused_for is None:
        check_newer(version, compatibility, catalogue)
        return
    with pytest.raises(ImageRefusedError) as refused:
        check_newer(version, compatibility, catalogue)
    assert refused.value.code == "version_not_newer"
    assert refused.value.details["board"] == refused_for
