"""Two rollouts replicas: one health sweep at a time, whichever replica runs it."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, cast

import pytest

from gaggle_rollouts.engine import Engine
from gaggle_rollouts.health_store import Health, Swept
from gaggle_runtime import db
from gaggle_runtime.service import Database

pytestmark = pytest.mark.integration


class SlowSweeps:
    """Stands for :class:`Health`: each sweep takes a while and notes who else is sweeping."""

    def __init__(self, database: Database, log: list[str], name: str) -> None:
        self.db = database
        self.log = log
        self.name = name

    async def sweep(self, now: datetime) -> Swept:
        self.log.append(f"+{self.name}")
        await asyncio.sleep(0.15)
        self.log.append(f"-{self.name}")
        return Swept()


async def test_two_engines_never_sweep_at_the_same_time(database_url: str) -> None:
    log: list[str] = []
    engines, databases = [], []
    for name in ("a", "b"):
        database = Database()
        database._pool = await db.create_pool(database_url, max_size=2)
        databases.append(database)
        health = cast(Health, SlowSweeps(database, log, name))
        engines.append(Engine(cast(Any, None), cast(Any, None), health=health, health_s=0.02))
    tasks = [asyncio.create_task(engine.checks()) for engine in engines]
    try:
        await asyncio.sleep(2.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for database in databases:
            await database.pool.close()
    # Every sweep ended before the next began, and both replicas took turns.
    starts = [entry for entry in log if entry.startswith("+")]
    assert len(starts) >= 4, log
    for begin, end in zip(log[0::2], log[1::2], strict=False):
        assert begin.startswith("+") and end == "-" + begin[1:], log
    assert {entry[1:] for entry in starts} == {"a", "b"}, log
