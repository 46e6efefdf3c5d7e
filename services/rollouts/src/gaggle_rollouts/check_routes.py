"""Rollouts operator API: what an attended upgrade check of a device would answer, and why."""

# Routes carry their documentation in summary= and description=: a docstring would become
# the OpenAPI description of the operation.
# ruff: noqa: D103

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query

from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_contracts.ddi import MAX_ATTRIBUTE_VALUE
from gaggle_contracts.versions import MAX_LENGTH
from gaggle_rollouts.check import Checker, make_responder
from gaggle_rollouts.known import ReadThrough
from gaggle_runtime.auth import needs
from gaggle_runtime.http import ApiError, NotFoundError
from gaggle_runtime.service import Service
from gaggle_runtime.state import part, put_parts

api = APIRouter(prefix="/api/v1", tags=["actions"])
ControllerIdParam = Annotated[str, Path(max_length=256)]
DeviceReader = Annotated[str, needs(Permission.DEVICE_READ)]
CheckerDep = Annotated[Checker, part("checker")]
KnownDep = Annotated[ReadThrough, part("known")]


@api.get(
    "/devices/{controller_id}/check",
    summary="What an attended upgrade check of the device would answer, and why",
    description=(
        "The answer the gateway's `POST /{tenant}/upgrade/v1/check` gives this device "
        "(`status` 200: an update, 204: up to date, 422: unprocessable), its reason, the policy "
        "and rollout it came from, and every catalogue entry with what the check made of it. "
        "`version` defaults to the one the device reported; `board` and `revision` stand for "
        "the hardware while the device has reported none, as in the device's own check."
    ),
)
async def check_device(
    tenant: DeviceReader,
    controller_id: ControllerIdParam,
    checker: CheckerDep,
    known: KnownDep,
    version: Annotated[str | None, Query(min_length=1, max_length=MAX_LENGTH)] = None,
    board: Annotated[str | None, Query(min_length=1, max_length=MAX_ATTRIBUTE_VALUE)] = None,
    revision: Annotated[str | None, Query(min_length=1, max_length=MAX_ATTRIBUTE_VALUE)] = None,
) -> dict[str, Any]:
    try:
        names.check_controller_id(controller_id)
    except names.InvalidNameError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    tenant = tenant.lower()
    if not await known.device(tenant, controller_id):
        raise NotFoundError("device", controller_id)
    return await checker.explain(tenant, controller_id, version, board, revision)


def install(app: FastAPI, service: Service, checker: Checker) -> None:
    """The check's route on ``app``, and its request-reply endpoints started with ``service``."""
    put_parts(app, checker=checker)
    app.include_router(api)
    responder = make_responder(checker, service.tracing)

    async def answer() -> None:
        await responder.start(service.broker.connection)

    service.on_start.append(answer)
    service.on_stop.append(responder.stop)
