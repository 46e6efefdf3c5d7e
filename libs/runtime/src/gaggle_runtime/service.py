"""The skeleton every service shares: NATS broker, optional database, outbox relay, health routes.

A service builds a :class:`Service`, registers its subscribers on ``service.broker`` and its
routes on a FastAPI app from :meth:`Service.app`; the app's lifespan starts and stops the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from gaggle_contracts.jetstream import ensure_all
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime import db
from gaggle_runtime.bus import NatsSink, make_broker
from gaggle_runtime.http import install_error_handlers
from gaggle_runtime.outbox import Outbox, OutboxRelay

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class Database:
    """The service's pool, available once the service has started."""

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool; raises before start."""
        if self._pool is None:
            raise RuntimeError("database not started")
        return self._pool

    @property
    def started(self) -> bool:
        """Whether the pool exists."""
        return self._pool is not None


class Service:
    """One Gaggle process: broker + (database, outbox relay) + background tasks + health."""

    def __init__(
        self,
        name: str,
        common: CommonSettings,
        *,
        schema: str | None = None,
        migrations_package: str | None = None,
    ) -> None:
        self.name = name
        self.common = common
        self.broker = make_broker(common.nats_url, name)
        self.schema = schema
        self.migrations_package = migrations_package
        self.db = Database()
        self.outbox = Outbox(schema) if schema else None
        self.relay: OutboxRelay | None = None
        self.on_start: list[Hook] = []
        """Run after the database, bus and background tasks are up, before subscribers start."""
        self.on_stop: list[Hook] = []
        self.ready_checks: dict[str, Callable[[], bool]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: list[Callable[[], Coroutine[Any, Any, Any]]] = []

    def background(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``factory()`` as a task from start until stop."""
        self._background.append(factory)

    async def _connect_nats(self, attempts: int = 30) -> None:
        for attempt in range(1, attempts + 1):
            try:
                await self.broker.connect()
                return
            except Exception:
                if attempt == attempts:
                    raise
                log.warning("NATS not reachable yet; retrying url=%s", self.common.nats_url)
                await asyncio.sleep(1.0)

    async def _connect_db(self, attempts: int = 30) -> asyncpg.Pool:
        for attempt in range(1, attempts + 1):
            try:
                return await db.create_pool(self.common.database_url)
            except (OSError, asyncpg.PostgresError):
                if attempt == attempts:
                    raise
                log.warning("database not reachable yet; retrying")
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def start(self) -> None:
        """Connect, set up stream/buckets and schema, run start hooks, start subscribers."""
        await self._connect_nats()
        await ensure_all(self.broker.connection.jetstream(), self.common)
        if self.schema:
            pool = await self._connect_db()
            self.db._pool = pool
            migrations = db.load_migrations("gaggle_runtime.migrations", "runtime")
            if self.migrations_package:
                migrations += db.load_migrations(self.migrations_package)
            await db.migrate(pool, self.schema, migrations)
            if self.outbox:
                self.relay = OutboxRelay(
                    self.common.database_url, pool, self.outbox, NatsSink(self.broker)
                )
                self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
        for factory in self._background:
            self._tasks.append(asyncio.create_task(factory()))
        for hook in self.on_start:
            await hook()
        await self.broker.start()
        log.info("service started service=%s", self.name)

    async def stop(self) -> None:
        """Stop subscribers first (in-flight messages finish), then tasks, then connections."""
        with contextlib.suppress(Exception):
            await self.broker.stop()
        for hook in self.on_stop:
            try:
                await hook()
            except Exception:
                log.warning("stop hook failed", exc_info=True)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.db.started:
            await self.db.pool.close()
            self.db._pool = None
        log.info("service stopped service=%s", self.name)

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """FastAPI lifespan: start on enter, stop on exit."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    def nats_ready(self) -> bool:
        """Whether the broker's connection is up."""
        try:
            return bool(self.broker.connection.is_connected)
        except Exception:
            return False

    async def readiness(self) -> dict[str, bool]:
        """Each dependency and whether it answers."""
        checks = {"nats": self.nats_ready()}
        if self.schema:
            checks["database"] = self.db.started and await db.ping(self.db.pool)
        for name, check in self.ready_checks.items():
            checks[name] = check()
        return checks

    def app(self, *, title: str, description: str, version: str = "0.1.0") -> FastAPI:
        """A FastAPI app with this service's lifespan, JSON errors and ``/healthz``, ``/readyz``."""
        app = FastAPI(title=title, description=description, version=version, lifespan=self.lifespan)
        install_error_handlers(app)

        @app.get("/healthz", tags=["health"], summary="The process is alive")
        async def healthz() -> dict[str, str]:
            return {"status": "ok", "service": self.name}

        @app.get("/readyz", tags=["health"], summary="NATS and the database answer")
        async def readyz() -> JSONResponse:
            checks = await self.readiness()
            ok = all(checks.values())
            return JSONResponse(
                {"status": "ready" if ok else "not ready", "service": self.name, "checks": checks},
                status_code=200 if ok else 503,
            )

        return app
