"""SWUpdate .swu images: the cpio container, sw-description parsing, and a builder for tests."""

from gaggle_swu.build import (
    SW_DESCRIPTION,
    SW_DESCRIPTION_SIG,
    SigningError,
    build_swu,
    make_rawfile_swu,
    make_signing_cert,
    render_sw_description,
    sign_cms,
    sign_rsa,
    verify_cms,
)
from gaggle_swu.cpio import (
    CpioError,
    CpioMember,
    CpioReader,
    CpioWriter,
    iter_members,
    read_archive,
    write_archive,
)
from gaggle_swu.errors import SwuError, SwuErrorCode
from gaggle_swu.parser import SwuInfo, SwuStreamParser, parse_swu
from gaggle_swu.swdesc import SwDescription, SwImage, load_tree, parse_sw_description

__all__ = [
    "SW_DESCRIPTION",
    "SW_DESCRIPTION_SIG",
    "CpioError",
    "CpioMember",
    "CpioReader",
    "CpioWriter",
    "SigningError",
    "SwDescription",
    "SwImage",
    "SwuError",
    "SwuErrorCode",
    "SwuInfo",
    "SwuStreamParser",
    "build_swu",
    "iter_members",
    "load_tree",
    "make_rawfile_swu",
    "make_signing_cert",
    "parse_sw_description",
    "parse_swu",
    "read_archive",
    "render_sw_description",
    "sign_cms",
    "sign_rsa",
    "verify_cms",
    "write_archive",
]
