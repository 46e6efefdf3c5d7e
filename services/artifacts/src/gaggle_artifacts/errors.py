"""The artifacts service's HTTP errors: what an operator is told when software is refused.

::

    ApiError (gaggle_runtime.http)      status, code and message, answered as JSON
    ├── NotFoundError (gaggle_runtime)  404 not_found: no such software here
    ├── BytesMissingError               404 not_found: the entry is there, its bytes are not
    ├── InvalidRequestError             400 invalid_request: a body that cannot be read
    ├── InvalidFilenameError            400 invalid_filename
    ├── InvalidUrlError                 400 invalid_url: not http(s), private, or unresolvable
    ├── IncompleteUploadError           400 incomplete: the upload stopped before its end
    ├── DuplicateImageError             409 duplicate: the same bytes are in the catalogue
    ├── DuplicateTrustError             409 duplicate: that certificate or key is trusted already
    ├── TrustChangedConflictError       409 trust_changed: the signer left the trust store meanwhile
    ├── IfMatchFailedError              412 precondition_failed
    ├── UploadTooLargeError             413 too_large
    ├── InvalidImageError               422 invalid_image.<code>: not a usable .swu image
    ├── OverQuotaError                  422 quota_exceeded: metadata over a ``domain.MAX_*``,
    │                                       or a full trust store
    ├── RefusedImageError               422 <code>: inner hashes, signature or policy refuse it
    │                                       (``verification.ImageRefusedError``'s code)
    ├── InvalidTrustEntryError          422 invalid_trust_entry: not one PEM certificate or key
    ├── PolicyUnknownError              503 policy_unknown: tenants' settings not loaded yet
    └── FetchFailedError                422 fetch_failed: external software could not be read

Taking an image in (``ingest``) raises domain errors, not these: :func:`install` answers each
as the HTTP error :func:`refusal` names for it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gaggle_artifacts.domain import MAX_MEMBERS, QuotaExceededError, TrustChangedError
from gaggle_artifacts.ingest import MalformedBodyError, TooLargeError
from gaggle_artifacts.policies import PolicyUnknownError
from gaggle_artifacts.signatures import BadTrustEntryError
from gaggle_artifacts.trust_store import MAX_ENTRIES, DuplicateEntryError, TrustStoreFullError
from gaggle_artifacts.verification import ImageRefusedError
from gaggle_runtime.http import ApiError, NotFoundError, api_error_response, found
from gaggle_swu import SwuError

__all__ = [
    "ApiError",
    "BytesMissingError",
    "DuplicateImageError",
    "DuplicateTrustError",
    "FetchFailedError",
    "IfMatchFailedError",
    "IncompleteUploadError",
    "InvalidFilenameError",
    "InvalidImageError",
    "InvalidRequestError",
    "InvalidTrustEntryError",
    "InvalidUrlError",
    "NotFoundError",
    "OverQuotaError",
    "PolicyNotLoadedError",
    "RefusedImageError",
    "TrustChangedConflictError",
    "UploadTooLargeError",
    "found",
]


class BytesMissingError(ApiError):
    """The software's entry exists, but the object store has no bytes for it."""

    def __init__(self) -> None:
        super().__init__(404, "not_found", "the image's bytes are missing")


class InvalidRequestError(ApiError):
    """A request body that cannot be read as what it says it is."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_request", message)


class InvalidFilenameError(ApiError):
    """A file name we do not keep (``domain.check_filename``)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_filename", message)


class InvalidUrlError(ApiError):
    """External software's URL that Gaggle may not or cannot fetch."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_url", message)


class IncompleteUploadError(ApiError):
    """The client went away before the upload's end."""

    def __init__(self) -> None:
        super().__init__(400, "incomplete", "the upload was cut before its end")


class DuplicateImageError(ApiError):
    """An image whose SHA-256 is already in the tenant's catalogue."""

    def __init__(self, existing_id: int | None) -> None:
        super().__init__(
            409,
            "duplicate",
            "this image is already in the catalogue",
            software_id=str(existing_id) if existing_id is not None else None,
        )


class IfMatchFailedError(ApiError):
    """A download whose ``If-Match`` names other bytes."""

    def __init__(self) -> None:
        super().__init__(412, "precondition_failed", "If-Match does not match")


class UploadTooLargeError(ApiError):
    """The image is larger than the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"image larger than the limit of {limit} bytes")


class InvalidImageError(ApiError):
    """The bytes are not a ``.swu`` image Gaggle can use."""

    def __init__(self, exc: SwuError) -> None:
        super().__init__(422, f"invalid_image.{exc.code}", f"not a usable .swu image: {exc}")


class OverQuotaError(ApiError):
    """The image's metadata is over one of the quotas (``domain.MAX_*``)."""

    def __init__(self, exc: QuotaExceededError) -> None:
        super().__init__(
            422,
            "quota_exceeded",
            f"image metadata over a quota: {exc}",
            quota=exc.quota,
            limit=exc.limit,
            found=exc.found,
        )


class FetchFailedError(ApiError):
    """External software that could not be fetched whole."""

    def __init__(self, message: str) -> None:
        super().__init__(422, "fetch_failed", message)


class RefusedImageError(ApiError):
    """The image's inner hashes, its signature or the tenant's policy refuse it."""

    def __init__(self, exc: ImageRefusedError) -> None:
        super().__init__(422, exc.code, str(exc), **exc.details)


class DuplicateTrustError(ApiError):
    """A certificate or key that is in the trust store already."""

    def __init__(self, existing_id: int | None) -> None:
        super().__init__(
            409,
            "duplicate",
            "this certificate or key is in the trust store already",
            entry_id=str(existing_id) if existing_id is not None else None,
        )


class TrustChangedConflictError(ApiError):
    """The trust-store entry that verified the image was removed while it was being recorded."""

    def __init__(self) -> None:
        super().__init__(
            409,
            "trust_changed",
            "a trust-store entry that verified this image was removed meanwhile; upload it again",
        )


class InvalidTrustEntryError(ApiError):
    """PEM text that is not one certificate or public key."""

    def __init__(self, message: str) -> None:
        super().__init__(422, "invalid_trust_entry", message)


class PolicyNotLoadedError(ApiError):
    """The tenants' settings (KV ``tenants``) have not been read yet."""

    def __init__(self) -> None:
        super().__init__(
            503, "policy_unknown", "the tenant's image policy is not known yet; try again"
        )


def refusal(exc: Exception) -> ApiError:
    """The HTTP error for what refused an image while it was taken in (``ingest``)."""
    if isinstance(exc, ImageRefusedError):
        return RefusedImageError(exc)
    if isinstance(exc, PolicyUnknownError):
        return PolicyNotLoadedError()
    if isinstance(exc, BadTrustEntryError):
        return InvalidTrustEntryError(str(exc))
    if isinstance(exc, DuplicateEntryError):
        return DuplicateTrustError(exc.existing_id)
    if isinstance(exc, TrustChangedError):
        return TrustChangedConflictError()
    if isinstance(exc, TrustStoreFullError):
        return OverQuotaError(
            QuotaExceededError("trust_entries", "trust-store entries", MAX_ENTRIES, MAX_ENTRIES + 1)
        )
    if isinstance(exc, SwuError) and exc.code == "too_many_members":
        exc = QuotaExceededError("members", "files in the archive", MAX_MEMBERS, MAX_MEMBERS + 1)
    if isinstance(exc, SwuError):
        return InvalidImageError(exc)
    if isinstance(exc, QuotaExceededError):
        return OverQuotaError(exc)
    if isinstance(exc, TooLargeError):
        return UploadTooLargeError(exc.limit)
    if isinstance(exc, MalformedBodyError):
        return InvalidRequestError(str(exc))
    raise TypeError(f"no HTTP error for {type(exc).__name__}")


REFUSALS = (
    SwuError,
    QuotaExceededError,
    TooLargeError,
    MalformedBodyError,
    ImageRefusedError,
    PolicyUnknownError,
    BadTrustEntryError,
    DuplicateEntryError,
    TrustStoreFullError,
    TrustChangedError,
)
"""The errors taking an image in raises, each answered as :func:`refusal` says."""


def install(app: FastAPI) -> None:
    """Answer the errors of taking an image in as the HTTP errors above, in this one place."""

    async def _refused(_: Request, exc: Exception) -> JSONResponse:
        return api_error_response(refusal(exc))

    for kind in REFUSALS:
        app.add_exception_handler(kind, _refused)
