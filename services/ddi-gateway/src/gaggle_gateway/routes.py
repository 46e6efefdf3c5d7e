"""DDI routes: ``/{tenant}/controller/v1/{controllerId}/…``, answered by the gateway core.

Reads (poll, deploymentBase, cancelAction, installedBase, confirmationBase, artifacts) cost a
dictionary look-up and a JSON render; reports (configData, feedback) are answered 200 only after
JetStream acknowledged the event, else 429 with ``Retry-After`` so the device retries. See
ddi-api.md for each rule.

Every route takes its :class:`~gaggle_gateway.core.Caller` from one dependency (path checked,
tenant existing, credentials, sighting noted), and the :class:`~gaggle_gateway.core.Gateway`
from ``app.state.gateway``, where ``app.py`` puts it.
"""

# The routes carry no docstrings: FastAPI would publish them as OpenAPI descriptions, and each
# route's ``summary=`` already says what it does.
# ruff: noqa: D103

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar, cast

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gaggle_contracts.ddi import AutoConfirmBody, ConfirmationFeedbackBody, InstalledBaseBody
from gaggle_contracts.events import (
    ActionFeedback,
    AutoConfirmChanged,
    CancelFeedback,
    ConfirmationFeedback,
)
from gaggle_contracts.kv import ArtifactDoc, ChunkDoc, InstalledAction, OpenAction
from gaggle_gateway.bodies import parse_body, read_limited
from gaggle_gateway.core import HAL_JSON, Caller, FeedbackKind, Gateway, open_action
from gaggle_gateway.domain import action_json, artifact_json, find_module, history_count
from gaggle_gateway.downloads import serve_artifact
from gaggle_gateway.errors import Conflict, NotFound
from gaggle_gateway.feedback import check_feedback_target, take_feedback
from gaggle_gateway.ids import report_id, stamp
from gaggle_gateway.origin import Origin

BASE = "/{tenant}/controller/v1/{controller_id}"
M = TypeVar("M", bound=BaseModel)

AuthHeader = Annotated[str | None, Header(include_in_schema=False)]


async def gateway(request: Request) -> Gateway:
    """The gateway the app answers from (``app.state.gateway``)."""
    return cast(Gateway, request.app.state.gateway)


Gw = Annotated[Gateway, Depends(gateway)]


async def device(
    tenant: str, controller_id: str, request: Request, gw: Gw, authorization: AuthHeader = None
) -> Caller:
    """The authorised device of a request, its sighting noted.

    Dependencies are coroutines so that they run on the event loop, as the sighting needs.
    """
    origin = Origin.of(request.scope)
    return gw.sighted(gw.authorize(origin, tenant, controller_id, authorization), origin.address)


async def registering_device(
    tenant: str, controller_id: str, request: Request, gw: Gw, authorization: AuthHeader = None
) -> Caller:
    """As :func:`device`, for the requests an unknown device may register with."""
    origin = Origin.of(request.scope)
    caller = gw.authorize(origin, tenant, controller_id, authorization, may_register=True)
    return gw.sighted(caller, origin.address)


Device = Annotated[Caller, Depends(device)]
RegisteringDevice = Annotated[Caller, Depends(registering_device)]

router = APIRouter(tags=["DDI"])


def json_response(body: Any, status: int = 200) -> Response:
    """HAL JSON, rendered with orjson."""
    return Response(orjson.dumps(body), status_code=status, media_type=HAL_JSON)


async def read_body(request: Request, model: type[M], limit: int) -> M:
    """Read at most ``limit`` bytes of JSON and validate it; unknown fields are ignored.

    Raises:
        PayloadTooLarge: the body is larger than ``limit``.
        BadRequest: not JSON, or not the expected shape (the message names the field).
    """
    return parse_body(await read_limited(request.scope, request.receive, limit), model)


def offered(caller: Caller, gw: Gateway, action_id: str, state: str, refusal: str) -> OpenAction:
    """The device's open action ``action_id`` in ``state``, else 404 with ``refusal``."""
    action = open_action(caller, gw, action_id)
    if action.state != state:
        raise NotFound(f"action {action_id!r} {refusal}")
    return action


def action_page(
    caller: Caller, action: OpenAction | InstalledAction, section: str, request: Request
) -> Response:
    """A deploymentBase, installedBase or confirmationBase body, ``actionHistory`` as asked."""
    history = history_count(request.query_params.get("actionHistory"))
    return json_response(action_json(caller.base, action, section, history))


def assigned_chunk(caller: Caller, gw: Gateway, module_id: str) -> ChunkDoc:
    """The software module of the device's open or installed action, else 404."""
    chunk = find_module(caller.deployment(gw.mirror), module_id)
    if chunk is None:
        raise NotFound(f"software module {module_id!r} not assigned to this target")
    return chunk


async def report_feedback(
    request: Request, caller: Caller, gw: Gateway, action_id: str, kind: FeedbackKind
) -> Response:
    """Validate a feedback body and answer 200 once JetStream has the event."""
    await take_feedback(gw, caller, action_id, kind, request.scope, request.receive)
    return Response(status_code=200)


@router.get(BASE, summary="Base poll: what the device should do next")
async def poll(
    tenant: str, controller_id: str, request: Request, gw: Gw, authorization: AuthHeader = None
) -> Response:
    # Normally answered by the fast lane in front of the app (fastlane.py); kept here for
    # the OpenAPI document and for any server that mounts the app without it.
    body = gw.poll(Origin.of(request.scope), tenant, controller_id, authorization)
    return Response(body, media_type=HAL_JSON)


@router.put(BASE + "/configData", summary="Report the device's attributes")
async def config_data(caller: RegisteringDevice, request: Request, gw: Gw) -> Response:
    # A device may PUT its attributes before the registry has caught up with its first
    # poll, so this request may register too. Normally answered by the fast lane.
    data = await read_limited(request.scope, request.receive, gw.settings.max_body_bytes)
    await gw.report_config_data(caller, data)
    return Response(status_code=200)


@router.get(BASE + "/deploymentBase/{action_id}", summary="The open deployment")
async def deployment_base(caller: Device, action_id: str, request: Request, gw: Gw) -> Response:
    # Normally answered by the fast lane (fastlane.py).
    return json_response(deployment_page(caller, gw, action_id, request.query_params))


def deployment_page(
    caller: Caller, gw: Gateway, action_id: str, query: Mapping[str, str]
) -> dict[str, Any]:
    """The deploymentBase body of the device's open action ``action_id``, else 404."""
    action = offered(caller, gw, action_id, "deployment", "is not offered for deployment")
    history = history_count(query.get("actionHistory"))
    return action_json(caller.base, action, "deployment", history)


@router.post(BASE + "/deploymentBase/{action_id}/feedback", summary="Report progress or result")
async def deployment_feedback(caller: Device, action_id: str, request: Request, gw: Gw) -> Response:
    # Without tracing, answered by the fast lane in front of the app (fastlane.py).
    return await report_feedback(request, caller, gw, action_id, ActionFeedback)


@router.get(BASE + "/cancelAction/{action_id}", summary="The cancel request for an action")
async def cancel_action(caller: Device, action_id: str, gw: Gw) -> Response:
    offered(caller, gw, action_id, "canceling", "is not being canceled")
    return json_response({"id": action_id, "cancelAction": {"stopId": action_id}})


@router.post(BASE + "/cancelAction/{action_id}/feedback", summary="Acknowledge or reject a cancel")
async def cancel_feedback(caller: Device, action_id: str, request: Request, gw: Gw) -> Response:
    return await report_feedback(request, caller, gw, action_id, CancelFeedback)


@router.get(BASE + "/installedBase/{action_id}", summary="The last finished deployment")
async def installed_base(caller: Device, action_id: str, request: Request, gw: Gw) -> Response:
    entry = caller.deployment(gw.mirror)
    if entry is None or entry.installed is None or entry.installed.action_id != action_id:
        raise NotFound(f"no finished action {action_id!r}")
    return action_page(caller, entry.installed, "deployment", request)


@router.put(BASE + "/installedBase", summary="Declare the software already running (experimental)")
async def declare_installed(caller: Device, request: Request, gw: Gw) -> Response:
    body = await read_body(request, InstalledBaseBody, gw.settings.max_body_bytes)
    # Recorded as the device's reported software: the registry keeps sw_version current.
    data = {"sw_version": body.version, "sw_name": body.name}
    await gw.report_config(caller, "merge", data, body)
    return Response(status_code=200)


@router.get(BASE + "/confirmationBase", summary="Auto-confirmation state")
async def confirmation_base(caller: RegisteringDevice, gw: Gw) -> Response:
    if not gw.mirror.deployments.current:
        raise gw.reloading()
    entry = gw.deployment(caller)
    active = bool(entry and entry.auto_confirm)
    links: dict[str, dict[str, str]] = {}
    base = caller.base + "/confirmationBase"
    if active:
        links["deactivateAutoConfirm"] = {"href": f"{base}/deactivateAutoConfirm"}
    else:
        links["activateAutoConfirm"] = {"href": f"{base}/activateAutoConfirm"}
    if entry and entry.open and entry.open.state == "wait_for_confirmation":
        links["confirmationBase"] = {"href": f"{base}/{entry.open.action_id}?c={entry.open.c}"}
    return json_response({"autoConfirm": {"active": active}, "_links": links})


@router.get(BASE + "/confirmationBase/{action_id}", summary="An action awaiting confirmation")
async def confirmation_action(caller: Device, action_id: str, request: Request, gw: Gw) -> Response:
    action = offered(caller, gw, action_id, "wait_for_confirmation", "does not await confirmation")
    return action_page(caller, action, "confirmation", request)


@router.post(BASE + "/confirmationBase/{action_id}/feedback", summary="Confirm or deny an action")
async def confirmation_feedback(
    caller: Device, action_id: str, request: Request, gw: Gw
) -> Response:
    action = check_feedback_target(gw, caller, action_id)
    if action.state != "wait_for_confirmation":
        raise NotFound(f"action {action_id!r} does not await confirmation")
    body = await read_body(request, ConfirmationFeedbackBody, gw.settings.max_feedback_bytes)
    content = body.model_dump(mode="json", include={"confirmation", "code", "details"})
    content["time"] = stamp(None, None, time.time())
    event = ConfirmationFeedback(
        event_id=report_id(
            ConfirmationFeedback.kind, caller.tenant, caller.controller_id, action_id, content
        ),
        **caller.ids,
        action_id=action_id,
        confirmation=body.confirmation,
        code=body.code,
        details=body.noted(body.details),
    )
    await gw.report(caller, event, body)
    return Response(status_code=200)


async def set_auto_confirm(
    request: Request, caller: Caller, gw: Gateway, *, active: bool
) -> Response:
    """Switch the device's auto-confirmation; an active one cannot be activated again."""
    entry = caller.deployment(gw.mirror)
    if active and entry is not None and entry.auto_confirm:
        raise Conflict("auto-confirmation is already active")
    body = AutoConfirmBody()
    # A switch, not a report: its event id stays random. Applying one twice changes nothing,
    # while an id derived from it would drop a device's second deactivation within the bus's
    # duplicate window (off, on, off) and leave auto-confirmation on.
    if active:
        body = await read_body(request, AutoConfirmBody, gw.settings.max_body_bytes)
    event = AutoConfirmChanged(
        **caller.ids, active=active, initiator=body.initiator, remark=body.remark
    )
    await gw.report(caller, event, body)
    return Response(status_code=200)


@router.post(BASE + "/confirmationBase/activateAutoConfirm", summary="Confirm future actions")
async def activate_auto_confirm(caller: Device, request: Request, gw: Gw) -> Response:
    return await set_auto_confirm(request, caller, gw, active=True)


@router.post(BASE + "/confirmationBase/deactivateAutoConfirm", summary="Stop auto-confirming")
async def deactivate_auto_confirm(caller: Device, request: Request, gw: Gw) -> Response:
    return await set_auto_confirm(request, caller, gw, active=False)


@router.get(BASE + "/softwaremodules/{module_id}/artifacts", summary="A module's artifacts")
async def artifacts(caller: Device, module_id: str, gw: Gw) -> Response:
    chunk = assigned_chunk(caller, gw, module_id)
    return json_response([artifact_json(caller.base, module_id, a) for a in chunk.artifacts])


@router.api_route(
    BASE + "/softwaremodules/{module_id}/artifacts/{filename}",
    methods=["GET", "HEAD"],
    summary="Download an artifact (Range, If-Range, If-Match) or its .MD5SUM",
)
async def download(
    caller: Device, module_id: str, filename: str, request: Request, gw: Gw
) -> Response:
    # Normally answered by the fast lane (fastlane.py).
    return await artifact_response(caller, gw, module_id, filename, request)


async def artifact_response(
    caller: Caller, gw: Gateway, module_id: str, filename: str, request: Request
) -> Response:
    """An artifact of the device's action (or its ``.MD5SUM``), else 404.

    The device is authorised and the artifact is one of its action's before anything else: a
    redirect to the object store (the tenant's ``download_redirect``) is never handed out for
    an artifact the device could not download here. The ``.MD5SUM`` is always answered here.
    """
    by_name = {a.filename: a for a in assigned_chunk(caller, gw, module_id).artifacts}
    artifact = by_name.get(filename)
    if artifact is None and filename.endswith(".MD5SUM"):
        artifact = by_name.get(filename[: -len(".MD5SUM")])
        if artifact is not None:
            return md5sum_file(artifact)
    if artifact is None:
        raise NotFound(f"artifact {filename!r} not found")
    redirect = caller.config.download_redirect
    return await serve_artifact(
        request,
        gw.store,
        artifact,
        presign=gw.storage.presign if redirect is None else redirect,
        presign_expiry_s=gw.storage.presign_expiry_s,
    )


def md5sum_file(artifact: ArtifactDoc) -> Response:
    """An artifact's ``.MD5SUM``: the hash and the file name, as ``md5sum`` writes them."""
    return Response(
        f"{artifact.md5}  {artifact.filename}",
        media_type="text/plain",
        headers={"Content-Disposition": f"attachment;filename={artifact.filename}.MD5SUM"},
    )
