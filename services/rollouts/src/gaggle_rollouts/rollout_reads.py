"""Rollouts as operators read them: one rollout's document, pages of rollouts and members."""

from __future__ import annotations

from typing import Any

import asyncpg

from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.health import Limits, format_duration
from gaggle_rollouts.rollout_phases import progress_of
from gaggle_rollouts.rollout_sql import (
    LIST_ROLLOUTS,
    MEMBERS,
    SELECT_ROLLOUT,
    WAVES,
)
from gaggle_runtime.db import Conn
from gaggle_runtime.service import Database


class RolloutReads:
    """Reads of ``rollouts.rollouts``, its waves and members (no transaction of their own)."""

    def __init__(self, db: Database, catalogue: Catalogue) -> None:
        self.db = db
        self.catalogue = catalogue

    async def get(self, tenant: str, rollout_id: int) -> dict[str, Any] | None:
        """A rollout's document, or None."""
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_ROLLOUT, tenant, rollout_id)
            return None if row is None else await self.document(conn, row)

    async def find(
        self,
        tenant: str,
        feed: str | None,
        state: str | None,
        before: int | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Rollouts, newest first."""
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(LIST_ROLLOUTS, tenant, feed, state, before, limit)
            return [await self.document(conn, r) for r in rows]

    async def members(
        self, tenant: str, rollout_id: int, state: str | None, after: str | None, limit: int
    ) -> list[dict[str, Any]] | None:
        """A rollout's devices (ordered by id), or None for an unknown rollout."""
        if await self.db.pool.fetchrow(SELECT_ROLLOUT, tenant, rollout_id) is None:
            return None
        rows = await self.db.pool.fetch(MEMBERS, rollout_id, state, after, limit)
        return [
            {
                "controller_id": r["controller_id"],
                "wave": r["wave"],
                "state": r["state"],
                "action_id": None if r["action_id"] is None else str(r["action_id"]),
            }
            for r in rows
        ]

    async def document(self, conn: Conn, rollout: asyncpg.Record) -> dict[str, Any]:
        """A rollout as the operator API shows it: waves and counters included."""
        progress = await progress_of(conn, rollout["id"])
        software = await self.catalogue.entry(conn, rollout["tenant"], rollout["software_id"])
        return {
            "id": str(rollout["id"]),
            "tenant": rollout["tenant"],
            "name": rollout["name"],
            "feed": rollout["feed"],
            "software_id": rollout["software_id"],
            "version": software.version if software is not None else None,
            "filter": rollout["device_filter"],
            "state": rollout["state"],
            "reason": rollout["reason"],
            "current_wave": rollout["current_wave"],
            "waves": [
                {
                    "wave": w["wave"],
                    "size": w["size"],
                    "started_at": w["started_at"],
                    "counters": progress.wave(w["wave"]).public(),
                }
                for w in await conn.fetch(WAVES, rollout["id"])
            ],
            "counters": progress.overall().public(),
            "success_threshold": rollout["success_threshold"],
            "error_threshold": rollout["error_threshold"],
            "error_action": rollout["error_action"],
            "action_type": rollout["action_type"],
            "forcetime": rollout["forcetime"],
            "confirmation_required": rollout["confirmation_required"],
            "maintenance_window": rollout["maintenance_window"],
            "approval": rollout["approval"],
            "approval_by": rollout["approval_by"],
            "approval_at": rollout["approval_at"],
            "approval_remark": rollout["approval_remark"],
            "created_by": rollout["created_by"],
            "report_timeout": format_duration(
                Limits(rollout["report_timeout_s"], rollout["action_timeout_s"]).report_s
            ),
            "action_timeout": format_duration(
                Limits(rollout["report_timeout_s"], rollout["action_timeout_s"]).action_s
            ),
            "soak": format_duration(rollout["soak_s"]) if rollout["soak_s"] else None,
            "created_at": rollout["created_at"],
            "started_at": rollout["started_at"],
            "finished_at": rollout["finished_at"],
        }
