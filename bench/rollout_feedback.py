"""Parts of the rollouts benchmark's feedback phase: the service process, the floor, a baseline.

* :class:`RolloutsProcess` starts and stops ``python -m gaggle_rollouts``, from this checkout or
  from another one (``code_dir``: its sources go first on ``PYTHONPATH``), so a backlog can be
  published while the service is down and the time to absorb it measured once it is up.
* :func:`floor_drain` drains the same backlog with a bare nats-py pull consumer that only acks:
  what any consumer of those events needs at least.
* :func:`first_delivery` notes when the service's consumer is first given an event.
* :func:`baseline_checkout` checks a git ref out in a temporary worktree, for a baseline run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchlib import BENCH_DIR, Children, CpuMeter, child_env, postmaster_pid, say, wait_ready
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from gaggle_contracts import names
from gaggle_contracts.events import ActionFeedback

HOST = "127.0.0.1"
FLOOR_DURABLE = "bench_floor_feedback"
FLOOR_PULL = 512


class RolloutsProcess:
    """The rollouts service under test, started the documented way; restartable."""

    def __init__(
        self,
        children: Children,
        tmp: Path,
        env: dict[str, str],
        port: int,
        nats_pid: int,
        code_dir: Path | None = None,
    ) -> None:
        self.children = children
        self.tmp = tmp
        self.env = {**env, "GAGGLE_ROLLOUTS_HOST": HOST, "GAGGLE_ROLLOUTS_PORT": str(port)}
        if code_dir is not None:
            sources = [code_dir / "services" / "rollouts" / "src"]
            sources += sorted((code_dir / "libs").glob("*/src"))
            self.env["PYTHONPATH"] = os.pathsep.join(str(p) for p in sources)
        self.port = port
        self.nats_pid = nats_pid
        self.log = tmp / "rollouts.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.meter: CpuMeter | None = None

    @property
    def base(self) -> str:
        """Its HTTP base URL."""
        return f"http://{HOST}:{self.port}"

    def spawn(self) -> CpuMeter:
        """Start it; the meter of its CPU (with PostgreSQL's and NATS's)."""
        self.proc = self.children.spawn(
            [sys.executable, "-m", "gaggle_rollouts"], child_env(**self.env), self.log
        )
        self.meter = CpuMeter(
            "rollouts", self.proc.pid, postmaster_pid(self.tmp / "pg"), self.nats_pid
        )
        return self.meter

    async def ready(self, timeout: float) -> None:
        """Wait for ``/readyz``."""
        assert self.proc is not None  # noqa: S101 - spawned first
        await wait_ready("rollouts", self.proc, self.log, f"{self.base}/readyz", timeout)

    async def start(self, timeout: float) -> CpuMeter:
        """Spawn it and wait for ``/readyz``; its meter."""
        meter = self.spawn()
        await self.ready(timeout)
        return meter

    async def stop(self) -> None:
        """SIGTERM, wait until it exited (its in-flight work done)."""
        if self.proc is not None:
            await asyncio.to_thread(self.children.stop, self.proc, 30.0)
            self.proc = None

    def alive(self) -> bool:
        """Whether it runs."""
        return self.proc is not None and self.proc.poll() is None


async def add_floor_consumer(nc: NatsClient) -> None:
    """A durable on the feedback subject that gets what is published from now on."""
    await nc.jetstream().add_consumer(
        names.STREAM,
        ConsumerConfig(
            durable_name=FLOOR_DURABLE,
            filter_subject=names.subscription(ActionFeedback.kind),
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=-1,
        ),
    )


async def floor_drain(nc: NatsClient, expected: int, timeout: float) -> float:
    """Seconds a bare pull consumer takes to fetch and ack ``expected`` events; then removed."""
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(FLOOR_DURABLE, names.STREAM)
    acked = 0
    t0 = time.perf_counter()
    deadline = t0 + timeout
    try:
        while acked < expected:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"floor consumer acked {acked} of {expected} events")
            with contextlib.suppress(TimeoutError):
                for msg in await sub.fetch(FLOOR_PULL, timeout=1.0):
                    await msg.ack()
                    acked += 1
        await nc.flush()
        return time.perf_counter() - t0
    finally:
        await sub.unsubscribe()
        await js.delete_consumer(names.STREAM, FLOOR_DURABLE)


async def first_delivery(
    nc: NatsClient, kind: str, meter: CpuMeter
) -> tuple[float, dict[str, float]]:
    """When rollouts' consumer of ``kind`` was first given an event: (perf_counter, CPU snapshot).

    Polled every 10 ms from the consumer's info (its delivered sequence).
    """
    js = nc.jetstream()
    durable = names.durable("rollouts", kind)
    before = (await js.consumer_info(names.STREAM, durable)).delivered.consumer_seq
    while True:
        info = await js.consumer_info(names.STREAM, durable)
        if info.delivered.consumer_seq != before:
            return time.perf_counter(), meter.snapshot()
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def baseline_checkout(ref: str, tmp: Path) -> Iterator[tuple[Path, str]]:
    """``ref`` checked out in a temporary git worktree: (its directory, its short commit)."""
    root = BENCH_DIR.parent
    target = tmp / "baseline"

    def git(*cmd: str) -> str:
        done = subprocess.run(  # noqa: S603
            ["git", *cmd],  # noqa: S607
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    commit = git("rev-parse", "--short", f"{ref}^{{commit}}")
    git("worktree", "add", "--detach", str(target), commit)
    say(f"baseline {ref} ({commit}) checked out in {target}")
    try:
        yield target, commit
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            git("worktree", "remove", "--force", str(target))
