"""A followed KV bucket across a NATS restart: marked not current while away, reloaded at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import pytest
from pydantic import BaseModel

from gaggle_runtime.mirror import BucketMirror
from gaggle_testing import eventually

pytestmark = pytest.mark.integration

BUCKET = "mirror_test"


class Value(BaseModel):
    n: int


async def test_a_mirror_is_not_current_while_nats_is_away_and_reloads_once_it_is_back(
    restartable_nats: Any,
) -> None:
    nc = await nats.connect(
        restartable_nats.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    js = nc.jetstream()
    kv = await js.create_key_value(bucket=BUCKET)
    await kv.put("kept", b'{"n": 1}')
    await kv.put("dropped", b'{"n": 2}')
    mirror = BucketMirror(BUCKET, Value)
    follow = asyncio.create_task(mirror.watch(lambda: js, check_every_s=0.05))
    try:
        await eventually(lambda: mirror.current, timeout=5)
        assert set(mirror.values) == {"kept", "dropped"}

        restartable_nats.kill()
        await eventually(lambda: not mirror.current, timeout=2, interval=0.02)
        assert mirror.values["kept"].n == 1  # the last known state is still served

        restartable_nats.start()
        await eventually(lambda: nc.is_connected, timeout=10, interval=0.02)
        kv = await js.key_value(BUCKET)
        written = time.monotonic()
        await kv.put("new", b'{"n": 3}')
        await kv.delete("dropped")
        await eventually(
            lambda: mirror.current and "new" in mirror.values and "dropped" not in mirror.values,
            timeout=5,
            interval=0.02,
        )
        assert time.monotonic() - written < 2.0
        assert {k: v.n for k, v in mirror.values.items()} == {"kept": 1, "new": 3}
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        await nc.close()
