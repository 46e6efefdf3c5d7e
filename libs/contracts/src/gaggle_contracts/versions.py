"""Software versions in SWUpdate's two schemes (numeric and SemVer), in one total order.

SWUpdate (``core/artifacts_versions.c``) and gooseBit (``util/version.py``) accept two forms:

* **numeric**: 1 to 4 dot-separated decimal fields, each 0..65535, packed 16 bits each into one
  64-bit number (missing fields are 0, so ``1.2`` == ``1.2.0.0``). More than four fields are
  allowed but only the first four count (``1.2.3.4`` == ``1.2.3.4.5``); every field must still be
  decimal. A plain ``1.2.3`` is numeric.
* **semver**: anything else that is SemVer 2 with optional minor and patch (``1.0-rc1`` ==
  ``1.0.0-rc1``), parsed by the ``semver`` package. Build metadata is ignored for ordering.

Numeric versions compare by their packed value and SemVer versions by SemVer precedence, as in
gooseBit. For a mixed pair gooseBit compares by SemVer when both texts parse as SemVer and falls
back to comparing the texts as strings otherwise. That fallback is not transitive (``9`` < ``10``
numerically, yet ``10`` < ``2.0.0-rc`` < ``9`` as strings), so sorting or taking a maximum over it
gives arbitrary answers. Here every version maps to one key ``(f1, f2, f3, f4, prerelease)``:
numeric versions use their four fields and rank as releases, SemVer versions use ``(major, minor,
patch, 0)`` and their prerelease identifiers. This agrees with gooseBit for every pair gooseBit
compares by number or by SemVer, and orders the rest (``1.2.3-rc1`` < ``1.2.3.4``) by meaning
instead of by spelling. Equal keys are equal versions: ``1.2.3`` == ``1.2.3+build5``.
"""

from __future__ import annotations

import re
from typing import Final, Literal, TypeAlias

import semver

MAX_LENGTH: Final = 128
"""Longest accepted version text, in characters."""

VersionKind: TypeAlias = Literal["numeric", "semver"]
"""Which of SWUpdate's schemes a version text follows."""

_Identifier: TypeAlias = tuple[int, int, str]
_Key: TypeAlias = tuple[int, int, int, int, tuple[int, tuple[_Identifier, ...]]]

_NUMERIC = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_DIGITS = re.compile(r"[0-9]+")
_FIELD_MAX: Final = 0xFFFF
_NUMERIC_FIELDS: Final = 4
_RELEASE: Final[tuple[int, tuple[_Identifier, ...]]] = (1, ())


class InvalidVersionError(ValueError):
    """Raised when a text is neither a numeric nor a SemVer version."""


def _numeric_fields(text: str) -> tuple[int, int, int, int] | None:
    if not _NUMERIC.fullmatch(text):
        return None
    fields = [int(part) for part in text.split(".")[:_NUMERIC_FIELDS]]
    if any(field > _FIELD_MAX for field in fields):
        return None  # SWUpdate falls back to SemVer here, e.g. for 1.70000.0.
    fields += [0] * (_NUMERIC_FIELDS - len(fields))
    return fields[0], fields[1], fields[2], fields[3]


def _prerelease_key(prerelease: str | None) -> tuple[int, tuple[_Identifier, ...]]:
    # SemVer 2 section 11: a prerelease ranks below its release; numeric identifiers compare as
    # numbers and below alphanumeric ones; a longer list of equal identifiers ranks higher.
    if not prerelease:
        return _RELEASE
    return (
        0,
        tuple(
            (0, int(ident), "") if _DIGITS.fullmatch(ident) else (1, 0, ident)
            for ident in prerelease.split(".")
        ),
    )


class SwVersion:
    """A version SWUpdate can compare, ordered and hashed by meaning, not by spelling.

    Example:
        >>> SwVersion.parse("1.2") == SwVersion.parse("1.2.0.0")
        True
        >>> SwVersion.parse("1.2.3-rc1") < SwVersion.parse("1.2.3") < SwVersion.parse("1.2.3.1")
        True
    """

    __slots__ = ("_key", "_kind", "_text")

    _key: _Key
    _kind: VersionKind
    _text: str

    def __init__(self, text: str) -> None:
        """Parse ``text``; :meth:`parse` is the same, spelt as a factory.

        Args:
            text: A numeric or SemVer version, at most 128 ASCII characters, no whitespace.

        Raises:
            InvalidVersionError: If ``text`` is neither form.
        """
        if not isinstance(text, str) or not text or len(text) > MAX_LENGTH:
            raise InvalidVersionError(f"not a version: {text!r} (empty, too long or not text)")
        # Both regexes below would accept non-ASCII digits, and ``$`` a trailing newline.
        if not text.isascii() or any(c.isspace() for c in text):
            raise InvalidVersionError(f"not a version: {text!r} (whitespace or non-ASCII)")
        numeric = _numeric_fields(text)
        if numeric is not None:
            self._key = (*numeric, _RELEASE)
            self._kind = "numeric"
        else:
            try:
                sem = semver.Version.parse(text, optional_minor_and_patch=True)
            except (TypeError, ValueError):
                raise InvalidVersionError(
                    f"not a version: {text!r} (neither numeric like 1.2.3.4 nor SemVer)"
                ) from None
            self._key = (sem.major, sem.minor, sem.patch, 0, _prerelease_key(sem.prerelease))
            self._kind = "semver"
        self._text = text

    @classmethod
    def parse(cls, text: str) -> SwVersion:
        """Parse a version text.

        Args:
            text: A numeric or SemVer version, at most 128 ASCII characters, no whitespace.

        Returns:
            The version.

        Raises:
            InvalidVersionError: If ``text`` is neither form.
        """
        return cls(text)

    @property
    def text(self) -> str:
        """The version exactly as given."""
        return self._text

    @property
    def kind(self) -> VersionKind:
        """``"numeric"`` or ``"semver"``: the scheme the text follows."""
        return self._kind

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"SwVersion({self._text!r})"

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SwVersion):
            return NotImplemented
        return self._key == other._key

    def __lt__(self, other: SwVersion) -> bool:
        if not isinstance(other, SwVersion):
            return NotImplemented
        return self._key < other._key

    def __le__(self, other: SwVersion) -> bool:
        if not isinstance(other, SwVersion):
            return NotImplemented
        return self._key <= other._key

    def __gt__(self, other: SwVersion) -> bool:
        if not isinstance(other, SwVersion):
            return NotImplemented
        return self._key > other._key

    def __ge__(self, other: SwVersion) -> bool:
        if not isinstance(other, SwVersion):
            return NotImplemented
        return self._key >= other._key
