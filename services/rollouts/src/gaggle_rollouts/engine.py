"""The rollouts engine: background loops that open a rollout's actions and move it on.

Handlers and API requests ``poke`` a rollout after they changed it; the engine then opens the
actions its started waves are owed (in chunks, as many as the tenant's cap on updates in flight
leaves free) and evaluates it (next wave, pause, abort, finish). The pokes of a burst (a pull of
feedback) are taken together, once per burst: the poked rollouts, and the running rollouts of
their tenants that have devices queued for a slot, are each stepped once. A sweep every
``sweep_s`` does the same for every active rollout, which also finishes whatever a crashed
process left half done. Maintenance windows are re-checked every ``window_s``, the force times of
time-forced actions every ``force_s`` (one indexed query that finds nothing most of the time),
and the health checks (action time-outs, ended soaks) run every ``health_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gaggle_rollouts.actions import Actions
from gaggle_rollouts.health_store import Health
from gaggle_rollouts.rollout_store import RolloutStore
from gaggle_rollouts.usecases import check_health, refresh_windows
from gaggle_runtime.db import leading

log = logging.getLogger(__name__)

HEALTH_SWEEP_LOCK = "gaggle-rollouts:health-sweep"


class Engine:
    """Moves rollouts on, in the background of one process (replicas may run their own)."""

    def __init__(
        self,
        store: RolloutStore,
        repo: Actions,
        *,
        sweep_s: float = 2.0,
        window_s: float = 30.0,
        force_s: float = 1.0,
        min_interval_s: float = 0.05,
        health: Health | None = None,
        health_s: float = 5.0,
    ) -> None:
        self.store = store
        self.repo = repo
        self.sweep_s = sweep_s
        self.window_s = window_s
        self.force_s = force_s
        self.min_interval_s = min_interval_s
        """Pokes arriving faster than this are taken together (a burst of feedback)."""
        self.health = health
        self.health_s = health_s
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()

    def poke(self, rollout_id: int | None) -> None:
        """Look at ``rollout_id`` soon (None: nothing to do)."""
        if rollout_id is not None:
            self._dirty.add(rollout_id)
            self._wake.set()

    async def run(self) -> None:
        """Activate and evaluate poked rollouts at once, every active one each sweep."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sweep_s)
            await asyncio.sleep(self.min_interval_s)
            self._wake.clear()
            ids, self._dirty = self._dirty, set()
            try:
                if ids:
                    ids |= set(await self.store.queued_elsewhere(ids))
                else:
                    ids = set(await self.store.active_ids())
                for rollout_id in sorted(ids):
                    await self.step(rollout_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("rollouts engine step failed; retrying", exc_info=True)
                self._dirty |= ids
                await asyncio.sleep(0.5)

    async def step(self, rollout_id: int) -> None:
        """Open what is owed, then evaluate, until the rollout rests."""
        for _ in range(100):
            await self.store.activate(rollout_id)
            if await self.store.evaluate(rollout_id) != "next_wave":
                return

    async def windows(self) -> None:
        """Re-render the documents of actions that turned forced, or whose window opened or shut."""
        loop = asyncio.get_running_loop()
        windows_due = loop.time() + self.window_s
        while True:
            await asyncio.sleep(min(self.force_s, self.window_s))
            try:
                windows = loop.time() >= windows_due
                await refresh_windows(self.repo.db, self.repo, windows=windows)
                if windows:
                    windows_due = loop.time() + self.window_s
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("maintenance window and force time refresh failed", exc_info=True)

    async def checks(self) -> None:
        """Time out actions past their limits and judge ended soaks, every ``health_s``.

        One replica at a time sweeps (:func:`gaggle_runtime.db.leading`): two sweeps side by
        side would both find the same overdue action and note its time-out twice.
        """
        if self.health is None:
            return
        while True:
            await asyncio.sleep(self.health_s)
            try:
                async with leading(self.health.db.pool, HEALTH_SWEEP_LOCK) as sweeping:
                    if sweeping:
                        await check_health(self.health)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("health check failed", exc_info=True)
