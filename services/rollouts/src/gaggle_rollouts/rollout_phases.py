"""A rollout's phase changes (start, next wave, pause, resume, abort, finish) and its progress.

Each runs in the caller's transaction, which holds the rollout's row ``FOR UPDATE``; every
change is announced as ``rollout.progressed`` when its counters or phase differ from the last
announcement of this process.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from gaggle_contracts.events import ActionUpdated, RolloutProgressed
from gaggle_rollouts.actions import Actions
from gaggle_rollouts.plan import CLOSED_STATES, Progress
from gaggle_rollouts.rollout_sql import (
    CANCEL_ACTIONS,
    COUNTS,
    DROP_UNSTARTED,
    LOCK_ROLLOUT,
    OLDER_ACTIVE,
    OPEN_OF_ROLLOUT,
    SET_STATE,
    START_WAVE,
    WAVE_STARTED,
)
from gaggle_runtime.db import Conn


async def row_of(conn: Conn, query: str, *args: Any) -> asyncpg.Record:
    """The one row ``query`` must return (the caller holds what guarantees it)."""
    row = await conn.fetchrow(query, *args)
    if row is None:  # pragma: no cover - a broken invariant, not an operator error
        raise RuntimeError(f"expected a row from {query.split()[0]}")
    return row


async def progress_of(conn: Conn, rollout_id: int) -> Progress:
    """A rollout's counters, counted from its members now."""
    rows = await conn.fetch(COUNTS, rollout_id)
    return Progress.of((r[0], r[1], r[2], r[3]) for r in rows)


def feed_key(tenant: str, feed: str) -> str:
    """The advisory lock name of a feed."""
    return f"feed:{tenant}/{feed}"


class Phases:
    """Moves rollouts from phase to phase; opens and cancels actions through :class:`Actions`."""

    def __init__(self, repo: Actions) -> None:
        self.repo = repo
        self._emitted: dict[int, tuple[Any, ...]] = {}

    async def start(self, conn: Conn, rollout: asyncpg.Record) -> asyncpg.Record:
        """Start the rollout's first wave; older active rollouts of its feed are aborted."""
        # The newest running rollout of a feed wins (gooseBit): older ones of the feed are
        # aborted, their devices that had not started leave them, open actions run to the end.
        for (older,) in await conn.fetch(
            OLDER_ACTIVE, rollout["tenant"], rollout["feed"], rollout["id"]
        ):
            old = await row_of(conn, LOCK_ROLLOUT, older)
            await conn.execute(DROP_UNSTARTED, older)
            old = await self.set_state(
                conn, old, "aborted", f"superseded by rollout {rollout['id']}"
            )
            await self.progressed(conn, old)
        return await self.start_wave(conn, rollout, 1, state="running")

    async def start_wave(
        self, conn: Conn, rollout: asyncpg.Record, wave: int, state: str | None = None
    ) -> asyncpg.Record:
        """Start wave ``wave`` (and set ``state`` if given)."""
        await conn.execute(START_WAVE, rollout["id"], wave)
        await conn.execute(WAVE_STARTED, rollout["id"], wave)
        return await row_of(
            conn,
            SET_STATE,
            rollout["id"],
            state or rollout["state"],
            rollout["reason"],
            wave,
            rollout["failures_forgiven"],
        )

    async def set_state(
        self,
        conn: Conn,
        rollout: asyncpg.Record,
        state: str,
        reason: str | None,
        forgiven: int | None = None,
    ) -> asyncpg.Record:
        """Set the rollout's state and reason (and failures forgiven, if given)."""
        return await row_of(
            conn,
            SET_STATE,
            rollout["id"],
            state,
            reason,
            rollout["current_wave"],
            rollout["failures_forgiven"] if forgiven is None else forgiven,
        )

    async def abort(self, conn: Conn, rollout: asyncpg.Record, reason: str) -> asyncpg.Record:
        """Abort: unstarted members leave, open actions are asked to cancel."""
        await conn.execute(DROP_UNSTARTED, rollout["id"])
        actions = await conn.fetch(OPEN_OF_ROLLOUT, rollout["id"])
        if actions:
            ids = [a["id"] for a in actions]
            await conn.execute(CANCEL_ACTIONS, ids)
            note = f"Rollout aborted: {reason}."
            await conn.execute(
                "INSERT INTO rollouts.action_status (action_id, status, details)"
                " SELECT u.id, 'canceling', jsonb_build_array($2::text)"
                " FROM unnest($1::bigint[]) AS u(id)",
                ids,
                note,
            )
            await self.repo.outbox.many(
                conn,
                events=[
                    ActionUpdated(
                        tenant=a["tenant"],
                        controller_id=a["controller_id"],
                        action_id=str(a["id"]),
                        status="canceling",
                        details=[note],
                    )
                    for a in actions
                ],
            )
            await self.repo.publish_deployments(
                conn, rollout["tenant"], [a["controller_id"] for a in actions]
            )
        return await self.set_state(conn, rollout, "aborted", reason)

    async def progressed(
        self, conn: Conn, rollout: asyncpg.Record, progress: Progress | None = None
    ) -> None:
        """Announce the rollout's progress, unless this process announced the same already."""
        if progress is None:
            progress = await progress_of(conn, rollout["id"])
        counters = progress.overall()
        mark = (
            rollout["state"],
            rollout["current_wave"],
            rollout["approval"],
            rollout["reason"],
            *counters.public().values(),
        )
        if self._emitted.get(rollout["id"]) == mark:
            return
        self._emitted[rollout["id"]] = mark
        if rollout["state"] in CLOSED_STATES:
            self._emitted.pop(rollout["id"], None)
        await self.repo.outbox.event(
            conn,
            RolloutProgressed(
                tenant=rollout["tenant"],
                rollout_id=str(rollout["id"]),
                state=rollout["state"],
                wave=rollout["current_wave"] or None,
                approval=rollout["approval"],
                reason=rollout["reason"],
                **counters.public(),
            ),
        )
