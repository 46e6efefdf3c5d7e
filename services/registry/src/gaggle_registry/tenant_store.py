"""Configured tenants in the registry's schema, each mirrored to KV ``tenants`` (outbox)."""

from __future__ import annotations

from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from gaggle_contracts import names
from gaggle_contracts.ddi import SLEEP_RE
from gaggle_contracts.kv import (
    MAX_UPDATES_IN_FLIGHT,
    MAX_UPDATES_IN_FLIGHT_LIMIT,
    TenantConfig,
    token_hash,
)
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

SELECT = "SELECT * FROM registry.tenants WHERE tenant = $1"

SELECT_ALL = "SELECT * FROM registry.tenants ORDER BY tenant"

UPSERT = """
INSERT INTO registry.tenants AS t (tenant, config, created_by, updated_by)
VALUES ($1, $2, $3, $3)
ON CONFLICT (tenant) DO UPDATE
SET config = EXCLUDED.config, updated_at = now(), updated_by = EXCLUDED.updated_by
RETURNING *, (xmax = 0) AS created"""


class TenantSettings(BaseModel):
    """A tenant's settings; omitted fields take their defaults.

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
    max_updates_in_flight: int = Field(
        MAX_UPDATES_IN_FLIGHT,
        ge=1,
        le=MAX_UPDATES_IN_FLIGHT_LIMIT,
        strict=True,
        description="Devices that may have an open action at once (rollouts queue the rest).",
    )
    rollout_approval: bool = Field(
        False,
        description="New rollouts wait for someone with rollout:approve before they can start.",
    )
    require_signature: bool = Field(
        False, description="Refuse images whose signature does not verify (unsigned included)."
    )
    require_image_hashes: bool = Field(
        False,
        description="Refuse images with a file entry lacking sha256, a missing or unlisted file.",
    )
    monotonic_versions: bool = Field(
        False, description="Refuse an image not newer than the newest for one of its boards."
    )
    download_redirect: bool | None = Field(
        None,
        description="Redirect device downloads to presigned object-store URLs (S3 back-end) "
        "instead of streaming them through the gateway; null: the deployment's default "
        "(GAGGLE_STORAGE_PRESIGN).",
    )


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
