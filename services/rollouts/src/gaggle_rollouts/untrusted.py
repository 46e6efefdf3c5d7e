"""Untrusted software: its signer left the tenant's trust store (``software.untrusted``).

Rollouts refuse to start or resume with it, and running rollouts using it are paused with that
reason. Open actions run to their end, as with any pause; an operator decides what next.
"""

from __future__ import annotations

import logging
from typing import Annotated

import asyncpg
from faststream import Context

from gaggle_contracts.events import SoftwareUntrusted
from gaggle_rollouts.errors import Refused
from gaggle_rollouts.rollout_phases import Phases, row_of
from gaggle_rollouts.rollout_sql import LOCK_ROLLOUT
from gaggle_runtime.db import Conn
from gaggle_runtime.service import Database

log = logging.getLogger(__name__)

MARK = """
INSERT INTO rollouts.untrusted_software (tenant, software_id, reason) VALUES ($1, $2, $3)
ON CONFLICT (tenant, software_id) DO NOTHING"""
REASON = """
SELECT reason FROM rollouts.untrusted_software WHERE tenant = $1 AND software_id = $2"""
RUNNING_WITH = """
SELECT id FROM rollouts.rollouts
WHERE tenant = $1 AND software_id = $2 AND state = 'running' ORDER BY id"""


def why(software_id: str, reason: str) -> str:
    """The reason a rollout shows when paused or refused for untrusted software."""
    return f"software {software_id!r} is untrusted: {reason}"


async def refuse_untrusted(conn: Conn, tenant: str, software_id: str) -> None:
    """Refuse (409 ``software_untrusted``) to start or resume a rollout with untrusted software.

    Raises:
        Refused: the software is untrusted.
    """
    reason = await conn.fetchval(REASON, tenant, software_id)
    if reason is not None:
        raise Refused("software_untrusted", why(software_id, reason), "software_id")


class Untrusting:
    """Marks software untrusted and pauses the running rollouts that use it."""

    def __init__(self, db: Database, phases: Phases) -> None:
        self.db = db
        self.phases = phases

    async def software_untrusted(self, event: SoftwareUntrusted) -> list[int]:
        """Remember it, and pause its running rollouts; the ids of those paused."""
        paused: list[int] = []
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(MARK, event.tenant, event.software_id, event.reason)
            for (rollout_id,) in await conn.fetch(RUNNING_WITH, event.tenant, event.software_id):
                row: asyncpg.Record = await row_of(conn, LOCK_ROLLOUT, rollout_id)
                if row["state"] != "running":
                    continue
                row = await self.phases.set_state(
                    conn, row, "paused", why(event.software_id, event.reason)
                )
                await self.phases.progressed(conn, row)
                paused.append(rollout_id)
        if paused:
            log.warning(
                "rollouts paused: software untrusted tenant=%s software=%s rollouts=%s",
                event.tenant,
                event.software_id,
                paused,
            )
        return paused


async def on_software_untrusted(
    event: SoftwareUntrusted, untrusting: Annotated[Untrusting, Context("untrusting")]
) -> None:
    """ota.v1.*.software.untrusted -> no rollout starts with it; running ones paused."""
    await untrusting.software_untrusted(event)
