"""Artifacts domain, pure: software entries, file names, compatibility matching, ordering."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gaggle_contracts.events import Compatibility, SoftwareCreated
from gaggle_contracts.versions import InvalidVersionError, SwVersion

ANY = "*"
"""Wildcard in a compatibility pair: any model, or any revision."""

MAX_FILENAME = 200
"""Longest file name: the store adds a prefix and suffix while writing, within 255 bytes."""
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


@dataclass(frozen=True)
class Software:
    """One software (one image file, stored here or hosted elsewhere)."""

    id: int
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
