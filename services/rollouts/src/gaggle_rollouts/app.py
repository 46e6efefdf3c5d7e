"""Rollouts wiring: the only place that builds and connects the parts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, get_args

import orjson
from fastapi import FastAPI
from faststream.nats import NatsBroker
from prometheus_client import Counter, Gauge
from pydantic import BaseModel

from gaggle_contracts.events import ActionFinished, SoftwareUntrusted
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts import (
    check_routes,
    errors,
    health_routes,
    rollout_events,
    rollout_routes,
    routes,
)
from gaggle_rollouts.actions import Actions
from gaggle_rollouts.caps import TenantApprovals, TenantCaps
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.check import Checker
from gaggle_rollouts.choosing import Chooser
from gaggle_rollouts.engine import Engine
from gaggle_rollouts.handlers import SERVICE, SUBSCRIBERS, WHOLE_PULLS
from gaggle_rollouts.health_store import Health
from gaggle_rollouts.known import ReadThrough
from gaggle_rollouts.plan import ACTIVE_STATES, MemberState, RolloutState
from gaggle_rollouts.policies import Policies
from gaggle_rollouts.rollout_routes import RolloutBody
from gaggle_rollouts.rollout_store import RolloutStore
from gaggle_rollouts.routes import BulkPolicyBody, NewAction, PolicyBody
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_rollouts.untrusted import Untrusting, on_software_untrusted
from gaggle_rollouts.usecases import FEEDBACK_IN_FLIGHT, UseCases
from gaggle_runtime.batches import BatchRunner
from gaggle_runtime.bus import consumer_options
from gaggle_runtime.deadletters import ConsumerFailures
from gaggle_runtime.metrics import Metrics
from gaggle_runtime.openapi import add_examples
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Service
from gaggle_runtime.state import put_parts

log = logging.getLogger(__name__)

SCHEMA = "rollouts"
CAPS_WAIT_S = 10.0
"""How long start-up waits for the tenants' caps on updates in flight (KV ``tenants``)."""
ROLLOUTS_BY_STATE = "SELECT state, count(*) FROM rollouts.rollouts GROUP BY state"
DEVICES_OF_ACTIVE_ROLLOUTS = """
SELECT d.state, count(*) FROM rollouts.rollout_devices d
JOIN rollouts.rollouts r ON r.id = d.rollout_id
WHERE r.state = ANY($1::text[]) GROUP BY d.state
"""


EXAMPLES: dict[type[BaseModel], list[dict[str, Any]]] = {
    NewAction: [
        {"software_id": "1", "type": "forced"},
        {
            "software_id": "1",
            "type": "soft",
            "confirmation_required": True,
            "maintenance_window": {"start": "02:00", "end": "04:00"},
        },
    ],
    PolicyBody: [{"mode": "rollout", "feed": "beta"}, {"mode": "assigned", "software_id": "1"}],
    BulkPolicyBody: [
        {"filter": {"hw_model": "myboard", "sw_version": "1.1.0"}, "policy": {"mode": "latest"}}
    ],
    RolloutBody: [
        {
            "name": "1.2.0 to beta",
            "software_id": "1",
            "feed": "beta",
            "waves": [{"percent": 10}, {"percent": 30}, {"percent": 60}],
            "success_threshold": 80,
            "error_threshold": 20,
            "error_action": "abort",
            "start": True,
        }
    ],
}


def install_metrics(service: Service) -> None:
    """``gaggle_actions_finished_total``, ``gaggle_rollouts`` and ``gaggle_rollout_devices``."""
    metrics: Metrics = service.metrics
    finished = Counter(
        "gaggle_actions_finished",
        "Actions closed, by outcome (the status of the action.finished event published).",
        ["outcome"],
        registry=metrics.registry,
    )
    rollouts = Gauge("gaggle_rollouts", "Rollouts, by state.", ["state"], registry=metrics.registry)
    devices = Gauge(
        "gaggle_rollout_devices",
        "Devices of running and paused rollouts, by where they stand"
        " (pending: queued for their action).",
        ["state"],
        registry=metrics.registry,
    )
    finished_subject = "." + ActionFinished.kind
    by_outcome: dict[str, Any] = {}  # the labelled counters, looked up once per outcome

    def count_finished(subject: str, payload: bytes) -> None:
        if subject.endswith(finished_subject):
            outcome = str(orjson.loads(payload).get("status", "unknown"))
            counter = by_outcome.get(outcome)
            if counter is None:
                counter = by_outcome[outcome] = finished.labels(outcome)
            counter.inc()

    async def sample() -> None:
        if not service.db.started:
            return
        async with service.db.pool.acquire() as conn:
            by_state = {r[0]: r[1] for r in await conn.fetch(ROLLOUTS_BY_STATE)}
            active = sorted(ACTIVE_STATES)
            by_device_state = {
                r[0]: r[1] for r in await conn.fetch(DEVICES_OF_ACTIVE_ROLLOUTS, active)
            }
        for state in get_args(RolloutState):
            rollouts.labels(state).set(by_state.get(state, 0))
        for state in get_args(MemberState):
            devices.labels(state).set(by_device_state.get(state, 0))

    service.relay_observers.append(count_finished)
    service.metrics.sampler(sample)


def subscribe(
    broker: NatsBroker,
    common: CommonSettings,
    cases: UseCases,
    failures: ConsumerFailures | None = None,
) -> BatchRunner:
    """Every rollouts consumer on ``broker``, its use cases in the broker's context.

    ``failures`` settles each event of the consumers fed a pull at once (``WHOLE_PULLS``); the
    service's own, with its dead-letter store (without: a failure for good is only logged).
    Returns the runner of the feedback batches, to be closed before the subscribers stop.
    """
    runner = BatchRunner(FEEDBACK_IN_FLIGHT)
    broker.context.set_global("usecases", cases)
    broker.context.set_global("failures", failures or ConsumerFailures(SERVICE, common, None))
    broker.context.set_global("feedback_runner", runner)
    for kind, handler, batch in SUBSCRIBERS:
        options = consumer_options(SERVICE, kind, common, batch=batch, whole=WHOLE_PULLS.get(kind))
        broker.subscriber(**options)(handler)
    return runner


def build_app(common: CommonSettings, settings: RolloutsSettings) -> FastAPI:
    """The rollouts service: operator API plus its event handlers in one process."""
    service = Service(
        SERVICE, common, schema=SCHEMA, migrations_package="gaggle_rollouts.migrations"
    )
    outbox = Outbox(SCHEMA)
    catalogue = Catalogue(service.db)
    policies = Policies(service.db, outbox)
    actions = Actions(service.db, outbox, catalogue)
    caps = TenantCaps()
    store = RolloutStore(actions, catalogue, caps)
    chooser = Chooser(service.db, actions, catalogue, policies, store.members)
    health = Health(actions)
    engine = Engine(
        store,
        actions,
        sweep_s=settings.sweep_s,
        window_s=settings.window_s,
        force_s=settings.force_s,
        health=health,
        health_s=settings.health_s,
    )
    cases = UseCases(service.db, actions, catalogue, policies, chooser, engine, health)
    runner = subscribe(service.broker, common, cases, service.failures)
    # Software whose signer left the trust store: no rollout starts with it (untrusted.py).
    service.broker.context.set_global("untrusting", Untrusting(service.db, store.phases))
    service.broker.subscriber(**consumer_options(SERVICE, SoftwareUntrusted.kind, common))(
        on_software_untrusted
    )
    service.on_stopping.append(runner.close)
    # Each tenant's cap on updates in flight, from registry's KV tenants (never its tables).
    service.background(lambda: caps.mirror.watch(service.broker.connection.jetstream))
    service.mirror_metrics.mirrors.append(caps.mirror)

    async def wait_for_caps() -> None:
        # Until the bucket is loaded no action opens (a lower cap must not be overrun); wait
        # for it here rather than have the first decisions say "queued" for no reason.
        try:
            await asyncio.wait_for(caps.mirror.loaded.wait(), CAPS_WAIT_S)
        except TimeoutError:
            log.warning("KV tenants not loaded yet; rollouts open no action until it is")

    service.on_start.append(wait_for_caps)
    service.background(engine.run)
    service.background(engine.windows)
    service.background(engine.checks)
    install_metrics(service)
    app = service.app(
        title="Gaggle rollouts",
        description="What every device should run: actions, their history, rollouts.",
    )
    known = ReadThrough(
        catalogue,
        policies,
        lambda: service.broker.connection,
        settings.lookup_timeout_s,
        service.tracing,
    )
    # What the routes are given (deps.py).
    put_parts(
        app,
        actions=actions,
        usecases=cases,
        policies=policies,
        chooser=chooser,
        known=known,
        store=store,
        reads=store.reads,
        engine=engine,
        catalogue=catalogue,
        approvals=TenantApprovals(caps.mirror),
        health=health,
    )
    errors.install(app)
    app.include_router(routes.api)
    app.include_router(rollout_routes.api)
    app.include_router(health_routes.api)
    # Attended upgrade checks: the operator's view, and the gateway's questions over NATS.
    check_routes.install(
        app, service, Checker(service.db, catalogue, policies, actions, chooser, known)
    )
    app.include_router(rollout_events.api)
    service.secure(app)
    add_examples(app, EXAMPLES)
    app.state.service = service
    return app
