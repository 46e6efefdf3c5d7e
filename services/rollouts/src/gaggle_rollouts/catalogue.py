"""The software catalogue: what artifacts announced, as rollouts keeps it (one row a software)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from gaggle_contracts.events import SoftwareCreated, SoftwareDeleted
from gaggle_contracts.kv import ArtifactDoc
from gaggle_rollouts.domain import Software
from gaggle_runtime.db import Conn
from gaggle_runtime.service import Database

UPSERT_SOFTWARE = """
INSERT INTO rollouts.software (tenant, software_id, name, version, filename, size, md5, sha1,
                               sha256, object_key, external_url, compatibility)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (tenant, software_id) DO UPDATE SET
    name = EXCLUDED.name, version = EXCLUDED.version, filename = EXCLUDED.filename,
    size = EXCLUDED.size, md5 = EXCLUDED.md5, sha1 = EXCLUDED.sha1, sha256 = EXCLUDED.sha256,
    object_key = EXCLUDED.object_key, external_url = EXCLUDED.external_url,
    compatibility = EXCLUDED.compatibility"""

DELETE_SOFTWARE = """
UPDATE rollouts.software SET deleted = true WHERE tenant = $1 AND software_id = $2"""

SELECT_SOFTWARE = """
SELECT * FROM rollouts.software WHERE tenant = $1 AND software_id = $2"""

SOFTWARE_MANY = """
SELECT * FROM rollouts.software WHERE tenant = $1 AND software_id = ANY($2::text[])"""
SELECT_CATALOGUE = "SELECT * FROM rollouts.software WHERE tenant = $1"


def software_of(row: asyncpg.Record) -> Software:
    """A ``rollouts.software`` row."""
    file = ArtifactDoc.model_validate(dict(row))  # the file's columns carry its field names
    return Software(
        row["tenant"],
        row["software_id"],
        row["name"],
        row["version"],
        file,
        tuple((c["hw_model"], c["hw_revision"]) for c in row["compatibility"]),
        row["deleted"],
    )


class Catalogue:
    """The ``rollouts.software`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert_software(self, ev: SoftwareCreated) -> None:
        """Record (or refresh) a software announced by artifacts."""
        await self.db.pool.execute(
            UPSERT_SOFTWARE,
            ev.tenant,
            ev.software_id,
            ev.name,
            ev.version,
            ev.filename,
            ev.size,
            ev.md5,
            ev.sha1,
            ev.sha256,
            ev.object_key,
            ev.external_url,
            [c.model_dump() for c in ev.compatibility],
        )

    async def delete_software(self, ev: SoftwareDeleted) -> None:
        """Mark a software deleted: no new actions for it."""
        await self.db.pool.execute(DELETE_SOFTWARE, ev.tenant, ev.software_id)

    async def software(
        self, tenant: str, software_id: str, conn: Conn | None = None
    ) -> Software | None:
        """One software, or None."""
        row = await (conn or self.db.pool).fetchrow(SELECT_SOFTWARE, tenant, software_id)
        return software_of(row) if row else None

    async def entry(self, conn: Conn, tenant: str, software_id: str) -> Software | None:
        """One software (deleted ones too), or None, read in the caller's transaction."""
        row = await conn.fetchrow(SELECT_SOFTWARE, tenant, software_id)
        return None if row is None else software_of(row)

    async def all(self, conn: Conn, tenant: str) -> dict[str, Software]:
        """The tenant's whole catalogue (deleted software too), by id."""
        rows = await conn.fetch(SELECT_CATALOGUE, tenant)
        return {r["software_id"]: software_of(r) for r in rows}

    async def many(
        self, conn: Conn, tenant: str, software_ids: Sequence[str]
    ) -> dict[str, Software]:
        """Those of the software ids the catalogue has, by id."""
        rows = await conn.fetch(SOFTWARE_MANY, tenant, list(software_ids))
        return {r["software_id"]: software_of(r) for r in rows}
