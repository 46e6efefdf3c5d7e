"""Whole ``.swu`` images, pure and incremental: bytes pushed in, :class:`SwuInfo` out.

:class:`SwuStreamParser` checks an image while it streams past (an upload, a download) and keeps
only the current cpio header and name, the sw-description and the list of members; member data
is counted and, for ``070702`` members, summed, never stored. Every check runs as soon as its
bytes arrive, so :meth:`~SwuStreamParser.feed` raises early and an upload can stop there:

* ``not_cpio``: the first bytes are not a newc magic (``070701``/``070702``), known from the
  first byte that differs;
* ``bad_header``: a later header without a newc magic, non-hex fields, a name size of 0 or over
  4096, or a trailer with data (cpio's 32-bit size field keeps members under 4 GiB anyway);
* ``bad_name``: an empty, ``.``/``..``, non-UTF-8 or duplicate name, one with ``/``, NUL or
  control characters (``.swu`` members are flat, so absolute paths and ``..`` segments are out),
  or one of 255 bytes or more, which SWUpdate's 256-byte name buffer refuses;
* ``bad_checksum``: a ``070702`` member whose byte sum differs from its header's, as SWUpdate
  checks on install (verified by default; ``sum()`` costs about 4 ns per byte);
* ``too_many_members``: more than ``max_members`` members;
* ``no_sw_description``: the first member is not ``sw-description``;
* ``bad_sw_description``, ``no_version``, ``bad_version``: from
  :func:`~gaggle_swu.swdesc.parse_sw_description`, run as soon as the sw-description is complete;
  ``bad_sw_description`` also for one larger than ``max_sw_description`` or not UTF-8;
* ``bad_signature``: a ``sw-description.sig`` larger than 64 KiB;
* ``truncated``: :meth:`~SwuStreamParser.finish` before the ``TRAILER!!!`` member (including an
  empty input, which is ``not_cpio``);
* ``trailing_data``: anything but NUL bytes after the trailer. NULs are accepted and ignored:
  ``cpio -o`` pads archives to its 512-byte block size.

After an error the parser stays failed: every later call raises the same error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Final

from gaggle_swu.build import SW_DESCRIPTION, SW_DESCRIPTION_SIG
from gaggle_swu.cpio import HEADER_SIZE, MAGIC_CRC, MAGIC_NEWC, TRAILER_NAME, pad4
from gaggle_swu.errors import SwuError
from gaggle_swu.swdesc import SwDescription, parse_sw_description

MAX_SIGNATURE: Final = 64 * 1024
"""Largest ``sw-description.sig`` kept (a CMS signature with a few certificates is a few KB)."""
MAX_NAME_SIZE: Final = 4096
"""Largest cpio name size field (NUL included) that is not a broken header."""
SWUPDATE_NAME_SIZE: Final = 256
"""SWUpdate refuses members whose name size (NUL included) reaches its name buffer's size."""

_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]{104}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FILESIZE: Final = 6
_NAMESIZE: Final = 11
_CHECK: Final = 12
_MAX_SUM: Final = 0xFFFFFFFF

_HEADER, _NAME, _DATA, _PAD, _DONE = range(5)


@dataclass(frozen=True, slots=True)
class SwuInfo(SwDescription):
    """What a ``.swu`` image holds: its sw-description's metadata and its member list.

    Attributes:
        members: ``(name, size)`` of every cpio member in archive order, ``sw-description``
            (and ``sw-description.sig``) included, the trailer excluded.
        signed: Whether ``sw-description.sig`` directly follows ``sw-description``, where SWUpdate
            looks for it. The signature itself is not checked here.
        sw_description: The sw-description text.
        signature: The bytes of ``sw-description.sig`` when the image is signed.
        sha256: Hex sha256 of every member's data by name, when the parser was asked to hash
            members (``hash_members``); empty otherwise.
    """

    members: list[tuple[str, int]]
    signed: bool
    sw_description: str
    signature: bytes | None = None
    sha256: dict[str, str] = field(default_factory=dict)


def _member_name(raw: bytes, offset: int) -> str:
    where = f"member name at offset {offset}"
    if raw[-1:] != b"\0":
        raise SwuError("bad_name", f"{where} is not NUL-terminated")
    if len(raw) >= SWUPDATE_NAME_SIZE:
        raise SwuError("bad_name", f"{where} is {len(raw) - 1} bytes, SWUpdate allows 254")
    try:
        name = raw[:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise SwuError("bad_name", f"{where} is not UTF-8: {raw[:-1]!r:.80}") from None
    if name in ("", ".", "..") or "/" in name or _CONTROL.search(name):
        raise SwuError(
            "bad_name",
            f"{where} {name!r:.80} is not a plain file name (.swu members are flat)",
        )
    return name


class SwuStreamParser:
    """Check a ``.swu`` image pushed in pieces of any size, in bounded memory.

    Example:
        >>> from gaggle_swu.build import build_swu
        >>> image = build_swu('software = { version = "1.0"; };', [])
        >>> parser = SwuStreamParser()
        >>> for i in range(0, len(image), 100):
        ...     parser.feed(image[i : i + 100])
        >>> parser.finish().version
        '1.0'
    """

    def __init__(
        self,
        max_sw_description: int = 1 << 20,
        *,
        max_members: int = 10_000,
        verify_checksums: bool = True,
        hash_members: bool = False,
    ) -> None:
        """Create a parser for one image.

        Args:
            max_sw_description: Largest sw-description accepted, in bytes.
            max_members: Most members accepted, the sw-description and its signature included.
            verify_checksums: Check the byte sums of ``070702`` members.
            hash_members: Compute the sha256 of every member's data as it passes
                (:attr:`SwuInfo.sha256`), for checking against the sw-description.
        """
        self._max_desc = max_sw_description
        self._max_members = max_members
        self._verify = verify_checksums
        self._hash_members = hash_members
        self._hash: hashlib._Hash | None = None
        self._digests: dict[str, str] = {}
        self._sig_bytes: bytearray | None = None
        self._collecting_sig = False
        self._state = _HEADER
        self._buf = bytearray()  # the current header and name, at most 110 + 4096 + 3 bytes
        self._need = HEADER_SIZE
        self._offset = 0  # bytes consumed so far
        self._header_offset = 0
        self._remaining = 0  # data or padding bytes left in the current member
        self._size = 0
        self._namesize = 0
        self._crc = False
        self._check = 0
        self._sum = 0
        self._collecting = False
        self._desc_bytes = bytearray()
        self._desc_text = ""
        self._desc: SwDescription | None = None
        self._members: list[tuple[str, int]] = []
        self._names: set[str] = set()
        self._signed = False
        self._error: SwuError | None = None

    @property
    def offset(self) -> int:
        """Number of bytes consumed so far."""
        return self._offset

    @property
    def description(self) -> SwDescription | None:
        """The sw-description's metadata as soon as it has been read (it is the first member)."""
        return self._desc

    @property
    def buffered(self) -> int:
        """Bytes held: the partial header and name plus the partial sw-description."""
        return len(self._buf) + len(self._desc_bytes)

    def feed(self, data: bytes) -> None:
        """Consume the next piece of the image.

        Args:
            data: The bytes following those of the previous call; may be empty.

        Raises:
            SwuError: As soon as the bytes seen so far cannot be a valid image.
        """
        if self._error is not None:
            raise self._error
        try:
            self._feed(data if isinstance(data, bytes) else bytes(data))
        except SwuError as exc:
            self._error = exc
            self._desc_bytes = bytearray()
            self._buf = bytearray()
            raise

    def finish(self) -> SwuInfo:
        """Declare the end of the image and return what it holds.

        Returns:
            The sw-description's metadata, the member list and whether it is signed.

        Raises:
            SwuError: ``not_cpio`` for an input shorter than one magic, ``truncated`` when the
                trailer was not reached, or the error an earlier :meth:`feed` raised.
        """
        if self._error is not None:
            raise self._error
        if self._state != _DONE:
            if self._offset < len(MAGIC_NEWC):
                self._error = SwuError("not_cpio", f"only {self._offset} bytes, not a cpio archive")
            else:
                self._error = SwuError(
                    "truncated", f"image ends at offset {self._offset}, before the cpio trailer"
                )
            raise self._error
        desc = self._desc
        if desc is None:  # pragma: no cover - the trailer is refused before a sw-description
            raise SwuError("no_sw_description", "no sw-description")
        return SwuInfo(
            version=desc.version,
            name=desc.name,
            description=desc.description,
            compatibility=list(desc.compatibility),
            images=list(desc.images),
            members=list(self._members),
            signed=self._signed,
            sw_description=self._desc_text,
            signature=bytes(self._sig_bytes) if self._sig_bytes is not None else None,
            sha256=dict(self._digests),
        )

    def _feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state == _DONE:
                if data[pos:].strip(b"\0"):
                    raise SwuError(
                        "trailing_data", f"data after the cpio trailer at {self._offset}"
                    )
                self._offset += end - pos
                return
            if state == _DATA:
                take = min(self._remaining, end - pos)
                if take and (
                    self._collecting or self._collecting_sig or self._hash is not None or self._crc
                ):
                    chunk = data[pos : pos + take]
                    if self._collecting:
                        self._desc_bytes += chunk
                    if self._sig_bytes is not None and self._collecting_sig:
                        self._sig_bytes += chunk
                    if self._hash is not None:
                        self._hash.update(chunk)
                    if self._crc and self._verify:
                        self._sum = (self._sum + sum(chunk)) & _MAX_SUM
            elif state == _PAD:
                take = min(self._remaining, end - pos)
            else:
                take = min(self._need - len(self._buf), end - pos)
                self._buf += data[pos : pos + take]
            pos += take
            self._offset += take
            if state in (_DATA, _PAD):
                self._remaining -= take
                if self._remaining:
                    continue
                if state == _DATA:
                    self._on_data_end()
                else:
                    self._start_header()
                continue
            if state == _HEADER and len(self._buf) - take < len(MAGIC_NEWC):
                self._check_magic()
            if len(self._buf) == self._need:
                if state == _HEADER:
                    self._on_header()
                else:
                    self._on_name()

    def _start_header(self) -> None:
        self._state = _HEADER
        self._buf.clear()
        self._need = HEADER_SIZE
        self._header_offset = self._offset

    def _check_magic(self) -> None:
        prefix = bytes(self._buf[: len(MAGIC_NEWC)])
        if MAGIC_NEWC.startswith(prefix) or MAGIC_CRC.startswith(prefix):
            return
        if self._header_offset == 0:
            raise SwuError("not_cpio", f"starts with {prefix!r}, not a cpio newc magic 070701")
        raise SwuError("bad_header", f"no cpio magic at offset {self._header_offset}: {prefix!r}")

    def _on_header(self) -> None:
        raw = bytes(self._buf)
        if not _HEX_FIELDS.fullmatch(raw, len(MAGIC_NEWC)):
            raise SwuError("bad_header", f"non-hex cpio header at offset {self._header_offset}")
        fields = [int(raw[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        namesize = fields[_NAMESIZE]
        if not 1 <= namesize <= MAX_NAME_SIZE:
            raise SwuError(
                "bad_header", f"cpio name size {namesize} at offset {self._header_offset}"
            )
        self._crc = raw.startswith(MAGIC_CRC)
        self._namesize = namesize
        self._size = fields[_FILESIZE]
        self._check = fields[_CHECK]
        self._need = HEADER_SIZE + namesize + pad4(HEADER_SIZE + namesize)
        self._state = _NAME

    def _on_name(self) -> None:
        raw = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + self._namesize])
        self._buf.clear()
        at = self._header_offset
        if raw == TRAILER_NAME.encode() + b"\0":
            if not self._members:
                raise SwuError("no_sw_description", "the archive is empty: no sw-description")
            if self._size:
                raise SwuError("bad_header", f"cpio trailer at offset {at} has data")
            self._state = _DONE
            return
        name = _member_name(raw, at)
        index = len(self._members)
        if index == 0 and name != SW_DESCRIPTION:
            raise SwuError("no_sw_description", f"first member is {name!r}, not {SW_DESCRIPTION}")
        if name in self._names:
            raise SwuError("bad_name", f"member {name!r} at offset {at} appears twice")
        if index >= self._max_members:
            raise SwuError("too_many_members", f"more than {self._max_members} members")
        if index == 0 and self._size > self._max_desc:
            raise SwuError(
                "bad_sw_description",
                f"sw-description is {self._size} bytes, the limit is {self._max_desc}",
            )
        is_sig = index == 1 and name == SW_DESCRIPTION_SIG
        if is_sig and self._size > MAX_SIGNATURE:
            raise SwuError(
                "bad_signature",
                f"{SW_DESCRIPTION_SIG} is {self._size} bytes, the limit is {MAX_SIGNATURE}",
            )
        self._signed = self._signed or is_sig
        self._collecting_sig = is_sig
        if is_sig:
            self._sig_bytes = bytearray()
        self._hash = hashlib.sha256() if self._hash_members else None
        self._members.append((name, self._size))
        self._names.add(name)
        self._collecting = index == 0
        self._remaining = self._size
        self._sum = 0
        self._state = _DATA
        if not self._remaining:
            self._on_data_end()

    def _on_data_end(self) -> None:
        name = self._members[-1][0]
        if self._hash is not None:
            self._digests[name] = self._hash.hexdigest()
            self._hash = None
        if self._crc and self._verify and self._sum != self._check:
            raise SwuError(
                "bad_checksum",
                f"member {name!r}: byte sum {self._sum:#010x}, header says {self._check:#010x}",
            )
        if self._collecting:
            self._collecting = False
            raw = bytes(self._desc_bytes)
            self._desc_bytes = bytearray()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SwuError(
                    "bad_sw_description", f"sw-description is not UTF-8: {exc}"
                ) from None
            self._desc = parse_sw_description(text)
            self._desc_text = text
        self._remaining = pad4(self._size)
        self._state = _PAD
        if not self._remaining:
            self._start_header()


def parse_swu(data: bytes) -> SwuInfo:
    """Check a whole in-memory ``.swu`` image.

    Args:
        data: The image bytes.

    Returns:
        What the image holds.

    Raises:
        SwuError: When the image is invalid (see the module docs for the codes).
    """
    parser = SwuStreamParser()
    parser.feed(data)
    return parser.finish()
