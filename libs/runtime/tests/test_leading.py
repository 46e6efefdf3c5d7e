"""``db.leading``: one process at a time does a periodic job, across replicas."""

from __future__ import annotations

import asyncio

import pytest

from gaggle_runtime import db

pytestmark = pytest.mark.integration


async def test_one_holder_at_a_time_and_the_lock_leaves_with_the_block(database_url: str) -> None:
    first = await db.create_pool(database_url, max_size=2)
    second = await db.create_pool(database_url, max_size=2)
    try:
        async with db.leading(first, "job") as leads:
            assert leads
            async with db.leading(second, "job") as other:
                assert not other
            async with db.leading(second, "another job") as other:
                assert other
        async with db.leading(second, "job") as leads:
            assert leads
        # Every pooled connection is free of the lock afterwards, also of the pool that held it.
        for pool in (first, second):
            async with pool.acquire() as conn:
                held = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                )
                assert held == 0
    finally:
        await first.close()
        await second.close()


async def test_a_cancelled_holder_lets_the_next_one_lead(database_url: str) -> None:
    pool = await db.create_pool(database_url, max_size=3)
    other = await db.create_pool(database_url, max_size=1)
    inside = asyncio.Event()

    async def long_job() -> None:
        async with db.leading(pool, "sweep") as leads:
            assert leads
            inside.set()
            await asyncio.sleep(60)

    try:
        task = asyncio.create_task(long_job())
        await inside.wait()
        async with db.leading(other, "sweep") as leads:
            assert not leads
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with db.leading(other, "sweep") as leads:
            assert leads
    finally:
        await pool.close()
        await other.close()
