"""Each tenant's trust store; removing an entry makes the software it verified untrusted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from gaggle_artifacts.signatures import TrustEntry, parse_trust_entry
from gaggle_contracts.events import SoftwareUntrusted
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

MAX_ENTRIES = 100
"""Most certificates and keys in one tenant's trust store."""

INSERT = """
INSERT INTO artifacts.trust_entries (tenant, name, kind, fingerprint, pem)
SELECT $1, $2, $3, $4, $5
WHERE (SELECT count(*) FROM artifacts.trust_entries WHERE tenant = $1) < $6
ON CONFLICT (tenant, fingerprint) DO NOTHING
RETURNING *"""
BY_FINGERPRINT = "SELECT * FROM artifacts.trust_entries WHERE tenant = $1 AND fingerprint = $2"
ALL = "SELECT * FROM artifacts.trust_entries WHERE tenant = $1 ORDER BY id"
DELETE = "DELETE FROM artifacts.trust_entries WHERE tenant = $1 AND id = $2 RETURNING *"
UNTRUST = """
UPDATE artifacts.software
SET trust = 'untrusted',
    signature = coalesce(signature, '{}'::jsonb)
        || jsonb_build_object('state', 'untrusted', 'reason', $3::text)
WHERE tenant = $1 AND trust = 'verified' AND NOT deleted AND $2 = ANY(trusted_by)
RETURNING id"""


class TrustStoreFullError(Exception):
    """The tenant's trust store holds :data:`MAX_ENTRIES` entries already."""


class DuplicateEntryError(Exception):
    """The certificate or key is in the trust store already."""

    def __init__(self, existing_id: int | None) -> None:
        super().__init__("already in the trust store")
        self.existing_id = existing_id


def _doc(row: asyncpg.Record) -> dict[str, Any]:
    entry = parse_trust_entry(row["pem"])
    return {
        "id": str(row["id"]),
        "name": row["name"],
        **entry.describe(),
        "pem": row["pem"],
        "created_at": row["created_at"],
    }


@dataclass(frozen=True)
class TrustStore:
    """Trust entries of every tenant, and the software they verified."""

    db: Database
    outbox: Outbox

    async def entries(self, tenant: str) -> list[TrustEntry]:
        """The tenant's trust store, parsed, for verifying an image."""
        rows = await self.db.pool.fetch(ALL, tenant)
        return [parse_trust_entry(r["pem"]) for r in rows]

    async def documents(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's entries as the API shows them."""
        return [_doc(r) for r in await self.db.pool.fetch(ALL, tenant)]

    async def add(self, tenant: str, name: str, pem: str) -> dict[str, Any]:
        """Add a certificate or public key (already checked by ``parse_trust_entry``).

        Raises:
            DuplicateEntryError: the same certificate or key is there.
            TrustStoreFullError: the store is full.
        """
        entry = parse_trust_entry(pem)
        text = pem.strip() + "\n"
        row = await self.db.pool.fetchrow(
            INSERT, tenant, name, entry.kind, entry.fingerprint, text, MAX_ENTRIES
        )
        if row is not None:
            return _doc(row)
        existing = await self.db.pool.fetchrow(BY_FINGERPRINT, tenant, entry.fingerprint)
        if existing is not None:
            raise DuplicateEntryError(existing["id"])
        raise TrustStoreFullError

    async def remove(self, tenant: str, entry_id: int) -> tuple[dict[str, Any], list[int]] | None:
        """Remove an entry; the software it verified becomes untrusted (``software.untrusted``).

        Returns:
            The entry as it was and the ids of the software now untrusted; None if unknown.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(DELETE, tenant, entry_id)
            if row is None:
                return None
            doc = _doc(row)
            reason = (
                f"trust-store entry {doc['name']!r} ({doc['kind']} {doc['fingerprint'][:16]}) "
                "that verified it was removed"
            )
            ids = [r["id"] for r in await conn.fetch(UNTRUST, tenant, row["fingerprint"], reason)]
            for software_id in ids:
                await self.outbox.event(
                    conn,
                    SoftwareUntrusted(tenant=tenant, software_id=str(software_id), reason=reason),
                )
            return doc, ids
