"""A gateway of several worker processes on one port: one scrape counts the polls of all.

``python -m gaggle_gateway`` with ``GAGGLE_GATEWAY_WORKERS=2`` runs two uvicorn workers on a
shared socket; the kernel hands each connection to one of them. Their counters meet in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode), so whichever worker answers
``/metrics`` reports the sum.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gaggle_servers import free_port
from gaggle_testing import eventually

pytestmark = pytest.mark.integration

ROUND = 200
"""Polls per round, 16 at a time, each on a new connection."""


def polls_in(text: str) -> float:
    """``gaggle_ddi_polls_total`` over every outcome, in a Prometheus text exposition."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "gaggle_ddi_polls"
        for sample in family.samples
        if sample.name == "gaggle_ddi_polls_total"
    )


def polls_by_process(folder: Path) -> dict[str, float]:
    """Polls counted in each process's shared counter file (``counter_<pid>.db``)."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(path)], accumulate=True)
        counts[path.stem] = sum(
            s.value for m in merged if m.name == "gaggle_ddi_polls" for s in m.samples
        )
    return counts


@pytest.fixture
def two_workers(nats_url: str, tenant: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The gateway with two workers on a free port; its URL and shared metrics folder."""
    port = free_port()
    folder = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAGGLE_")}
    env.update(
        GAGGLE_NATS_URL=nats_url,
        GAGGLE_LOG_JSON="false",
        GAGGLE_GATEWAY_HOST="127.0.0.1",
        GAGGLE_GATEWAY_PORT=str(port),
        GAGGLE_GATEWAY_WORKERS="2",
        GAGGLE_GATEWAY_TENANTS=tenant,
        GAGGLE_STORAGE_DIR=str(tmp_path / "objects"),
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    )
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gaggle_gateway"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", folder
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


async def test_one_scrape_of_a_two_worker_gateway_counts_the_polls_of_both(
    two_workers: tuple[str, Path], tenant: str, tmp_path: Path
) -> None:
    url, folder = two_workers
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, limits=fresh) as client:

        async def ready() -> bool:
            # Several answers in a row: each worker loads its own mirror.
            for _ in range(6):
                try:
                    if (await client.get(f"{url}/readyz")).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
            return True

        log = tmp_path / "gateway.log"
        await eventually(ready, timeout=60, explain=lambda: log.read_text(errors="replace"))
        sent = 0
        gate = asyncio.Semaphore(16)

        async def poll(i: int) -> None:
            async with gate:
                r = await client.get(f"{url}/{tenant}/controller/v1/dev-{i % 40}")
                assert r.status_code == 200, r.text

        # Until both workers have answered polls (the kernel picks the worker per connection).
        deadline = time.monotonic() + 60
        while True:
            await asyncio.gather(*(poll(sent + i) for i in range(ROUND)))
            sent += ROUND
            by_process = polls_by_process(folder)
            if len([n for n in by_process.values() if n > 0]) >= 2:
                break
            assert time.monotonic() < deadline, f"one worker took every poll: {by_process}"
            await asyncio.sleep(1.2)  # past a fold of the counts into the shared files

        async def scraped() -> float:
            r = await client.get(f"{url}/metrics")
            assert r.status_code == 200, r.text
            return polls_in(r.text)

        async def counted_all() -> bool:
            return await scraped() == sent

        await eventually(counted_all, timeout=10, explain=lambda: f"sent {sent}")
        # Any worker may answer a scrape: each of several sees every poll, and no worker had
        # them all.
        scrapes = [await scraped() for _ in range(10)]
        assert scrapes == [sent] * 10
        by_process = polls_by_process(folder)
        assert sum(by_process.values()) == sent
        assert all(n < sent for n in by_process.values()), by_process
