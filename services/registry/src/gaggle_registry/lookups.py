"""Registry's answers to other services: devices they have no inventory of yet."""

from __future__ import annotations

from gaggle_contracts.rpc import DevicesFound, FindDevices, KnownDevice
from gaggle_registry.handlers import SERVICE
from gaggle_registry.repository import Repo
from gaggle_runtime.rpc import Responder
from gaggle_runtime.telemetry import Tracing


def make_responder(repo: Repo, tracing: Tracing | None = None) -> Responder:
    """The registry's request-reply endpoints, bound to ``repo``."""
    responder = Responder(SERVICE, tracing=tracing)

    async def find_devices(request: FindDevices) -> DevicesFound:
        """ota.rpc.registry.devices -> those of the devices that exist, as device.updated says."""
        found = await repo.known(
            request.tenant.lower(), list(dict.fromkeys(request.controller_ids))
        )
        return DevicesFound(devices=[KnownDevice(**d) for d in found])

    responder.endpoint(FindDevices, find_devices)
    return responder
