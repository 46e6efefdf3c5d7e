"""Artifacts' answers to other services: a software they have not seen announced yet."""

from __future__ import annotations

from gaggle_artifacts.handlers import SERVICE
from gaggle_artifacts.repository import Repo
from gaggle_contracts import names
from gaggle_contracts.rpc import FindSoftware, SoftwareFound
from gaggle_runtime.rpc import Responder
from gaggle_runtime.telemetry import Tracing


def make_responder(repo: Repo, tracing: Tracing | None = None) -> Responder:
    """The artifacts service's request-reply endpoints, bound to ``repo``."""
    responder = Responder(SERVICE, tracing=tracing)

    async def find_software(request: FindSoftware) -> SoftwareFound:
        """ota.rpc.artifacts.software -> the software's ``software.created`` (None: unknown)."""
        software_id = names.parse_row_id(request.software_id)
        software = None
        if software_id is not None:
            software = await repo.get(request.tenant.lower(), software_id)
        if software is None:
            return SoftwareFound()
        return SoftwareFound(software=software.created_event(), deleted=software.deleted)

    responder.endpoint(FindSoftware, find_software)
    return responder
