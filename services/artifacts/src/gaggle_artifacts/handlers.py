"""Artifacts subscribers: remember which software devices ever had (for soft delete)."""

from __future__ import annotations

from faststream.nats import NatsRouter

from gaggle_artifacts.repository import Repo
from gaggle_contracts import names
from gaggle_contracts.events import ActionCreated
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import consumer_options

SERVICE = "artifacts"


def make_router(repo: Repo, common: CommonSettings) -> NatsRouter:
    """The artifacts service's subscribers, bound to ``repo``."""
    router = NatsRouter()

    @router.subscriber(**consumer_options(SERVICE, ActionCreated.kind, common))
    async def on_action_created(event: ActionCreated) -> None:
        """ota.v1.*.action.created -> the software is marked used (deletes become soft)."""
        software_id = names.parse_row_id(event.software_id)
        if software_id is not None:
            await repo.mark_used(event.tenant, software_id)

    return router
