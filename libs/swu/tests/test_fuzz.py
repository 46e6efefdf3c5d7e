from __future__ import annotations

import contextlib
import json
import time
import tracemalloc
from datetime import timedelta
from typing import get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gaggle_swu import (
    SwDescription,
    SwuError,
    SwuErrorCode,
    SwuInfo,
    SwuStreamParser,
    build_swu,
    parse_sw_description,
)
from gaggle_swu.parser import MAX_NAME_SIZE

# No example database: runs are independent of each other and of the machine's history.
FUZZ = settings(
    max_examples=400,
    deadline=timedelta(seconds=1),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CODES = set(get_args(SwuErrorCode))
MAX_DESC = 4096
# The header and name buffer, plus the sw-description being collected.
BUFFER_BOUND = 110 + MAX_NAME_SIZE + 3 + MAX_DESC

DESC = """software = {
    version = "1.4.2";
    hardware-compatibility = ["rev-a"];
    board = { hardware-compatibility = ["1.0"];
              images: ( { filename = "root.img"; type = "raw"; sha256 = "00"; } ); };
};"""
JSON_DESC = json.dumps(
    {"software": {"version": "2.0.0-rc.1", "b": {"images": [{"filename": "x"}]}}}
)
FILES = [("root.img", bytes(range(200))), ("x", b"abc")]
BASES = [
    build_swu(DESC, FILES),
    build_swu(DESC, FILES, crc=True),
    build_swu(DESC, FILES, signature=b"sig" * 7, crc=True),
    build_swu(JSON_DESC, FILES[1:]),
]


def newc(
    name: bytes, data: bytes, magic: bytes, namesize: int | None, filesize: int | None
) -> bytes:
    fields = [1, 0o100644, 0, 0, 1, 0, len(data) if filesize is None else filesize, 0, 0, 0, 0]
    fields += [len(name) if namesize is None else namesize, sum(data) & 0xFFFFFFFF]
    header = magic + b"".join(b"%08X" % f for f in fields) + name
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)


def outcome(image: bytes, chunk: int) -> SwuInfo | str:
    """Feed ``image`` in ``chunk``-byte pieces: the info, or the error code."""
    parser = SwuStreamParser(max_sw_description=MAX_DESC)
    try:
        for i in range(0, len(image), chunk):
            parser.feed(image[i : i + chunk])
            assert parser.buffered <= BUFFER_BOUND
        return parser.finish()
    except SwuError as exc:
        return exc.code


def check(image: bytes, chunk: int) -> SwuInfo | str:
    whole = outcome(image, max(len(image), 1))
    assert isinstance(whole, SwuInfo) or whole in CODES
    # The answer never depends on how the bytes were cut.
    assert outcome(image, chunk) == whole
    return whole


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    image = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "hexdigit", "zero"]))
        if len(image) <= 6:
            break
        # Past the magic mostly: random bytes already cover broken magics.
        pos = draw(st.integers(6, len(image) - 1))
        if op == "flip":
            image[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del image[pos:]
        elif op == "insert":
            image[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del image[pos : pos + draw(st.integers(1, 16))]
        elif op == "hexdigit":  # keeps headers hex, but changes sizes and checksums
            image[pos] = draw(st.sampled_from(b"0123456789abcdefF"))
        else:
            image[pos] = 0
    return bytes(image)


_member = st.builds(
    newc,
    name=st.sampled_from(
        [b"sw-description\0", b"sw-description.sig\0", b"TRAILER!!!\0", b"a\0", b"../a\0", b"x"]
    )
    | st.binary(max_size=12),
    data=st.sampled_from([DESC.encode(), JSON_DESC.encode(), b"", b"software = {};"])
    | st.binary(max_size=40),
    magic=st.sampled_from([b"070701"] * 4 + [b"070702"] * 4 + [b"070707", b"07070"]),
    namesize=st.none() | st.integers(0, 2**32 - 1) | st.integers(0, 40),
    filesize=st.none() | st.integers(0, 2**32 - 1) | st.integers(0, 60),
)


@FUZZ
@given(st.binary(max_size=4096), st.integers(1, 600))
def test_random_bytes_give_info_or_swu_error(data: bytes, chunk: int) -> None:
    check(data, chunk)


@FUZZ
@given(st.sampled_from([b"070701", b"070702"]), st.binary(max_size=2048), st.integers(1, 300))
def test_random_bytes_after_a_magic_give_info_or_swu_error(
    magic: bytes, data: bytes, chunk: int
) -> None:
    check(magic + data, chunk)


@FUZZ
@given(st.lists(_member, max_size=6), st.binary(max_size=8), st.integers(1, 200))
def test_random_members_give_info_or_swu_error(
    members: list[bytes], tail: bytes, chunk: int
) -> None:
    check(b"".join(members) + tail, chunk)


@FUZZ
@given(mutated(), st.integers(1, 700))
def test_mutated_images_give_info_or_swu_error(image: bytes, chunk: int) -> None:
    result = check(image, chunk)
    if isinstance(result, SwuInfo):
        assert result.members[0][0] == "sw-description"


@settings(max_examples=300, deadline=timedelta(seconds=1), database=None)
@given(
    st.text(max_size=300)
    | st.sampled_from([DESC, JSON_DESC]).flatmap(
        lambda base: st.tuples(
            st.integers(0, len(base)), st.text('{}()[];:=,"\\#/*\n .0x1L', max_size=5)
        ).map(lambda cut: base[: cut[0]] + cut[1] + base[cut[0] :])
    )
)
def test_random_sw_descriptions_give_description_or_swu_error(text: str) -> None:
    result: SwDescription | str
    try:
        result = parse_sw_description(text)
    except SwuError as exc:
        result = exc.code
    assert isinstance(result, SwDescription) or result in {
        "bad_sw_description",
        "no_version",
        "bad_version",
    }


# bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("crc", [False, True], ids=["newc", "crc"])
def test_memory_stays_bounded_while_50_mib_of_member_data_pass(crc: bool) -> None:
    size = 50 << 20
    magic = b"070702" if crc else b"070701"
    head = newc(b"sw-description\0", DESC.encode(), magic, None, None)
    # The big member's header alone; its data (all zeros, byte sum 0) follows in odd-sized chunks.
    big = newc(b"big.img\0", b"", magic, None, size)
    tail = newc(b"TRAILER!!!\0", b"", magic, None, None)
    chunk = bytes((1 << 20) + 3)
    parser = SwuStreamParser()
    parser.feed(head + big)
    tracemalloc.start()
    try:
        sent = 0
        while sent < size:
            piece = chunk if size - sent >= len(chunk) else chunk[: size - sent]
            parser.feed(piece)
            sent += len(piece)
            assert parser.buffered == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    parser.feed(tail)
    info = parser.finish()
    assert info.members == [("sw-description", len(DESC)), ("big.img", size)]
    # At most one chunk-sized copy (a slice to sum) on top of a few small objects.
    assert peak < len(chunk) + (64 << 10)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "text",
    [
        "[" * (1 << 20),
        "{" * (1 << 20),
        '{"software": ' * 50_000,
        "software = " + "(" * (1 << 19),
        'software = { version = "' + "a" * (1 << 20),
        "software = { x = " + '"a" ' * (1 << 18),
        "software = { x = " + "1" * (1 << 20),
        "software = { x = 1." + "5" * (1 << 20) + "e",
        "/*" * (1 << 19),
        "# comment\n" * (1 << 17),
        "software = { " + "a = 1; " * (1 << 17),
        "software = { " + "a = 1; " * (1 << 17) + "};",
    ],
    ids=lambda t: repr(t[:16]),
)
def test_megabyte_sized_adversarial_text_is_handled_quickly(text: str) -> None:
    start = time.perf_counter()
    with contextlib.suppress(SwuError):
        parse_sw_description(text)
    assert time.perf_counter() - start < 5
