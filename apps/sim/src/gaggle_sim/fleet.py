"""Many devices from one process: a ready queue, ``connections`` workers, timers for the rest.

A device waiting for its next poll is a timer handle (``loop.call_later``) and nothing else; when
it fires the device joins the ready queue, and one of ``connections`` worker tasks runs its next
step. So the number of requests in flight is bounded by ``connections`` without a semaphore
queue, and a fleet of tens of thousands of sleeping devices costs only memory. A device whose
step asks to go on at once (its poll right after its final report) goes on with the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from gaggle_sim.config import FleetConfig
from gaggle_sim.device import Behaviour, Device, DeviceContext
from gaggle_sim.http import HttpClient
from gaggle_sim.stats import FleetStats

__all__ = ["Fleet", "assign_behaviours", "progress_line", "run_fleet"]

MAX_STEPS_IN_A_ROW = 8
"""Most steps one worker runs for one device without queueing it again."""


def _chosen(
    seed: int, kind: str, count: int, share: float, besides: set[int] | None = None
) -> set[int]:
    """Exactly ``round(share * count)`` indexes (none of ``besides``), the same for the seed."""
    picks = round(share * count)
    if picks <= 0:
        return set()
    pool = [i for i in range(count) if not besides or i not in besides]
    return set(random.Random(f"{seed}/{kind}").sample(pool, min(picks, len(pool))))


def assign_behaviours(config: FleetConfig) -> list[Behaviour]:
    """Each device's behaviour, by position; the shares are exact and depend only on the seed.

    Each kind of misbehaviour is drawn independently, so a device may, say, both cut its
    download and fail its installation.
    """
    n = config.count
    fails = _chosen(config.seed, "fail", n, config.fail_share)
    slow = _chosen(config.seed, "slow", n, config.slow_share)
    offline = _chosen(config.seed, "offline", n, config.offline_share)
    cut = _chosen(config.seed, "cut", n, config.cut_share)
    silent = _chosen(config.seed, "silent", n, config.silent_share)
    # A device that falls back is never one that goes silent (it must come back to say so).
    falls_back = _chosen(config.seed, "fallback", n, config.fallback_share, silent)
    moments = random.Random(f"{config.seed}/offline-at")
    normal = Behaviour()
    result = []
    for i in range(n):
        if i in fails or i in slow or i in offline or i in cut or i in silent or i in falls_back:
            result.append(
                Behaviour(
                    fails=i in fails,
                    slow=i in slow,
                    offline=i in offline,
                    cut=i in cut,
                    silent=i in silent,
                    falls_back=i in falls_back,
                    offline_at=moments.random() * config.offline_within if i in offline else 0.0,
                )
            )
        else:
            result.append(normal)
    return result


class Fleet:
    """A running fleet of virtual devices.

    Args:
        config: what the fleet looks like.

    Attributes:
        config: as given.
        stats: live counters (see :class:`FleetStats`).
        devices: every device, in id order.
    """

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.stats = FleetStats()
        self.stats.devices = config.count
        behaviours = assign_behaviours(config)
        self.devices: list[Device] = [
            Device(cid, config, behaviour)
            for cid, behaviour in zip(config.controller_ids(), behaviours, strict=True)
        ]
        self._rng = random.Random(config.seed)
        self._ready: deque[Device] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._workers: list[asyncio.Task[None]] = []
        self._client: HttpClient | None = None
        self._ctx: DeviceContext | None = None
        self._running = False
        self._all_done: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether the fleet has been started and not stopped."""
        return self._running

    @property
    def finished(self) -> bool:
        """Whether every device is done (only happens with ``poll="once"``)."""
        return self.stats.devices_done >= len(self.devices)

    @property
    def client(self) -> HttpClient:
        """The fleet's HTTP client (only while running).

        Raises:
            RuntimeError: the fleet is not running.
        """
        if self._client is None:
            raise RuntimeError("the fleet is not running")
        return self._client

    async def start(self) -> None:
        """Start every device: all at once, or spread over ``config.ramp_up`` seconds.

        Raises:
            RuntimeError: already started.
        """
        if self._running:
            raise RuntimeError("the fleet is already running")
        loop = asyncio.get_running_loop()
        self._client = HttpClient(connections=self.config.connections, timeout=self.config.timeout)
        self._ctx = DeviceContext(
            self.config, self._client, self.stats, self._rng.random, loop.time()
        )
        self._all_done = asyncio.Event()
        self._running = True
        self.stats.started()
        pending = [d for d in self.devices if d.state != "done"]
        if not pending:
            self._all_done.set()
        ramp = self.config.ramp_up
        if ramp > 0:
            spread = random.Random(f"{self.config.seed}/ramp-up")
            for device in pending:
                device.timer = loop.call_later(spread.random() * ramp, self._push, device)
        else:
            self._ready.extend(pending)
        workers = min(self.config.connections, max(1, len(self.devices)))
        self._workers = [loop.create_task(self._worker(self._ctx)) for _ in range(workers)]

    async def stop(self) -> None:
        """Stop every device (requests in flight are abandoned) and close the connections."""
        if not self._running:
            return
        self._running = False
        for device in self.devices:
            if device.timer is not None:
                device.timer.cancel()
                device.timer = None
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._ready.clear()
        self._idle.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.stats.stopped()

    async def wait(self, predicate: Callable[[FleetStats], bool], timeout: float) -> bool:
        """Wait until ``predicate(stats)`` holds; False if it did not within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.stats):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(0.02, remaining))

    async def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait until every device is done (``poll="once"``); False on timeout."""
        if self._all_done is None:
            return self.finished
        try:
            async with asyncio.timeout(timeout):
                await self._all_done.wait()
        except TimeoutError:
            return False
        return True

    def device(self, controller_id: str) -> Device:
        """The device with this controller id.

        Raises:
            KeyError: no such device in this fleet.
        """
        prefix = self.config.id_prefix
        if controller_id.startswith(prefix) and controller_id[len(prefix) :].isdigit():
            index = int(controller_id[len(prefix) :]) - self.config.first_index
            if 0 <= index < len(self.devices):
                device = self.devices[index]
                if device.controller_id == controller_id:
                    return device
        raise KeyError(controller_id)

    # -- scheduling -------------------------------------------------------------------------

    async def _worker(self, ctx: DeviceContext) -> None:
        ready = self._ready
        idle = self._idle
        loop = asyncio.get_running_loop()
        stats = self.stats
        while self._running:
            if not ready:
                waiter: asyncio.Future[None] = loop.create_future()
                idle.append(waiter)
                await waiter
                continue
            device = ready.popleft()
            delay: float | None = 0.0
            # Polling "fast" means every step is due at once: those devices take turns.
            steps = MAX_STEPS_IN_A_ROW - 1 if ctx.mode == "fast" else 0
            # A device that goes on at once (its poll right after its final report, as SWUpdate
            # does it) keeps its worker, as a real device keeps its connection: queued behind
            # the whole fleet again, its version report would wait for every other device.
            while delay is not None and delay <= 0 and steps < MAX_STEPS_IN_A_ROW:
                steps += 1
                try:
                    delay = await device.step(ctx)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug or an unexpected answer: keep the fleet going
                    stats.error(f"{device.controller_id}: {type(exc).__name__}: {exc}")
                    delay = ctx.retry_after(device.last_sleep)
                if not self._running:
                    break
            self._schedule(device, delay)

    def _schedule(self, device: Device, delay: float | None) -> None:
        device.timer = None
        if delay is None:
            device.state = "done"
            self.stats.devices_done += 1
            if self.stats.devices_done >= len(self.devices) and self._all_done is not None:
                self._all_done.set()
            return
        if not self._running:
            return
        if delay <= 0:
            self._push(device)
        else:
            device.timer = asyncio.get_running_loop().call_later(delay, self._push, device)

    def _push(self, device: Device) -> None:
        device.timer = None
        if not self._running:
            return
        self._ready.append(device)
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


def progress_line(stats: FleetStats, rate: float) -> str:
    """One line of live progress: polls and their rate, downloads, outcomes, 429s, errors."""
    mb = stats.download_bytes / 1e6
    return (
        f"{stats.elapsed():7.1f}s  polls {stats.polls} ({rate:,.0f}/s)  "
        f"config {stats.config_sent}  deploy {stats.deployments_seen}  "
        f"dl {stats.downloads} ({mb:,.1f} MB, {stats.resumed} resumed)  "
        f"ok {stats.successes}  failed {stats.failures}  canceled {stats.cancels}  "
        f"re-offered {stats.reoffered}  429 {sum(stats.throttled.values())}  "
        f"errors {stats.poll_errors}+{stats.errors}"
    )


async def _report(stats: FleetStats, stream: TextIO, tty: bool) -> None:
    """Refresh the progress line twice a second (every 5 s, one line each, without a tty)."""
    interval = 0.5 if tty else 5.0
    last_polls, last_time = stats.polls, time.monotonic()
    while True:
        await asyncio.sleep(interval)
        now = time.monotonic()
        rate = (stats.polls - last_polls) / max(now - last_time, 1e-9)
        last_polls, last_time = stats.polls, now
        line = progress_line(stats, rate)
        stream.write(f"\r\x1b[K{line}" if tty else f"{line}\n")
        stream.flush()


async def run_fleet(
    config: FleetConfig,
    *,
    duration: float | None = None,
    until: Callable[[FleetStats], bool] | None = None,
    progress: bool = False,
) -> FleetStats:
    """Run a fleet until a stop condition, then stop it and return its counters.

    The run ends when ``duration`` seconds passed, ``until(stats)`` holds, or (with
    ``poll="once"``) every device is done, whichever comes first.

    Args:
        config: the fleet.
        duration: the longest run, seconds; None for no limit.
        until: stop as soon as this holds (checked every 20 ms).
        progress: show a progress line on stderr while running.

    Returns:
        The final counters.
    """
    fleet = Fleet(config)
    reporter: asyncio.Task[None] | None = None
    tty = sys.stderr.isatty()
    await fleet.start()
    try:
        if progress:
            reporter = asyncio.create_task(_report(fleet.stats, sys.stderr, tty))
        deadline = None if duration is None else time.monotonic() + duration
        while not fleet.finished:
            if until is not None and until(fleet.stats):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        await fleet.stop()
        if progress:
            stats = fleet.stats
            line = progress_line(stats, stats.poll_rate())
            sys.stderr.write(f"\r\x1b[K{line}\n" if tty else f"{line}\n")
            sys.stderr.flush()
    return fleet.stats
