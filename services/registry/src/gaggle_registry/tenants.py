"""Tenants: created and configured by operators, read by the gateway from KV ``tenants``.

A tenant exists for devices once it has an entry in KV ``tenants``, an API key, or is one the
gateway is configured with (``GAGGLE_GATEWAY_TENANTS``, ``default`` out of the box); a poll to
any other tenant is answered 404. The registry keeps each configured tenant's settings
(``TenantConfig``: the device-side ones the gateway reads, and the cap on updates in flight that
rollouts reads) in its table and writes the KV entry through the outbox in the same transaction.

An admin may configure its own tenant; an admin of the registry's bootstrap tenant
(``GAGGLE_REGISTRY_BOOTSTRAP_TENANT``) may create and configure any tenant and issue its first
admin key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_contracts.events import utcnow
from gaggle_registry.deps import Access, Actor, Bootstrap, Tenants
from gaggle_registry.errors import InvalidRequestError, NotFoundError, found
from gaggle_registry.tenant_store import TenantSettings
from gaggle_runtime.auth import needs

TenantParam = Annotated[
    str, Path(pattern=names.TENANT_RE.pattern, description="Tenant (case-insensitive)")
]
Admin = Annotated[str, needs(Permission.ADMIN)]

api = APIRouter(prefix="/api/v1", tags=["tenants"])


class FirstKey(BaseModel):
    """The first admin key of a tenant, issued by an admin of the bootstrap tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    expires_at: AwareDatetime | None = None


def target(caller: str, tenant: str, bootstrap: str) -> str:
    """The tenant a request names, if the caller may manage it.

    Raises:
        NotFoundError: another tenant, unless the caller is of the bootstrap tenant.
    """
    tenant = tenant.lower()
    if tenant != caller and caller != bootstrap:
        raise NotFoundError("tenant", tenant)
    return tenant


@api.get("/tenants", summary="Configured tenants (yours, or all for the bootstrap tenant)")
async def list_tenants(caller: Admin, store: Tenants, bootstrap: Bootstrap) -> dict[str, Any]:
    """Configured tenants: the caller's, or every one for the bootstrap tenant."""
    return {"items": await store.list(None if caller == bootstrap else caller)}


@api.get("/tenants/{name}", summary="A tenant's settings")
async def get_tenant(
    name: TenantParam, caller: Admin, store: Tenants, bootstrap: Bootstrap
) -> dict[str, Any]:
    """A tenant's settings (404 for one the caller may not manage)."""
    tenant = target(caller, name, bootstrap)
    return found(await store.get(tenant), "tenant", tenant)


@api.put(
    "/tenants/{name}",
    summary="Create a tenant or replace its settings",
    responses={201: {"description": "Created"}},
)
async def put_tenant(
    response: Response,
    name: TenantParam,
    body: TenantSettings,
    caller: Admin,
    actor: Actor,
    store: Tenants,
    bootstrap: Bootstrap,
) -> dict[str, Any]:
    """Devices can poll the tenant from then on (within moments, on every gateway)."""
    doc, created = await store.put(target(caller, name, bootstrap), body, actor)
    if created:
        response.status_code = 201
    return doc


@api.post("/tenants/{name}/keys", status_code=201, summary="Issue a tenant's admin key")
async def issue_first_key(
    name: TenantParam,
    body: FirstKey,
    caller: Admin,
    actor: Actor,
    access: Access,
    bootstrap: Bootstrap,
) -> dict[str, Any]:
    """An admin key of another tenant, for an admin of the bootstrap tenant (shown once)."""
    tenant = target(caller, name, bootstrap)
    if body.expires_at is not None and body.expires_at <= utcnow():
        raise InvalidRequestError("expires_at is in the past")
    doc, key = await access.issue(tenant, body.name, ["admin"], body.expires_at, actor)
    return {**doc, "key": key}
