"""A rollout's live event stream (``GET /api/v1/rollouts/{id}/events``) against a real stack.

Registry, artifacts, rollouts and gateway run in the test's event loop against a real NATS and
PostgreSQL; devices poll and post their feedback over DDI as real clients would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.rollout_events import Streams
from gaggle_testing import feedback, publish_software
from tests.integration.support import Stack, device
from tests.integration.test_rollout_lifecycle import known_to_rollouts, rollout, wait_link

pytestmark = pytest.mark.integration


class Listener:
    """Reads one event stream in the background: its events and its comment lines."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.comments: list[str] = []
        self.ended = asyncio.Event()
        self.changed = asyncio.Event()

    async def read(self, response: httpx.Response) -> None:
        name = "message"
        async for line in response.aiter_lines():
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                self.events.append((name, orjson.loads(line.split(":", 1)[1])))
                self.changed.set()
        self.ended.set()

    async def until(self, check: Callable[[], bool], timeout: float = 15) -> None:
        async def wait() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


async def listen(
    client: httpx.AsyncClient, url: str, params: dict[str, str]
) -> tuple[Listener, asyncio.Task[None], Callable[[], Awaitable[None]]]:
    listener = Listener()
    opened: asyncio.Future[httpx.Response] = asyncio.get_running_loop().create_future()

    async def run() -> None:
        async with client.stream("GET", url, params=params, timeout=None) as r:
            opened.set_result(r)
            if r.is_success:
                await listener.read(r)
            else:
                await r.aread()

    task = asyncio.create_task(run())
    await asyncio.wait_for(asyncio.shield(opened), 10)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return listener, task, stop


async def test_the_stream_follows_a_rollout_live_until_it_finishes(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "ev2", "2.0.0", [("evboard", "*")])
    ids = [f"ev{i}" for i in range(4)]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in ids:
            await device(client, stack, cid, "evboard", "1", "1.0.0")
        body = {
            "software_id": "ev2",
            "filter": {"controller_ids": ids},
            "waves": [{"count": 2}, {"count": 2}],
            "success_threshold": 100,
        }
        await known_to_rollouts(client, stack, body)
        doc = await rollout(client, stack, {**body, "name": "live", "start": True})
        rid = doc["id"]
        url = f"{stack.ro}/api/v1/rollouts/{rid}/events"
        stack.rollouts.app.state.rollout_streams = Streams(limit=1)
        listener, task, stop = await listen(client, url, {"tenant": stack.tenant})
        try:
            await listener.until(lambda: bool(listener.events))
            # One stream at a time here: the next is refused while this one is open.
            r = await client.get(url, params={"tenant": stack.tenant})
            assert r.status_code == 503, r.text
            assert "too many rollout event streams" in r.json()["message"]
            name, first = listener.events[0]
            assert name == "rollout"
            assert first["id"] == rid and first["state"] == "running"
            assert [w["size"] for w in first["waves"]] == [2, 2]
            assert listener.comments and listener.comments[0].startswith(": connected")
            # Pause and resume are seen live.
            for command, state in (("pause", "paused"), ("resume", "running")):
                r = await client.post(
                    f"{stack.ro}/api/v1/rollouts/{rid}/{command}", params={"tenant": stack.tenant}
                )
                assert r.status_code == 200, r.text
                await listener.until(
                    lambda s=state: (
                        listener.events[-1][1]["state"] == s and listener.events[-1][0] == "rollout"
                    )
                )
            assert ("progressed", "paused") in [(n, e["state"]) for n, e in listener.events]
            members = (
                await client.get(
                    f"{stack.ro}/api/v1/rollouts/{rid}/devices", params={"tenant": stack.tenant}
                )
            ).json()["items"]
            for wave in (1, 2):
                for m in [m for m in members if m["wave"] == wave]:
                    href = await wait_link(client, stack, m["controller_id"], "deploymentBase")
                    action = href.split("/")[-1].split("?")[0]
                    r = await client.post(
                        f"{stack.dev(m['controller_id'])}/deploymentBase/{action}/feedback",
                        json=feedback("closed", "success"),
                    )
                    assert r.status_code == 200
                done = 2 * wave
                # Each wave's successes are seen live, while the stream is open.
                await listener.until(
                    lambda d=done: any(
                        n == "progressed" and e["success"] >= d for n, e in listener.events
                    )
                )
            await asyncio.wait_for(listener.ended.wait(), 20)
        finally:
            await stop()
        progressed = [e for n, e in listener.events if n == "progressed"]
        assert progressed and all(e["rollout_id"] == rid for e in progressed)
        successes = [e["success"] for e in progressed]
        assert successes == sorted(successes) and successes[-1] == 4
        assert progressed[-1]["state"] == "finished"
        name, last = listener.events[-1]
        assert name == "rollout" and last["state"] == "finished"
        assert [w["counters"]["success"] for w in last["waves"]] == [2, 2]
        assert task.done()

        # A finished rollout's stream sends its state once, then ends at once (and the ended
        # stream no longer counts against the limit).
        again, _, stop_again = await listen(client, url, {"tenant": stack.tenant})
        try:
            await asyncio.wait_for(again.ended.wait(), 10)
        finally:
            await stop_again()
        assert [(n, e["state"]) for n, e in again.events] == [("rollout", "finished")]

        r = await client.get(
            f"{stack.ro}/api/v1/rollouts/999999/events", params={"tenant": stack.tenant}
        )
        assert r.status_code == 404 and "not found" in r.json()["message"]


async def test_the_stream_needs_rollout_read(
    stack: Stack, tenant: str, issue_key: Callable[..., Awaitable[Any]]
) -> None:
    viewer = await issue_key(tenant, ["device:read"])
    async with httpx.AsyncClient(auth=viewer.auth, timeout=10) as client:
        r = await client.get(f"{stack.ro}/api/v1/rollouts/1/events")
        assert r.status_code == 403, r.text
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{stack.ro}/api/v1/rollouts/1/events")
        assert r.status_code == 401, r.text
