"""Artifacts operator API: upload, register external software, list, get, download, delete."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import httpx
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from gaggle_artifacts.domain import (
    MAX_FILENAME,
    MAX_URL,
    BadFilenameError,
    check_filename,
    version_key,
)
from gaggle_artifacts.ingest import Ingest, Ingested, multipart_file
from gaggle_artifacts.repository import NewSoftware, Repo
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_runtime.auth import needs
from gaggle_runtime.http import ApiError, NotFoundError
from gaggle_storage import ObjectNotFoundError, ObjectStore, StorageSettings
from gaggle_storage.http import PreconditionFailedError, serve_object

log = logging.getLogger(__name__)

IdParam = Annotated[str, Path(max_length=20, description="Software id")]
MAX_LIST = 10_000


class ExternalSoftware(BaseModel):
    """Register an image hosted elsewhere: Gaggle fetches it once to hash and parse it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=MAX_URL)
    filename: str | None = Field(None, max_length=MAX_FILENAME)


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


def _check_name(name: str) -> str:
    try:
        return check_filename(name)
    except BadFilenameError as exc:
        raise ApiError(400, "invalid_filename", str(exc)) from exc


async def _check_public(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(400, "invalid_url", "external software needs an http(s) URL with a host")
    if allow_private:
        return
    infos = await _resolve(parts.hostname)
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private or address.is_loopback or address.is_link_local:
            raise ApiError(400, "invalid_url", "external software may not be on a private address")


async def _resolve(host: str) -> list[Any]:
    try:
        return await asyncio.get_running_loop().getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ApiError(400, "invalid_url", f"cannot resolve {host!r}") from exc


def make_routes(
    repo: Repo, store: ObjectStore, settings: ArtifactsSettings, storage: StorageSettings
) -> APIRouter:
    """Routes bound to the service's parts."""
    api = APIRouter(prefix="/api/v1", tags=["software"])

    async def record(
        tenant: str,
        ingested: Ingested,
        filename: str,
        *,
        object_key: str | None,
        external_url: str | None,
    ) -> dict[str, Any]:
        info = ingested.info
        new = NewSoftware(
            tenant=tenant,
            name=info.name or filename.rsplit(".", 1)[0],
            version=info.version,
            filename=filename,
            size=ingested.size,
            md5=ingested.md5,
            sha1=ingested.sha1,
            sha256=ingested.sha256,
            object_key=object_key,
            external_url=external_url,
            compatibility=list(info.compatibility),
            description=info.description,
            signed=info.signed,
            members=list(info.members),
            images=[dataclasses.asdict(img) for img in info.images],
        )
        software = await repo.insert(new)
        if software is None:
            existing = await repo.by_sha256(tenant, ingested.sha256)
            raise ApiError(
                409,
                "duplicate",
                "this image is already in the catalogue",
                software_id=str(existing.id) if existing else None,
            )
        log.info(
            "software created tenant=%s id=%s version=%s", tenant, software.id, software.version
        )
        return software.public()

    async def upload(
        request: Request, tenant: str, filename: str, chunks: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        key = f"{tenant}/{uuid.uuid4().hex}/{filename}"
        ingest = Ingest(settings.max_upload_bytes)
        stored = False
        try:
            await store.write(key, ingest.through(chunks))
            stored = True
            ingested = ingest.result()
            return await record(tenant, ingested, filename, object_key=key, external_url=None)
        except ClientDisconnect as exc:
            raise ApiError(400, "incomplete", "the upload was cut before its end") from exc
        except BaseException:
            if stored:
                with contextlib.suppress(Exception):
                    await store.delete(key)
            raise

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
        tenant: Annotated[str, needs(Permission.SOFTWARE_WRITE)],
        request: Request,
        filename: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        tenant = tenant.lower()
        declared = request.headers.get("content-length")
        if (
            declared
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > settings.max_upload_bytes + 65536
        ):
            raise ApiError(
                413,
                "too_large",
                f"image larger than the limit of {settings.max_upload_bytes} bytes",
            )
        content_type = request.headers.get("content-type", "application/octet-stream")
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/json":
            body = await request.body()
            try:
                external = ExternalSoftware.model_validate_json(body)
            except ValueError as exc:
                raise ApiError(400, "invalid_request", 'expected {"url": "http(s)://..."}') from exc
            return await register_external(tenant, external)
        if media == "multipart/form-data":
            part_name, chunks = await multipart_file(content_type, request.stream())
            name = _check_name(filename or part_name or "image.swu")
            return await upload(request, tenant, name, chunks)
        name = _check_name(_filename_from(request, filename))
        return await upload(request, tenant, name, request.stream())

    async def register_external(tenant: str, external: ExternalSoftware) -> dict[str, Any]:
        await _check_public(external.url, settings.allow_private_urls)
        name = _check_name(
            external.filename
            or unquote(urlsplit(external.url).path.rsplit("/", 1)[-1])
            or "image.swu"
        )
        ingest = Ingest(settings.max_upload_bytes)
        try:
            async with (
                httpx.AsyncClient(
                    timeout=settings.external_timeout_s, follow_redirects=True, max_redirects=5
                ) as client,
                client.stream("GET", external.url) as response,
            ):
                if response.status_code != 200:
                    raise ApiError(
                        422, "fetch_failed", f"fetching the image answered {response.status_code}"
                    )
                async for _ in ingest.through(response.aiter_bytes()):
                    pass  # hashed and parsed, not stored: devices fetch it from its own URL
        except httpx.HTTPError as exc:
            raise ApiError(422, "fetch_failed", f"could not fetch the image: {exc}") from exc
        return await record(
            tenant, ingest.result(), name, object_key=None, external_url=external.url
        )

    @api.get("/software", summary="List software (filter, sort, paginate)")
    async def list_software(
        tenant: Annotated[str, needs(Permission.SOFTWARE_READ)],
        name: Annotated[str | None, Query(max_length=255)] = None,
        version: Annotated[str | None, Query(max_length=128)] = None,
        hw_model: Annotated[str | None, Query(max_length=128)] = None,
        hw_revision: Annotated[str | None, Query(max_length=128)] = None,
        sort: Literal["created", "-created", "name", "-name", "version", "-version"] = "created",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=MAX_LIST)] = 0,
    ) -> dict[str, Any]:
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

    async def load(tenant: str, raw_id: str) -> Any:
        software = await repo.get(tenant.lower(), _parse_id(raw_id))
        if software is None or software.deleted:
            raise NotFoundError("software", raw_id)
        return software

    @api.get("/software/{software_id}", summary="One software")
    async def get_software(
        tenant: Annotated[str, needs(Permission.SOFTWARE_READ)], software_id: IdParam
    ) -> dict[str, Any]:
        return (await load(tenant, software_id)).public()  # type: ignore[no-any-return]

    @api.api_route(
        "/software/{software_id}/download",
        methods=["GET", "HEAD"],
        summary="Download the image (Range, If-Range, If-Match; presigned redirect for S3)",
    )
    async def download_software(
        tenant: Annotated[str, needs(Permission.SOFTWARE_READ)],
        software_id: IdParam,
        request: Request,
    ) -> Response:
        software = await load(tenant, software_id)
        if software.external_url:
            return Response(status_code=302, headers={"Location": software.external_url})
        try:
            return await serve_object(
                request,
                store,
                software.object_key,
                etag=f'"{software.sha1}"',
                filename=software.filename,
                presign_expiry_s=storage.presign_expiry_s if storage.presign else None,
            )
        except PreconditionFailedError as exc:
            raise ApiError(412, "precondition_failed", "If-Match does not match") from exc
        except ObjectNotFoundError as exc:
            raise ApiError(404, "not_found", "the image's bytes are missing") from exc

    @api.delete("/software/{software_id}", summary="Delete (soft if any device ever had it)")
    async def delete_software(
        tenant: Annotated[str, needs(Permission.SOFTWARE_WRITE)], software_id: IdParam
    ) -> dict[str, Any]:
        result = await repo.delete(tenant.lower(), _parse_id(software_id))
        if result is None:
            raise NotFoundError("software", software_id)
        software, hard = result
        if software.object_key:
            try:
                await store.delete(software.object_key)
            except Exception:
                log.warning(
                    "could not remove image bytes key=%s", software.object_key, exc_info=True
                )
        return {"id": str(software.id), "deleted": "hard" if hard else "soft"}

    return api
