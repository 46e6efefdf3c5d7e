"""Artifacts persistence: the software catalogue, its events through the outbox."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import asyncpg

from gaggle_artifacts.domain import NewSoftware, Software, TrustChangedError
from gaggle_contracts.events import SoftwareDeleted
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

INSERT = """
INSERT INTO artifacts.software (tenant, name, version, filename, size, md5, sha1, sha256,
    object_key, external_url, compatibility, description, signed, members, images,
    trust, signature, trusted_by, image_check)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (tenant, sha256) WHERE NOT deleted DO NOTHING
RETURNING *"""

BY_SHA256 = """
SELECT * FROM artifacts.software WHERE tenant = $1 AND sha256 = $2 AND NOT deleted"""

BY_ID = "SELECT * FROM artifacts.software WHERE tenant = $1 AND id = $2"
LOCK_BY_ID = "SELECT * FROM artifacts.software WHERE tenant = $1 AND id = $2 FOR UPDATE"
MARK_USED = "UPDATE artifacts.software SET used = true WHERE tenant = $1 AND id = $2 AND NOT used"
SOFT_DELETE = """
UPDATE artifacts.software SET deleted = true, deleted_at = now() WHERE id = $1 RETURNING *"""
HARD_DELETE = "DELETE FROM artifacts.software WHERE id = $1"

LIST = """
SELECT * FROM artifacts.software
WHERE tenant = $1 AND NOT deleted
  AND ($2::text IS NULL OR name = $2)
  AND ($3::text IS NULL OR version = $3)
  AND ($4::text IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_array_elements(compatibility) c
        WHERE c->>0 IN ($4, '*') AND ($5::text IS NULL OR c->>1 IN ($5, '*'))))
  AND ($5::text IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_array_elements(compatibility) c WHERE c->>1 IN ($5, '*')))
ORDER BY id
LIMIT $6"""


# Keeps the trust-store entries a verification relied on until the software is recorded: a
# removal waits for the insert, and then finds the new software to mark untrusted.
RELIED_ON = """
SELECT fingerprint FROM artifacts.trust_entries
WHERE tenant = $1 AND fingerprint = ANY($2::text[]) FOR SHARE"""

VERSIONS = """
SELECT version, compatibility FROM artifacts.software WHERE tenant = $1 AND NOT deleted"""


SOFTWARE_FIELDS = tuple(f.name for f in dataclasses.fields(Software))
"""Columns of a software row that ``Software`` has a field for."""


def _software(row: asyncpg.Record) -> Software:
    values = {name: row[name] for name in SOFTWARE_FIELDS}
    values["compatibility"] = [(m, r) for m, r in values["compatibility"]]
    values["members"] = [(n, s) for n, s in values["members"]]
    values["images"] = list(values["images"])
    values["trusted_by"] = list(values["trusted_by"])
    return Software(**values)


@dataclass(frozen=True)
class Repo:
    """The ``artifacts`` schema."""

    db: Database
    outbox: Outbox

    async def insert(self, new: NewSoftware) -> Software | None:
        """Store a new software and queue ``software.created``; None if its bytes are known.

        Raises:
            TrustChangedError: a trust-store entry its verification relied on was removed since.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            if new.trusted_by:
                kept = await conn.fetch(RELIED_ON, new.tenant, new.trusted_by)
                if len(kept) < len(set(new.trusted_by)):
                    raise TrustChangedError
            row = await conn.fetchrow(
                INSERT,
                new.tenant,
                new.name,
                new.version,
                new.filename,
                new.size,
                new.md5,
                new.sha1,
                new.sha256,
                new.object_key,
                new.external_url,
                [list(p) for p in new.compatibility],
                new.description,
                new.signed,
                [list(m) for m in new.members],
                new.images,
                new.trust,
                new.signature,
                new.trusted_by,
                new.image_check,
            )
            if row is None:
                return None
            software = _software(row)
            await self.outbox.event(conn, software.created_event())
            return software

    async def _one(self, query: str, *args: Any) -> Software | None:
        row = await self.db.pool.fetchrow(query, *args)
        return _software(row) if row else None

    async def by_sha256(self, tenant: str, sha256: str) -> Software | None:
        """The live software with these bytes, if any."""
        return await self._one(BY_SHA256, tenant, sha256)

    async def get(self, tenant: str, software_id: int) -> Software | None:
        """One software (deleted ones too), or None."""
        return await self._one(BY_ID, tenant, software_id)

    async def search(
        self,
        tenant: str,
        name: str | None,
        version: str | None,
        hw_model: str | None,
        hw_revision: str | None,
        cap: int,
    ) -> list[Software]:
        """Live software matching the filters, by id, at most ``cap`` rows."""
        rows = await self.db.pool.fetch(LIST, tenant, name, version, hw_model, hw_revision, cap)
        return [_software(r) for r in rows]

    async def versions(self, tenant: str) -> list[tuple[str, list[tuple[str, str]]]]:
        """``(version, compatibility)`` of every live software of the tenant."""
        rows = await self.db.pool.fetch(VERSIONS, tenant)
        return [(r["version"], [(m, v) for m, v in r["compatibility"]]) for r in rows]

    async def mark_used(self, tenant: str, software_id: int) -> None:
        """Remember that a device had an action for it (deleting it will then keep history)."""
        await self.db.pool.execute(MARK_USED, tenant, software_id)

    async def delete(self, tenant: str, software_id: int) -> tuple[Software, bool] | None:
        """Delete as hawkBit does; return (software as it was, hard) or None if unknown.

        Software any device ever had an action for is soft-deleted: the row stays (hidden from
        lists) for the history. Anything else is removed. ``software.deleted`` goes out either way;
        the caller removes the bytes once this has committed.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(LOCK_BY_ID, tenant, software_id)
            if row is None or row["deleted"]:
                return None
            software = _software(row)
            hard = not software.used
            if hard:
                await conn.execute(HARD_DELETE, software_id)
            else:
                await conn.execute(SOFT_DELETE, software_id)
            await self.outbox.event(
                conn, SoftwareDeleted(tenant=tenant, software_id=str(software_id), hard=hard)
            )
            return software, hard
