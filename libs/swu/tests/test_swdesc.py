from __future__ import annotations

import json

import pytest

from gaggle_swu import SwDescription, SwImage, SwuError, load_tree, parse_sw_description
from gaggle_swu.build import render_sw_description

GOOSEBIT_EXAMPLE = """
software = { version = "8.8.1-12-g302f635+189128";
  smart-gateway-mt7688 = { hardware-compatibility = [ "0.5", "1.0" ]; };
  myboard = { stable = { hardware-compatibility = [ "1.0", "1.2" ]; }; }; };
"""

GOOSEBIT_PAIRS = [
    ("smart-gateway-mt7688", "0.5"),
    ("smart-gateway-mt7688", "1.0"),
    ("myboard", "1.0"),
    ("myboard", "1.2"),
]


def compat(text: str) -> list[tuple[str, str]]:
    return parse_sw_description(text).compatibility


def error_code(text: str) -> str:
    with pytest.raises(SwuError) as info:
        parse_sw_description(text)
    return info.value.code


# compatibility -------------------------------------------------------------------------------


def test_goosebit_example_maps_boards_and_nested_collections() -> None:
    desc = parse_sw_description(GOOSEBIT_EXAMPLE)
    assert desc.version == "8.8.1-12-g302f635+189128"
    assert desc.compatibility == GOOSEBIT_PAIRS


def test_json_form_of_the_same_tree_gives_the_same_description() -> None:
    tree = {
        "software": {
            "version": "8.8.1-12-g302f635+189128",
            "smart-gateway-mt7688": {"hardware-compatibility": ["0.5", "1.0"]},
            "myboard": {"stable": {"hardware-compatibility": ["1.0", "1.2"]}},
        }
    }
    assert parse_sw_description(json.dumps(tree, indent=2)) == parse_sw_description(
        GOOSEBIT_EXAMPLE
    )


def test_top_level_hardware_compatibility_means_any_board() -> None:
    text = 'software = { version = "1.0"; hardware-compatibility = ["1.0", "#RE:^2\\\\..*$"]; };'
    assert compat(text) == [("*", "1.0"), ("*", "#RE:^2\\..*$")]


def test_no_compatibility_at_all_means_any_device() -> None:
    text = 'software = { version = "1.0"; images = ({ filename = "a"; type = "raw"; }); };'
    assert compat(text) == [("*", "*")]


def test_board_with_images_but_no_compatibility_accepts_any_revision() -> None:
    text = """software = { version = "1.0";
        boardA = { images = ({ filename = "a"; }); };
        boardB = { hardware-compatibility = ["2"]; files = ({ filename = "b"; }); }; };"""
    assert compat(text) == [("boardA", "*"), ("boardB", "2")]


def test_selection_with_images_only_deeper_down_is_not_a_board() -> None:
    text = """software = { version = "1.0";
        stable = { copy-1 = { images = ({ filename = "a"; }); };
                   copy-2 = { images = ({ filename = "a"; }); }; }; };"""
    assert compat(text) == [("*", "*")]


def test_top_level_and_board_compatibility_combine_and_deduplicate() -> None:
    text = """software = { version = "1.0"; hardware-compatibility = ["1", "1"];
        b = { hardware-compatibility = ["x", "y"];
              stable = { hardware-compatibility = ["y", "z"]; }; }; };"""
    assert compat(text) == [("*", "1"), ("b", "x"), ("b", "y"), ("b", "z")]


def test_regex_revisions_are_kept_literally() -> None:
    text = (
        'software = { version = "1"; b = { hardware-compatibility = ["#RE:^1\\\\.[0-9]+$"]; }; };'
    )
    assert compat(text) == [("b", "#RE:^1\\.[0-9]+$")]


def test_empty_compatibility_list_matches_nothing() -> None:
    assert compat('software = { version = "1"; hardware-compatibility = []; };') == []


# images, name, description -------------------------------------------------------------------


def test_images_files_and_scripts_are_listed_with_their_section() -> None:
    text = """
    software = {
        version = "2.0.1";
        description = "Firmware";
        images: ( { filename = "rootfs.ext4.gz"; type = "raw"; device = "/dev/mmcblk0p2";
                    sha256 = "ab12"; } );
        myboard = {
            hardware-compatibility = ["1.0"];
            stable = {
                copy-1 = {
                    files = ( { filename = "app.tar"; path = "/opt"; type = "archive"; } );
                };
            };
            scripts = ( { filename = "post.sh"; type = "shellscript"; } );
        };
        partitions = ( { type = "diskpart"; device = "/dev/sda"; } );
    };
    """
    desc = parse_sw_description(text)
    assert desc.images == [
        SwImage(
            filename="rootfs.ext4.gz",
            type="raw",
            section="images",
            sha256="ab12",
            device="/dev/mmcblk0p2",
        ),
        SwImage(filename="post.sh", type="shellscript", section="myboard.scripts"),
        SwImage(
            filename="app.tar", type="archive", section="myboard.stable.copy-1.files", path="/opt"
        ),
    ]
    assert desc.description == "Firmware"
    assert desc.name is None
    assert desc.compatibility == [("myboard", "1.0")]


def test_entry_without_filename_or_type_is_kept_with_none() -> None:
    desc = parse_sw_description('software = { version = "1"; images = ({ device = "/dev/x"; }); };')
    assert desc.images == [SwImage(filename=None, type=None, section="images", device="/dev/x")]


def test_name_and_description_fall_back_to_the_top_level() -> None:
    text = 'name = "gw"; description = "top"; software = { version = "1"; };'
    desc = parse_sw_description(text)
    assert (desc.name, desc.description) == ("gw", "top")
    text = 'name = "x"; software = { version = "1"; name = "inner"; description = "d"; };'
    desc = parse_sw_description(text)
    assert (desc.name, desc.description) == ("inner", "d")


def test_builder_output_round_trips() -> None:
    text = render_sw_description(
        version="3.1.4",
        board="qemu",
        revisions=["1.0", "2.0"],
        filename="payload.bin",
        sha256="00" * 32,
        path="/tmp/payload",
    )
    assert parse_sw_description(text) == SwDescription(
        version="3.1.4",
        name=None,
        description="Gaggle test image",
        compatibility=[("qemu", "1.0"), ("qemu", "2.0")],
        images=[
            SwImage(
                filename="payload.bin",
                type="rawfile",
                section="qemu.files",
                sha256="00" * 32,
                path="/tmp/payload",
            )
        ],
    )


# libconfig syntax ----------------------------------------------------------------------------


def test_libconfig_syntax_subset() -> None:
    text = r"""
    # hash comment
    // line comment
    /* block
       comment */
    software : {
        version = "1." "2" /* between */ "." // adjacent strings concatenate
                  "3";
        description = "tab\there \"q\" back\\slash \x41 \d";
        ints = [ 1, -2, +3, 0x1F, 0xffL, 077, 9LL, 0b101, 0o17, ];
        floats = [ 1.5, -0.5, .25, 1e3, 2.E-2 ];
        flags = [ true, FALSE, True ];
        mixed = ( 1, "a", { x = 1 }, ( 2 ), [ 3 ], );
        grp = { a = 1, b = 2 c = 3; };
        empty_group = {}; empty_list = (); empty_array = [];
    }
    """
    tree = load_tree(text)
    software = tree["software"]
    assert isinstance(software, dict)
    assert software["version"] == "1.2.3"
    assert software["description"] == 'tab\there "q" back\\slash A \\d'
    assert software["ints"] == [1, -2, 3, 31, 255, 77, 9, 5, 15]
    assert software["floats"] == [1.5, -0.5, 0.25, 1000.0, 0.02]
    assert software["flags"] == [True, False, True]
    assert software["mixed"] == [1, "a", {"x": 1}, [2], [3]]
    assert software["grp"] == {"a": 1, "b": 2, "c": 3}
    assert software["empty_group"] == {}
    assert software["empty_list"] == software["empty_array"] == []


def test_utf8_escapes_in_strings_form_characters() -> None:
    tree = load_tree(r'software = { version = "1"; description = "gr\xc3\xbc\xc3\x9f"; };')
    assert tree["software"] == {"version": "1", "description": "grüß"}


def test_json_is_tried_after_libconfig() -> None:
    assert load_tree('{"software": {"version": "1"}}') == {"software": {"version": "1"}}


# versions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "1.2.3", "1.2.3.4.5", "1.0-rc1", "2.0.0+b.7"])
def test_orderable_versions_are_accepted(version: str) -> None:
    assert parse_sw_description(f'software = {{ version = "{version}"; }};').version == version


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("", "no_version"),
        ('board = { version = "1.0"; };', "no_version"),
        ('version = "";', "bad_version"),
        ('version = "latest";', "bad_version"),
        ('version = "1.0 ";', "bad_version"),
        ("version = 1.0;", "bad_version"),
        ("version = 1;", "bad_version"),
        ("version = [];", "bad_version"),
    ],
)
def test_version_rules(body: str, code: str) -> None:
    assert error_code(f"software = {{ {body} }};") == code


def test_top_level_version_does_not_count() -> None:
    assert error_code('version = "1.0"; software = { };') == "no_version"


# errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a config",
        "version = 1.0.0;",
        'software = "x";',
        "software = ( 1 );",
        '{"software": 1}',
        '["software"]',
        '{"software": {"version": "1.0"}',
        'software = { version = "1.0" ',
        'software = { version = "1.0; };',
        'software = { version = "1.0"; }; /* unterminated',
        '@include "other.cfg"\nsoftware = { version = "1.0"; };',
        'software = { version = "1.0"; version = "2.0"; };',
        'software = { version = "1"; x = [ { a = 1; } ]; };',
        'software = { version = "1"; x = 123abc; };',
        'software = { version = "1"; x = 0x; };',
        'software = { version = "1"; x = 0b102; };',
        'software = { version = "1"; x = 9223372036854775808; };',
        'software = { version = "1"; x = 0x1FFFFFFFFFFFFFFFF; };',
        'software = { version = "1"; x = ' + "9" * 5000 + "; };",
        'software = { version = "1"; x = ' + "(" * 100 + ")" * 100 + "; };",
        '{"software": ' * 5000 + "}" * 5000,
        "[" * 100_000,
        'software = { version = "1"; 1x = 2; };',
        'software = { version = "1"; x 2; };',
        'software = { version = "1"; x = (1 2); };',
        'software = { version = "1"; x = ; };',
        'software = { version = "1"; }; }',
    ],
)
def test_text_that_is_neither_libconfig_nor_json_or_lacks_software(text: str) -> None:
    assert error_code(text) == "bad_sw_description"


@pytest.mark.parametrize(
    "body",
    [
        'hardware-compatibility = "1.0";',
        "hardware-compatibility = [1.0];",
        'hardware-compatibility = [""];',
        "b = { hardware-compatibility = ( { x = 1; } ); };",
        "b = { stable = { hardware-compatibility = 1; }; };",
        "images = ( 1 );",
        "images = ( { filename = 1; } );",
        'b = { files = ( { filename = "a"; sha256 = 5; } ); };',
    ],
)
def test_malformed_compatibility_or_image_entries_are_refused(body: str) -> None:
    assert error_code(f'software = {{ version = "1.0"; {body} }};') == "bad_sw_description"


def test_error_names_the_libconfig_line() -> None:
    with pytest.raises(SwuError) as info:
        parse_sw_description('software = {\n  version = "1.0";\n  x = ;\n};')
    assert "line 3" in str(info.value)
    assert str(info.value).startswith("bad_sw_description: ")
    assert info.value.message in str(info.value)


def test_error_for_broken_json_reports_json() -> None:
    with pytest.raises(SwuError) as info:
        parse_sw_description('{"software": {"version": "1.0",}}')
    assert "JSON" in info.value.message


def test_swu_error_is_a_value_error() -> None:
    assert issubclass(SwuError, ValueError)
