"""Rollouts in the database: creation and membership, opening actions wave by wave, evaluation.

How two replicas (or two events) never decide twice:

- A rollout's phase changes (start, next wave, pause, abort, finish) happen under ``FOR UPDATE`` on
  its row; opening actions holds ``FOR SHARE`` on it, so a pause or abort waits for a batch being
  opened and no batch opens after it.
- Devices waiting for their action are claimed with ``FOR UPDATE SKIP LOCKED``: replicas split
  the work instead of repeating it; a device decided on its own (``device.updated``) holds its
  advisory lock first and skips rows a batch holds.
- Counters are never stored: they are counted from ``rollout_devices`` in the transaction that
  reads them (no read-modify-write to lose).
- The partial unique index on open actions refuses a second open action for a device, whatever
  the path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gaggle_contracts.events import ActionUpdated, RolloutProgressed
from gaggle_rollouts.decision import (
    Decision,
    DeviceView,
    PolicyView,
    RolloutView,
    choose_software,
    fits,
    same_version,
)
from gaggle_rollouts.plan import (
    CLOSED_STATES,
    ErrorAction,
    Progress,
    WaveSpec,
    next_step,
    transition,
    wave_sizes,
)
from gaggle_rollouts.repository import (
    SELECT_SOFTWARE,
    ActionSpec,
    BatchReads,
    Repo,
    _software,
    candidate,
    device_view,
)
from gaggle_runtime.db import Conn
from gaggle_runtime.http import ApiError

log = logging.getLogger(__name__)

CHUNK = 500
"""Devices whose actions are opened in one transaction."""

INSERT_ROLLOUT = """
INSERT INTO rollouts.rollouts (tenant, name, feed, software_id, device_filter, action_type,
                               confirmation_required, maintenance_window, success_threshold,
                               error_threshold, error_action)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8::jsonb, $9, $10, $11)
RETURNING *"""
FEED_KNOWN = """
SELECT EXISTS (SELECT 1 FROM rollouts.policies WHERE tenant = $1 AND feed = $2)"""
FEED_DEVICES = """
SELECT d.* FROM rollouts.devices d
LEFT JOIN rollouts.policies p ON p.tenant = d.tenant AND p.controller_id = d.controller_id
WHERE d.tenant = $1 AND coalesce(p.mode, 'rollout') = 'rollout'
  AND coalesce(p.feed, 'default') = $2
  AND (d.hw_model IS NOT NULL OR d.sw_version IS NOT NULL)
ORDER BY md5(d.controller_id), d.controller_id"""
INSERT_WAVES = """
INSERT INTO rollouts.rollout_waves (rollout_id, wave, size)
SELECT $1, u.wave, u.size FROM unnest($2::int[], $3::int[]) AS u(wave, size)"""
INSERT_MEMBERS = """
INSERT INTO rollouts.rollout_devices (rollout_id, tenant, controller_id, wave, state)
SELECT $1, $2, u.controller_id, u.wave, u.state
FROM unnest($3::text[], $4::int[], $5::text[]) AS u(controller_id, wave, state)"""
INSERT_MEMBER = """
INSERT INTO rollouts.rollout_devices (rollout_id, tenant, controller_id, wave, state)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (rollout_id, controller_id) DO NOTHING"""
GROW_WAVE = "UPDATE rollouts.rollout_waves SET size = size + 1 WHERE rollout_id = $1 AND wave = $2"

SELECT_ROLLOUT = "SELECT * FROM rollouts.rollouts WHERE tenant = $1 AND id = $2"
LOCK_ROLLOUT = "SELECT * FROM rollouts.rollouts WHERE id = $1 FOR UPDATE"
SHARE_ROLLOUT = "SELECT * FROM rollouts.rollouts WHERE id = $1 FOR SHARE"
LIST_ROLLOUTS = """
SELECT * FROM rollouts.rollouts
WHERE tenant = $1 AND ($2::text IS NULL OR feed = $2) AND ($3::text IS NULL OR state = $3)
  AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC LIMIT $5"""
# A rollout's creation reads the feed's devices while no device of the feed is being decided
# (exclusive), and a device decides by the feed's newest rollout only once no creation is under
# way (shared): a device whose inventory lands while a rollout is created is either among the
# devices the creation reads or decided after it, and then joins it.
LOCK_FEED = "SELECT pg_advisory_xact_lock(hashtext($1))"
SHARE_FEED = "SELECT pg_advisory_xact_lock_shared(hashtext($1))"
NEWEST_ACTIVE = """
SELECT * FROM rollouts.rollouts
WHERE tenant = $1 AND feed = $2 AND state IN ('running', 'paused')
ORDER BY id DESC LIMIT 1 FOR SHARE"""
OLDER_ACTIVE = """
SELECT id FROM rollouts.rollouts
WHERE tenant = $1 AND feed = $2 AND id < $3 AND state IN ('running', 'paused') ORDER BY id"""
ACTIVE_IDS = "SELECT id FROM rollouts.rollouts WHERE state IN ('running', 'paused') ORDER BY id"

COUNTS = """
SELECT wave, state, count(*)::int FROM rollouts.rollout_devices
WHERE rollout_id = $1 GROUP BY wave, state"""
WAVES = "SELECT * FROM rollouts.rollout_waves WHERE rollout_id = $1 ORDER BY wave"
START_WAVE = """
UPDATE rollouts.rollout_devices SET state = 'pending'
WHERE rollout_id = $1 AND wave = $2 AND state = 'waiting'"""
WAVE_STARTED = """
UPDATE rollouts.rollout_waves SET started_at = now() WHERE rollout_id = $1 AND wave = $2"""
SET_STATE = """
UPDATE rollouts.rollouts
SET state = $2, reason = $3, current_wave = $4, failures_forgiven = $5,
    started_at = coalesce(started_at, CASE WHEN $2 = 'running' THEN now() END),
    finished_at = CASE WHEN $2 IN ('finished', 'aborted') THEN now() END
WHERE id = $1
RETURNING *"""
DROP_UNSTARTED = """
UPDATE rollouts.rollout_devices SET state = 'canceled'
WHERE rollout_id = $1 AND state IN ('waiting', 'pending')"""
OPEN_OF_ROLLOUT = """
SELECT * FROM rollouts.actions
WHERE rollout_id = $1 AND active AND status <> 'canceling' ORDER BY id FOR UPDATE"""
CANCEL_ACTIONS = """
UPDATE rollouts.actions SET status = 'canceling', updated_at = now() WHERE id = ANY($1::bigint[])"""

MEMBER = "SELECT * FROM rollouts.rollout_devices WHERE rollout_id = $1 AND controller_id = $2"
MEMBERS = """
SELECT controller_id, wave, state, action_id FROM rollouts.rollout_devices
WHERE rollout_id = $1 AND ($2::text IS NULL OR state = $2)
  AND ($3::text IS NULL OR controller_id > $3)
ORDER BY controller_id LIMIT $4"""
CLAIM_PENDING = """
SELECT m.controller_id FROM rollouts.rollout_devices m
WHERE m.rollout_id = $1 AND m.state = 'pending'
  AND ($2::text[] IS NULL OR m.controller_id = ANY($2::text[]))
  AND NOT EXISTS (SELECT 1 FROM rollouts.actions a
                  WHERE a.tenant = m.tenant AND a.controller_id = m.controller_id AND a.active)
ORDER BY m.controller_id LIMIT $3
FOR UPDATE OF m SKIP LOCKED"""
DEVICES_OF = """
SELECT d.*, coalesce(p.mode, 'rollout') AS mode, coalesce(p.feed, 'default') AS feed
FROM rollouts.devices d
LEFT JOIN rollouts.policies p ON p.tenant = d.tenant AND p.controller_id = d.controller_id
WHERE d.tenant = $1 AND d.controller_id = ANY($2::text[])"""
SET_MEMBERS = """
UPDATE rollouts.rollout_devices m SET state = u.state, action_id = u.action_id
FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(controller_id, state, action_id)
WHERE m.rollout_id = $1 AND m.controller_id = u.controller_id"""


async def _row(conn: Conn, query: str, *args: Any) -> asyncpg.Record:
    """The one row ``query`` must return (the caller holds what guarantees it)."""
    row = await conn.fetchrow(query, *args)
    if row is None:  # pragma: no cover - a broken invariant, not an operator error
        raise RuntimeError(f"expected a row from {query.split()[0]}")
    return row


async def _progress(conn: Conn, rollout_id: int) -> Progress:
    rows = await conn.fetch(COUNTS, rollout_id)
    return Progress.of((r[0], r[1], r[2]) for r in rows)


def feed_key(tenant: str, feed: str) -> str:
    """The advisory lock name of a feed."""
    return f"feed:{tenant}/{feed}"


class RolloutError(ApiError):
    """An operator request about rollouts that cannot be done, and why."""

    def __init__(self, status: int, code: str, message: str, parameter: str | None = None) -> None:
        super().__init__(status, code, message, **({"parameter": parameter} if parameter else {}))


@dataclass(frozen=True)
class DeviceFilter:
    """Narrows a rollout to some devices of its feed; every part is optional."""

    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    controller_ids: frozenset[str] | None = None

    def matches(self, device: DeviceView) -> bool:
        """Whether ``device`` passes the filter."""
        return (
            (self.hw_model is None or device.hw_model == self.hw_model)
            and (self.hw_revision is None or device.hw_revision == self.hw_revision)
            and (self.sw_version is None or device.sw_version == self.sw_version)
            and (self.controller_ids is None or device.controller_id in self.controller_ids)
        )

    def public(self) -> dict[str, Any]:
        """As stored and shown (unset parts left out)."""
        out: dict[str, Any] = {}
        for name in ("hw_model", "hw_revision", "sw_version"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.controller_ids is not None:
            out["controller_ids"] = sorted(self.controller_ids)
        return out

    @classmethod
    def of(cls, raw: dict[str, Any]) -> DeviceFilter:
        """From its stored form."""
        ids = raw.get("controller_ids")
        return cls(
            raw.get("hw_model"),
            raw.get("hw_revision"),
            raw.get("sw_version"),
            None if ids is None else frozenset(ids),
        )


@dataclass(frozen=True)
class NewRollout:
    """What an operator asks for (validated by the API)."""

    name: str
    software_id: str
    feed: str
    device_filter: DeviceFilter
    waves: Sequence[WaveSpec]
    success_threshold: int
    error_threshold: int
    error_action: ErrorAction
    action_type: str
    confirmation_required: bool
    maintenance_window: dict[str, str] | None
    start: bool


class RolloutStore:
    """Rollouts, their waves and devices, over the actions of :class:`Repo`."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.db = repo.db
        repo.rollout_mode = self.decide_in_rollout
        self._emitted: dict[int, tuple[Any, ...]] = {}

    # --- operator requests ----------------------------------------------------------------

    async def create(self, tenant: str, new: NewRollout) -> dict[str, Any]:
        """Create a rollout with its waves (and start it if asked); the rollout's document."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_FEED, feed_key(tenant, new.feed))
            row = await conn.fetchrow(SELECT_SOFTWARE, tenant, new.software_id)
            if row is None or row["deleted"]:
                what = "deleted" if row is not None else "unknown"
                raise RolloutError(
                    404 if row is None else 409,
                    "software_deleted" if row is not None else "not_found",
                    f"software {new.software_id!r} is {what}",
                    "software_id",
                )
            software = candidate(row)
            devices = [device_view(r) for r in await conn.fetch(FEED_DEVICES, tenant, new.feed)]
            if (
                not devices
                and new.feed != "default"
                and not await conn.fetchval(FEED_KNOWN, tenant, new.feed)
            ):
                raise RolloutError(404, "not_found", f"feed {new.feed!r} not found", "feed")
            chosen = [d for d in devices if new.device_filter.matches(d)]
            if not chosen:
                raise RolloutError(
                    409,
                    "no_devices",
                    f"no device of feed {new.feed!r} matches the filter"
                    if devices
                    else f"feed {new.feed!r} has no device that reported its inventory",
                    "filter" if devices else "feed",
                )
            members = [d for d in chosen if fits(software.compatibility, d)]
            if not members:
                raise RolloutError(
                    409,
                    "incompatible",
                    f"software {new.software_id!r} fits none of the {len(chosen)} devices",
                    "software_id",
                )
            rollout = await _row(
                conn,
                INSERT_ROLLOUT,
                tenant,
                new.name,
                new.feed,
                new.software_id,
                new.device_filter.public(),
                new.action_type,
                new.confirmation_required,
                new.maintenance_window,
                new.success_threshold,
                new.error_threshold,
                new.error_action,
            )
            sizes = wave_sizes(len(members), new.waves)
            waves = [w for w, size in enumerate(sizes, start=1) for _ in range(size)]
            await conn.execute(INSERT_WAVES, rollout["id"], list(range(1, len(sizes) + 1)), sizes)
            await conn.execute(
                INSERT_MEMBERS,
                rollout["id"],
                tenant,
                [d.controller_id for d in members],
                waves,
                [
                    "success" if same_version(row["version"], d.sw_version) else "waiting"
                    for d in members
                ],
            )
            if new.start:
                rollout = await self._start(conn, rollout)
            await self._progressed(conn, rollout)
            return await self._document(conn, rollout)

    async def get(self, tenant: str, rollout_id: int) -> dict[str, Any] | None:
        """A rollout's document, or None."""
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_ROLLOUT, tenant, rollout_id)
            return None if row is None else await self._document(conn, row)

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
            return [await self._document(conn, r) for r in rows]

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

    async def command(self, tenant: str, rollout_id: int, command: str) -> dict[str, Any]:
        """Start, pause, resume or abort; the rollout's document afterwards."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(SELECT_ROLLOUT, tenant, rollout_id)
            if row is None:
                raise RolloutError(404, "not_found", f"rollout '{rollout_id}' not found")
            row = await _row(conn, LOCK_ROLLOUT, rollout_id)
            target = transition(row["state"], command)
            if target is None:
                raise RolloutError(
                    409, "invalid_transition", f"cannot {command} a {row['state']} rollout"
                )
            if command == "start":
                row = await self._start(conn, row)
            elif command == "pause":
                row = await self._set(conn, row, "paused", "paused by an operator")
            elif command == "resume":
                progress = await _progress(conn, rollout_id)
                forgiven = sum(progress.wave(w).failure for w in range(1, row["current_wave"] + 1))
                row = await self._set(conn, row, "running", None, forgiven=forgiven)
            else:
                row = await self._abort(conn, row, "aborted by an operator")
            await self._progressed(conn, row)
            return await self._document(conn, row)

    # --- engine steps ------------------------------------------------------------------------

    async def active_ids(self) -> list[int]:
        """Ids of running and paused rollouts (every tenant)."""
        return [r[0] for r in await self.db.pool.fetch(ACTIVE_IDS)]

    async def activate(self, rollout_id: int) -> int:
        """Open actions for the started devices of a running rollout, a chunk per transaction.

        Returns how many devices were settled (opened, or found done or gone).
        """
        settled = 0
        while True:
            async with self.db.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(SHARE_ROLLOUT, rollout_id)
                if row is None or row["state"] != "running":
                    return settled
                decided = await self._activate(conn, row, None)
            if not decided:
                return settled
            settled += len(decided)

    async def evaluate(self, rollout_id: int) -> str | None:
        """Move a running rollout on (next wave, pause, abort, finish) as its counters say.

        Also publishes ``rollout.progressed`` when counters or phase changed since the last one
        this process published. Returns the step taken, if any.
        """
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await _row(conn, LOCK_ROLLOUT, rollout_id)
            if row is None:
                return None
            taken = None
            wave_count = len(await conn.fetch(WAVES, rollout_id))
            progress = await _progress(conn, rollout_id)
            while row["state"] == "running":
                step = next_step(
                    current_wave=row["current_wave"],
                    wave_count=wave_count,
                    progress=progress,
                    success_threshold=row["success_threshold"],
                    error_threshold=row["error_threshold"],
                    error_action=row["error_action"],
                    failures_forgiven=row["failures_forgiven"],
                )
                if step.kind == "none":
                    break
                taken = step.kind
                if step.kind == "next_wave":
                    row = await self._start_wave(conn, row, row["current_wave"] + 1)
                elif step.kind == "pause":
                    row = await self._set(conn, row, "paused", step.reason)
                elif step.kind == "abort":
                    row = await self._abort(conn, row, step.reason or "error threshold")
                    progress = await _progress(conn, rollout_id)
                else:
                    row = await self._set(conn, row, "finished", step.reason)
                log.info(
                    "rollout step tenant=%s rollout=%s step=%s reason=%s",
                    row["tenant"],
                    rollout_id,
                    step.kind,
                    step.reason,
                )
            await self._progressed(conn, row, progress)
            return taken

    async def decide_in_rollout(
        self,
        conn: Conn,
        tenant: str,
        device: DeviceView,
        policy: PolicyView,
        shared: BatchReads,
    ) -> Decision:
        """Decide a device in mode ``rollout``: by the newest active rollout of its feed.

        The caller holds the device's advisory lock. A device that is not a member yet (new in
        the feed, or its inventory arrived after the rollout was created) joins the rollout's
        last wave if it matches its filter and the software fits it. Devices decided in one
        transaction share ``shared``: the feed's lock and rollout are taken once (the rollout
        row is held FOR SHARE, so it cannot move on meanwhile).
        """
        if policy.feed in shared.feeds:
            row = shared.feeds[policy.feed]
        else:
            await conn.execute(SHARE_FEED, feed_key(tenant, policy.feed))
            row = shared.feeds[policy.feed] = await conn.fetchrow(
                NEWEST_ACTIVE, tenant, policy.feed
            )
        if row is None:
            return Decision(None, "no running rollout in the feed")
        rid = str(row["id"])
        member = await conn.fetchrow(MEMBER, row["id"], device.controller_id)
        state = member["state"] if member is not None else await self._join(conn, row, device)
        if state is None:
            return Decision(None, "device not in the rollout", rid)
        if row["state"] != "running":
            return Decision(None, "rollout paused", rid)
        if state != "pending":
            return Decision(None, f"device is {state} in the rollout", rid)
        decided = await self._activate(conn, row, [device.controller_id])
        return decided.get(device.controller_id, Decision(None, "being decided elsewhere", rid))

    # --- inside transactions -------------------------------------------------------------

    async def _join(self, conn: Conn, rollout: asyncpg.Record, device: DeviceView) -> str | None:
        if rollout["state"] not in ("running", "paused"):
            return None
        if not DeviceFilter.of(rollout["device_filter"]).matches(device):
            return None
        software = await conn.fetchrow(SELECT_SOFTWARE, rollout["tenant"], rollout["software_id"])
        if software is None or not fits(candidate(software).compatibility, device):
            return None
        last = len(await conn.fetch(WAVES, rollout["id"]))
        state = "pending" if rollout["current_wave"] >= last else "waiting"
        inserted = await conn.execute(
            INSERT_MEMBER, rollout["id"], rollout["tenant"], device.controller_id, last, state
        )
        if inserted.endswith(" 0"):
            member = await conn.fetchrow(MEMBER, rollout["id"], device.controller_id)
            return None if member is None else str(member["state"])
        await conn.execute(GROW_WAVE, rollout["id"], last)
        return state

    async def _activate(
        self, conn: Conn, rollout: asyncpg.Record, only: Sequence[str] | None
    ) -> dict[str, Decision]:
        tenant = rollout["tenant"]
        ids = [
            r[0]
            for r in await conn.fetch(
                CLAIM_PENDING, rollout["id"], None if only is None else list(only), CHUNK
            )
        ]
        if not ids:
            return {}
        software_row = await _row(conn, SELECT_SOFTWARE, tenant, rollout["software_id"])
        software, cand = _software(software_row), candidate(software_row)
        view = RolloutView(
            str(rollout["id"]),
            rollout["feed"],
            software.software_id,
            "running",
            rollout["id"],
            True,
        )
        devices = {r["controller_id"]: r for r in await conn.fetch(DEVICES_OF, tenant, ids)}
        decided: dict[str, Decision] = {}
        updates: dict[str, tuple[str, int | None]] = {}
        to_open: list[str] = []
        for controller_id in ids:
            row = devices.get(controller_id)
            if row is None or row["mode"] != "rollout" or row["feed"] != rollout["feed"]:
                decided[controller_id] = Decision(None, "left the rollout's feed")
                updates[controller_id] = ("canceled", None)
                continue
            decision = choose_software(
                device_view(row),
                PolicyView("rollout", rollout["feed"]),
                {software.software_id: cand},
                [view],
            )
            decided[controller_id] = decision
            if decision.software_id is not None:
                to_open.append(controller_id)
            else:
                updates[controller_id] = (
                    ("success", None) if decision.reason == "up to date" else ("canceled", None)
                )
        spec = ActionSpec(
            rollout["action_type"],
            rollout["maintenance_window"],
            rollout["confirmation_required"],
            rollout["id"],
        )
        opened = await self.repo.open_actions(
            conn,
            tenant,
            to_open,
            software,
            spec,
            f"Rollout {rollout['name']!r} ({rollout['id']}): {software.version}.",
        )
        for action in opened:
            updates[action.controller_id] = ("running", action.id)
        if updates:
            await conn.execute(
                SET_MEMBERS,
                rollout["id"],
                list(updates),
                [u[0] for u in updates.values()],
                [u[1] for u in updates.values()],
            )
        return decided

    async def _start(self, conn: Conn, rollout: asyncpg.Record) -> asyncpg.Record:
        # The newest running rollout of a feed wins (gooseBit): older ones of the feed are
        # aborted, their devices that had not started leave them, open actions run to the end.
        for (older,) in await conn.fetch(
            OLDER_ACTIVE, rollout["tenant"], rollout["feed"], rollout["id"]
        ):
            old = await _row(conn, LOCK_ROLLOUT, older)
            await conn.execute(DROP_UNSTARTED, older)
            old = await self._set(conn, old, "aborted", f"superseded by rollout {rollout['id']}")
            await self._progressed(conn, old)
        return await self._start_wave(conn, rollout, 1, state="running")

    async def _start_wave(
        self, conn: Conn, rollout: asyncpg.Record, wave: int, state: str | None = None
    ) -> asyncpg.Record:
        await conn.execute(START_WAVE, rollout["id"], wave)
        await conn.execute(WAVE_STARTED, rollout["id"], wave)
        return await _row(
            conn,
            SET_STATE,
            rollout["id"],
            state or rollout["state"],
            rollout["reason"],
            wave,
            rollout["failures_forgiven"],
        )

    async def _set(
        self,
        conn: Conn,
        rollout: asyncpg.Record,
        state: str,
        reason: str | None,
        forgiven: int | None = None,
    ) -> asyncpg.Record:
        return await _row(
            conn,
            SET_STATE,
            rollout["id"],
            state,
            reason,
            rollout["current_wave"],
            rollout["failures_forgiven"] if forgiven is None else forgiven,
        )

    async def _abort(self, conn: Conn, rollout: asyncpg.Record, reason: str) -> asyncpg.Record:
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
        return await self._set(conn, rollout, "aborted", reason)

    async def _progressed(
        self, conn: Conn, rollout: asyncpg.Record, progress: Progress | None = None
    ) -> None:
        if progress is None:
            progress = await _progress(conn, rollout["id"])
        counters = progress.overall()
        mark = (rollout["state"], rollout["current_wave"], *counters.public().values())
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
                **counters.public(),
            ),
        )

    async def _document(self, conn: Conn, rollout: asyncpg.Record) -> dict[str, Any]:
        progress = await _progress(conn, rollout["id"])
        software = await conn.fetchrow(SELECT_SOFTWARE, rollout["tenant"], rollout["software_id"])
        return {
            "id": str(rollout["id"]),
            "tenant": rollout["tenant"],
            "name": rollout["name"],
            "feed": rollout["feed"],
            "software_id": rollout["software_id"],
            "version": software["version"] if software is not None else None,
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
            "confirmation_required": rollout["confirmation_required"],
            "maintenance_window": rollout["maintenance_window"],
            "created_at": rollout["created_at"],
            "started_at": rollout["started_at"],
            "finished_at": rollout["finished_at"],
        }
