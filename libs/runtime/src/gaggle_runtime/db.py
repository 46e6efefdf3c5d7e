"""PostgreSQL: pools, database creation, and numbered plain-SQL migrations under an advisory lock.

Each service owns one schema. Its migrations are files ``NNNN_name.sql`` in its ``migrations``
package, applied in order, each in its own transaction, and recorded in
``<schema>.schema_migrations``. A session-level advisory lock per schema makes replicas that start
together apply them once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, whether taken from a pool or opened alone."""

log = logging.getLogger(__name__)

_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    component: str
    version: int
    name: str
    sql: str


def load_migrations(package: str, component: str = "service") -> list[Migration]:
    """Read ``NNNN_*.sql`` files of ``package``, sorted by number.

    Raises:
        ValueError: two files share a number.
    """
    found: dict[int, Migration] = {}
    for entry in resources.files(package).iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version} in {package}")
        found[version] = Migration(component, version, entry.name, entry.read_text("utf-8"))
    return [found[v] for v in sorted(found)]


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a plain lower-case SQL identifier, for schema names in SQL text."""
    if not _IDENT_RE.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (one round trip per release).

    Pooled connections keep no session state: advisory locks are transaction-scoped (the
    migration lock is released explicitly), settings are ``SET LOCAL``, nothing LISTENs (the
    outbox relay has its own connection), no cursor outlives its transaction. asyncpg still
    rolls back a transaction left open before this runs.
    """


IDLE_CONNECTION_S = 60.0
"""A pooled connection unused this long is closed (asyncpg's default is 300 s).

Each PostgreSQL backend a burst opened holds 3 to 5 MiB of its own (catalog caches, plans);
with up to ten per pool and three pools, they held about 130 MiB for five minutes after a
rollout. A minute still keeps every connection of a steady load."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb to Python values."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_inactive_connection_lifetime=IDLE_CONNECTION_S,
        init=_init_connection,
        reset=_keep_session,
    )
    if pool is None:  # pragma: no cover - asyncpg returns None only when not awaited
        raise RuntimeError("asyncpg returned no pool")
    return pool


def with_database(dsn: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def database_name(dsn: str) -> str:
    """The database a URL points at."""
    return urlsplit(dsn).path.lstrip("/") or "postgres"


async def ensure_database(dsn: str) -> bool:
    """Create the database ``dsn`` names if it does not exist; True if it was created."""
    name = check_identifier(database_name(dsn))
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await admin.close()


async def migrate(pool: asyncpg.Pool, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply the migrations that ``schema`` has not seen yet; return the names applied.

    Holds ``pg_advisory_lock`` on the schema name for the duration, so replicas starting at
    once wait for each other and each file runs exactly once.
    """
    check_identifier(schema)
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"gaggle-migrate:{schema}")
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    component text NOT NULL,
                    version integer NOT NULL,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (component, version))"""
            )
            rows = await conn.fetch(
                f"SELECT component, version FROM {schema}.schema_migrations"  # noqa: S608
            )
            done = {(r["component"], r["version"]) for r in rows}
            for m in migrations:
                if (m.component, m.version) in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                    await conn.execute(m.sql)
                    await conn.execute(
                        f"INSERT INTO {schema}.schema_migrations (component, version, name)"  # noqa: S608
                        " VALUES ($1, $2, $3)",
                        m.component,
                        m.version,
                        m.name,
                    )
                log.info("migration applied schema=%s migration=%s", schema, m.name)
                applied.append(m.name)
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtext($1))", f"gaggle-migrate:{schema}"
            )
    return applied


@contextlib.asynccontextmanager
async def leading(pool: asyncpg.Pool, name: str) -> AsyncIterator[bool]:
    """Whether this process does ``name``'s work now: one process at a time, across replicas.

    Yields True holding a session advisory lock on ``name`` on one pooled connection for the
    block, or False at once when another process (or task) holds it. For periodic work that
    two replicas must not do side by side: the one that got False skips its turn. The lock is
    released at the end of the block; when that fails, the connection is closed instead, so no
    pooled connection keeps it (the pool does not reset sessions).
    """
    async with pool.acquire() as conn:
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", name))
        try:
            yield held
        finally:
            if held:
                try:
                    await conn.fetchval("SELECT pg_advisory_unlock(hashtext($1))", name)
                except BaseException:
                    conn.terminate()
                    raise


async def ping(pool: asyncpg.Pool) -> bool:
    """True if the database answers a trivial query."""
    try:
        async with pool.acquire(timeout=2) as conn:
            value: Any = await conn.fetchval("SELECT 1")
            return bool(value == 1)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
