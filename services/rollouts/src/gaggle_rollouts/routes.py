"""Rollouts operator API: actions (assign a software to a device, inspect, cancel), policies.

A device or software id rollouts has not been told of yet is read through to its owner
(:mod:`gaggle_rollouts.known`): an id that exists anywhere works at once, one that exists
nowhere is 404.
"""

# Routes carry their documentation in summary= and description=: a docstring would become
# the OpenAPI description of the operation.
# ruff: noqa: D103

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from gaggle_contracts import names
from gaggle_contracts.events import utcnow
from gaggle_rollouts.actions import Actions, ActionSpec
from gaggle_rollouts.deps import (
    ActionsDep,
    KnownDep,
    PoliciesDep,
    Reader,
    UseCasesDep,
    Writer,
)
from gaggle_rollouts.domain import Action, Software
from gaggle_rollouts.health import Limits, format_duration
from gaggle_rollouts.known import ReadThrough
from gaggle_rollouts.policies import Policy, PolicyMatch
from gaggle_rollouts.rollout_routes import LimitsBody, WindowBody, check_forcetime, duration_s
from gaggle_runtime.http import ApiError, NotFoundError

ActionIdParam = Annotated[str, Path(max_length=64, description="Action id")]


class NewAction(LimitsBody):
    """Assign one software to one device now."""

    model_config = ConfigDict(extra="forbid")

    software_id: str = Field(min_length=1, max_length=64)
    type: Literal["forced", "soft", "timeforced", "downloadonly"] = "forced"
    forcetime: AwareDatetime | None = Field(
        None, description="For timeforced: soft until this time, forced after it"
    )
    maintenance_window: WindowBody | None = None
    confirmation_required: bool = False

    @model_validator(mode="after")
    def _forcetime(self) -> NewAction:
        check_forcetime(self.type, self.forcetime)
        return self


class PolicyBody(BaseModel):
    """A device's deployment policy."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["rollout", "latest", "assigned", "pinned"] = "rollout"
    feed: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    software_id: str | None = Field(None, min_length=1, max_length=64)


class PolicyMatchBody(BaseModel):
    """Selects known devices (those that reported their inventory); every part optional."""

    model_config = ConfigDict(extra="forbid")

    hw_model: str | None = Field(None, min_length=1, max_length=256)
    hw_revision: str | None = Field(None, min_length=1, max_length=256)
    sw_version: str | None = Field(None, min_length=1, max_length=256)
    feed: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    mode: Literal["rollout", "latest", "assigned", "pinned"] | None = None
    controller_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, min_length=1, max_length=100_000
    )


class BulkPolicyBody(BaseModel):
    """One policy for every device a filter selects."""

    model_config = ConfigDict(extra="forbid")

    filter: PolicyMatchBody
    policy: PolicyBody


async def _action(actions: Actions, tenant: str, raw_id: str) -> Action:
    """The tenant's action of that id, else 404 (a malformed id names no action either)."""
    action_id = names.parse_row_id(raw_id)
    action = None if action_id is None else await actions.get_action(tenant, action_id)
    if action is None:
        raise NotFoundError("action", raw_id)
    return action


def _check_id(controller_id: str) -> None:
    try:
        names.check_controller_id(controller_id)
    except names.InvalidNameError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc


api = APIRouter(prefix="/api/v1", tags=["actions"])
ControllerIdParam = Annotated[str, Path(max_length=256)]


async def _device(known: ReadThrough, tenant: str, controller_id: str) -> None:
    if not await known.device(tenant, controller_id):
        raise NotFoundError("device", controller_id)


async def _valid_device(known: ReadThrough, tenant: str, controller_id: str) -> str:
    """The tenant (lower case) once the id is valid (else 400) and the device known (else 404)."""
    _check_id(controller_id)
    tenant = tenant.lower()
    await _device(known, tenant, controller_id)
    return tenant


async def _software(known: ReadThrough, tenant: str, software_id: str) -> Software:
    found = await known.software(tenant, software_id)
    if found is None or found.deleted:
        raise NotFoundError("software", software_id)
    return found


async def _render(actions: Actions, action: Action) -> dict[str, Any]:
    limits = Limits(action.report_timeout_s, action.action_timeout_s)
    return {
        "id": str(action.id),
        "tenant": action.tenant,
        "controller_id": action.controller_id,
        "software_id": action.software_id,
        "version": action.version,
        "type": action.type,
        "forcetime": action.forcetime,
        "status": action.status,
        "active": action.active,
        "report_timeout": format_duration(limits.report_s),
        "action_timeout": format_duration(limits.action_s),
        "created_at": action.created_at,
        "closed_at": action.closed_at,
        "history": await actions.history(action.id),
    }


async def _checked(known: ReadThrough, tenant: str, body: PolicyBody) -> Policy:
    if body.mode == "assigned":
        if body.software_id is None:
            raise ApiError(
                400,
                "invalid_request",
                "mode assigned needs a software_id",
                parameter="software_id",
            )
        await _software(known, tenant, body.software_id)
    elif body.software_id is not None:
        raise ApiError(
            400,
            "invalid_request",
            f"software_id only goes with mode assigned, not {body.mode}",
            parameter="software_id",
        )
    return Policy(body.mode, body.feed, body.software_id)


@api.post(
    "/devices/{controller_id}/actions",
    status_code=201,
    summary="Assign a software to a device now (opens an action)",
)
async def create_action(
    tenant: Writer,
    controller_id: ControllerIdParam,
    body: NewAction,
    actions: ActionsDep,
    cases: UseCasesDep,
    known: KnownDep,
) -> dict[str, Any]:
    tenant = await _valid_device(known, tenant, controller_id)
    chosen = await _software(known, tenant, body.software_id)
    window = body.maintenance_window.stored() if body.maintenance_window else None
    action = await cases.assign(
        tenant,
        controller_id,
        chosen,
        ActionSpec(
            body.type,
            window,
            body.confirmation_required,
            forcetime=body.forcetime,
            report_timeout_s=duration_s(body.report_timeout),
            action_timeout_s=duration_s(body.action_timeout),
        ),
    )
    return await _render(actions, action)


@api.get("/devices/{controller_id}/policy", summary="A device's deployment policy")
async def get_policy(
    tenant: Reader,
    controller_id: ControllerIdParam,
    policies: PoliciesDep,
    known: KnownDep,
) -> dict[str, Any]:
    tenant = tenant.lower()
    await _device(known, tenant, controller_id)
    policy = await policies.policy(tenant, controller_id)
    return {"controller_id": controller_id, **policy.public()}


@api.put("/devices/{controller_id}/policy", summary="Set a device's deployment policy")
async def put_policy(
    tenant: Writer,
    controller_id: ControllerIdParam,
    body: PolicyBody,
    cases: UseCasesDep,
    known: KnownDep,
) -> dict[str, Any]:
    tenant = await _valid_device(known, tenant, controller_id)
    policy = await _checked(known, tenant, body)
    decision = await cases.set_policy(tenant, controller_id, policy)
    return {
        "controller_id": controller_id,
        **policy.public(),
        "decision": {"software_id": decision.software_id, "reason": decision.reason},
    }


@api.put(
    "/policies",
    summary="Set one policy for every known device a filter selects",
    description="Decisions for the devices follow in the background, within seconds.",
)
async def put_policies(
    tenant: Writer,
    body: BulkPolicyBody,
    cases: UseCasesDep,
    known: KnownDep,
) -> dict[str, Any]:
    tenant = tenant.lower()
    if not body.filter.model_fields_set:
        raise ApiError(
            400,
            "invalid_request",
            "the filter selects every device; name at least one of its fields",
            parameter="filter",
        )
    policy = await _checked(known, tenant, body.policy)
    f = body.filter
    if f.controller_ids is not None:  # those the registry knows and rollouts not yet
        await known.devices(tenant, f.controller_ids)
    ids = await cases.set_policies(
        tenant,
        PolicyMatch(
            f.hw_model,
            f.hw_revision,
            f.sw_version,
            f.feed,
            f.mode,
            None if f.controller_ids is None else frozenset(f.controller_ids),
        ),
        policy,
    )
    return {"matched": len(ids), **policy.public()}


@api.get("/devices/{controller_id}/actions", summary="A device's actions, newest first")
async def device_actions(
    tenant: Reader,
    controller_id: ControllerIdParam,
    actions: ActionsDep,
    known: KnownDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    tenant = tenant.lower()
    found = await actions.device_actions(tenant, controller_id, limit)
    if not found:  # a deleted device keeps its history; a device that never was has none
        await _device(known, tenant, controller_id)
    return {"items": [await _render(actions, a) for a in found]}


@api.get("/actions/{action_id}", summary="One action with its full status history")
async def get_action(
    tenant: Reader,
    action_id: ActionIdParam,
    actions: ActionsDep,
) -> dict[str, Any]:
    return await _render(actions, await _action(actions, tenant.lower(), action_id))


@api.post("/actions/{action_id}/cancel", summary="Ask the device to cancel an open action")
async def cancel_action(
    tenant: Writer,
    action_id: ActionIdParam,
    actions: ActionsDep,
    cases: UseCasesDep,
) -> dict[str, Any]:
    tenant = tenant.lower()
    existing = await _action(actions, tenant, action_id)
    if not existing.active:
        raise ApiError(409, "action_closed", f"action {action_id!r} is {existing.status}")
    action = await cases.apply(
        tenant,
        existing.id,
        None,
        utcnow(),
        None,
        "cancel_requested",
        note=["Cancel requested by operator."],
    )
    assert action is not None  # noqa: S101 - it existed a moment ago and is never deleted
    return await _render(actions, action)
