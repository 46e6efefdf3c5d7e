"""Device presence: when each device was last seen, and from where (``registry.device_presence``).

Sightings are the registry's hottest writes, so presence has its own table and row per device.
"""

from __future__ import annotations

from collections.abc import Sequence

from gaggle_contracts.events import DeviceConfigReported, DeviceDiscovered, DeviceSeen, Sighting
from gaggle_runtime.db import Conn
from gaggle_runtime.service import Database

# A sighting only ever moves a device's last seen forward; an older or repeated one (a
# redelivered batch) leaves the row alone, so it costs no new row version.
TOUCH_MANY = """
UPDATE registry.device_presence AS p
SET last_seen_at = s.seen_at, last_address = coalesce(s.address, p.last_address)
FROM unnest($2::text[], $3::timestamptz[], $4::text[]) AS s(controller_id, seen_at, address)
WHERE p.tenant = $1 AND p.controller_id = s.controller_id
  AND (p.last_seen_at IS NULL OR s.seen_at > p.last_seen_at
       OR (s.seen_at = p.last_seen_at AND s.address IS NOT NULL
           AND s.address IS DISTINCT FROM p.last_address))"""

PRESENCE_ROWS = "SELECT reltuples FROM pg_class WHERE oid = 'registry.device_presence'::regclass"

# SKIP_LOCKED: another replica (or autovacuum) at it already is just as good.
VACUUM_PRESENCE = "VACUUM (ANALYZE, SKIP_LOCKED) registry.device_presence"


async def record_sightings(
    conn: Conn, events: Sequence[DeviceDiscovered | DeviceConfigReported]
) -> None:
    """Each event counts as its device's sighting (the newest per device wins)."""
    newest: dict[tuple[str, str], DeviceDiscovered | DeviceConfigReported] = {}
    for e in events:
        key = (e.tenant, e.controller_id)
        if key not in newest or e.occurred_at > newest[key].occurred_at:
            newest[key] = e
    by_tenant: dict[str, list[DeviceDiscovered | DeviceConfigReported]] = {}
    for (tenant, _), e in sorted(newest.items()):
        by_tenant.setdefault(tenant, []).append(e)
    for tenant, group in by_tenant.items():
        await conn.execute(
            TOUCH_MANY,
            tenant,
            [e.controller_id for e in group],
            [e.occurred_at for e in group],
            [getattr(e, "address", None) for e in group],
        )


class PresenceRepo:
    """Last seen and address of devices, advanced by sightings, tidied after bursts."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.touched_since_tidy = 0
        """Presence rows sightings updated since the last ``tidy_presence``."""

    async def touch_many(self, event: DeviceSeen) -> None:
        """Advance last seen (and address) of every device in the batch, in one statement."""
        newest: dict[str, Sighting] = {}
        for sighting in event.sightings:  # one row per device: the newest sighting wins
            known = newest.get(sighting.controller_id)
            if known is None or sighting.seen_at >= known.seen_at:
                newest[sighting.controller_id] = sighting
        ids = list(newest)
        times = [s.seen_at for s in newest.values()]
        addresses = [s.address for s in newest.values()]
        await self.db.pool.execute(TOUCH_MANY, event.tenant, ids, times, addresses)
        self.touched_since_tidy += len(ids)

    async def tidy_presence(self, share: float = 0.2, minimum: int = 1000) -> bool:
        """VACUUM and ANALYZE presence once sightings rewrote ``share`` of it; True if it ran.

        Every sighting leaves a dead row version and a dead entry in each of the table's two
        indexes; autovacuum looks at most once a minute, and a burst of sightings (a fleet
        coming back online) bloats the index on last seen several times over by then. Sightings
        also move every last_seen_at past the newest value the planner's statistics know, and
        until the next ANALYZE it takes "seen in the last minutes" for a handful of devices.
        """
        touched = self.touched_since_tidy
        if touched < minimum:
            return False
        rows = await self.db.pool.fetchval(PRESENCE_ROWS)
        if touched < share * (rows or 0):
            return False
        self.touched_since_tidy = 0
        await self.db.pool.execute(VACUUM_PRESENCE)
        return True
