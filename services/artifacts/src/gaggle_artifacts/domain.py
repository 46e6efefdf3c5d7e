"""Artifacts domain, pure: software entries, file names, compatibility matching, ordering."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gaggle_contracts import ddi, versions
from gaggle_contracts.events import Compatibility, SoftwareCreated
from gaggle_contracts.versions import InvalidVersionError, SwVersion

ANY = "*"
"""Wildcard in a compatibility pair: any model, or any revision."""

MAX_FILENAME = 200
"""Longest file name: the store adds a prefix and suffix while writing, within 255 bytes."""
MAX_URL = 2048
"""Longest URL of external software."""
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,199}$")


class BadFilenameError(ValueError):
    """A file name Gaggle will not store (path parts, odd characters, too long)."""


def check_filename(name: str) -> str:
    """A plain file name: no directories, no ``..``, printable, at most 200 characters.

    Raises:
        BadFilenameError: anything else.
    """
    if "/" in name or "\\" in name or ".." in name or not _FILENAME_RE.match(name):
        raise BadFilenameError(
            f"invalid file name {name!r}: use 1-200 of A-Z a-z 0-9 . _ + ~ -, no path"
        )
    return name


# Quotas on what an image's metadata can grow. Each ends in the software's row, and the first
# four in its software.created event, which must fit NATS's max payload (1 MiB by default):
# with these limits the largest possible event is about 170 KB, whatever the image (a test
# builds that worst case).
MAX_NAME = 200
"""Longest software name (``software.name``); as long as a file name, which stands in for it."""
MAX_VERSION = versions.MAX_LENGTH
"""Longest version text (longer ones are no version: the parser refuses them first)."""
MAX_COMPATIBILITY = 100
"""Most ``(hw_model, hw_revision)`` pairs of ``hardware-compatibility``, all boards together."""
MAX_HW = ddi.MAX_ATTRIBUTE_VALUE
"""Longest board or revision in a pair: a device reports them in configData, at most this long,
and a pair matches only when equal, so a longer one could never match any device."""
MAX_DESCRIPTION = 4000
"""Longest description (row only)."""
MAX_MEMBERS = 1000
"""Most files in the archive, ``sw-description`` and its signature included (row only)."""
MAX_IMAGES = 1000
"""Most ``images``, ``files`` and ``scripts`` entries of the sw-description (row only)."""
MAX_SW_DESCRIPTION = 256 * 1024
"""Largest sw-description, in bytes; it bounds the text of every image entry together."""


class QuotaExceededError(ValueError):
    """Image metadata over one of the quotas above.

    Attributes:
        quota: Which one (``hardware_compatibility``, ``members``, ...).
        limit: The quota.
        found: What the image has.
    """

    def __init__(self, quota: str, what: str, limit: int, found: int) -> None:
        super().__init__(f"{what}: {found}, the limit is {limit}")
        self.quota = quota
        self.limit = limit
        self.found = found


def _at_most(quota: str, what: str, limit: int, found: int) -> None:
    if found > limit:
        raise QuotaExceededError(quota, what, limit, found)


def check_quotas(
    *,
    name: str | None,
    version: str,
    description: str | None,
    compatibility: Sequence[tuple[str, str]],
    images: int,
    members: int = 0,
) -> None:
    """Refuse image metadata over a quota (the first one exceeded says why).

    Raises:
        QuotaExceededError: a text too long, or too many of something.
    """
    _at_most("name", "characters in the software name", MAX_NAME, len(name or ""))
    _at_most("version", "characters in the version", MAX_VERSION, len(version))
    _at_most(
        "description", "characters in the description", MAX_DESCRIPTION, len(description or "")
    )
    _at_most(
        "hardware_compatibility",
        "hardware-compatibility entries",
        MAX_COMPATIBILITY,
        len(compatibility),
    )
    longest = max((max(len(m), len(r)) for m, r in compatibility), default=0)
    _at_most("hardware_compatibility_value", "characters in a board or revision", MAX_HW, longest)
    _at_most("images", "images, files and scripts entries", MAX_IMAGES, images)
    _at_most("members", "files in the archive", MAX_MEMBERS, members)


def compatible(pairs: list[tuple[str, str]], hw_model: str | None, hw_revision: str | None) -> bool:
    """Whether a device with this model and revision may run software with these pairs.

    ``None`` in the query matches anything (the filter was not given).
    """
    for model, revision in pairs:
        model_ok = hw_model is None or model in (ANY, hw_model)
        revision_ok = hw_revision is None or revision in (ANY, hw_revision)
        if model_ok and revision_ok:
            return True
    return False


def version_key(text: str) -> tuple[int, Any]:
    """Sort key by swupdate/SemVer order; unorderable versions sort first, by text."""
    try:
        return (1, SwVersion.parse(text))
    except InvalidVersionError:
        return (0, text)


class TrustChangedError(Exception):
    """A trust-store entry an image's verification relied on was removed before it was recorded."""


@dataclass(frozen=True)
class NewSoftware:
    """What an upload or registration found, before it has an id."""

    tenant: str
    name: str
    version: str
    filename: str
    size: int
    md5: str
    sha1: str
    sha256: str
    object_key: str | None
    external_url: str | None
    compatibility: list[tuple[str, str]]
    description: str | None = None
    signed: bool = False
    members: list[tuple[str, int]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    trust: str = "unchecked"
    """``verified``, ``unverified``, ``unsigned``, ``untrusted`` (its signer was removed from the
    trust store), or ``unchecked`` (taken in before images were verified)."""
    signature: dict[str, Any] | None = None
    """The signature's record: method, signer, verified_at, or why it is not verified."""
    trusted_by: list[str] = field(default_factory=list)
    """Fingerprints of the trust-store entries its verification relied on."""
    image_check: dict[str, Any] | None = None
    """What comparing the sw-description's sha256 values with the members found."""


@dataclass(frozen=True, kw_only=True)
class Software(NewSoftware):
    """One software (one image file, stored here or hosted elsewhere)."""

    id: int
    used: bool = False
    deleted: bool = False
    created_at: datetime | None = None
    deleted_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        """The operator's view."""
        return {
            "id": str(self.id),
            "tenant": self.tenant,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "filename": self.filename,
            "size": self.size,
            "hashes": {"md5": self.md5, "sha1": self.sha1, "sha256": self.sha256},
            "compatibility": [{"hw_model": m, "hw_revision": r} for m, r in self.compatibility],
            "signed": self.signed,
            "trust": self.trust,
            "signature": self.signature,
            "image_check": self.image_check,
            "files": [{"name": n, "size": s} for n, s in self.members],
            "images": self.images,
            "external_url": self.external_url,
            "used": self.used,
            "deleted": self.deleted,
            "created_at": self.created_at,
            "deleted_at": self.deleted_at,
        }

    def created_event(self) -> SoftwareCreated:
        """The ``software.created`` event announcing it."""
        return SoftwareCreated(
            tenant=self.tenant,
            software_id=str(self.id),
            name=self.name,
            version=self.version,
            filename=self.filename,
            size=self.size,
            md5=self.md5,
            sha1=self.sha1,
            sha256=self.sha256,
            compatibility=[Compatibility(hw_model=m, hw_revision=r) for m, r in self.compatibility],
            object_key=self.object_key,
            external_url=self.external_url,
        )
