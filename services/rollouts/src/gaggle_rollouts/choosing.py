"""Choosing what devices should run, and opening their actions: one transaction a batch.

The rule itself is :func:`gaggle_rollouts.decision.choose_software`; devices in mode
``rollout`` are chosen for by their feed's rollout (:meth:`RolloutStore.choose_in_rollout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gaggle_rollouts.actions import Actions, ActionSpec
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.decision import Decision, DeviceView, PolicyView, choose_software
from gaggle_rollouts.domain import Software
from gaggle_rollouts.health_store import blocked_software
from gaggle_rollouts.policies import Policies
from gaggle_rollouts.rollout_members import Membership
from gaggle_runtime.db import Conn
from gaggle_runtime.service import Database


@dataclass
class Chooser:
    """Chooses for devices over the catalogue, their policies, their actions and rollouts."""

    db: Database
    actions: Actions
    catalogue: Catalogue
    policies: Policies
    rollouts: Membership
    _later: set[asyncio.Task[None]] = field(default_factory=set)

    def choose_later(self, tenant: str, controller_ids: Sequence[str]) -> None:
        """Choose for many devices in the background (the caller does not wait)."""
        task = asyncio.create_task(self.choose_chunked(tenant, controller_ids))
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def choose(self, tenant: str, controller_id: str) -> Decision:
        """Choose what the device should run and open an action for it if needed."""
        return (await self.choose_batch(tenant, [controller_id]))[controller_id]

    async def choose_chunked(
        self, tenant: str, controller_ids: Sequence[str], chunk: int = 64
    ) -> None:
        """Choose for many devices, ``chunk`` per transaction."""
        ids = list(dict.fromkeys(controller_ids))
        for i in range(0, len(ids), chunk):
            await self.choose_batch(tenant, ids[i : i + chunk])

    async def choose_batch(self, tenant: str, controller_ids: Sequence[str]) -> dict[str, Decision]:
        """Choose for many devices of one tenant in one transaction; each device's decision.

        The transaction holds each device's advisory lock (taken in key order): two replicas,
        or two events for the same device, choose one after the other, and the second sees the
        first's action (the partial unique index on open actions is the last line of defence).
        Devices in mode ``rollout`` are chosen for by the rollout they belong to; what the
        devices share (the catalogue, a feed's rollout) is read once for the batch.
        """
        ids = sorted(set(controller_ids))
        decisions: dict[str, Decision] = {}
        async with self.db.pool.acquire() as conn, conn.transaction():
            await self.policies.lock(conn, tenant, ids)
            busy = await self.actions.busy(conn, tenant, ids)
            policies, devices = await self.policies.views(conn, tenant, ids)
            shared = _Shared()
            for controller_id in ids:
                decisions[controller_id] = await self._choose_locked(
                    conn,
                    tenant,
                    controller_id,
                    controller_id in busy,
                    policies.get(controller_id, PolicyView()),
                    devices.get(controller_id),
                    shared,
                )
        return decisions

    async def _choose_locked(
        self,
        conn: Conn,
        tenant: str,
        controller_id: str,
        busy: bool,
        policy: PolicyView,
        device: DeviceView | None,
        shared: _Shared,
    ) -> Decision:
        if busy:
            return Decision(None, "an action is open")
        if policy.mode == "pinned":
            return Decision(None, "pinned")
        if device is None or (device.hw_model is None and device.sw_version is None):
            # As in gooseBit, nothing is chosen before the device reported what it is and
            # runs (configData); that report's device.updated chooses again.
            return Decision(None, "waiting for the device's inventory")
        if policy.mode == "rollout":
            return await self.rollouts.choose_in_rollout(conn, tenant, device, policy, shared.feeds)
        if shared.catalogue is None:
            shared.catalogue = await self.catalogue.all(conn, tenant)
        catalogue = shared.catalogue
        failed = await self.actions.failed_software(conn, tenant, controller_id)
        blocked = (await blocked_software(conn, tenant, [controller_id])).get(controller_id, set())
        decision = choose_software(device, policy, catalogue, (), failed, frozenset(blocked))
        if decision.software_id is not None:
            software = catalogue[decision.software_id]
            await self.actions.open_one(
                conn,
                tenant,
                controller_id,
                software,
                ActionSpec("forced"),
                f"Decided: {decision.reason} ({software.version}).",
            )
        return decision


class _Shared:
    """What the devices chosen for in one transaction share, read at most once for them all."""

    def __init__(self) -> None:
        self.catalogue: dict[str, Software] | None = None
        self.feeds: dict[str, Any] = {}
        """A feed's newest active rollout (None: none), its feed lock taken."""
