"""What the cross-service tests share: the four services wired together, and their helpers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gaggle_contracts.events import Compatibility, SoftwareCreated
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_storage import LocalStore
from gaggle_testing import eventually


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 65536):
        yield data[i : i + 65536]


class Stack:
    def __init__(self, gateway: Any, rollouts: Any, tenant: str, store: LocalStore) -> None:
        self.gw = gateway.url
        self.ro = rollouts.url
        self.gateway = gateway
        self.rollouts = rollouts
        self.tenant = tenant
        self.store = store

    def dev(self, cid: str) -> str:
        return f"{self.gw}/{self.tenant.upper()}/controller/v1/{cid}"

    async def software(self, common: CommonSettings, payload: bytes, sid: str = "40") -> str:
        key = f"{hashlib.sha256(payload).hexdigest()}/image.swu"
        await self.store.write(key, _chunks(payload))
        broker = make_broker(common.nats_url, "test")
        await broker.connect()
        try:
            await publish_event(
                broker,
                SoftwareCreated(
                    tenant=self.tenant,
                    software_id=sid,
                    name="board-image",
                    version="1.2.3",
                    filename="image-1.2.3.swu",
                    size=len(payload),
                    md5=hashlib.md5(payload).hexdigest(),  # noqa: S324 - hawkBit's hash
                    sha1=hashlib.sha1(payload).hexdigest(),  # noqa: S324 - hawkBit's hash
                    sha256=hashlib.sha256(payload).hexdigest(),
                    compatibility=[Compatibility(hw_model="board", hw_revision="*")],
                    object_key=key,
                ),
            )
        finally:
            await broker.stop()
        return sid

    async def assign(self, client: httpx.AsyncClient, cid: str, sid: str, **extra: Any) -> dict:
        deadline = time.monotonic() + 10
        while True:
            r = await client.post(
                f"{self.ro}/api/v1/devices/{cid}/actions",
                params={"tenant": self.tenant},
                json={"software_id": sid, **extra},
            )
            if r.status_code != 404 or time.monotonic() > deadline:
                assert r.status_code == 201, r.text
                return r.json()
            await asyncio.sleep(0.05)

    async def action(self, client: httpx.AsyncClient, action_id: str) -> dict:
        r = await client.get(
            f"{self.ro}/api/v1/actions/{action_id}", params={"tenant": self.tenant}
        )
        assert r.status_code == 200, r.text
        return r.json()

    async def wait_action(
        self, client: httpx.AsyncClient, action_id: str, status: str, timeout: float = 10
    ) -> dict:
        async def reached() -> dict:
            action = await self.action(client, action_id)
            assert action["status"] == status, action
            return action

        found: dict = await eventually(reached, timeout=timeout)
        return found

    async def wait_poll(
        self, client: httpx.AsyncClient, cid: str, predicate: Any, timeout: float = 10
    ) -> dict:
        async def offered() -> dict:
            body = (await client.get(self.dev(cid))).json()
            assert predicate(body["_links"]), body
            return body

        found: dict = await eventually(offered, timeout=timeout)
        return found


async def device(
    client: httpx.AsyncClient, s: Stack, cid: str, board: str, rev: str, version: str
) -> None:
    await client.get(s.dev(cid))
    r = await client.put(
        f"{s.dev(cid)}/configData",
        json={"data": {"hw_boardname": board, "hw_revision": rev, "sw_version": version}},
    )
    assert r.status_code == 200


async def policy(client: httpx.AsyncClient, s: Stack, cid: str, body: dict[str, Any]) -> dict:
    deadline = time.monotonic() + 10
    while True:
        r = await client.put(
            f"{s.ro}/api/v1/devices/{cid}/policy", params={"tenant": s.tenant}, json=body
        )
        if r.status_code != 404 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return r.json()
        await asyncio.sleep(0.05)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` of a Prometheus text, None when absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` of a Prometheus text, 0 when absent (a counter not yet moved)."""
    found = sample(text, name, **labels)
    return 0.0 if found is None else found


async def wait_listed(
    client: httpx.AsyncClient, registry_url: str, tenant: str, expected: set[str], timeout: float
) -> set[str]:
    """Poll the registry's list until it holds ``expected``; return what it finally listed."""
    deadline = time.monotonic() + timeout
    listed: set[str] = set()
    while True:
        listed = set()
        cursor = None
        while True:
            params = {"tenant": tenant, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = await client.get(f"{registry_url}/api/v1/devices", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            listed |= {d["controller_id"] for d in page["items"]}
            if page["next"] is None:
                break
            cursor = page["next"]
        if expected <= listed or time.monotonic() > deadline:
            return listed
        await asyncio.sleep(0.05)


def cli_env(**settings: str) -> dict[str, str]:
    """The environment of a ``gaggle`` command a test runs: this process's, without any
    ``GAGGLE_*`` setting of the caller's, plus ``settings`` (``GAGGLE_REGISTRY_URL=...``)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GAGGLE_")}, **settings}


@dataclass(frozen=True)
class Run:
    """How a ``gaggle`` command ended: exit status, standard output and error."""

    rc: int
    out: str
    err: str


async def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None, code: int | None = 0
) -> Run:
    """``gaggle *args`` as a subprocess, without blocking the services in this loop.

    Its exit status must be ``code`` (None: any).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gaggle_cli",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    run = Run(proc.returncode or 0, out.decode(), err.decode())
    assert code is None or run.rc == code, (args, run)
    return run
