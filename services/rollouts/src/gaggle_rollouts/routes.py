"""Rollouts operator API: actions (assign a software to a device, inspect, cancel), policies.

A device or software id rollouts has not been told of yet is read through to its owner
(:mod:`gaggle_rollouts.known`): an id that exists anywhere works at once, one that exists
nowhere is 404.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_contracts.events import utcnow
from gaggle_rollouts.domain import Action, Software
from gaggle_rollouts.known import ReadThrough
from gaggle_rollouts.repository import ActionExistsError, ActionSpec, Policy, PolicyMatch, Repo
from gaggle_rollouts.rollout_routes import WindowBody
from gaggle_runtime.auth import needs
from gaggle_runtime.http import ApiError, NotFoundError

TenantParam = Annotated[
    str, Query(description="Tenant (case-insensitive)", pattern=names.TENANT_RE.pattern)
]
ActionIdParam = Annotated[str, Path(max_length=64, description="Action id")]


class NewAction(BaseModel):
    """Assign one software to one device now."""

    model_config = ConfigDict(extra="forbid")

    software_id: str = Field(min_length=1, max_length=64)
    type: Literal["forced", "soft", "downloadonly"] = "forced"
    maintenance_window: WindowBody | None = None
    confirmation_required: bool = False


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


def _parse_id(raw: str) -> int:
    action_id = names.parse_row_id(raw)
    if action_id is None:
        raise NotFoundError("action", raw)
    return action_id


def _check_id(controller_id: str) -> None:
    try:
        names.check_controller_id(controller_id)
    except names.InvalidNameError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc


def make_routes(repo: Repo, known: ReadThrough) -> APIRouter:
    """Routes bound to ``repo``; ids it lacks are read through ``known``."""
    api = APIRouter(prefix="/api/v1", tags=["actions"])
    pending: set[asyncio.Task[None]] = set()

    async def device(tenant: str, controller_id: str) -> None:
        if not await known.device(tenant, controller_id):
            raise NotFoundError("device", controller_id)

    async def software(tenant: str, software_id: str) -> Software:
        found = await known.software(tenant, software_id)
        if found is None or found.deleted:
            raise NotFoundError("software", software_id)
        return found

    async def render(action: Action) -> dict[str, Any]:
        return {
            "id": str(action.id),
            "tenant": action.tenant,
            "controller_id": action.controller_id,
            "software_id": action.software_id,
            "version": action.version,
            "type": action.type,
            "status": action.status,
            "active": action.active,
            "created_at": action.created_at,
            "closed_at": action.closed_at,
            "history": await repo.history(action.id),
        }

    @api.post(
        "/devices/{controller_id}/actions",
        status_code=201,
        summary="Assign a software to a device now (opens an action)",
    )
    async def create_action(
        tenant: Annotated[str, needs(Permission.ROLLOUT_WRITE)],
        controller_id: Annotated[str, Path(max_length=256)],
        body: NewAction,
    ) -> dict[str, Any]:
        _check_id(controller_id)
        tenant = tenant.lower()
        await device(tenant, controller_id)
        chosen = await software(tenant, body.software_id)
        try:
            action = await repo.create_action(
                tenant,
                controller_id,
                chosen,
                ActionSpec(
                    body.type,
                    body.maintenance_window.model_dump() if body.maintenance_window else None,
                    body.confirmation_required,
                ),
            )
        except ActionExistsError as exc:
            raise ApiError(
                409, "action_open", f"device {controller_id!r} already has an open action"
            ) from exc
        return await render(action)

    @api.get("/devices/{controller_id}/policy", summary="A device's deployment policy")
    async def get_policy(
        tenant: Annotated[str, needs(Permission.ROLLOUT_READ)],
        controller_id: Annotated[str, Path(max_length=256)],
    ) -> dict[str, Any]:
        tenant = tenant.lower()
        await device(tenant, controller_id)
        policy = await repo.policy(tenant, controller_id)
        return {"controller_id": controller_id, **policy.public()}

    @api.put("/devices/{controller_id}/policy", summary="Set a device's deployment policy")
    async def put_policy(
        tenant: Annotated[str, needs(Permission.ROLLOUT_WRITE)],
        controller_id: Annotated[str, Path(max_length=256)],
        body: PolicyBody,
    ) -> dict[str, Any]:
        _check_id(controller_id)
        tenant = tenant.lower()
        await device(tenant, controller_id)
        policy = await repo.set_policy(tenant, controller_id, await checked(tenant, body))
        decision = await repo.redecide(tenant, controller_id)
        return {
            "controller_id": controller_id,
            **policy.public(),
            "decision": {"software_id": decision.software_id, "reason": decision.reason},
        }

    async def checked(tenant: str, body: PolicyBody) -> Policy:
        if body.mode == "assigned":
            if body.software_id is None:
                raise ApiError(
                    400,
                    "invalid_request",
                    "mode assigned needs a software_id",
                    parameter="software_id",
                )
            await software(tenant, body.software_id)
        elif body.software_id is not None:
            raise ApiError(
                400,
                "invalid_request",
                f"software_id only goes with mode assigned, not {body.mode}",
                parameter="software_id",
            )
        return Policy(body.mode, body.feed, body.software_id)

    @api.put(
        "/policies",
        summary="Set one policy for every known device a filter selects",
        description="Decisions for the devices follow in the background, within seconds.",
    )
    async def put_policies(
        tenant: Annotated[str, needs(Permission.ROLLOUT_WRITE)], body: BulkPolicyBody
    ) -> dict[str, Any]:
        tenant = tenant.lower()
        if not body.filter.model_fields_set:
            raise ApiError(
                400,
                "invalid_request",
                "the filter selects every device; name at least one of its fields",
                parameter="filter",
            )
        policy = await checked(tenant, body.policy)
        f = body.filter
        if f.controller_ids is not None:  # those the registry knows and rollouts not yet
            await known.devices(tenant, f.controller_ids)
        ids = await repo.set_policies(
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

        task = asyncio.create_task(repo.redecide_many(tenant, ids))
        pending.add(task)
        task.add_done_callback(pending.discard)
        return {"matched": len(ids), **policy.public()}

    @api.get("/devices/{controller_id}/actions", summary="A device's actions, newest first")
    async def device_actions(
        tenant: Annotated[str, needs(Permission.ROLLOUT_READ)],
        controller_id: Annotated[str, Path(max_length=256)],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        tenant = tenant.lower()
        actions = await repo.device_actions(tenant, controller_id, limit)
        if not actions:  # a deleted device keeps its history; a device that never was has none
            await device(tenant, controller_id)
        return {"items": [await render(a) for a in actions]}

    @api.get("/actions/{action_id}", summary="One action with its full status history")
    async def get_action(
        tenant: Annotated[str, needs(Permission.ROLLOUT_READ)], action_id: ActionIdParam
    ) -> dict[str, Any]:
        action = await repo.get_action(tenant.lower(), _parse_id(action_id))
        if action is None:
            raise NotFoundError("action", action_id)
        return await render(action)

    @api.post("/actions/{action_id}/cancel", summary="Ask the device to cancel an open action")
    async def cancel_action(
        tenant: Annotated[str, needs(Permission.ROLLOUT_WRITE)], action_id: ActionIdParam
    ) -> dict[str, Any]:
        tenant = tenant.lower()
        ident = _parse_id(action_id)

        existing = await repo.get_action(tenant, ident)
        if existing is None:
            raise NotFoundError("action", action_id)
        if not existing.active:
            raise ApiError(409, "action_closed", f"action {action_id!r} is {existing.status}")
        action = await repo.apply(
            tenant,
            ident,
            None,
            utcnow(),
            None,
            "cancel_requested",
            note=["Cancel requested by operator."],
        )
        assert action is not None  # noqa: S101 - it existed a moment ago and is never deleted
        return await render(action)

    return api
