"""Taking software in: an upload stored and recorded, or an external image fetched and recorded."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import ClientDisconnect

from gaggle_artifacts.domain import (
    MAX_FILENAME,
    MAX_URL,
    BadFilenameError,
    NewSoftware,
    check_filename,
)
from gaggle_artifacts.errors import (
    DuplicateImageError,
    FetchFailedError,
    IncompleteUploadError,
    InvalidFilenameError,
    InvalidUrlError,
)
from gaggle_artifacts.ingest import Ingest, Ingested
from gaggle_artifacts.policies import Policies
from gaggle_artifacts.repository import Repo
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_artifacts.trust_store import TrustStore
from gaggle_artifacts.verification import (
    check_images,
    check_newer,
    check_signature,
    verify_signature,
)
from gaggle_contracts.events import utcnow
from gaggle_storage import ObjectStore

log = logging.getLogger(__name__)


class ExternalSoftware(BaseModel):
    """Register an image hosted elsewhere: Gaggle fetches it once to hash and parse it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=8, max_length=MAX_URL)
    filename: str | None = Field(None, max_length=MAX_FILENAME)


def check_name(name: str) -> str:
    """``name`` if it is a file name we keep (400 otherwise)."""
    try:
        return check_filename(name)
    except BadFilenameError as exc:
        raise InvalidFilenameError(str(exc)) from exc


async def _check_public(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidUrlError("external software needs an http(s) URL with a host")
    if allow_private:
        return
    infos = await _resolve(parts.hostname)
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private or address.is_loopback or address.is_link_local:
            raise InvalidUrlError("external software may not be on a private address")


async def _resolve(host: str) -> list[Any]:
    try:
        return await asyncio.get_running_loop().getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise InvalidUrlError(f"cannot resolve {host!r}") from exc


@dataclass(frozen=True)
class Gate:
    """What judges an image before it is recorded: the tenant's trust store and policy."""

    trust: TrustStore
    policies: Policies
    settings: ArtifactsSettings


@dataclass(frozen=True)
class Judged:
    """What the checks found of an image they let in."""

    trust: str
    signature: dict[str, Any]
    trusted_by: list[str]
    image_check: dict[str, Any]


async def judge(repo: Repo, gate: Gate, tenant: str, ingested: Ingested) -> Judged:
    """Check an image's inner hashes, signature and version against the tenant's policy.

    Raises:
        ImageRefusedError: what refused it (answered 422).
        PolicyUnknownError: the tenant's policy is not known yet (answered 503).
    """
    policy = gate.policies.policy(tenant)
    info = ingested.info
    image_check = check_images(info, policy)
    now = utcnow()
    verdict = verify_signature(
        info, await gate.trust.entries(tenant), now, gate.settings.signer_purpose
    )
    check_signature(verdict, policy)
    if policy.monotonic_versions:
        check_newer(info.version, info.compatibility, await repo.versions(tenant))
    return Judged(verdict.state, verdict.document(now), list(verdict.trusted_by), image_check)


async def record(
    repo: Repo,
    tenant: str,
    ingested: Ingested,
    filename: str,
    *,
    object_key: str | None,
    external_url: str | None,
    judged: Judged | None = None,
) -> dict[str, Any]:
    """The ingested image as a new software entry, as the operator sees it (409: a duplicate)."""
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
        **(dataclasses.asdict(judged) if judged else {}),
    )
    software = await repo.insert(new)
    if software is None:
        existing = await repo.by_sha256(tenant, ingested.sha256)
        raise DuplicateImageError(existing.id if existing else None)
    log.info("software created tenant=%s id=%s version=%s", tenant, software.id, software.version)
    return software.public()


async def upload(
    repo: Repo,
    store: ObjectStore,
    gate: Gate,
    tenant: str,
    filename: str,
    chunks: AsyncIterator[bytes],
) -> dict[str, Any]:
    """An image's bytes stored, hashed, parsed and checked; nothing is left behind on failure.

    A refused image's bytes are removed again.
    """
    gate.policies.policy(tenant)  # 503 before a byte is stored while the policy is unknown
    key = f"{tenant}/{uuid.uuid4().hex}/{filename}"
    ingest = Ingest(gate.settings.max_upload_bytes)
    stored = False
    try:
        await store.write(key, ingest.through(chunks))
        stored = True
        ingested = ingest.result()
        judged = await judge(repo, gate, tenant, ingested)
        return await record(
            repo, tenant, ingested, filename, object_key=key, external_url=None, judged=judged
        )
    except ClientDisconnect as exc:
        raise IncompleteUploadError from exc
    except BaseException:
        if stored:
            with contextlib.suppress(Exception):
                await store.delete(key)
        raise


async def register_external(
    repo: Repo, gate: Gate, tenant: str, external: ExternalSoftware
) -> dict[str, Any]:
    """Software hosted elsewhere, fetched once to be hashed, parsed and checked, never stored."""
    settings = gate.settings
    gate.policies.policy(tenant)  # 503 before fetching while the policy is unknown
    await _check_public(external.url, settings.allow_private_urls)
    name = check_name(
        external.filename or unquote(urlsplit(external.url).path.rsplit("/", 1)[-1]) or "image.swu"
    )
    ingest = Ingest(settings.max_upload_bytes)
    # Imported here, not at start: httpx (with the rich console it loads when present) is
    # about half a second of a restart, and only external software needs it.
    import httpx

    try:
        async with (
            httpx.AsyncClient(
                timeout=settings.external_timeout_s, follow_redirects=True, max_redirects=5
            ) as client,
            client.stream("GET", external.url) as response,
        ):
            if response.status_code != 200:
                raise FetchFailedError(f"fetching the image answered {response.status_code}")
            async for _ in ingest.through(response.aiter_bytes()):
                pass  # hashed and parsed, not stored: devices fetch it from its own URL
    except httpx.HTTPError as exc:
        raise FetchFailedError(f"could not fetch the image: {exc}") from exc
    ingested = ingest.result()
    judged = await judge(repo, gate, tenant, ingested)
    return await record(
        repo, tenant, ingested, name, object_key=None, external_url=external.url, judged=judged
    )
