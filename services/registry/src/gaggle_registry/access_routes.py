"""Operator API for access: ``/api/v1/keys`` (issue, list, revoke) and ``/api/v1/audit``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gaggle_contracts.access import Permission
from gaggle_contracts.events import utcnow
from gaggle_registry.access import AuditQuery, decode_audit_cursor
from gaggle_registry.deps import Access, Actor
from gaggle_registry.errors import InvalidCursorError, InvalidRequestError, found
from gaggle_runtime.auth import PRINCIPAL, Principal, needs
from gaggle_runtime.http import ApiError

KeyIdParam = Annotated[str, Path(pattern=r"^[a-z0-9]{12}$", description="The key's id")]
Admin = Annotated[str, needs(Permission.ADMIN)]

api = APIRouter(prefix="/api/v1", tags=["access"])


class NewKey(BaseModel):
    """A key to issue: a role, or a list of permissions; optionally an expiry."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    role: Literal["viewer", "operator", "approver", "admin"] | None = None
    permissions: list[Permission] | None = Field(None, max_length=len(Permission))
    expires_at: AwareDatetime | None = None
    expires_in_days: int | None = Field(None, ge=1, le=3650)


@api.get("/me", summary="Who the caller is: tenant, name and permissions")
async def who_am_i(request: Request) -> dict[str, Any]:
    """The caller's tenant, their name in the audit log and every permission they hold.

    Any valid key or token may ask; the console shows only what these permissions allow.
    """
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    if not isinstance(principal, Principal):  # the route is not behind the gate
        raise ApiError(401, "unauthenticated", "missing bearer token")
    return {
        "tenant": principal.tenant,
        "actor": principal.actor,
        "permissions": sorted(p.value for p in principal.permissions),
    }


@api.post("/keys", status_code=201, summary="Issue an API key (shown once)")
async def issue_key(body: NewKey, tenant: Admin, actor: Actor, store: Access) -> dict[str, Any]:
    """The whole key is in this answer only; Gaggle keeps its SHA-256."""
    if (body.role is None) == (body.permissions is None):
        raise InvalidRequestError("give either a role or a list of permissions")
    if body.expires_at is not None and body.expires_in_days is not None:
        raise InvalidRequestError("give expires_at or expires_in_days, not both")
    expires_at = body.expires_at
    if body.expires_in_days is not None:
        expires_at = utcnow() + timedelta(days=body.expires_in_days)
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidRequestError("expires_at is in the past")
    granted: list[str] = (
        [body.role] if body.role else sorted({p.value for p in body.permissions or []})
    )
    doc, key = await store.issue(tenant, body.name, granted, expires_at, actor)
    return {**doc, "key": key}


@api.get("/keys", summary="The tenant's API keys (never the keys themselves)")
async def list_keys(
    tenant: Admin, store: Access, include_revoked: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    """The tenant's keys, newest first; revoked ones only when asked."""
    return {"items": await store.list_keys(tenant, include_revoked)}


@api.get("/keys/{key_id}", summary="One API key")
async def get_key(key_id: KeyIdParam, tenant: Admin, store: Access) -> dict[str, Any]:
    """One key of the tenant (404 if it is another tenant's)."""
    return found(await store.get_key(tenant, key_id), "key", key_id)


@api.delete("/keys/{key_id}", summary="Revoke an API key, on every service")
async def revoke_key(
    key_id: KeyIdParam, tenant: Admin, actor: Actor, store: Access
) -> dict[str, Any]:
    """Revoke a key; every service refuses it within moments."""
    return found(await store.revoke(tenant, key_id, actor), "key", key_id)


@api.get("/audit", summary="Operator changes, newest first")
async def list_audit(
    tenant: Admin,
    store: Access,
    actor: Annotated[str | None, Query(max_length=256, description="e.g. key:<id>")] = None,
    resource: Annotated[
        str | None, Query(max_length=512, description="Path prefix, e.g. rollouts/3")
    ] = None,
    service: Annotated[str | None, Query(max_length=64)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=256, description="From `next`")] = None,
) -> dict[str, Any]:
    """One page of the tenant's audit log; ``next`` is the cursor of the page after it."""
    before: tuple[datetime, int] | None = None
    if cursor:
        try:
            before = decode_audit_cursor(cursor)
        except ValueError as exc:
            raise InvalidCursorError from exc
    items, next_cursor = await store.audit_page(
        AuditQuery(tenant, actor, resource, service, since, until, before, limit)
    )
    return {"items": items, "next": next_cursor}
