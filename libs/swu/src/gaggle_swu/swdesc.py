"""sw-description, pure: libconfig or JSON text in, version, compatibility and images out.

SWUpdate reads sw-description as libconfig, or as JSON when built with JSON support; both give
the same tree, so this module tries libconfig first, then JSON. The libconfig reader is a small
one written here (groups ``{}``, lists ``()``, arrays ``[]``, ``name = value`` or ``name :
value``, strings with C escapes and adjacent-string concatenation, decimal, hex, binary and octal
integers with an optional ``L``/``LL`` suffix, floats, booleans, ``#``, ``//`` and ``/* */``
comments, optional ``;``/``,`` terminators); ``@include`` is refused.

The compatibility pairs ``(hw_model, hw_revision)`` follow gooseBit, ``*`` meaning "any":

* ``software.hardware-compatibility = ["1.0", ...]`` gives ``("*", "1.0")``: any board, that
  revision;
* each group ``software.K`` holding ``hardware-compatibility`` gives ``(K, rev)`` per revision;
* so does each group one level deeper (a collection or mode, ``software.K.stable``), still
  named after the outer board ``K``;
* a group ``software.K`` with no ``hardware-compatibility`` there or one level deeper, but with
  its own ``images``, ``files`` or ``scripts``, gives ``(K, "*")``: any revision of board ``K``
  (a group with images only deeper down is a selection, like ``software.stable.copy-1``, and gives
  nothing);
* when none of these occur: ``[("*", "*")]``, any device. gooseBit says ``("default",
  "default")`` here, but SWUpdate itself installs such an image on any hardware, so Gaggle does
  too.

Revisions are kept as written, SWUpdate's ``#RE:`` regular expressions included. An empty
``hardware-compatibility`` list counts as present and adds no pairs (no device matches it).
Duplicate pairs are dropped, keeping the first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

from gaggle_contracts.versions import InvalidVersionError, SwVersion
from gaggle_swu.errors import SwuError

ANY: Final = "*"
"""Wildcard in a compatibility pair: any board, or any revision."""
HARDWARE_COMPATIBILITY: Final = "hardware-compatibility"
"""Key of the list of accepted hardware revisions."""
IMAGE_SECTIONS: Final = ("images", "files", "scripts")
"""Keys of the lists whose entries name files for SWUpdate's handlers."""

_MAX_DEPTH: Final = 64


@dataclass(frozen=True, slots=True)
class SwImage:
    """One entry of an ``images``, ``files`` or ``scripts`` list.

    Attributes:
        filename: Name of the member of the ``.swu`` holding the data, if given.
        type: Handler that installs it (``raw``, ``rawfile``, ``ubivol``, ...), if given.
        section: Where the entry was found, below ``software``: ``images``,
            ``myboard.files``, ``myboard.stable.copy-1.images``.
        sha256: Declared hex sha256 of the data, if given.
        path: Destination path (``files``, ``rawfile``), if given.
        device: Destination device (``/dev/mmcblk0p2``), if given.
    """

    filename: str | None
    type: str | None
    section: str
    sha256: str | None = None
    path: str | None = None
    device: str | None = None


@dataclass(frozen=True, slots=True)
class SwDescription:
    """What Gaggle needs from a sw-description.

    Attributes:
        version: ``software.version``, orderable by :class:`~gaggle_contracts.versions.SwVersion`.
        name: ``software.name``, else a top-level ``name``, if either is a string.
        description: ``software.description``, else a top-level ``description``.
        compatibility: ``(hw_model, hw_revision)`` pairs, ``*`` for any (see the module docs).
        images: Every ``images``/``files``/``scripts`` entry below ``software``, in text order.
    """

    version: str
    name: str | None
    description: str | None
    compatibility: list[tuple[str, str]]
    images: list[SwImage]


# libconfig ---------------------------------------------------------------------------------

_SKIP = re.compile(r"(?:[ \t\r\n\f\v]+|(?:#|//)[^\n]*|/\*.*?\*/)*", re.DOTALL)
_NAME = re.compile(r"[A-Za-z*][-A-Za-z0-9_*]*")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[\\\"fnrt])")
_ESCAPES: Final = {"\\": b"\\", '"': b'"', "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t"}
_FLOAT = re.compile(
    r"[-+]?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)"
)
_INTEGER = re.compile(r"[-+]?(?:(0[xXbBoO])[0-9A-Fa-f]+|[0-9]+)(LL?)?")
_BOOLEAN = re.compile(r"(?i:true|false)")
_WORD_CHAR = re.compile(r"[-A-Za-z0-9_*.]")
_INT64_MIN: Final = -(1 << 63)
_UINT64_MAX: Final = (1 << 64) - 1


class _SyntaxError(Exception):
    """A libconfig syntax error, with its line number in the message."""


def _unescape(body: str) -> bytes:
    # libconfig strings are bytes: \xHH inserts one byte; unknown escapes keep their backslash.
    out = bytearray()
    last = 0
    for m in _ESCAPE.finditer(body):
        out += body[last : m.start()].encode("utf-8", "surrogatepass")
        esc = m.group(1)
        out += bytes([int(esc[1:], 16)]) if esc[0] == "x" else _ESCAPES[esc]
        last = m.end()
    out += body[last:].encode("utf-8", "surrogatepass")
    return bytes(out)


class _Libconfig:
    """Recursive-descent reader of one libconfig document into dicts, lists and scalars."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> _SyntaxError:
        line = self.text.count("\n", 0, self.pos) + 1
        return _SyntaxError(f"line {line}: {message}")

    def skip(self) -> str:
        match = _SKIP.match(self.text, self.pos)
        if match is not None:
            self.pos = match.end()
        return self.text[self.pos : self.pos + 1]

    def document(self) -> dict[str, object]:
        return self.settings("", 0)

    def settings(self, closer: str, depth: int) -> dict[str, object]:
        result: dict[str, object] = {}
        while True:
            char = self.skip()
            if char == closer:
                self.pos += len(closer)
                return result
            if not char:
                raise self.error(f"unexpected end of text, expected {closer!r}")
            if char == "@":
                raise self.error("@include is not supported in a sw-description")
            match = _NAME.match(self.text, self.pos)
            if match is None:
                raise self.error(f"expected a setting name, found {char!r}")
            name = match.group()
            self.pos = match.end()
            if self.skip() not in ("=", ":"):
                raise self.error(f"expected '=' or ':' after {name!r}")
            self.pos += 1
            value = self.value(depth)
            if self.skip() in (";", ","):
                self.pos += 1
            if name in result:
                raise self.error(f"duplicate setting {name!r}")
            result[name] = value

    def sequence(self, closer: str, depth: int, *, scalars: bool) -> list[object]:
        items: list[object] = []
        while True:
            if self.skip() == closer:
                self.pos += 1
                return items
            if scalars and self.text[self.pos : self.pos + 1] in ("{", "(", "["):
                raise self.error("arrays [] hold only scalar values; use a list ()")
            items.append(self.value(depth))
            char = self.skip()
            if char == ",":
                self.pos += 1
            elif char != closer:
                raise self.error(f"expected ',' or {closer!r}, found {char or 'end of text'!r}")

    def value(self, depth: int) -> object:
        char = self.skip()
        if char in ("{", "(", "["):
            if depth >= _MAX_DEPTH:
                raise self.error(f"nested deeper than {_MAX_DEPTH} levels")
            self.pos += 1
            if char == "{":
                return self.settings("}", depth + 1)
            return self.sequence(")" if char == "(" else "]", depth + 1, scalars=char == "[")
        if char == '"':
            return self.string()
        return self.scalar()

    def string(self) -> str:
        out = bytearray()
        while self.skip() == '"':
            match = _STRING.match(self.text, self.pos)
            if match is None:
                raise self.error("unterminated string")
            out += _unescape(match.group(1))
            self.pos = match.end()
        return out.decode("utf-8", "replace")

    def scalar(self) -> object:
        text, pos = self.text, self.pos
        value: object
        if match := _FLOAT.match(text, pos):
            value = float(match.group())
        elif match := _INTEGER.match(text, pos):
            value = self.integer(match)
        elif match := _BOOLEAN.match(text, pos):
            value = match.group().lower() == "true"
        else:
            raise self.error(f"expected a value, found {text[pos : pos + 1] or 'end of text'!r}")
        self.pos = match.end()
        if _WORD_CHAR.match(text, self.pos):
            raise self.error(f"unexpected {text[pos : self.pos + 1]!r} in a value")
        return value

    def integer(self, match: re.Match[str]) -> int:
        token = match.group().rstrip("L")
        prefix = match.group(1)
        try:
            value = int(token, 0) if prefix else int(token, 10)
        except ValueError:  # hex digits after 0b/0o, or more digits than int() accepts
            raise self.error(f"bad integer {token[:40]!r}") from None
        if not _INT64_MIN <= value <= (_UINT64_MAX if prefix else -_INT64_MIN - 1):
            raise self.error(f"integer {token[:40]!r} out of 64-bit range")
        return value


def load_tree(text: str) -> dict[str, object]:
    """Read a sw-description into plain data: groups as dicts, lists and arrays as lists.

    Args:
        text: libconfig or JSON text.

    Returns:
        The top-level settings (libconfig) or object (JSON).

    Raises:
        SwuError: ``bad_sw_description`` when the text is neither.
    """
    try:
        return _Libconfig(text).document()
    except _SyntaxError as exc:
        libconfig_error = str(exc)
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as exc:
        json_error = f"JSON: {exc}"
    else:
        if isinstance(tree, dict):
            return tree
        json_error = "JSON: the top level is not an object"
    # Report the error of the syntax the author most likely meant.
    reason = json_error if text.lstrip().startswith(("{", "[")) else f"libconfig: {libconfig_error}"
    raise SwuError("bad_sw_description", f"sw-description is neither libconfig nor JSON ({reason})")


# the tree -----------------------------------------------------------------------------------


def _text(group: dict[str, object], key: str) -> str | None:
    value = group.get(key)
    return value if isinstance(value, str) else None


def _field(entry: dict[str, object], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise SwuError("bad_sw_description", f"{where}: {key} must be a string, not {value!r:.40}")


def _revisions(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) and r for r in value):
        raise SwuError(
            "bad_sw_description",
            f"{where}.{HARDWARE_COMPATIBILITY} must be a list of non-empty strings",
        )
    return [r for r in value if isinstance(r, str)]


def _compatibility(software: dict[str, object]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    found = HARDWARE_COMPATIBILITY in software
    if found:
        revisions = _revisions(software[HARDWARE_COMPATIBILITY], "software")
        pairs += [(ANY, rev) for rev in revisions]
    for board, group in software.items():
        if not isinstance(group, dict):
            continue
        sections = [(f"software.{board}", group)]
        sections += [(f"software.{board}.{k}", v) for k, v in group.items() if isinstance(v, dict)]
        with_hw = [(where, s) for where, s in sections if HARDWARE_COMPATIBILITY in s]
        for where, section in with_hw:
            pairs += [(board, rev) for rev in _revisions(section[HARDWARE_COMPATIBILITY], where)]
        if with_hw:
            found = True
        elif any(isinstance(group.get(key), list) for key in IMAGE_SECTIONS):
            found = True
            pairs.append((board, ANY))
    if not found:
        return [(ANY, ANY)]
    return list(dict.fromkeys(pairs))


def _images(software: dict[str, object]) -> list[SwImage]:
    images: list[SwImage] = []
    # Depth-first in text order, without recursion: a JSON tree may be nested ~1000 deep.
    stack: list[tuple[str, dict[str, object]]] = [("", software)]
    while stack:
        path, group = stack.pop()
        children: list[tuple[str, dict[str, object]]] = []
        for key, value in group.items():
            where = f"{path}.{key}" if path else key
            if key in IMAGE_SECTIONS and isinstance(value, list):
                for index, entry in enumerate(value):
                    if not isinstance(entry, dict):
                        raise SwuError(
                            "bad_sw_description", f"software.{where}[{index}] is not a group"
                        )
                    at = f"software.{where}[{index}]"
                    images.append(
                        SwImage(
                            filename=_field(entry, "filename", at),
                            type=_field(entry, "type", at),
                            section=where,
                            sha256=_field(entry, "sha256", at),
                            path=_field(entry, "path", at),
                            device=_field(entry, "device", at),
                        )
                    )
            elif isinstance(value, dict):
                children.append((where, value))
        stack.extend(reversed(children))
    return images


def parse_sw_description(text: str) -> SwDescription:
    """Read a sw-description (libconfig, else JSON).

    Args:
        text: The sw-description, decoded from UTF-8.

    Returns:
        Its version, name, description, compatibility pairs and image entries.

    Raises:
        SwuError: ``bad_sw_description`` when the text is neither libconfig nor JSON, has no
            ``software`` group, or has malformed ``hardware-compatibility`` or image entries;
            ``no_version`` without ``software.version``; ``bad_version`` when that is not a
            string :class:`~gaggle_contracts.versions.SwVersion` can order.
    """
    tree = load_tree(text)
    software = tree.get("software")
    if not isinstance(software, dict):
        raise SwuError("bad_sw_description", "sw-description has no 'software' group")
    if "version" not in software:
        raise SwuError("no_version", "sw-description has no software.version")
    version = software["version"]
    if not isinstance(version, str):
        raise SwuError("bad_version", f"software.version must be a string, not {version!r:.40}")
    try:
        SwVersion.parse(version)
    except InvalidVersionError as exc:
        raise SwuError("bad_version", f"software.version: {exc}") from None
    return SwDescription(
        version=version,
        name=_text(software, "name") or _text(tree, "name"),
        description=_text(software, "description") or _text(tree, "description"),
        compatibility=_compatibility(software),
        images=_images(software),
    )
