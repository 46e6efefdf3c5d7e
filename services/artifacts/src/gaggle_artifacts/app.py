"""Artifacts wiring: the only place that builds and connects the parts."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from gaggle_artifacts.errors import install as install_refusals
from gaggle_artifacts.handlers import SERVICE, build_router, provide
from gaggle_artifacts.lookups import make_responder
from gaggle_artifacts.policies import TenantPolicies
from gaggle_artifacts.repository import Repo
from gaggle_artifacts.routes import api
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_artifacts.trust_routes import api as trust_api
from gaggle_artifacts.trust_store import TrustStore
from gaggle_artifacts.uploads import ExternalSoftware, Gate
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.openapi import add_examples
from gaggle_runtime.outbox import Outbox
from gaggle_runtime.service import Service
from gaggle_runtime.state import put_parts
from gaggle_storage import StorageSettings, open_store

log = logging.getLogger(__name__)

SCHEMA = "artifacts"
POLICIES_WAIT_S = 10.0
"""How long start-up waits for the tenants' image policies (KV ``tenants``)."""


def build_app(
    common: CommonSettings, settings: ArtifactsSettings, storage: StorageSettings | None = None
) -> FastAPI:
    """The artifacts service: image uploads and the catalogue, in one process."""
    storage = storage or StorageSettings()
    store = open_store(storage)
    service = Service(
        SERVICE, common, schema=SCHEMA, migrations_package="gaggle_artifacts.migrations"
    )
    outbox = Outbox(SCHEMA)
    repo = Repo(service.db, outbox)
    trust = TrustStore(service.db, outbox)
    # Each tenant's image policy, from registry's KV tenants (never its tables).
    policies = TenantPolicies()
    gate = Gate(trust, policies, settings)
    service.background(lambda: policies.mirror.watch(service.broker.connection.jetstream))
    service.mirror_metrics.mirrors.append(policies.mirror)

    async def wait_for_policies() -> None:
        # Until the bucket is loaded uploads answer 503: a tenant requiring signatures must not
        # get an unsigned image because its policy was not read yet.
        try:
            await asyncio.wait_for(policies.mirror.loaded.wait(), POLICIES_WAIT_S)
        except TimeoutError:
            log.warning("KV tenants not loaded yet; uploads are refused until it is")

    async def ensure_bucket() -> None:
        if storage.backend != "s3":
            return  # the S3 client is not even imported: a restart is quicker without it
        from gaggle_storage.s3 import S3Store

        if isinstance(store, S3Store):
            await store.ensure_bucket()

    responder = make_responder(repo, service.tracing)

    async def answer() -> None:
        await responder.start(service.broker.connection)

    service.on_start += [ensure_bucket, answer, wait_for_policies]
    service.on_stop.append(responder.stop)
    service.broker.include_router(build_router(common))
    provide(service.broker, repo)
    app = service.app(
        title="Gaggle artifacts",
        description="SWUpdate images: upload, parse, store in S3-compatible storage, serve.",
    )
    app.include_router(api)
    app.include_router(trust_api)
    install_refusals(app)
    service.secure(app)
    add_examples(
        app,
        {
            ExternalSoftware: [
                {"url": "https://downloads.example.com/update-1.2.0.swu"},
                {"url": "https://downloads.example.com/u?id=7", "filename": "update-1.2.0.swu"},
            ]
        },
    )
    put_parts(
        app,
        service=service,
        store=store,
        repo=repo,
        settings=settings,
        storage=storage,
        trust=trust,
        gate=gate,
    )
    return app
