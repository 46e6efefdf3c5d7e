from __future__ import annotations

import asyncio

import pytest

from gaggle_runtime.coalesce import Coalescer


async def test_concurrent_submissions_share_one_call_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    async def double(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        await asyncio.sleep(0)
        return [ValueError(f"odd {i}") if i % 2 else i * 2 for i in items]

    c: Coalescer[int, int] = Coalescer(double, max_batch=100)
    results = await asyncio.gather(*(c.submit(i) for i in range(6)), return_exceptions=True)
    assert calls == [[0, 1, 2, 3, 4, 5]]
    assert results[0::2] == [0, 4, 8]
    assert [str(e) for e in results[1::2]] == ["odd 1", "odd 3", "odd 5"]


async def test_batches_are_split_at_the_limit_and_later_submissions_start_a_new_call() -> None:
    calls: list[list[int]] = []

    async def echo(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        return list(items)

    c: Coalescer[int, int] = Coalescer(echo, max_batch=2)
    assert await asyncio.gather(*(c.submit(i) for i in range(5))) == [0, 1, 2, 3, 4]
    assert calls == [[0, 1], [2, 3], [4]]
    assert await c.submit(9) == 9
    assert calls[-1] == [9]


async def test_a_failing_call_fails_every_caller_of_its_batch() -> None:
    async def broken(items: list[int]) -> list[int | Exception]:
        raise RuntimeError("database away")

    c: Coalescer[int, int] = Coalescer(broken, max_batch=10)
    results = await asyncio.gather(*(c.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await c.submit(1)


async def test_one_bad_item_fails_alone_and_the_others_of_its_batch_succeed() -> None:
    calls: list[list[int]] = []

    async def store(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        await asyncio.sleep(0)
        if 13 in items:  # one value the database refuses fails the whole transaction
            raise ValueError("13 cannot be stored")
        return [i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(store, max_batch=100)
    results = await asyncio.gather(*(c.submit(i) for i in (1, 13, 2, 3)), return_exceptions=True)
    assert results[0::2] == [10, 20]
    assert results[3] == 30
    assert isinstance(results[1], ValueError)
    assert calls == [[1, 13, 2, 3], [1], [13], [2], [3]]


async def test_a_transient_failure_fails_the_whole_batch_without_trying_each_item() -> None:
    calls: list[list[int]] = []

    async def away(items: list[int]) -> list[int | Exception]:
        calls.append(items)
        raise ConnectionRefusedError(111, "database away")

    c: Coalescer[int, int] = Coalescer(away, max_batch=100)
    results = await asyncio.gather(*(c.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    assert calls == [[0, 1, 2]]


async def test_an_item_that_meets_a_transient_failure_alone_gets_that_failure() -> None:
    state = {"calls": 0}

    async def flaky(items: list[int]) -> list[int | Exception]:
        state["calls"] += 1
        if len(items) > 1:
            raise ValueError("batch refused")
        if items == [2]:
            raise ConnectionResetError("gone while alone")
        return list(items)

    c: Coalescer[int, int] = Coalescer(flaky, max_batch=100)
    results = await asyncio.gather(*(c.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], ConnectionResetError)
    assert results[2] == 3
