"""KV ``devices`` brought back in line with the table, at start (the gateway's read model)."""

from __future__ import annotations

import asyncpg

from gaggle_contracts import names
from gaggle_contracts.kv import DeviceEntry
from gaggle_registry.domain import kv_changes
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Database

# Writers of devices wait while this is held; those that committed before are all visible.
LOCK_DEVICES = "LOCK TABLE registry.devices IN SHARE MODE"

# The attribute names go to the gateway, which refuses a report past the quota from them.
SELECT_ALL_KV = """
SELECT tenant, controller_id, token_hash, config_requested,
    ARRAY(SELECT jsonb_object_keys(attributes)) AS attribute_keys
FROM registry.devices"""

SELECT_SOME_KV = """
SELECT tenant, controller_id, d.token_hash, d.config_requested,
    ARRAY(SELECT jsonb_object_keys(d.attributes)) AS attribute_keys
FROM registry.devices AS d
JOIN unnest($1::text[], $2::text[]) AS k(tenant, controller_id) USING (tenant, controller_id)"""

SELECT_PENDING_KV = """
SELECT op, key, payload FROM registry.outbox
WHERE target = $1 AND op IN ('kv_put', 'kv_delete')
ORDER BY id"""


async def rebuild_kv(db: Database, outbox: Outbox, held: dict[str, bytes]) -> tuple[int, int]:
    """Queue the KV writes that make bucket ``devices`` match the table; return the counts.

    ``held`` is what the bucket holds (read before this call). Outbox rows not relayed yet
    will land on top of it, so they count as written. Only missing or different entries get
    a put, and only keys no device has get a delete: a start with nothing to fix writes
    nothing. Run at start, so the read model matches the table whatever happened while
    the registry was away (a lost bucket, a changed key, a missed write).

    The comparison reads one snapshot without blocking anyone. The keys it finds wrong are
    then read again while device writers wait, and written as they are then: a writer that
    committed before is in that state, one that commits after queues its KV write behind
    these. A key that changed in between without showing up here has its own write queued.
    """
    async with db.pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            pending = [
                (r["op"], r["key"], bytes(r["payload"]))
                for r in await conn.fetch(SELECT_PENDING_KV, names.BUCKET_DEVICES)
            ]
            rows = await conn.fetch(SELECT_ALL_KV)
        wanted = ((names.kv_key(r["tenant"], r["controller_id"]), _kv_entry(r)) for r in rows)
        puts, deletes = kv_changes(held, pending, wanted, _kv_bytes)
        wrong = [key for key, _ in puts] + deletes
        if not wrong:
            return 0, 0
        ids = [_device_of(key) for key in wrong]
        async with conn.transaction():
            await conn.execute(LOCK_DEVICES)
            now = {
                names.kv_key(r["tenant"], r["controller_id"]): _kv_entry(r)
                for r in await conn.fetch(SELECT_SOME_KV, [t for t, _ in ids], [c for _, c in ids])
            }
            fixes = [(key, now.get(key)) for key in wrong]
            for start in range(0, len(fixes), 5000):
                chunk = fixes[start : start + 5000]
                await outbox.many(
                    conn,
                    kv_puts=[(names.BUCKET_DEVICES, k, e) for k, e in chunk if e is not None],
                    kv_deletes=[(names.BUCKET_DEVICES, k) for k, e in chunk if e is None],
                )
            put = sum(1 for _, entry in fixes if entry is not None)
    return put, len(wrong) - put


def _kv_entry(row: asyncpg.Record) -> DeviceEntry:
    return DeviceEntry(
        token_hash=row["token_hash"],
        config_requested=row["config_requested"],
        attribute_keys=tuple(row["attribute_keys"]),
    )


def _device_of(key: str) -> tuple[str, str]:
    """(tenant, controller id) a KV key stands for; a key no device can have gives ("", "")."""
    try:
        return names.parse_kv_key(key)
    except ValueError:  # undecodable: written by something else
        return "", ""


def _kv_bytes(entry: DeviceEntry) -> bytes:
    """A KV value exactly as the outbox writes it."""
    return entry.model_dump_json().encode()
