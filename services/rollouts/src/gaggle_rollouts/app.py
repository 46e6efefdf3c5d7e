"""Rollouts wiring: the only place that builds and connects the parts."""

from __future__ import annotations

from fastapi import FastAPI

from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.engine import Engine
from gaggle_rollouts.handlers import SERVICE, make_router
from gaggle_rollouts.repository import Repo
from gaggle_rollouts.rollout_routes import make_rollout_routes
from gaggle_rollouts.rollout_store import RolloutStore
from gaggle_rollouts.routes import make_routes
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Service

SCHEMA = "rollouts"


def build_app(common: CommonSettings, settings: RolloutsSettings) -> FastAPI:
    """The rollouts service: operator API plus its event handlers in one process."""
    service = Service(
        SERVICE, common, schema=SCHEMA, migrations_package="gaggle_rollouts.migrations"
    )
    repo = Repo(service.db, Outbox(SCHEMA))
    store = RolloutStore(repo)
    engine = Engine(store, repo, sweep_s=settings.sweep_s, window_s=settings.window_s)
    service.broker.include_router(make_router(repo, common, engine))
    service.background(engine.run)
    service.background(engine.windows)
    app = service.app(
        title="Gaggle rollouts",
        description="What every device should run: actions, their history, rollouts.",
    )
    app.include_router(make_routes(repo))
    app.include_router(make_rollout_routes(store, engine))
    app.state.service = service
    return app
