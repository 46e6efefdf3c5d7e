"""A rollout's members: who joins it, and the actions opened for those whose wave started.

Members waiting for their action are claimed with ``FOR UPDATE SKIP LOCKED``: replicas split
the work instead of repeating it; a device chosen for on its own (``device.updated``) holds its
advisory lock first and skips rows a batch holds.

Actions open only into free slots under the tenant's cap on updates in flight (devices with an
open action, whatever opened it): the others of a started wave stay queued (``pending``), in wave
and id order, until earlier actions close. Slots are counted and filled under the tenant's
in-flight lock; a wave's batch waits for it (taken before the rollout's row), a device deciding
on its own waits briefly (it holds other locks already) and stays queued if it stays busy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from gaggle_rollouts.actions import Actions, ActionSpec
from gaggle_rollouts.caps import Caps
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.decision import (
    Decision,
    DeviceView,
    PolicyView,
    RolloutView,
    choose_software,
    fits,
)
from gaggle_rollouts.health_store import blocked_software
from gaggle_rollouts.plan import free_slots
from gaggle_rollouts.policies import device_view
from gaggle_rollouts.rollout_filter import DeviceFilter
from gaggle_rollouts.rollout_phases import feed_key
from gaggle_rollouts.rollout_sql import (
    CLAIM_PENDING,
    DEVICES_OF,
    GROW_WAVE,
    IN_FLIGHT,
    INSERT_MEMBER,
    LOCK_IN_FLIGHT,
    MEMBER,
    NEWEST_ACTIVE,
    RESET_LOCK_TIMEOUT,
    SET_LOCK_TIMEOUT,
    SET_MEMBERS,
    SHARE_FEED,
    WAVES,
)
from gaggle_runtime.db import Conn

CHUNK = 500
"""Devices whose actions are opened in one transaction."""
LOCK_WAIT_MS = 300
"""How long a device deciding on its own waits for its tenant's in-flight lock before it stays
queued (a wave's batch holds the lock while it opens a chunk; the engine opens it later)."""


class Membership:
    """Joins devices to rollouts and opens their actions through :class:`Actions`."""

    def __init__(self, repo: Actions, catalogue: Catalogue, caps: Caps) -> None:
        self.repo = repo
        self.catalogue = catalogue
        self.caps = caps

    async def slots(self, conn: Conn, tenant: str, *, wait: bool) -> int:
        """Actions the tenant may open now (a chunk at most), its in-flight lock then held.

        ``wait``: wait for the lock; else 0 when another opener holds it.
        """
        cap = self.caps.cap(tenant)
        if cap is None:
            return 0
        if wait:
            await conn.execute(LOCK_IN_FLIGHT, tenant)
        elif not await self._lock_briefly(conn, tenant):
            return 0
        return free_slots(cap, await conn.fetchval(IN_FLIGHT, tenant), CHUNK)

    async def _lock_briefly(self, conn: Conn, tenant: str) -> bool:
        """Take the tenant's in-flight lock if it comes within ``LOCK_WAIT_MS``.

        A device deciding on its own holds locks a wave's batch may wait for (its rollout's row,
        behind an operator's command): giving up before PostgreSQL's deadlock check (1 s) breaks
        any such cycle without failing anyone's transaction. The savepoint keeps the caller's.
        """
        try:
            async with conn.transaction():
                await conn.execute(SET_LOCK_TIMEOUT, f"{LOCK_WAIT_MS}ms")
                await conn.execute(LOCK_IN_FLIGHT, tenant)
        except asyncpg.LockNotAvailableError:
            return False
        finally:
            await conn.execute(RESET_LOCK_TIMEOUT)
        return True

    async def choose_in_rollout(
        self,
        conn: Conn,
        tenant: str,
        device: DeviceView,
        policy: PolicyView,
        feeds: dict[str, Any],
    ) -> Decision:
        """Choose for a device in mode ``rollout``: by the newest active rollout of its feed.

        The caller holds the device's advisory lock. A device that is not a member yet (new in
        the feed, or its inventory arrived after the rollout was created) joins the rollout's
        last wave if it matches its filter and the software fits it. Devices decided in one
        transaction share ``feeds``: the feed's lock and rollout are taken once (the rollout
        row is held FOR SHARE, so it cannot move on meanwhile).
        """
        if policy.feed in feeds:
            row = feeds[policy.feed]
        else:
            await conn.execute(SHARE_FEED, feed_key(tenant, policy.feed))
            row = feeds[policy.feed] = await conn.fetchrow(NEWEST_ACTIVE, tenant, policy.feed)
        if row is None:
            return Decision(None, "no running rollout in the feed")
        rid = str(row["id"])
        member = await conn.fetchrow(MEMBER, row["id"], device.controller_id)
        state = member["state"] if member is not None else await self.join(conn, row, device)
        if state is None:
            return Decision(None, "device not in the rollout", rid)
        if row["state"] != "running":
            return Decision(None, "rollout paused", rid)
        if state != "pending":
            return Decision(None, f"device is {state} in the rollout", rid)
        if await self.slots(conn, tenant, wait=False) < 1:
            return Decision(
                None, "queued for a free slot under the tenant's cap on updates in flight", rid
            )
        decided = await self.open_pending(conn, row, [device.controller_id], 1)
        return decided.get(device.controller_id, Decision(None, "being decided elsewhere", rid))

    async def join(self, conn: Conn, rollout: asyncpg.Record, device: DeviceView) -> str | None:
        """Add the device to the rollout's last wave if it may join; its member state, if any."""
        if rollout["state"] not in ("running", "paused"):
            return None
        if not DeviceFilter.of(rollout["device_filter"]).matches(device):
            return None
        software = await self.catalogue.entry(conn, rollout["tenant"], rollout["software_id"])
        if software is None or not fits(software.compatibility, device):
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

    async def open_pending(
        self, conn: Conn, rollout: asyncpg.Record, only: Sequence[str] | None, limit: int
    ) -> dict[str, Decision]:
        """Open actions for up to ``limit`` queued members (``only`` these, if given).

        The caller holds the tenant's in-flight lock and got ``limit`` from :meth:`slots`.
        """
        tenant = rollout["tenant"]
        ids = [
            r[0]
            for r in await conn.fetch(
                CLAIM_PENDING, rollout["id"], None if only is None else list(only), limit
            )
        ]
        if not ids:
            return {}
        software = await self.catalogue.entry(conn, tenant, rollout["software_id"])
        if software is None:  # pragma: no cover - software rows are never deleted
            raise RuntimeError(f"rollout {rollout['id']} names no software")
        view = RolloutView(
            str(rollout["id"]),
            rollout["feed"],
            software.software_id,
            "running",
            rollout["id"],
            True,
        )
        devices = {r["controller_id"]: r for r in await conn.fetch(DEVICES_OF, tenant, ids)}
        blocked = await blocked_software(conn, tenant, ids)
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
                {software.software_id: software},
                [view],
                blocked_software=frozenset(blocked.get(controller_id, ())),
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
            rollout["forcetime"],
            rollout["report_timeout_s"],
            rollout["action_timeout_s"],
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
