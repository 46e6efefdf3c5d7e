"""Artifacts subscribers: remember which software devices ever had (for soft delete).

``build_router`` subscribes the plain functions here; ``provide`` puts the ``repo`` they use
in the broker's context.
"""

from __future__ import annotations

from typing import Annotated

from faststream import Context
from faststream.nats import NatsBroker, NatsRouter

from gaggle_artifacts.repository import Repo
from gaggle_contracts import names
from gaggle_contracts.events import ActionCreated
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import consumer_options

SERVICE = "artifacts"

Catalogue = Annotated[Repo, Context("repo")]


async def on_action_created(event: ActionCreated, repo: Catalogue) -> None:
    """ota.v1.*.action.created -> the software is marked used (deletes become soft)."""
    software_id = names.parse_row_id(event.software_id)
    if software_id is not None:
        await repo.mark_used(event.tenant, software_id)


def provide(broker: NatsBroker, repo: Repo) -> None:
    """Put what the subscribers use in ``broker``'s context."""
    broker.context.set_global("repo", repo)


def build_router(common: CommonSettings) -> NatsRouter:
    """The artifacts service's subscribers, each on its durable consumer."""
    router = NatsRouter()
    router.subscriber(**consumer_options(SERVICE, ActionCreated.kind, common))(on_action_created)
    return router
