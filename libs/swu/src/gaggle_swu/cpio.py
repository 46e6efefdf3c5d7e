"""Pure-Python cpio "newc" archives, the container format of SWUpdate ``.swu`` images.

Writes ``070701`` (newc) and ``070702`` (newc with CRC, where the "CRC" is the 32-bit sum of all
data bytes) archives, and reads them member by member from any binary stream, seekable or not.

Layout of one member: a 110-byte ASCII header (magic + 13 eight-digit hex fields), the name with a
trailing NUL, padding to a multiple of 4 counted from the start of the header, the data, and padding
of the data to a multiple of 4. The archive ends with a member named ``TRAILER!!!``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

MAGIC_NEWC: Final = b"070701"
"""Magic of the plain newc format (checksum field is zero)."""
MAGIC_CRC: Final = b"070702"
"""Magic of the newc format with a byte-sum checksum per member."""
TRAILER_NAME: Final = "TRAILER!!!"
"""Name of the end-of-archive marker member."""
HEADER_SIZE: Final = 110
"""Size in bytes of a newc header (6 magic + 13 * 8 hex digits)."""

DEFAULT_FILE_MODE: Final = 0o100644
"""Mode of a regular file readable by everyone (``S_IFREG | 0644``)."""

_FIELDS: Final = (
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
)
_MAX_FIELD: Final = 0xFFFFFFFF
_CHUNK: Final = 64 * 1024


class CpioError(ValueError):
    """Raised when an archive is malformed, truncated or fails its checksum."""


def pad4(n: int) -> int:
    """Return how many padding bytes bring ``n`` up to a multiple of 4.

    Args:
        n: A byte count or offset.

    Returns:
        A number between 0 and 3.
    """
    return (4 - n % 4) % 4


def checksum(data: bytes, start: int = 0) -> int:
    """Return the newc-crc "checksum": the sum of all bytes, modulo 2**32.

    Args:
        data: The bytes to add up.
        start: A running sum to continue from (for data read in chunks).

    Returns:
        The 32-bit unsigned sum.
    """
    return (start + sum(data)) & _MAX_FIELD


@dataclass(frozen=True, slots=True)
class CpioMember:
    """One member of a cpio archive, as read from its header.

    Attributes:
        name: The member's path name, without the trailing NUL.
        size: Size of the member's data in bytes.
        mode: File type and permission bits (``0o100644`` for a regular file).
        checksum: The header's checksum field (byte sum for ``070702``, usually 0 for ``070701``).
        header_offset: Offset of the member's header from the start of the archive.
        data_offset: Offset of the member's first data byte from the start of the archive.
        crc: True when the header's magic is ``070702``.
        ino: Inode number field.
        uid: Owner user id.
        gid: Owner group id.
        nlink: Number of links.
        mtime: Modification time (seconds since the epoch).
    """

    name: str
    size: int
    mode: int
    checksum: int
    header_offset: int
    data_offset: int
    crc: bool = False
    ino: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    mtime: int = 0

    @property
    def end_offset(self) -> int:
        """Offset just after the member's data and its padding (the next header's offset)."""
        return self.data_offset + self.size + pad4(self.size)


def _encode_header(
    *,
    name: str,
    size: int,
    mode: int,
    crc: bool,
    check: int,
    ino: int,
    mtime: int,
    nlink: int,
    uid: int = 0,
    gid: int = 0,
) -> bytes:
    name_bytes = name.encode("utf-8") + b"\0"
    values = {
        "ino": ino,
        "mode": mode,
        "uid": uid,
        "gid": gid,
        "nlink": nlink,
        "mtime": mtime,
        "filesize": size,
        "devmajor": 0,
        "devminor": 0,
        "rdevmajor": 0,
        "rdevminor": 0,
        "namesize": len(name_bytes),
        "check": check if crc else 0,
    }
    for field, value in values.items():
        if not 0 <= value <= _MAX_FIELD:
            raise CpioError(f"cpio field {field}={value} does not fit in 32 bits")
    header = (MAGIC_CRC if crc else MAGIC_NEWC) + b"".join(
        b"%08X" % values[field] for field in _FIELDS
    )
    return header + name_bytes + b"\0" * pad4(len(header) + len(name_bytes))


class CpioWriter:
    """Write a newc (``070701``) or newc-crc (``070702``) archive to a binary stream.

    Members are written in the order they are added; :meth:`close` appends the trailer.
    Usable as a context manager (the trailer is written on a clean exit).

    Example:
        >>> buf = io.BytesIO()
        >>> with CpioWriter(buf, crc=True) as w:
        ...     w.add("sw-description", b"software = {};")
        >>> buf.getvalue()[:6]
        b'070702'
    """

    def __init__(self, stream: BinaryIO, *, crc: bool = False, mtime: int = 0) -> None:
        """Create a writer.

        Args:
            stream: Where the archive bytes go (only ``write`` is used).
            crc: Write ``070702`` headers with byte-sum checksums instead of ``070701``.
            mtime: Modification time stored in every header (0 keeps builds reproducible).
        """
        self._stream = stream
        self._crc = crc
        self._mtime = mtime
        self._ino = 0
        self._offset = 0
        self._closed = False

    @property
    def offset(self) -> int:
        """Number of bytes written so far."""
        return self._offset

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._offset += len(data)

    def add(self, name: str, data: bytes, *, mode: int = DEFAULT_FILE_MODE) -> CpioMember:
        """Append one regular-file member.

        Args:
            name: Member name (``sw-description``, ``rootfs.ext4``, ...).
            data: The member's content.
            mode: File type and permission bits.

        Returns:
            The member as a reader would report it.

        Raises:
            CpioError: If the writer is closed or a header field overflows.
        """
        return self.add_stream(name, io.BytesIO(data), len(data), mode=mode, check=checksum(data))

    def add_stream(
        self,
        name: str,
        stream: BinaryIO,
        size: int,
        *,
        mode: int = DEFAULT_FILE_MODE,
        check: int | None = None,
    ) -> CpioMember:
        """Append one member whose data is read from ``stream`` in chunks.

        Args:
            name: Member name.
            stream: Source of exactly ``size`` bytes.
            size: Number of bytes to copy from ``stream``.
            mode: File type and permission bits.
            check: Byte-sum checksum of the data. Required when ``crc`` is set, since the header
                is written before the data; ignored otherwise.

        Returns:
            The member as a reader would report it.

        Raises:
            CpioError: If the writer is closed, ``check`` is missing in crc mode, the stream ends
                early, or the data does not match ``check``.
        """
        if self._closed:
            raise CpioError("archive already closed")
        if name == TRAILER_NAME:
            raise CpioError(f"{TRAILER_NAME!r} is reserved for the end-of-archive marker")
        if self._crc and check is None:
            raise CpioError("crc archives need the data checksum before the data")
        self._ino += 1
        header_offset = self._offset
        header = _encode_header(
            name=name,
            size=size,
            mode=mode,
            crc=self._crc,
            check=check or 0,
            ino=self._ino,
            mtime=self._mtime,
            nlink=1,
        )
        self._write(header)
        data_offset = self._offset
        remaining = size
        running = 0
        while remaining:
            chunk = stream.read(min(_CHUNK, remaining))
            if not chunk:
                raise CpioError(f"stream for {name!r} ended {remaining} bytes early")
            running = checksum(chunk, running)
            remaining -= len(chunk)
            self._write(chunk)
        if self._crc and running != check:
            raise CpioError(f"checksum of {name!r} is {running:#x}, header says {check:#x}")
        self._write(b"\0" * pad4(size))
        return CpioMember(
            name=name,
            size=size,
            mode=mode,
            checksum=running if self._crc else 0,
            header_offset=header_offset,
            data_offset=data_offset,
            crc=self._crc,
            ino=self._ino,
            mtime=self._mtime,
        )

    def close(self) -> None:
        """Write the ``TRAILER!!!`` member. Further calls do nothing."""
        if self._closed:
            return
        self._write(
            _encode_header(
                name=TRAILER_NAME,
                size=0,
                mode=0,
                crc=self._crc,
                check=0,
                ino=0,
                mtime=0,
                nlink=1,
            )
        )
        self._closed = True

    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()


def write_archive(members: Iterable[tuple[str, bytes]], *, crc: bool = False) -> bytes:
    """Build a whole archive in memory.

    Args:
        members: ``(name, data)`` pairs, in archive order.
        crc: Use ``070702`` with checksums instead of ``070701``.

    Returns:
        The archive bytes, trailer included.
    """
    buf = io.BytesIO()
    with CpioWriter(buf, crc=crc) as writer:
        for name, data in members:
            writer.add(name, data)
    return buf.getvalue()


def _parse_header(raw: bytes, offset: int) -> dict[str, int]:
    magic = raw[:6]
    if magic not in (MAGIC_NEWC, MAGIC_CRC):
        raise CpioError(f"bad cpio magic {magic!r} at offset {offset} (want 070701/070702)")
    values: dict[str, int] = {}
    for i, field in enumerate(_FIELDS):
        text = raw[6 + 8 * i : 14 + 8 * i]
        try:
            values[field] = int(text, 16)
        except ValueError:
            raise CpioError(f"bad hex in cpio field {field} at offset {offset}: {text!r}") from None
    values["crc"] = int(magic == MAGIC_CRC)
    return values


class CpioReader:
    """Read members one after another from a binary stream; seeking is never needed.

    Iterating yields :class:`CpioMember` objects (the trailer is not yielded). While a member is
    current, its data can be read with :meth:`read_data` or :meth:`iter_data`; whatever is not
    read is skipped when iteration moves on. With ``verify=True`` the ``070702`` checksum of each
    member is checked as its data passes by (also when skipped), raising :class:`CpioError`.

    Example:
        >>> reader = CpioReader(io.BytesIO(write_archive([("a", b"xyz")])))
        >>> [(m.name, reader.read_data()) for m in reader]
        [('a', b'xyz')]
    """

    def __init__(self, stream: BinaryIO, *, verify: bool = True) -> None:
        """Create a reader.

        Args:
            stream: The archive; only ``read`` is used.
            verify: Check ``070702`` member checksums.
        """
        self._stream = stream
        self._verify = verify
        self._offset = 0
        self._current: CpioMember | None = None
        self._remaining = 0
        self._sum = 0
        self._done = False

    def _read_exact(self, n: int) -> bytes:
        parts: list[bytes] = []
        missing = n
        while missing:
            chunk = self._stream.read(missing)
            if not chunk:
                raise CpioError(f"archive truncated at offset {self._offset + n - missing}")
            parts.append(chunk)
            missing -= len(chunk)
        self._offset += n
        return b"".join(parts)

    def _consume(self, n: int) -> bytes:
        data = self._read_exact(n)
        self._remaining -= n
        if self._verify:
            self._sum = checksum(data, self._sum)
        return data

    def _finish_member(self) -> None:
        member = self._current
        if member is None:
            return
        while self._remaining:
            self._consume(min(_CHUNK, self._remaining))
        if self._verify and member.crc and self._sum != member.checksum:
            raise CpioError(
                f"checksum mismatch for {member.name!r}: "
                f"computed {self._sum:#010x}, header {member.checksum:#010x}"
            )
        self._read_exact(pad4(member.size))
        self._current = None

    def __iter__(self) -> Iterator[CpioMember]:
        return self

    def __next__(self) -> CpioMember:
        self._finish_member()
        if self._done:
            raise StopIteration
        header_offset = self._offset
        values = _parse_header(self._read_exact(HEADER_SIZE), header_offset)
        namesize = values["namesize"]
        if namesize < 1:
            raise CpioError(f"cpio name size 0 at offset {header_offset}")
        raw_name = self._read_exact(namesize)
        if raw_name[-1:] != b"\0":
            raise CpioError(f"cpio name not NUL-terminated at offset {header_offset}")
        name = raw_name[:-1].decode("utf-8", errors="surrogateescape")
        self._read_exact(pad4(HEADER_SIZE + namesize))
        if name == TRAILER_NAME:
            self._done = True
            raise StopIteration
        member = CpioMember(
            name=name,
            size=values["filesize"],
            mode=values["mode"],
            checksum=values["check"],
            header_offset=header_offset,
            data_offset=self._offset,
            crc=bool(values["crc"]),
            ino=values["ino"],
            uid=values["uid"],
            gid=values["gid"],
            nlink=values["nlink"],
            mtime=values["mtime"],
        )
        self._current = member
        self._remaining = member.size
        self._sum = 0
        return member

    @property
    def offset(self) -> int:
        """Number of archive bytes consumed so far."""
        return self._offset

    def iter_data(self, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """Yield the current member's unread data in chunks.

        Args:
            chunk_size: Maximum size of each chunk.

        Yields:
            Consecutive pieces of the member's data.

        Raises:
            CpioError: If there is no current member.
        """
        if self._current is None:
            raise CpioError("no current member: iterate the reader first")
        while self._remaining:
            yield self._consume(min(chunk_size, self._remaining))

    def read_data(self) -> bytes:
        """Return the current member's unread data (all of it, if nothing was read yet).

        Returns:
            The data bytes.
        """
        return b"".join(self.iter_data())


def iter_members(stream: BinaryIO, *, verify: bool = True) -> Iterator[CpioMember]:
    """Iterate over the members of an archive without reading their data into memory.

    Args:
        stream: The archive.
        verify: Check ``070702`` checksums (the data is still read, just not kept).

    Yields:
        Each member's header information, trailer excluded.
    """
    yield from CpioReader(stream, verify=verify)


def read_archive(data: bytes, *, verify: bool = True) -> list[tuple[CpioMember, bytes]]:
    """Parse a whole in-memory archive.

    Args:
        data: The archive bytes.
        verify: Check ``070702`` checksums.

    Returns:
        ``(member, data)`` pairs in archive order.
    """
    reader = CpioReader(io.BytesIO(data), verify=verify)
    return [(member, reader.read_data()) for member in reader]
