"""Operator API keys and the audit log, kept by the registry for every service.

Keys live in ``api_keys`` (hashes only); each live key is also in the KV bucket ``api_keys``,
written through the outbox in the same transaction, which is what every service checks tokens
against. Revoking deletes the KV entry. The audit log is filled from ``audit.recorded`` events.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from gaggle_contracts import names
from gaggle_contracts.access import ApiKeyEntry, key_hash, new_api_key
from gaggle_contracts.events import ApiKeysUsed, AuditRecorded, utcnow
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database


def key_doc(row: asyncpg.Record) -> dict[str, Any]:
    """A key as the API shows it (never its hash)."""
    return {
        "id": row["id"],
        "tenant": row["tenant"],
        "name": row["name"],
        "permissions": list(row["permissions"]),
        "created_at": row["created_at"],
        "created_by": row["created_by"],
        "expires_at": row["expires_at"],
        "revoked_at": row["revoked_at"],
        "revoked_by": row["revoked_by"],
        "last_used_at": row["last_used_at"],
    }


def _entry(row: asyncpg.Record) -> ApiKeyEntry:
    return ApiKeyEntry(
        tenant=row["tenant"],
        name=row["name"],
        permissions=list(row["permissions"]),
        sha256=row["sha256"],
        expires_at=row["expires_at"],
    )


@dataclass(frozen=True)
class AuditQuery:
    """Filters of ``GET /api/v1/audit``; newest first."""

    tenant: str
    actor: str | None = None
    resource: str | None = None
    """A prefix of the resource path, e.g. ``rollouts/3``."""
    service: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, int] | None = None
    limit: int = 100


def encode_audit_cursor(at: datetime, seq: int) -> str:
    """Opaque cursor after an entry."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{seq}".encode()).decode()


def decode_audit_cursor(cursor: str) -> tuple[datetime, int]:
    """The entry a cursor points after.

    Raises:
        ValueError: not a cursor this API gave out.
    """
    at, seq = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        raise ValueError("cursor time without zone")
    return moment, int(seq)


@dataclass(frozen=True)
class AccessStore:
    """Keys and audit entries in the registry's schema."""

    db: Database
    outbox: Outbox

    async def issue(
        self,
        tenant: str,
        name: str,
        permissions: list[str],
        expires_at: datetime | None,
        created_by: str,
    ) -> tuple[dict[str, Any], str]:
        """A new key: its document and the whole key, which is never stored."""
        key_id, key = new_api_key()
        entry = ApiKeyEntry(
            tenant=tenant,
            name=name,
            permissions=permissions,
            sha256=key_hash(key),
            expires_at=expires_at,
        )
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                INSERT INTO registry.api_keys
                    (id, tenant, name, permissions, sha256, expires_at, created_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                RETURNING id, tenant, name, permissions, created_at, created_by,
                    expires_at, revoked_at, revoked_by, last_used_at
                """,
                key_id,
                tenant,
                name,
                permissions,
                entry.sha256,
                expires_at,
                created_by,
            )
            await self.outbox.kv_put(conn, names.BUCKET_API_KEYS, key_id, entry)
        if row is None:
            raise RuntimeError("INSERT ... RETURNING gave no row")
        return key_doc(row), key

    async def ensure_bootstrap(self, tenant: str, key_id: str, sha256: str) -> bool:
        """The stack's first admin key, unless a key with its id exists (even revoked)."""
        entry = ApiKeyEntry(
            tenant=tenant, name="bootstrap admin", permissions=["admin"], sha256=sha256
        )
        async with self.db.pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                """
                INSERT INTO registry.api_keys (id, tenant, name, permissions, sha256, created_by)
                VALUES ($1, $2, $3, $4, $5, 'bootstrap')
                ON CONFLICT (id) DO NOTHING
                RETURNING true
                """,
                key_id,
                tenant,
                entry.name,
                entry.permissions,
                sha256,
            )
            if created:
                await self.outbox.kv_put(conn, names.BUCKET_API_KEYS, key_id, entry)
        return bool(created)

    async def list_keys(self, tenant: str, include_revoked: bool) -> list[dict[str, Any]]:
        """The tenant's keys, newest first."""
        rows = await self.db.pool.fetch(
            """
            SELECT id, tenant, name, permissions, created_at, created_by,
                expires_at, revoked_at, revoked_by, last_used_at FROM registry.api_keys
            WHERE tenant = $1 AND ($2 OR revoked_at IS NULL)
            ORDER BY created_at DESC, id
            """,
            tenant,
            include_revoked,
        )
        return [key_doc(r) for r in rows]

    async def get_key(self, tenant: str, key_id: str) -> dict[str, Any] | None:
        """One of the tenant's keys."""
        row = await self.db.pool.fetchrow(
            """
            SELECT id, tenant, name, permissions, created_at, created_by,
                expires_at, revoked_at, revoked_by, last_used_at
            FROM registry.api_keys WHERE tenant = $1 AND id = $2
            """,
            tenant,
            key_id,
        )
        return key_doc(row) if row else None

    async def revoke(self, tenant: str, key_id: str, revoked_by: str) -> dict[str, Any] | None:
        """Revoke a key (idempotent): its KV entry is deleted, so every service refuses it."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                UPDATE registry.api_keys
                SET revoked_at = coalesce(revoked_at, now()),
                    revoked_by = coalesce(revoked_by, $3)
                WHERE tenant = $1 AND id = $2
                RETURNING id, tenant, name, permissions, created_at, created_by,
                    expires_at, revoked_at, revoked_by, last_used_at
                """,
                tenant,
                key_id,
                revoked_by,
            )
            if row is not None:
                await self.outbox.kv_delete(conn, names.BUCKET_API_KEYS, key_id)
        return key_doc(row) if row else None

    async def rebuild_kv(self, held: dict[str, bytes]) -> tuple[int, int]:
        """Make KV ``api_keys`` hold exactly the live keys; return (puts, deletes).

        The rows are locked while the writes are queued, so a revocation that commits meanwhile
        queues its delete after these puts.
        """
        now = utcnow()
        async with self.db.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, tenant, name, permissions, sha256, expires_at FROM registry.api_keys"
                " WHERE revoked_at IS NULL FOR UPDATE"
            )
            live = {r["id"]: _entry(r) for r in rows}
            live = {k: e for k, e in live.items() if not e.expired(now)}
            puts = [
                (names.BUCKET_API_KEYS, k, e)
                for k, e in live.items()
                if held.get(k) != e.model_dump_json().encode()
            ]
            deletes = [(names.BUCKET_API_KEYS, k) for k in held if k not in live]
            if puts or deletes:
                await self.outbox.many(conn, kv_puts=puts, kv_deletes=deletes)
        return len(puts), len(deletes)

    async def mark_used(self, event: ApiKeysUsed) -> None:
        """Advance ``last_used_at`` (never back: reports from services may cross)."""
        ids = list(event.last_used)
        await self.db.pool.execute(
            """
            UPDATE registry.api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
            FROM unnest($2::text[], $3::timestamptz[]) AS u(id, at)
            WHERE k.tenant = $1 AND k.id = u.id
            """,
            event.tenant,
            ids,
            [event.last_used[i] for i in ids],
        )

    async def record(self, event: AuditRecorded) -> None:
        """Keep one audit entry (a redelivered event changes nothing)."""
        await self.db.pool.execute(
            """
            INSERT INTO registry.audit_log
                (event_id, tenant, at, actor, service, action, method, resource, status, outcome)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT (event_id) DO NOTHING
            """,
            event.event_id,
            event.tenant,
            event.occurred_at,
            event.actor,
            event.service,
            event.action,
            event.method,
            event.resource,
            event.status,
            event.outcome,
        )

    async def audit_page(self, q: AuditQuery) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the audit log, newest first, and the cursor of the next."""
        before_at, before_seq = q.before if q.before else (None, None)
        rows = await self.db.pool.fetch(
            """
            SELECT seq, event_id, at, actor, service, action, method, resource, status, outcome
            FROM registry.audit_log
            WHERE tenant = $1
              AND ($2::text IS NULL OR actor = $2)
              AND ($3::text IS NULL OR resource LIKE $3 || '%')
              AND ($4::text IS NULL OR service = $4)
              AND ($5::timestamptz IS NULL OR at >= $5)
              AND ($6::timestamptz IS NULL OR at < $6)
              AND ($7::timestamptz IS NULL OR (at, seq) < ($7, $8::bigint))
            ORDER BY at DESC, seq DESC
            LIMIT $9
            """,
            q.tenant,
            q.actor,
            _like_prefix(q.resource),
            q.service,
            q.since,
            q.until,
            before_at,
            before_seq,
            q.limit + 1,
        )
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        items = [
            {
                "id": str(UUID(str(r["event_id"]))),
                "at": r["at"],
                "actor": r["actor"],
                "service": r["service"],
                "action": r["action"],
                "method": r["method"],
                "resource": r["resource"],
                "status": r["status"],
                "outcome": r["outcome"],
            }
            for r in rows
        ]
        cursor = encode_audit_cursor(rows[-1]["at"], rows[-1]["seq"]) if more and rows else None
        return items, cursor


def _like_prefix(text: str | None) -> str | None:
    if text is None:
        return None
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
