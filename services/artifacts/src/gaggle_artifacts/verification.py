"""Verified images, pure: an image's inner hashes, its signature and its version against policy.

What is covered of the sw-description: every entry of an ``images``, ``files`` or ``scripts``
list anywhere below ``software`` (top level, board sections ``software.<board>``, collections and
modes ``software.<board>.<mode>``, selections ``software.stable.copy-1``), in libconfig or JSON
syntax alike (``gaggle_swu.swdesc``). An entry naming a ``filename`` is compared with the
archive member of that name: its ``sha256`` must equal the sha256 of the member's bytes as they
are in the archive (SWUpdate hashes them so too, before decompressing or decrypting). Entries
without a ``filename`` (an embedded script, a partitioner) name no member and are not checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gaggle_artifacts.domain import ANY, version_key
from gaggle_artifacts.signatures import BadSignatureError, Purpose, TrustEntry, Verdict, verify
from gaggle_contracts.kv import TenantConfig
from gaggle_swu import SW_DESCRIPTION, SW_DESCRIPTION_SIG, SwuInfo


@dataclass(frozen=True)
class Policy:
    """A tenant's rules for images (``TenantConfig``'s fields of the same names)."""

    require_signature: bool = False
    require_image_hashes: bool = False
    monotonic_versions: bool = False

    @classmethod
    def of(cls, config: TenantConfig | None) -> Policy:
        """The policy a tenant's settings give; the defaults for a tenant never configured."""
        if config is None:
            return cls()
        return cls(
            require_signature=config.require_signature,
            require_image_hashes=config.require_image_hashes,
            monotonic_versions=config.monotonic_versions,
        )

    def public(self) -> dict[str, bool]:
        """As the API shows it."""
        return {
            "require_signature": self.require_signature,
            "require_image_hashes": self.require_image_hashes,
            "monotonic_versions": self.monotonic_versions,
        }


class ImageRefusedError(ValueError):
    """An image the checks or the tenant's policy refuse (422).

    Attributes:
        code: What refused it (``image_hash_mismatch``, ``signature_required``, ...).
        details: Extra fields for the answer (``member``, ``expected``, ``found``, ...).
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


def check_images(info: SwuInfo, policy: Policy) -> dict[str, Any]:
    """Compare every image entry's ``sha256`` with its member; what was found, for the record.

    Returns:
        ``checked`` (members whose hash matched), ``missing`` (named, not in the archive),
        ``unhashed`` (named, without a sha256), ``unreferenced`` (in the archive, named by no
        entry), each a list of member names.

    Raises:
        ImageRefusedError: ``image_hash_mismatch`` whatever the policy; ``image_missing``,
            ``image_hash_missing`` and ``image_unreferenced`` when the policy requires image
            hashes (every file named, hashed and in the archive, and no member unaccounted for).
    """
    checked: list[str] = []
    missing: list[str] = []
    unhashed: list[str] = []
    named: set[str] = set()
    for image in info.images:
        name = image.filename
        if name is None:
            continue
        named.add(name)
        actual = info.sha256.get(name)
        where = f"software.{image.section}"
        if actual is None:
            if policy.require_image_hashes:
                raise ImageRefusedError(
                    "image_missing",
                    f"{where} names {name!r}, which is not in the archive",
                    member=name,
                )
            missing.append(name)
        elif image.sha256 is None:
            if policy.require_image_hashes:
                raise ImageRefusedError(
                    "image_hash_missing",
                    f"{where} gives no sha256 for {name!r}, and the tenant requires one",
                    member=name,
                )
            unhashed.append(name)
        elif image.sha256.strip().lower() != actual:
            raise ImageRefusedError(
                "image_hash_mismatch",
                f"member {name!r} does not match the sha256 that {where} gives",
                member=name,
                expected=image.sha256,
                found=actual,
            )
        else:
            checked.append(name)
    reserved = {SW_DESCRIPTION, SW_DESCRIPTION_SIG}
    unreferenced = [n for n, _ in info.members if n not in reserved and n not in named]
    if unreferenced and policy.require_image_hashes:
        raise ImageRefusedError(
            "image_unreferenced",
            f"member {unreferenced[0]!r} is named by no entry of the sw-description, and the "
            "tenant requires every file to be listed with its sha256",
            member=unreferenced[0],
        )
    return {
        "checked": list(dict.fromkeys(checked)),
        "missing": list(dict.fromkeys(missing)),
        "unhashed": list(dict.fromkeys(unhashed)),
        "unreferenced": unreferenced,
    }


def check_newer(
    version: str,
    compatibility: Sequence[tuple[str, str]],
    catalogue: Sequence[tuple[str, Sequence[tuple[str, str]]]],
) -> None:
    """Refuse ``version`` unless it is newer than every catalogued version for its boards.

    ``catalogue`` is ``(version, compatibility)`` of the live software. A board of ``*`` (any)
    shares boards with everything. Versions are compared in ``SwVersion`` order; a catalogued
    version that cannot be ordered is passed over.

    Raises:
        ImageRefusedError: ``version_not_newer``, naming the board and the newer version.
    """
    new = version_key(version)
    boards = {m for m, _ in compatibility}
    for other, pairs in catalogue:
        old = version_key(other)
        if old[0] == 0:
            continue
        shared = [m for m, _ in pairs if m in boards or ANY in boards or m == ANY]
        if shared and not new > old:
            board = next((m for m in shared if m in boards), shared[0])
            raise ImageRefusedError(
                "version_not_newer",
                f"version {version!r} is not newer than {other!r}, already in the catalogue "
                f"for board {board!r}",
                board=board,
                newest=other,
            )


def check_signature(verdict: Verdict, policy: Policy) -> None:
    """Refuse an image whose signature did not verify, when the tenant requires signatures.

    Raises:
        ImageRefusedError: ``signature_required``, with the reason it is not verified.
    """
    if policy.require_signature and verdict.state != "verified":
        raise ImageRefusedError(
            "signature_required",
            f"the tenant takes only images signed by its trust store: {verdict.reason}",
            signature=verdict.state,
        )


def verify_signature(
    info: SwuInfo, store: Sequence[TrustEntry], now: datetime, purpose: Purpose
) -> Verdict:
    """The image's signature verdict (:func:`signatures.verify`).

    Raises:
        ImageRefusedError: ``signature_invalid`` when the signature contradicts the
            sw-description (altered after signing), whatever the policy.
    """
    try:
        return verify(info.sw_description.encode("utf-8"), info.signature, store, now, purpose)
    except BadSignatureError as exc:
        raise ImageRefusedError("signature_invalid", f"{SW_DESCRIPTION_SIG}: {exc}") from None
