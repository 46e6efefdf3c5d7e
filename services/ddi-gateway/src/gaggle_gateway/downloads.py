"""Device downloads: external artifacts redirected, stored ones served by the storage library."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gaggle_contracts.kv import ArtifactDoc
from gaggle_gateway.errors import NotFound, PreconditionFailed
from gaggle_storage import ObjectNotFoundError, ObjectStore
from gaggle_storage.http import PreconditionFailedError, serve_object


async def serve_artifact(
    request: Request,
    store: ObjectStore,
    artifact: ArtifactDoc,
    *,
    presign: bool,
    presign_expiry_s: int,
) -> Response:
    """Answer GET or HEAD for one artifact of the device's action."""
    if artifact.external_url:
        return RedirectResponse(artifact.external_url, status_code=302)
    if artifact.object_key is None:
        raise NotFound(f"artifact {artifact.filename!r} has no stored content")
    try:
        return await serve_object(
            request,
            store,
            artifact.object_key,
            etag=f'"{artifact.sha1}"',
            filename=artifact.filename,
            presign_expiry_s=presign_expiry_s if presign else None,
        )
    except PreconditionFailedError as exc:
        raise PreconditionFailed("If-Match does not match the artifact's SHA-1") from exc
    except ObjectNotFoundError as exc:
        raise NotFound(f"artifact {artifact.filename!r} is not in the object store") from exc
