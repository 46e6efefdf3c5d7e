"""Registry operator API under ``/api/v1/devices``.

A device's actions and their full status history (its update logs) belong to the rollouts
service: ``GET /api/v1/devices/{id}/actions`` there. Here: the inventory, device tokens, and a
live stream of the device's feedback as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response, StreamingResponse
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, ConfigDict, Field

from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_contracts.events import UPDATE_STATES
from gaggle_contracts.kv import token_hash
from gaggle_registry.deps import Devices, Listing, Nats
from gaggle_registry.domain import Device, decode_cursor, encode_cursor, new_token
from gaggle_registry.errors import (
    DeviceExistsError,
    InvalidCursorError,
    InvalidRequestError,
    found,
)
from gaggle_registry.listing import DeviceListing, DeviceQuery
from gaggle_registry.repository import Repo
from gaggle_runtime.auth import needs

DeviceIdParam = Annotated[str, Path(max_length=256, description="Controller id")]
DeviceReader = Annotated[str, needs(Permission.DEVICE_READ)]
"""The caller's tenant, if it may read devices."""
DeviceWriter = Annotated[str, needs(Permission.DEVICE_WRITE)]
"""The caller's tenant, if it may change devices."""


@dataclass(frozen=True)
class Addressed:
    """The device a route's path names, in the caller's tenant (lower case)."""

    tenant: str
    controller_id: str


def _to_read(tenant: DeviceReader, controller_id: DeviceIdParam) -> Addressed:
    return Addressed(tenant.lower(), controller_id)


def _to_change(tenant: DeviceWriter, controller_id: DeviceIdParam) -> Addressed:
    return Addressed(tenant.lower(), controller_id)


DeviceToRead = Annotated[Addressed, Depends(_to_read)]
"""The device the path names, if the caller may read devices."""
DeviceToChange = Annotated[Addressed, Depends(_to_change)]
"""The device the path names, if the caller may change devices."""
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
KEEPALIVE_S = 15.0


class NewDevice(BaseModel):
    """Create a device ahead of its first poll; its token is returned once."""

    model_config = ConfigDict(extra="forbid")

    controller_id: str = Field(min_length=1, max_length=256, pattern=names.CONTROLLER_ID_RE.pattern)
    name: str | None = Field(None, max_length=256)
    tags: list[Tag] = Field(default_factory=list, max_length=50)


class DevicePatch(BaseModel):
    """Change what operators own: the name and the tags."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=256)
    tags: list[Tag] | None = Field(None, max_length=50)


class ListParams(BaseModel):
    """The query of ``GET /api/v1/devices``."""

    model_config = ConfigDict(extra="ignore")

    state: Literal[UPDATE_STATES] | None = None  # type: ignore[valid-type]
    hw_model: str | None = Field(None, max_length=128)
    hw_revision: str | None = Field(None, max_length=128)
    sw_version: str | None = Field(None, max_length=128)
    tag: str | None = Field(None, max_length=64)
    feed: str | None = Field(None, max_length=64)
    seen_before: datetime | None = None
    seen_after: datetime | None = None
    q: str | None = Field(None, max_length=256, description="Text in id or name")
    sort: Literal[
        "controller_id", "-controller_id", "last_seen", "-last_seen", "created", "-created"
    ] = "controller_id"
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(None, max_length=2048, description="From `next`")


async def list_body(listing: DeviceListing, tenant: str, params: ListParams) -> bytes:
    """The JSON of one listing page of ``tenant``'s devices.

    Raises:
        InvalidRequestError: a cursor that is not one of ours, or a time without a time zone.
    """
    after = None
    if params.cursor:
        try:
            after = decode_cursor(params.cursor)
        except ValueError as exc:
            raise InvalidCursorError from exc
    for name, value in (("seen_before", params.seen_before), ("seen_after", params.seen_after)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequestError(f"invalid {name}: give a time zone (e.g. Z)", parameter=name)
    query = DeviceQuery(
        tenant=tenant,
        **params.model_dump(exclude={"sort", "cursor"}),
        sort=params.sort.lstrip("-"),
        descending=params.sort.startswith("-"),
        after=after,
    )
    try:
        items, after = await listing.page(query)
    except ValueError as exc:  # a cursor whose time does not parse
        raise InvalidCursorError from exc
    next_cursor = encode_cursor(after) if after is not None else None
    # Rendered with orjson directly: FastAPI's generic encoding of a 100-device page cost more
    # than the query itself (bench/registry_bench.py).
    return orjson.dumps({"items": items, "next": next_cursor}, option=orjson.OPT_UTC_Z)


api = APIRouter(prefix="/api/v1", tags=["devices"])


def found_device(device: Device | None, controller_id: str) -> Device:
    """``device``, which a store answered for ``controller_id``; 404 if there was none."""
    return found(device, "device", controller_id)


async def load(repo: Repo, at: Addressed) -> Device:
    """The device, or 404."""
    return found_device(await repo.get(at.tenant, at.controller_id), at.controller_id)


@api.get("/devices", summary="List devices: filters, sort, keyset pagination")
async def list_devices(
    tenant: DeviceReader,
    params: Annotated[ListParams, Query()],
    listing: Listing,
) -> Response:
    """One page of devices; ``next`` is the cursor of the page after it (null at the end).

    ``q`` matches text anywhere in the id or the name, ignoring case. Devices never seen
    sort as the oldest by ``last_seen``; ``seen_before`` and ``seen_after`` leave them out.
    """
    return Response(await list_body(listing, tenant, params), media_type="application/json")


@api.post("/devices", status_code=201, summary="Create a device; its token is shown once")
async def create_device(tenant: DeviceWriter, body: NewDevice, repo: Devices) -> dict[str, Any]:
    """A device made ahead of its first poll, with its token (409 if it exists)."""
    token = new_token()
    device = await repo.create(
        tenant.lower(), body.controller_id, body.name, body.tags, token_hash(token)
    )
    if device is None:
        raise DeviceExistsError(body.controller_id)
    return {**device.public(), "token": token}


@api.get("/devices/{controller_id}", summary="One device")
async def get_device(device: DeviceToRead, repo: Devices) -> dict[str, Any]:
    """One device as operators see it."""
    return (await load(repo, device)).public()


@api.patch("/devices/{controller_id}", summary="Change name and tags")
async def patch_device(device: DeviceToChange, body: DevicePatch, repo: Devices) -> dict[str, Any]:
    """Change a device's name and/or tags; the fields left out stay."""
    given = body.model_fields_set
    patched = await repo.patch(
        device.tenant,
        device.controller_id,
        ("name" in given, body.name),
        ("tags" in given and body.tags is not None, body.tags),
    )
    return found_device(patched, device.controller_id).public()


@api.delete(
    "/devices/{controller_id}",
    summary="Delete a device; the rollouts service cancels its open action",
)
async def delete_device(device: DeviceToChange, repo: Devices) -> dict[str, Any]:
    """Remove a device, its token and its KV entry."""
    found_device(await repo.delete(device.tenant, device.controller_id), device.controller_id)
    return {
        "controller_id": device.controller_id,
        "deleted": True,
        "open_action": "canceled by the rollouts service (device.updated: deleted)",
    }


@api.post("/devices/{controller_id}/token", summary="Rotate the device token (shown once)")
async def rotate_token(device: DeviceToChange, repo: Devices) -> dict[str, Any]:
    """A new token for the device; the old one stops working."""
    token = new_token()
    rotated = await repo.set_token(device.tenant, device.controller_id, token_hash(token))
    found_device(rotated, device.controller_id)
    return {"controller_id": device.controller_id, "token": token}


@api.delete("/devices/{controller_id}/token", summary="Revoke the device token")
async def revoke_token(device: DeviceToChange, repo: Devices) -> dict[str, Any]:
    """The device without its token; the device as it is now."""
    revoked = await repo.set_token(device.tenant, device.controller_id, None)
    return found_device(revoked, device.controller_id).public()


@api.get(
    "/devices/{controller_id}/logs/stream",
    summary="Live feedback of a device (Server-Sent Events)",
    response_class=StreamingResponse,
)
async def stream_logs(device: DeviceToRead, repo: Devices, nc: Nats) -> StreamingResponse:
    """The device's feedback as Server-Sent Events, as it arrives."""
    await load(repo, device)
    return StreamingResponse(
        feedback_events(nc, device.tenant, device.controller_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def feedback_events(nc: NatsClient, tenant: str, controller_id: str) -> AsyncIterator[bytes]:
    """SSE lines for every deployment and cancel feedback of one device, as they arrive.

    Listens on the subjects directly (no durable consumer): a stream for whoever watches now.
    """
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=1000)

    async def on_message(msg: Any) -> None:
        try:
            data = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            return
        if data.get("controller_id") == controller_id:
            kind = msg.subject.split(".", 3)[3]
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait((kind, orjson.dumps(data)))

    subs = [
        await nc.subscribe(names.subject(tenant, kind), cb=on_message)
        for kind in ("action.feedback", "cancel.feedback")
    ]
    try:
        # The server has the subscriptions before the watcher is told it is connected: a report
        # sent after ": connected" is never missed.
        await nc.flush()
        yield b": connected\n\n"
        while True:
            try:
                kind, data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            yield b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
