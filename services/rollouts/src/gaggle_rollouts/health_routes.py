"""Rollouts operator API: software blocked for a device after it rolled back, and clearing it."""

# Routes carry their documentation in summary= and description=: a docstring would become
# the OpenAPI description of the operation.
# ruff: noqa: D103

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from gaggle_contracts import names
from gaggle_rollouts.deps import ChooserDep, HealthDep, KnownDep, Reader, Writer
from gaggle_runtime.http import ApiError, NotFoundError

api = APIRouter(prefix="/api/v1", tags=["actions"])
ControllerIdParam = Annotated[str, Path(max_length=256)]
SoftwareIdParam = Annotated[str, Path(max_length=64)]


def _tenant(tenant: str, controller_id: str) -> str:
    try:
        names.check_controller_id(controller_id)
    except names.InvalidNameError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    return tenant.lower()


@api.get(
    "/devices/{controller_id}/blocked",
    summary="Software the device is not offered again (it rolled back from it)",
)
async def blocked_software(
    tenant: Reader, controller_id: ControllerIdParam, health: HealthDep, known: KnownDep
) -> dict[str, Any]:
    tenant = _tenant(tenant, controller_id)
    items = await health.blocked(tenant, controller_id)
    if not items and not await known.device(tenant, controller_id):
        raise NotFoundError("device", controller_id)
    return {"controller_id": controller_id, "items": items}


@api.delete(
    "/devices/{controller_id}/blocked/{software_id}",
    status_code=204,
    summary="Clear a block: the device may be offered that software again",
    description="The device is chosen for again at once. The rollout in which it rolled back "
    "keeps counting it as rolled back.",
)
async def unblock_software(
    tenant: Writer,
    controller_id: ControllerIdParam,
    software_id: SoftwareIdParam,
    health: HealthDep,
    chooser: ChooserDep,
) -> Response:
    tenant = _tenant(tenant, controller_id)
    if not await health.unblock(tenant, controller_id, software_id):
        raise NotFoundError("blocked software", software_id)
    await chooser.choose(tenant, controller_id)
    return Response(status_code=204)
