"""Artifacts operator API: upload, register external software, list, get, download, delete."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, cast
from urllib.parse import unquote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from gaggle_artifacts.deps import Catalogue, Judge, Settings, Storage, Store
from gaggle_artifacts.domain import (
    Software,
    version_key,
)
from gaggle_artifacts.errors import (
    BytesMissingError,
    IfMatchFailedError,
    InvalidRequestError,
    NotFoundError,
    UploadTooLargeError,
    found,
)
from gaggle_artifacts.ingest import multipart_file
from gaggle_artifacts.repository import Repo
from gaggle_artifacts.uploads import ExternalSoftware, check_name, register_external, upload
from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_runtime.auth import needs
from gaggle_storage import ObjectNotFoundError
from gaggle_storage.http import PreconditionFailedError, serve_object

log = logging.getLogger(__name__)

IdParam = Annotated[str, Path(max_length=20, description="Software id")]
SoftwareReader = Annotated[str, needs(Permission.SOFTWARE_READ)]
"""The caller's tenant, if it may read software."""
SoftwareWriter = Annotated[str, needs(Permission.SOFTWARE_WRITE)]
"""The caller's tenant, if it may change software."""
MAX_LIST = 10_000


def _parse_id(raw: str) -> int:
    software_id = names.parse_row_id(raw)
    if software_id is None:
        raise NotFoundError("software", raw)
    return software_id


def _filename_from(request: Request, query_name: str | None) -> str:
    name = query_name
    if name is None:
        disposition = request.headers.get("content-disposition", "")
        for part in disposition.split(";"):
            key, _, value = part.strip().partition("=")
            if key.lower() == "filename" and value:
                name = unquote(value.strip('"'))
    return name or "image.swu"


api = APIRouter(prefix="/api/v1", tags=["software"])


@api.post(
    "/software",
    status_code=201,
    summary="Upload a .swu image (multipart field `file`, or the raw body), or register a URL",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
                "application/json": {
                    "schema": ExternalSoftware.model_json_schema(),
                },
            }
        }
    },
)
async def upload_software(
    tenant: SoftwareWriter,
    request: Request,
    repo: Catalogue,
    store: Store,
    settings: Settings,
    gate: Judge,
    filename: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """A .swu image taken in as it streams (raw body or multipart), or an external one by URL.

    Either way the image's inner hashes and signature are checked, and the tenant's policy
    applied, before it is recorded: a refused image answers 422 and leaves nothing behind.
    """
    tenant = tenant.lower()
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isascii()
        and declared.isdigit()
        and int(declared) > settings.max_upload_bytes + 65536
    ):
        raise UploadTooLargeError(settings.max_upload_bytes)
    content_type = request.headers.get("content-type", "application/octet-stream")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        body = await request.body()
        try:
            external = ExternalSoftware.model_validate_json(body)
        except ValueError as exc:
            raise InvalidRequestError('expected {"url": "http(s)://..."}') from exc
        return await register_external(repo, gate, tenant, external)
    if media == "multipart/form-data":
        part_name, chunks = await multipart_file(content_type, request.stream())
        name = check_name(filename or part_name or "image.swu")
        return await upload(repo, store, gate, tenant, name, chunks)
    name = check_name(_filename_from(request, filename))
    return await upload(repo, store, gate, tenant, name, request.stream())


@api.get("/software", summary="List software (filter, sort, paginate)")
async def list_software(
    tenant: SoftwareReader,
    repo: Catalogue,
    name: Annotated[str | None, Query(max_length=255)] = None,
    version: Annotated[str | None, Query(max_length=128)] = None,
    hw_model: Annotated[str | None, Query(max_length=128)] = None,
    hw_revision: Annotated[str | None, Query(max_length=128)] = None,
    sort: Literal["created", "-created", "name", "-name", "version", "-version"] = "created",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_LIST)] = 0,
) -> dict[str, Any]:
    """One page of the tenant's software, filtered and sorted."""
    found = await repo.search(tenant.lower(), name, version, hw_model, hw_revision, MAX_LIST)
    field = sort.lstrip("-")
    keys: dict[str, Any] = {
        "created": lambda s: s.id,
        "name": lambda s: (s.name, version_key(s.version)),
        "version": lambda s: (version_key(s.version), s.id),
    }
    found.sort(key=keys[field], reverse=sort.startswith("-"))
    page = found[offset : offset + limit]
    more = offset + limit < len(found)
    return {
        "items": [s.public() for s in page],
        "total": len(found),
        "next_offset": offset + limit if more else None,
    }


async def load(repo: Repo, tenant: str, raw_id: str) -> Software:
    """The software, or 404 (deleted software included)."""
    software = await repo.get(tenant.lower(), _parse_id(raw_id))
    if software is None or software.deleted:
        raise NotFoundError("software", raw_id)
    return software


@api.get("/software/{software_id}", summary="One software")
async def get_software(
    tenant: SoftwareReader, software_id: IdParam, repo: Catalogue
) -> dict[str, Any]:
    """One software as operators see it."""
    return (await load(repo, tenant, software_id)).public()


@api.api_route(
    "/software/{software_id}/download",
    methods=["GET", "HEAD"],
    summary="Download the image (Range, If-Range, If-Match; presigned redirect for S3)",
)
async def download_software(
    tenant: SoftwareReader,
    software_id: IdParam,
    request: Request,
    repo: Catalogue,
    store: Store,
    storage: Storage,
) -> Response:
    """The image's bytes, ranges and conditions as HTTP says; a redirect for S3 or a URL."""
    software = await load(repo, tenant, software_id)
    if software.external_url:
        return Response(status_code=302, headers={"Location": software.external_url})
    try:
        return await serve_object(
            request,
            store,
            cast(str, software.object_key),  # software not external is stored
            etag=f'"{software.sha1}"',
            filename=software.filename,
            presign_expiry_s=storage.presign_expiry_s if storage.presign else None,
        )
    except PreconditionFailedError as exc:
        raise IfMatchFailedError from exc
    except ObjectNotFoundError as exc:
        raise BytesMissingError from exc


@api.delete("/software/{software_id}", summary="Delete (soft if any device ever had it)")
async def delete_software(
    tenant: SoftwareWriter,
    software_id: IdParam,
    repo: Catalogue,
    store: Store,
) -> dict[str, Any]:
    """Delete software: soft if a device ever had it, hard (bytes too) otherwise."""
    software, hard = found(
        await repo.delete(tenant.lower(), _parse_id(software_id)), "software", software_id
    )
    if software.object_key:
        try:
            await store.delete(software.object_key)
        except Exception:
            log.warning("could not remove image bytes key=%s", software.object_key, exc_info=True)
    return {"id": str(software.id), "deleted": "hard" if hard else "soft"}
