from __future__ import annotations

import hashlib

import pytest

from gaggle_swu import (
    SwImage,
    SwuError,
    SwuInfo,
    SwuStreamParser,
    build_swu,
    make_rawfile_swu,
    parse_swu,
    write_archive,
)

DESC = """
software = {
    version = "2.1.0";
    description = "gateway firmware";
    gw = {
        hardware-compatibility = ["1.0", "1.1"];
        images: ( { filename = "rootfs.img"; type = "raw"; device = "/dev/mmcblk0p2"; } );
        scripts: ( { filename = "post.sh"; type = "shellscript"; } );
    };
};
"""
FILES = [("rootfs.img", bytes(range(256)) * 40 + b"xyz"), ("post.sh", b"#!/bin/sh\ntrue\n")]
SIGNATURE = b"0\x82\x01\x00 not really DER but the parser does not check it"


def newc(
    name: bytes | str,
    data: bytes = b"",
    *,
    magic: bytes = b"070701",
    namesize: int | None = None,
    filesize: int | None = None,
    check: int | None = None,
) -> bytes:
    """One raw cpio member, with every field overridable to craft broken archives."""
    raw_name = name.encode() + b"\0" if isinstance(name, str) else name
    fields = [1, 0o100644, 0, 0, 1, 0]
    fields.append(len(data) if filesize is None else filesize)
    fields += [0, 0, 0, 0]
    fields.append(len(raw_name) if namesize is None else namesize)
    fields.append((sum(data) & 0xFFFFFFFF if magic == b"070702" else 0) if check is None else check)
    header = magic + b"".join(b"%08X" % f for f in fields) + raw_name
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)


TRAILER = newc("TRAILER!!!")


def feed_in_chunks(
    image: bytes, size: int | None, parser: SwuStreamParser | None = None
) -> SwuInfo:
    parser = parser or SwuStreamParser()
    step = size or max(len(image), 1)
    for i in range(0, len(image), step):
        parser.feed(image[i : i + step])
    return parser.finish()


def code_of(image: bytes, size: int | None = None, *, max_members: int = 10_000) -> str:
    with pytest.raises(SwuError) as info:
        feed_in_chunks(image, size, SwuStreamParser(max_members=max_members))
    return info.value.code


# valid images ------------------------------------------------------------------------------


@pytest.mark.parametrize("crc", [False, True], ids=["newc", "crc"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_valid_image_gives_the_same_info_in_any_chunking(crc: bool, signed: bool) -> None:
    image = build_swu(DESC, FILES, signature=SIGNATURE if signed else None, crc=crc)
    infos = [feed_in_chunks(image, size) for size in (1, 7, 4096, None)]
    assert all(info == infos[0] for info in infos)
    info = infos[0]
    assert info == parse_swu(image)
    assert info.version == "2.1.0"
    assert info.description == "gateway firmware"
    assert info.name is None
    assert info.compatibility == [("gw", "1.0"), ("gw", "1.1")]
    assert info.images == [
        SwImage(filename="rootfs.img", type="raw", section="gw.images", device="/dev/mmcblk0p2"),
        SwImage(filename="post.sh", type="shellscript", section="gw.scripts"),
    ]
    assert info.signed is signed
    assert info.sw_description == DESC
    sig = [("sw-description.sig", len(SIGNATURE))] if signed else []
    assert info.members == [
        ("sw-description", len(DESC.encode())),
        *sig,
        *((name, len(data)) for name, data in FILES),
    ]


def test_rawfile_test_image_from_the_builder_parses() -> None:
    payload = b"hello device\n"
    image = make_rawfile_swu(
        payload,
        version="1.2.3",
        board="qemu",
        revisions=["1.0"],
        install_path="/tmp/x",
        key=None,
        cert=None,
        crc=True,
    )
    info = parse_swu(image)
    assert info.compatibility == [("qemu", "1.0")]
    assert info.images[0].sha256 == hashlib.sha256(payload).hexdigest()
    assert info.members[1] == ("payload.bin", len(payload))
    assert not info.signed


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5])
def test_members_of_every_padding_length(size: int) -> None:
    desc = 'software = { version = "1"; };'
    for crc in (False, True):
        image = build_swu(desc, [("a", b"\xff" * size), ("b", b"z")], crc=crc)
        assert feed_in_chunks(image, 1).members == [
            ("sw-description", len(desc)),
            ("a", size),
            ("b", 1),
        ]


def test_signature_counts_only_right_after_the_sw_description() -> None:
    desc = 'software = { version = "1"; };'
    image = write_archive(
        [("sw-description", desc.encode()), ("x", b"1"), ("sw-description.sig", b"s")]
    )
    assert parse_swu(image).signed is False


def test_the_description_is_known_once_the_first_member_is_read() -> None:
    image = build_swu(DESC, FILES)
    parser = SwuStreamParser()
    data = DESC.encode()
    end = len(newc("sw-description", data)) - (-len(data) % 4)  # its last byte, before padding
    parser.feed(image[: end - 1])
    assert parser.description is None
    parser.feed(image[end - 1 : end])
    assert parser.description is not None
    assert parser.description.version == "2.1.0"
    assert parser.description.compatibility == [("gw", "1.0"), ("gw", "1.1")]


def test_nul_padding_after_the_trailer_is_ignored() -> None:
    image = build_swu(DESC, FILES)
    padded = image + b"\0" * (-len(image) % 512 or 512)
    assert feed_in_chunks(padded, 100) == parse_swu(image)


def test_empty_feeds_and_repeated_finish_are_harmless() -> None:
    image = build_swu(DESC, FILES)
    parser = SwuStreamParser()
    parser.feed(b"")
    parser.feed(image)
    parser.feed(b"")
    assert parser.finish() == parser.finish()
    assert parser.offset == len(image)


def test_bytearray_and_memoryview_are_accepted() -> None:
    image = build_swu(DESC, FILES)
    parser = SwuStreamParser()
    parser.feed(bytearray(image[:100]))  # type: ignore[arg-type]
    parser.feed(memoryview(image)[100:])  # type: ignore[arg-type]
    assert parser.finish() == parse_swu(image)


def test_json_sw_description() -> None:
    desc = '{"software": {"version": "1.0.0-rc.1", "hardware-compatibility": ["A"]}}'
    info = parse_swu(build_swu(desc, []))
    assert (info.version, info.compatibility) == ("1.0.0-rc.1", [("*", "A")])


def test_checksums_are_not_verified_when_disabled() -> None:
    image = bytearray(build_swu(DESC, FILES, crc=True))
    image[image.find(bytes(range(256))) + 10] ^= 0xFF  # inside rootfs.img
    assert code_of(bytes(image)) == "bad_checksum"
    parser = SwuStreamParser(verify_checksums=False)
    parser.feed(bytes(image))
    assert parser.finish().version == "2.1.0"


# errors ------------------------------------------------------------------------------------

SMALL_DESC = b'software = { version = "1.0"; };'


def image_of(*members: bytes) -> bytes:
    return newc("sw-description", SMALL_DESC) + b"".join(members) + TRAILER


@pytest.mark.parametrize(
    "data",
    [b"hsqs" + b"\0" * 200, b"PK\x03\x04", b"070707" + b"0" * 200, b"0707", b"", b"\x00" * 512],
    ids=["rauc", "zip", "odc-cpio", "short-prefix", "empty", "zeros"],
)
def test_not_a_cpio_archive(data: bytes) -> None:
    assert code_of(data) == "not_cpio"


def test_not_cpio_is_raised_by_the_first_wrong_byte() -> None:
    parser = SwuStreamParser()
    parser.feed(b"0707")
    with pytest.raises(SwuError) as info:
        parser.feed(b"3")
    assert info.value.code == "not_cpio"
    with pytest.raises(SwuError) as info:
        SwuStreamParser().feed(b"{")
    assert info.value.code == "not_cpio"


@pytest.mark.parametrize(
    "image",
    [
        newc("sw-description", SMALL_DESC).replace(b"0000", b"00G0", 1),
        newc("sw-description", SMALL_DESC)[:20] + b"+" + newc("sw-description", SMALL_DESC)[21:],
        newc("sw-description", SMALL_DESC, namesize=0),
        newc("sw-description", SMALL_DESC, namesize=4097),
        image_of(b"XXXXXX" + newc("a", b"1")[6:]),
        newc("sw-description", SMALL_DESC) + newc("TRAILER!!!", b"data"),
    ],
    ids=["non-hex", "sign-in-field", "namesize-0", "namesize-4097", "later-magic", "trailer-data"],
)
def test_bad_header(image: bytes) -> None:
    assert code_of(image) == "bad_header"
    assert code_of(image, 1) == "bad_header"


@pytest.mark.parametrize(
    "member",
    [
        newc("../etc/passwd", b"x"),
        newc("/etc/passwd", b"x"),
        newc("dir/file", b"x"),
        newc(".."),
        newc("."),
        newc(""),
        newc(b"a\0b\0"),
        newc(b"abc"),
        newc("tab\tname"),
        newc(b"\xff\xfe\0"),
        newc("x" * 255),
        newc("sw-description"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "slash",
        "only-dotdot",
        "dot",
        "empty",
        "inner-nul",
        "no-nul",
        "control",
        "not-utf8",
        "too-long",
        "duplicate",
    ],
)
def test_bad_member_name(member: bytes) -> None:
    assert code_of(image_of(member)) == "bad_name"


def test_longest_name_swupdate_accepts() -> None:
    assert parse_swu(image_of(newc("x" * 254, b"1"))).members[-1] == ("x" * 254, 1)


def test_bad_checksum() -> None:
    # "070702" checksums are the sum of the data bytes: 0x61 + 0x62 + 0x63 = 0x126.
    image = image_of(newc("a", b"abc", magic=b"070702", check=0x127))
    assert code_of(image) == "bad_checksum"
    assert code_of(image, 1) == "bad_checksum"
    good = image_of(newc("a", b"abc", magic=b"070702", check=0x126))
    assert parse_swu(good).members[1] == ("a", 3)


def test_too_many_members() -> None:
    image = image_of(newc("a"), newc("b"), newc("c"))
    assert code_of(image, max_members=3) == "too_many_members"
    assert len(feed_in_chunks(image, None, SwuStreamParser(max_members=4)).members) == 4


@pytest.mark.parametrize("cut", [6, 50, 110, 115, 130, -200, -len(TRAILER), -1])
def test_truncated(cut: int) -> None:
    image = build_swu(DESC, FILES)
    assert code_of(image[:cut]) == "truncated"


def test_trailing_data_after_the_trailer() -> None:
    image = build_swu(DESC, FILES)
    assert code_of(image + b"\0\0\0x") == "trailing_data"
    assert code_of(image + b"\0" * 8 + build_swu(DESC, FILES), 64) == "trailing_data"


@pytest.mark.parametrize(
    "image",
    [
        newc("rootfs.img", b"x") + newc("sw-description", SMALL_DESC) + TRAILER,
        newc("sw-description.sig", b"x") + TRAILER,
        TRAILER,
    ],
    ids=["image-first", "signature-first", "empty-archive"],
)
def test_no_sw_description_first(image: bytes) -> None:
    assert code_of(image) == "no_sw_description"


def test_sw_description_errors_surface_from_the_stream() -> None:
    assert code_of(newc("sw-description", b"software = ;") + TRAILER) == "bad_sw_description"
    assert code_of(newc("sw-description", b"\xff\xfe") + TRAILER) == "bad_sw_description"
    assert code_of(newc("sw-description", b"software = { };") + TRAILER) == "no_version"
    bad = b'software = { version = "v1"; };'
    assert code_of(newc("sw-description", bad) + TRAILER) == "bad_version"


def test_oversized_sw_description_is_refused_from_its_header() -> None:
    image = build_swu("# padding\n" * 20 + 'software = { version = "1"; };', [])
    parser = SwuStreamParser(max_sw_description=100)
    with pytest.raises(SwuError) as info:
        parser.feed(image[:128])  # header and name only
    assert info.value.code == "bad_sw_description"
    assert parser.buffered == 0


def test_errors_are_raised_before_the_member_data_arrives() -> None:
    image = newc("rootfs.img", b"x" * 10_000) + TRAILER
    parser = SwuStreamParser()
    with pytest.raises(SwuError) as info:
        parser.feed(image[:124])
    assert info.value.code == "no_sw_description"


def test_sw_description_is_checked_as_soon_as_it_is_complete() -> None:
    desc = newc("sw-description", b'software = { version = "bad version"; };')
    parser = SwuStreamParser()
    with pytest.raises(SwuError) as info:
        parser.feed(desc)
    assert info.value.code == "bad_version"


def test_errors_are_sticky() -> None:
    parser = SwuStreamParser()
    with pytest.raises(SwuError) as first:
        parser.feed(b"nope")
    with pytest.raises(SwuError) as again:
        parser.feed(build_swu(DESC, FILES))
    assert again.value is first.value
    with pytest.raises(SwuError) as at_finish:
        parser.finish()
    assert at_finish.value is first.value


def test_error_messages_name_the_offset() -> None:
    image = image_of(newc("a/b", b"1"))
    with pytest.raises(SwuError) as info:
        parse_swu(image)
    assert f"offset {len(newc('sw-description', SMALL_DESC))}" in str(info.value)


def test_the_signature_member_is_kept_and_bounded() -> None:
    from gaggle_swu.parser import MAX_SIGNATURE

    desc = 'software = { version = "1.0"; };'
    info = parse_swu(build_swu(desc, [("a", b"x")], signature=b"SIG" * 10))
    assert (info.signed, info.signature) == (True, b"SIG" * 10)
    assert parse_swu(build_swu(desc, [])).signature is None
    # A member of that name elsewhere is no signature (SWUpdate reads it only second).
    other = parse_swu(
        write_archive([("sw-description", desc.encode()), ("x", b""), ("sw-description.sig", b"S")])
    )
    assert (other.signed, other.signature) == (False, None)
    too_big = build_swu(desc, [], signature=b"\0" * (MAX_SIGNATURE + 1))
    with pytest.raises(SwuError) as refused:
        parse_swu(too_big)
    assert refused.value.code == "bad_signature"
