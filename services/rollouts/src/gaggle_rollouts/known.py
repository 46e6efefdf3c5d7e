"""Software and devices rollouts has not been told of yet, read through to their owners.

They reach rollouts as events (``software.created``, ``device.updated``) a moment after the
operator got the id back, or later when the bus is slow or an outbox is stuck. An operator who
passes such an id must not be told it does not exist: rollouts asks the owner (artifacts,
registry) over request-reply and records the answer exactly as consuming the event would, so
the event, when it comes, changes nothing. An id the owner does not know either is unknown
(404); an owner that does not answer in time makes the request fail with 503, never a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nats.aio.client import Client as NatsClient

from gaggle_contracts import names
from gaggle_contracts.events import DeviceUpdated, SoftwareDeleted
from gaggle_contracts.rpc import (
    MAX_DEVICE_LOOKUP,
    DevicesFound,
    FindDevices,
    FindSoftware,
    RpcMessage,
    RpcRequest,
    SoftwareFound,
)
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.domain import Software
from gaggle_rollouts.errors import OwnerUnavailable
from gaggle_rollouts.policies import Policies
from gaggle_runtime.rpc import RpcUnavailableError, ask
from gaggle_runtime.telemetry import Tracing

M = TypeVar("M", bound=RpcMessage)


@dataclass
class ReadThrough:
    """Rollouts' copies of software and devices, completed from their owners on a miss."""

    catalogue: Catalogue
    policies: Policies
    nats: Callable[[], NatsClient]
    timeout: float
    tracing: Tracing | None = None

    async def _ask(self, request: RpcRequest, reply: type[M], what: str) -> M:
        try:
            return await ask(self.nats(), request, reply, self.timeout, self.tracing)
        except RpcUnavailableError as exc:
            raise OwnerUnavailable(what, exc) from exc

    async def software(self, tenant: str, software_id: str) -> Software | None:
        """The software (deleted ones too), asked of artifacts if not announced yet; None: none.

        Raises:
            OwnerUnavailable: not known here, and artifacts did not answer.
        """
        known = await self.catalogue.software(tenant, software_id)
        if known is not None:
            return known
        found = await self._ask(
            FindSoftware(tenant=tenant, software_id=software_id),
            SoftwareFound,
            f"software {software_id!r}",
        )
        if found.software is None:
            return None
        # What on_software_created records; devices in mode latest are decided again when the
        # event itself arrives.
        await self.catalogue.upsert_software(found.software)
        if found.deleted:
            await self.catalogue.delete_software(
                SoftwareDeleted(tenant=tenant, software_id=software_id)
            )
        return await self.catalogue.software(tenant, software_id)

    async def device(self, tenant: str, controller_id: str) -> bool:
        """Whether the device exists (rollouts was told, or the registry knows it).

        Raises:
            OwnerUnavailable: not known here, and the registry did not answer.
        """
        return controller_id in await self.devices(tenant, [controller_id])

    async def devices(self, tenant: str, controller_ids: Sequence[str]) -> set[str]:
        """Those of the devices that exist; the registry is asked about the others.

        What the registry answers is recorded as its ``device.updated`` would be, stamped with
        the time the registry last changed the device.

        Raises:
            OwnerUnavailable: some are not known here, and the registry did not answer.
        """
        ids = list(dict.fromkeys(controller_ids))
        known = await self.policies.known_devices(tenant, ids)
        # An id Gaggle refuses cannot name a device: no need to ask.
        missing = [c for c in ids if c not in known and names.CONTROLLER_ID_RE.match(c)]
        for i in range(0, len(missing), MAX_DEVICE_LOOKUP):
            chunk = missing[i : i + MAX_DEVICE_LOOKUP]
            what = f"device {chunk[0]!r}" + (f" and {len(chunk) - 1} more" if chunk[1:] else "")
            found = await self._ask(
                FindDevices(tenant=tenant, controller_ids=chunk), DevicesFound, what
            )
            if found.devices:
                await self.policies.record_devices(
                    [
                        DeviceUpdated(
                            tenant=tenant,
                            controller_id=d.controller_id,
                            change="registered",
                            hw_model=d.hw_model,
                            hw_revision=d.hw_revision,
                            sw_version=d.sw_version,
                            occurred_at=d.updated_at,
                        )
                        for d in found.devices
                    ]
                )
                known.update(d.controller_id for d in found.devices)
        return known
