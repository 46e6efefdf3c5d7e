"""Tenants: created and configured by operators, read by the gateway from KV ``tenants``.

A tenant exists for devices once it has an entry in KV ``tenants``, an API key, or is one the
gateway is configured with (``GAGGLE_GATEWAY_TENANTS``, ``default`` out of the box); a poll to
any other tenant is answered 404. The registry keeps each configured tenant's device-side
settings (``TenantConfig``) in its table and writes the KV entry through the outbox in the same
transaction.

An admin may configure its own tenant; an admin of the registry's bootstrap tenant
(``GAGGLE_REGISTRY_BOOTSTRAP_TENANT``) may create and configure any tenant and issue its first
admin key.
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Path, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_contracts.ddi import SLEEP_RE
from gaggle_contracts.events import utcnow
from gaggle_contracts.kv import TenantConfig, token_hash
from gaggle_registry.access import AccessStore
from gaggle_runtime.auth import PRINCIPAL, Principal, needs
from gaggle_runtime.http import ApiError, NotFoundError
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

TenantParam = Annotated[
    str, Path(pattern=names.TENANT_RE.pattern, description="Tenant (case-insensitive)")
]
Admin = Annotated[str, needs(Permission.ADMIN)]

SELECT = "SELECT * FROM registry.tenants WHERE tenant = $1"

SELECT_ALL = "SELECT * FROM registry.tenants ORDER BY tenant"

UPSERT = """
INSERT INTO registry.tenants AS t (tenant, config, created_by, updated_by)
VALUES ($1, $2, $3, $3)
ON CONFLICT (tenant) DO UPDATE
SET config = EXCLUDED.config, updated_at = now(), updated_by = EXCLUDED.updated_by
RETURNING *, (xmax = 0) AS created"""


class TenantSettings(BaseModel):
    """A tenant's device-side settings; omitted fields take their defaults.

    ``gateway_token``: omitted keeps the current one, ``null`` removes it, a string sets it
    (only its SHA-256 is kept).
    """

    model_config = ConfigDict(extra="forbid")

    polling_sleep: str = Field("00:01:00", pattern=SLEEP_RE.pattern)
    polling_sleep_open_action: str | None = Field(None, pattern=SLEEP_RE.pattern)
    anonymous: bool = True
    auto_register: bool = True
    target_token: bool = True
    gateway_token: str | None = Field(None, min_length=8, max_length=128)


def tenant_doc(row: asyncpg.Record) -> dict[str, Any]:
    """A tenant as the API shows it (never the gateway token's hash)."""
    config = TenantConfig.model_validate(row["config"])
    doc: dict[str, Any] = {"tenant": row["tenant"]}
    doc.update(config.model_dump(exclude={"gateway_token_hash"}))
    doc["has_gateway_token"] = config.gateway_token_hash is not None
    doc.update(
        {
            "created_at": row["created_at"],
            "created_by": row["created_by"],
            "updated_at": row["updated_at"],
            "updated_by": row["updated_by"],
        }
    )
    return doc


class TenantStore:
    """Configured tenants in the registry's schema, each mirrored to KV ``tenants``."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

    async def get(self, tenant: str) -> dict[str, Any] | None:
        """One tenant, or None if it was never configured."""
        row = await self.db.pool.fetchrow(SELECT, tenant)
        return tenant_doc(row) if row else None

    async def list(self, only: str | None) -> list[dict[str, Any]]:
        """Every configured tenant, or only ``only``."""
        if only is not None:
            found = await self.get(only)
            return [found] if found else []
        return [tenant_doc(r) for r in await self.db.pool.fetch(SELECT_ALL)]

    async def put(
        self, tenant: str, settings: TenantSettings, actor: str
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace a tenant's settings, and its KV entry; (document, created)."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(SELECT + " FOR UPDATE", tenant)
            token = None
            if "gateway_token" in settings.model_fields_set:
                if settings.gateway_token is not None:
                    token = token_hash(settings.gateway_token)
            elif current is not None:
                token = current["config"].get("gateway_token_hash")
            config = TenantConfig(
                **settings.model_dump(exclude={"gateway_token"}), gateway_token_hash=token
            )
            row = await conn.fetchrow(UPSERT, tenant, config.model_dump(), actor)
            assert row is not None  # noqa: S101 - an upsert returns its row
            await self.outbox.kv_put(conn, names.BUCKET_TENANTS, tenant, config)
        return tenant_doc(row), bool(row["created"])


class FirstKey(BaseModel):
    """The first admin key of a tenant, issued by an admin of the bootstrap tenant."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    expires_at: AwareDatetime | None = None


def make_tenant_routes(store: TenantStore, access: AccessStore, bootstrap: str) -> APIRouter:
    """Routes bound to ``store``; ``bootstrap`` is the tenant whose admins manage every tenant."""
    api = APIRouter(prefix="/api/v1", tags=["tenants"])
    bootstrap = bootstrap.lower()

    def actor(request: Request) -> str:
        principal = request.scope["state"][PRINCIPAL]
        return principal.actor if isinstance(principal, Principal) else "unknown"

    def target(caller: str, tenant: str) -> str:
        """The tenant a request names, if the caller may manage it.

        Raises:
            ApiError: 404 for another tenant, unless the caller is of the bootstrap tenant.
        """
        tenant = tenant.lower()
        if tenant != caller and caller != bootstrap:
            raise NotFoundError("tenant", tenant)
        return tenant

    @api.get("/tenants", summary="Configured tenants (yours, or all for the bootstrap tenant)")
    async def list_tenants(caller: Admin) -> dict[str, Any]:
        return {"items": await store.list(None if caller == bootstrap else caller)}

    @api.get("/tenants/{name}", summary="A tenant's device-side settings")
    async def get_tenant(name: TenantParam, caller: Admin) -> dict[str, Any]:
        tenant = target(caller, name)
        doc = await store.get(tenant)
        if doc is None:
            raise NotFoundError("tenant", tenant)
        return doc

    @api.put(
        "/tenants/{name}",
        summary="Create a tenant or replace its device-side settings",
        responses={201: {"description": "Created"}},
    )
    async def put_tenant(
        request: Request,
        response: Response,
        name: TenantParam,
        body: TenantSettings,
        caller: Admin,
    ) -> dict[str, Any]:
        """Devices can poll the tenant from then on (within moments, on every gateway)."""
        doc, created = await store.put(target(caller, name), body, actor(request))
        if created:
            response.status_code = 201
        return doc

    @api.post("/tenants/{name}/keys", status_code=201, summary="Issue a tenant's admin key")
    async def issue_first_key(
        request: Request, name: TenantParam, body: FirstKey, caller: Admin
    ) -> dict[str, Any]:
        """An admin key of another tenant, for an admin of the bootstrap tenant (shown once)."""
        tenant = target(caller, name)
        if body.expires_at is not None and body.expires_at <= utcnow():
            raise ApiError(400, "invalid_request", "expires_at is in the past")
        doc, key = await access.issue(tenant, body.name, ["admin"], body.expires_at, actor(request))
        return {**doc, "key": key}

    return api
