"""Fleet benchmark: Gaggle against gooseBit 0.2.12, the same three workloads in the same run.

    make bench
    .venv/bin/python bench/fleet_bench.py [--devices 10000 --rollout-devices 1000 --image-mib 4]
                                       [--servers gaggle,goosebit --phases 1,2,3]

Starts Gaggle's embedded stack (``gaggle-stack`` in a temporary ``GAGGLE_DATA_DIR``, free ports)
and runs the phases against it, stops it, then does the same with gooseBit 0.2.12 from PyPI in
its own virtual environment (``.gaggle/bench-venvs/goosebit-0.2.12``, created with uv on first use
and kept) with its default settings: SQLite in a temporary folder, one process
(``bench/goosebit_peer.py`` says what was read from its source). The devices are the fleet
simulator ``gaggle_sim``, running in this process, the same for both servers; polling is the
client's choice, not the server's ``sleep``:

2. First contact: ``--devices`` new devices poll once each (``poll="once"``: first poll,
   configData, ``--connections`` at a time). Registrations/s = devices that got their configData
   accepted / time the fleet took. Then the device list is read (Gaggle: registry
   ``GET /api/v1/devices?hw_model=...`` page by page; gooseBit: ``GET /api/v1/devices``, one
   answer) until it shows every device with its board and version: "all listed after" counts
   from the first poll to the answer that showed them all.
1. Steady polls: the same devices, registered and with nothing to do, poll as fast as
   ``--connections`` connections allow (``poll="fast"``), ``--warmup`` seconds not counted, then
   ``--poll-seconds``: polls/s, p50, p99 as the simulator measured them.
3. Rollout: a real ``.swu`` (``gaggle_swu.build``, ``--image-mib`` MiB of random payload, version
   2.0.0, ``hardware-compatibility`` for board ``sim-rollout`` revision 1.0; the same file for
   both) is uploaded; ``--rollout-devices`` new devices of that board poll every
   ``--rollout-poll`` seconds (jitter 10 %); once both servers know them all, one rollout for
   feed ``default`` (Gaggle: one wave of 100 %, started at once). Time from the rollout request
   until every device reported success (after downloading the whole image and checking it,
   ``--verify``), server CPU seconds (all processes of the server: for Gaggle the stack with its
   four services and NATS, plus PostgreSQL; for gooseBit its process) and peak memory (summed RSS
   of those processes, sampled every 200 ms, PSS every second) over that time. The devices then
   go on polling for ``--rollout-settle`` seconds, and the finished actions offered again are
   counted (the simulator's ``reoffered``: a poll that still offered an action after its final
   report was answered 200).

``--phases overload`` (Gaggle only, alone or after the others) is the overload scenario of
``fleet_overload``: one rollout to ``--overload-devices`` devices that poll every
``--overload-poll`` seconds (the gateway's polling sleep, which they obey), until every device
was told of its success and reported its new version; it prints its own table and goal lines and
writes a timeline PNG per fleet size.

The phases run in the order 2, 1, 3 on each server (first contact registers the devices the
steady polls need). Every phase has a time limit (``--phase-timeout``); a phase that runs out
says so and reports what it reached. Prints a Markdown table with each figure for both servers,
the ratio Gaggle/gooseBit and the goals, and writes ``bench/results/fleet-<UTC time>.json`` and
``.png``. Everything listens on 127.0.0.1 (never the machine's NATS 4222 or PostgreSQL 5432);
every child process is stopped at the end, also after errors, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import fleet_overload
import httpx
import uvloop
from benchlib import Children, git_version, machine_busy_seconds, say
from gaggle_peer import GaggleStack
from goosebit_peer import GOOSEBIT_VERSION, GoosebitPeer

from gaggle_contracts.kv import MAX_UPDATES_IN_FLIGHT_LIMIT
from gaggle_servers import free_port
from gaggle_sim import Fleet, FleetConfig, FleetStats, run_fleet
from gaggle_swu.build import make_rawfile_swu

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BOARD = "sim-board"
ROLLOUT_BOARD = "sim-rollout"
REVISION = "1.0"
INSTALLED = "1.0.0"
NEW_VERSION = "2.0.0"
FLEET_PREFIX = "fleet-"
ROLLOUT_PREFIX = "roll-"
OVERLOAD_PREFIX = "over-"
OVERLOAD_BOARD = "sim-overload"
SAMPLE_S = 0.2
PSS_EVERY = 5
"""PSS is read every this many memory samples (once a second): the kernel walks every page
table of a process to answer ``smaps_rollup``, and at every sample that took a third of the
bench process's CPU in the overload scenario."""

GOAL_POLL_RATIO = 20.0
AIM_POLL_RATIO = 50.0
GOAL_P99_MS = 25.0
GOAL_REG_RATIO = 10.0
GOAL_ROLLOUT_SOONER = 5.0


class Server(Protocol):
    """What the phases need of a server under test (``GaggleStack``, ``GoosebitPeer``)."""

    name: str
    facts: dict[str, Any]

    @property
    def ddi_base(self) -> str: ...  # noqa: D102

    def roots(self) -> list[int]: ...  # noqa: D102

    async def start(self, timeout: float) -> None: ...  # noqa: D102

    async def upload(self, client: httpx.AsyncClient, image: Path) -> str: ...  # noqa: D102

    async def start_rollout(  # noqa: D102
        self, client: httpx.AsyncClient, software_id: str, name: str, timeout: float
    ) -> dict[str, Any]: ...

    async def rollout_state(  # noqa: D102
        self, client: httpx.AsyncClient, rollout: dict[str, Any]
    ) -> Any: ...

    async def count_listed(  # noqa: D102
        self, client: httpx.AsyncClient, prefix: str, hw_model: str, sw_version: str
    ) -> int: ...

    async def wait_known(  # noqa: D102
        self, client: httpx.AsyncClient, prefix: str, hw_model: str, n: int, timeout: float
    ) -> None: ...

    def check_alive(self) -> None: ...  # noqa: D102

    def stop(self) -> None: ...  # noqa: D102


# --------------------------------------------------------------------------------------------
# Server CPU and memory: whole process trees from /proc

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(roots: list[int]) -> tuple[list[int], dict[int, float]]:
    """Pids of ``roots`` and all their descendants; CPU seconds of every process (own + reaped)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(v) for v in fields[11:15]) / _TICK
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    todo = [r for r in roots if r in parents]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo += children.get(pid, [])
    return found, cpu


_PARTS = (
    "gaggle_gateway",
    "gaggle_registry",
    "gaggle_artifacts",
    "gaggle_rollouts",
    "gaggle_stack",
    "gaggle-stack",
    "nats-server",
    "postgres",
    "goosebit",
)


def _part(pid: int) -> str:
    """Which part of a server ``pid`` is, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    for name in _PARTS:
        if name in cmd:
            return name.replace("gaggle-stack", "gaggle_stack").removeprefix("gaggle_")
    return "other"


def tree_cpu_parts(roots: list[int]) -> dict[str, float]:
    """CPU seconds so far per part of the server (gateway, registry, ..., nats, postgres)."""
    pids, cpu = _tree(roots)
    parts: dict[str, float] = {}
    for pid in pids:
        name = _part(pid)
        parts[name] = parts.get(name, 0.0) + cpu[pid]
    return parts


def tree_memory(roots: list[int], *, pss: bool = True) -> tuple[int, int]:
    """(summed RSS, summed PSS) in bytes of the trees of ``roots``; PSS 0 unless ``pss``.

    RSS counts memory shared between processes (PostgreSQL's shared buffers) once per process;
    PSS splits it among them.
    """
    pids, _ = _tree(roots)
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/statm", "rb") as f:
                rss += int(f.read().split()[1]) * _PAGE
            if not pss:
                continue
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
    return rss, pss


class Meter:
    """Server CPU between two points, the bench process's CPU, and peak memory in between."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak_rss = 0
        self.peak_pss = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._parts0: dict[str, float] = {}
        self._client0 = 0.0
        self._machine0 = 0.0
        self.start_rss = 0

    async def start(self) -> None:
        """Take the starting counters and start sampling memory."""
        self._parts0 = await asyncio.to_thread(tree_cpu_parts, self.server.roots())
        self._cpu0 = sum(self._parts0.values())
        times = os.times()
        self._client0 = times.user + times.system
        self._machine0 = machine_busy_seconds()
        self.start_rss, _ = await asyncio.to_thread(tree_memory, self.server.roots())
        self._t0 = time.perf_counter()
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            with_pss = self.samples % PSS_EVERY == 0
            rss, pss = await asyncio.to_thread(
                partial(tree_memory, pss=with_pss), self.server.roots()
            )
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.samples += 1
            await asyncio.sleep(SAMPLE_S)

    async def stop(self) -> dict[str, Any]:
        """Stop sampling; the figures."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        wall = time.perf_counter() - self._t0
        parts = await asyncio.to_thread(tree_cpu_parts, self.server.roots())
        cpu = sum(parts.values())
        times = os.times()
        server_cpu = cpu - self._cpu0
        bench_cpu = times.user + times.system - self._client0
        busy = machine_busy_seconds() - self._machine0
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_parts_s": {
                k: round(v - self._parts0.get(k, 0.0), 2) for k, v in sorted(parts.items())
            },
            "bench_process_cpu_s": round(bench_cpu, 2),
            "machine_busy_s": round(busy, 2),
            "other_cpu_s": round(max(0.0, busy - server_cpu - bench_cpu), 2),
            "machine_capacity_s": round(wall * (os.cpu_count() or 1), 2),
            "rss_start_mib": round(self.start_rss / 2**20, 1),
            "peak_rss_mib": round(self.peak_rss / 2**20, 1),
            "peak_pss_mib": round(self.peak_pss / 2**20, 1),
            "memory_samples": self.samples,
        }


# --------------------------------------------------------------------------------------------
# Phases


def fleet_config(server: Server, args: argparse.Namespace, **kw: Any) -> FleetConfig:
    """A simulator configuration for ``server``; the rest as the phase gives it."""
    base: dict[str, Any] = {
        "base_url": server.ddi_base,
        "count": args.devices,
        "id_prefix": FLEET_PREFIX,
        "first_index": 0,
        "hw_model": BOARD,
        "hw_revision": REVISION,
        "sw_version": INSTALLED,
        "jitter": 0.1,
        "connections": args.connections,
        "verify": args.verify,
        "seed": args.seed,
        "timeout": 30.0,
    }
    base.update(kw)
    return FleetConfig(**base)


def stats_dict(stats: FleetStats) -> dict[str, Any]:
    """The simulator's counters (no latency list)."""
    snap = stats.snapshot()
    if isinstance(snap, dict):
        return {k: v for k, v in snap.items() if k != "latencies_ms"}
    return {"snapshot": str(snap)}


async def wait_stats(
    fleet: Fleet, server: Server, pred: Callable[[FleetStats], bool], timeout: float
) -> bool:
    """Until ``pred(fleet.stats)``; False when ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while not pred(fleet.stats):
        if time.monotonic() > deadline:
            return False
        server.check_alive()
        await asyncio.sleep(0.05)
    return True


async def phase_first_contact(
    server: Server, args: argparse.Namespace, client: httpx.AsyncClient
) -> dict[str, Any]:
    """New devices poll once each; then the device list until it shows them all."""
    n = args.devices
    say(f"{server.name}: phase 2, first contact of {n:,} new devices")
    config = fleet_config(server, args, poll="once")
    meter = Meter(server)
    await meter.start()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(args.phase_timeout + 30):
            stats = await run_fleet(config, duration=args.phase_timeout)
    except TimeoutError:
        raise RuntimeError(f"{server.name}: first contact did not stop in time") from None
    fleet_s = time.perf_counter() - t0
    registered = int(stats.config_sent)
    say(
        f"{server.name}: {registered:,} of {n:,} registered in {fleet_s:.1f} s "
        f"({registered / fleet_s:,.0f}/s), poll errors {stats.poll_errors}, errors {stats.errors}"
    )
    listed, listed_s, calls = 0, None, []
    deadline = t0 + fleet_s + args.phase_timeout
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(1.0, deadline - time.perf_counter())):
            while True:
                c0 = time.perf_counter()
                try:
                    listed = await server.count_listed(client, FLEET_PREFIX, BOARD, INSTALLED)
                except httpx.TransportError as exc:  # a dropped keep-alive connection: again
                    say(f"{server.name}: device list read failed ({exc!r}); reading again")
                    await asyncio.sleep(0.2)
                    continue
                c1 = time.perf_counter()
                calls.append(round(c1 - c0, 3))
                if listed >= n:
                    listed_s = c1 - t0
                    break
                server.check_alive()
                await asyncio.sleep(0.2)
    usage = await meter.stop()
    say(
        f"{server.name}: "
        + (
            f"all {n:,} listed {listed_s:.1f} s after the first poll"
            if listed_s is not None
            else f"only {listed:,} of {n:,} listed when the time ran out"
        )
        + f" ({len(calls)} list reads, last took {calls[-1] if calls else 0:.2f} s); "
        f"server CPU {usage['server_cpu_s']:.1f} s"
    )
    return {
        "devices": n,
        "registered": registered,
        "fleet_s": round(fleet_s, 3),
        "registrations_per_s": round(registered / fleet_s, 1),
        "fleet_timed_out": registered < n,
        "listed": listed,
        "all_listed_s": round(listed_s, 3) if listed_s is not None else None,
        "list_read_s": calls,
        "stats": stats_dict(stats),
        "usage": usage,
    }


async def phase_steady(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """The registered devices poll as fast as the connections allow."""
    say(
        f"{server.name}: phase 1, steady polls of {args.devices:,} devices, "
        f"{args.connections} connections, {args.warmup:g} s warm-up + {args.poll_seconds:g} s"
    )
    config = fleet_config(server, args, poll="fast")
    if args.warmup > 0:
        async with asyncio.timeout(args.warmup + 60):
            await run_fleet(config, duration=args.warmup)
    server.check_alive()
    meter = Meter(server)
    await meter.start()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(args.poll_seconds + 60):
            stats = await run_fleet(config, duration=args.poll_seconds)
    except TimeoutError:
        raise RuntimeError(f"{server.name}: steady polls did not stop in time") from None
    wall = time.perf_counter() - t0
    usage = await meter.stop()
    rate = float(stats.poll_rate())
    res = {
        "devices": args.devices,
        "connections": args.connections,
        "seconds": args.poll_seconds,
        "polls": int(stats.polls),
        "poll_errors": int(stats.poll_errors),
        "polls_per_s": round(rate, 1),
        "polls_per_wall_s": round(stats.polls / wall, 1),
        "p50_ms": round(float(stats.p50()), 2),
        "p99_ms": round(float(stats.p99()), 2),
        "stats": stats_dict(stats),
        "usage": usage,
    }
    say(
        f"{server.name}: {res['polls_per_s']:,.0f} polls/s, p50 {res['p50_ms']:.1f} ms, "
        f"p99 {res['p99_ms']:.1f} ms, {res['poll_errors']} errors; server CPU "
        f"{usage['server_cpu_s']:.1f} s, bench process {usage['bench_process_cpu_s']:.1f} s "
        f"of {usage['machine_capacity_s']:.0f}"
    )
    return res


async def phase_rollout(
    server: Server, args: argparse.Namespace, client: httpx.AsyncClient, image: Path
) -> dict[str, Any]:
    """One image to ``--rollout-devices`` devices that download it; until all report success."""
    n = args.rollout_devices
    size = (await asyncio.to_thread(image.stat)).st_size
    say(f"{server.name}: phase 3, rollout of {image.name} to {n:,} devices")
    u0 = time.perf_counter()
    software_id = await asyncio.wait_for(server.upload(client, image), args.phase_timeout)
    upload_s = time.perf_counter() - u0
    config = fleet_config(
        server,
        args,
        count=n,
        id_prefix=ROLLOUT_PREFIX,
        hw_model=ROLLOUT_BOARD,
        poll=args.rollout_poll,
    )
    fleet = Fleet(config)
    await fleet.start()
    res: dict[str, Any] = {
        "devices": n,
        "image_bytes": size,
        "poll_s": args.rollout_poll,
        "upload_s": round(upload_s, 3),
        "software_id": software_id,
    }
    try:
        r0 = time.perf_counter()
        if not await wait_stats(fleet, server, lambda s: s.config_sent >= n, args.phase_timeout):
            raise RuntimeError(
                f"{server.name}: only {fleet.stats.config_sent} of {n} rollout devices registered"
            )
        await server.wait_known(client, ROLLOUT_PREFIX, ROLLOUT_BOARD, n, args.phase_timeout)
        res["registered_s"] = round(time.perf_counter() - r0, 3)
        meter = Meter(server)
        await meter.start()
        t0 = time.perf_counter()
        rollout = await server.start_rollout(client, software_id, "fleet bench", args.phase_timeout)
        res["rollout_request_s"] = round(time.perf_counter() - t0, 3)
        last = [0, 0.0]  # successes so far, and when the last one came
        marks: dict[str, float] = {}  # when the first success, and every deployment, were seen

        def finished(stats: FleetStats) -> bool:
            now = round(time.perf_counter() - t0, 3)
            if stats.successes != last[0]:
                last[:] = [stats.successes, now]
                marks.setdefault("first_success_s", now)
            if stats.deployments_seen >= n:
                marks.setdefault("all_deployments_seen_s", now)
            return bool(stats.successes + stats.failures >= n)

        done = await wait_stats(fleet, server, finished, args.phase_timeout)
        elapsed = time.perf_counter() - t0
        res["last_success_s"] = round(last[1], 3)
        res.update(marks)
        res["usage"] = await meter.stop()
        if done:
            # A server that still offers a device its finished action does so at the device's
            # next poll: the last devices to finish get theirs before the fleet stops.
            await asyncio.sleep(args.rollout_settle)
        stats = fleet.stats
        res.update(
            {
                "timed_out": not done,
                "successes": int(stats.successes),
                "failures": int(stats.failures),
                "all_success_s": round(elapsed, 3) if done and stats.failures == 0 else None,
                "elapsed_s": round(elapsed, 3),
                "stats": stats_dict(stats),
            }
        )
        # What the server itself shows (counters may trail the last feedback a moment).
        view: Any = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                while True:
                    view = await server.rollout_state(client, rollout)
                    text = json.dumps(view)
                    if f'"success": {n}' in text or f'"success_count": {n}' in text:
                        break
                    await asyncio.sleep(0.2)
        res["server_view"] = view
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await fleet.stop()
    usage = res["usage"]
    say(
        f"{server.name}: "
        + (
            f"all {n:,} reported success {res['all_success_s']:.1f} s after the rollout request"
            if res["all_success_s"] is not None
            else f"{res['successes']:,} successes, {res['failures']:,} failures of {n:,} after "
            f"{res['elapsed_s']:.0f} s" + (" (time ran out)" if res["timed_out"] else "")
        )
        + f"; server CPU {usage['server_cpu_s']:.1f} s, peak RSS {usage['peak_rss_mib']:.0f} MiB "
        f"(PSS {usage['peak_pss_mib']:.0f}); downloaded "
        f"{res['stats'].get('download_bytes', 0) / 2**30:.2f} GiB; "
        f"{res['stats'].get('reoffered', 0):,} finished actions offered again"
    )
    return res


async def phase_overload(
    server: Server, args: argparse.Namespace, client: httpx.AsyncClient, folder: Path
) -> list[dict[str, Any]]:
    """The overload scenario (``fleet_overload``), for the smaller fleet first if asked."""
    if not isinstance(server, GaggleStack):
        say(f"{server.name}: the overload scenario runs against Gaggle only; skipped")
        return []
    sizes = [n for n in (args.overload_small, args.overload_devices) if n]
    return [await overload_run(server, args, client, folder, n) for n in sizes]


async def overload_run(
    server: GaggleStack,
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    folder: Path,
    n: int,
) -> dict[str, Any]:
    """``n`` devices polling as the gateway says (every ``--overload-poll`` s), one rollout."""
    board = f"{OVERLOAD_BOARD}-{n}"
    prefix = f"{OVERLOAD_PREFIX}{n}-"
    say(
        f"{server.name}: overload, one rollout to {n:,} devices polling every "
        f"{args.overload_poll:g} s, {args.overload_image_kib:g} KiB image, "
        f"{args.overload_connections} simulator connections"
    )
    image = await asyncio.to_thread(
        build_image, folder, args.overload_image_kib / 1024, args.seed, board
    )
    software_id = await asyncio.wait_for(server.upload(client, image), args.phase_timeout)
    # Set before the devices register: rollouts has the new cap long before the rollout starts.
    cap = await server.set_cap(client, args.overload_cap, polling_sleep=_hms(args.overload_poll))
    say(f"{server.name}: tenant default, cap on updates in flight {cap:,}")
    config = fleet_config(
        server,
        args,
        count=n,
        id_prefix=prefix,
        hw_model=board,
        poll="server",  # SWUpdate obeys the sleep, stretched or not; the stack's is the poll
        connections=args.overload_connections,
        ramp_up=float(args.overload_poll),  # a fleet that polls steadily, not in one burst
    )
    fleet = Fleet(config)
    await fleet.start()
    try:
        r0 = time.perf_counter()
        if not await wait_stats(fleet, server, lambda s: s.config_sent >= n, args.phase_timeout):
            raise RuntimeError(f"{server.name}: only {fleet.stats.config_sent} of {n} registered")
        await server.wait_known(client, prefix, board, n, args.phase_timeout)
        registered_s = time.perf_counter() - r0
        say(f"{server.name}: {n:,} overload devices registered in {registered_s:.1f} s")
        settled_s = await settle(fleet, args.overload_poll, args.phase_timeout)
        say(
            f"{server.name}: every device polls every {args.overload_poll:g} s again after "
            f"{settled_s:.1f} s"
        )
        before = fleet.stats.snapshot()
        meter = Meter(server)
        await meter.start()
        res = await fleet_overload.run_overload(
            fleet,
            version=NEW_VERSION,
            start_rollout=lambda: server.start_rollout(
                client, software_id, f"overload {n}", args.phase_timeout
            ),
            rollout_state=lambda rollout: server.rollout_state(client, rollout),
            metrics=lambda: server.gateway_metrics(client),
            check_alive=server.check_alive,
            timeout=args.phase_timeout,
        )
        res["usage"] = await meter.stop()
        res["cap"] = cap
        res["registered_s"] = round(registered_s, 3)
        res["settled_s"] = round(settled_s, 3)
        res["before_rollout"] = {
            k: before[k]
            for k in ("polls", "throttled", "server_errors", "dropped", "other_answers")
        }
        res["listed_new_version"] = await _listed_new(server, client, prefix, board, n)
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await fleet.stop()
    for line in fleet_overload.goal_lines(res):
        say(f"{server.name}: {n:,} devices: {line}")
    return res


async def settle(fleet: Fleet, poll_s: float, timeout: float) -> float:
    """Seconds until every device's last poll answer handed it the tenant's interval again.

    The fleet registering keeps the stack busy, and the gateway may stretch the sleep of idle
    devices meanwhile (README: Scaling the gateway), telling some to come back only after
    several intervals. The scenario is a fleet polling every ``poll_s`` when the rollout starts.
    """
    t0 = time.perf_counter()
    longest = poll_s * 1.1 + 1  # the jitter moves a sleep by up to a tenth, rounded up
    async with asyncio.timeout(timeout):
        # The devices' state is plain attributes, set as answers come: looked at, not awaited.
        while any(d.last_sleep > longest for d in fleet.devices):  # noqa: ASYNC110
            await asyncio.sleep(0.5)
    return time.perf_counter() - t0


async def _listed_new(
    server: GaggleStack, client: httpx.AsyncClient, prefix: str, board: str, n: int
) -> int:
    """Devices the registry lists with the new version (read until all, for at most 30 s)."""
    listed = 0
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(30):
            while listed < n:
                listed = await server.count_listed(client, prefix, board, NEW_VERSION)
                await asyncio.sleep(0.5)
    return listed


async def prime(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """One device of the fleet's board makes first contact alone, before the phases.

    gooseBit creates a board's ``Hardware`` row with ``get_or_create`` on a table without a
    unique constraint: when many devices of a board it has not seen yet send configData at once,
    it stores the board several times, and from then on every configData of that board fails
    with HTTP 500 (``MultipleObjectsReturned``). A fleet introduced one device at a time never
    sees this, so both servers meet the board once before the phases. (The rollout board is
    introduced by the image upload.)
    """
    config = fleet_config(server, args, count=1, id_prefix="prime-", poll="once", connections=1)
    async with asyncio.timeout(60):
        stats = await run_fleet(config, duration=50)
    if stats.config_sent != 1:
        raise RuntimeError(f"{server.name}: the first device was not registered: {stats}")
    return stats_dict(stats)


async def run_server(
    server: Server, args: argparse.Namespace, image: Path, started: list[Server]
) -> dict[str, Any]:
    """Start ``server``, run the phases 2, 1, 3, stop it; its results."""
    started.append(server)
    out: dict[str, Any] = {"name": server.name}
    try:
        t0 = time.perf_counter()
        await server.start(args.start_timeout)
        out["start_s"] = round(time.perf_counter() - t0, 2)
        out["facts"] = server.facts
        out["prime"] = await prime(server, args)
        async with httpx.AsyncClient(timeout=args.phase_timeout) as client:
            if 2 in args.phases:
                out["first_contact"] = await phase_first_contact(server, args, client)
            if 1 in args.phases:
                out["steady"] = await phase_steady(server, args)
            if 3 in args.phases:
                out["rollout"] = await phase_rollout(server, args, client, image)
            if args.overload:
                out["overload"] = await phase_overload(server, args, client, image.parent)
        server.check_alive()
    finally:
        await asyncio.to_thread(server.stop)
    return out


def build_image(folder: Path, mib: float, seed: int, board: str = ROLLOUT_BOARD) -> Path:
    """A rollout image: a real .swu with ``mib`` MiB of random payload for ``board``."""
    payload = random.Random(seed).randbytes(int(mib * 2**20))
    data = make_rawfile_swu(
        payload,
        version=NEW_VERSION,
        board=board,
        revisions=[REVISION],
        install_path="/tmp/gaggle-sim/payload.bin",  # noqa: S108 (a path inside the image)
        key=None,
        cert=None,
    )
    path = folder / f"{board}-{NEW_VERSION}.swu"
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_mib": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _get(res: dict[str, Any], *path: str) -> Any:
    cur: Any = res
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def report(results: dict[str, Any], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The Markdown table, notes, and the verdicts."""
    g = results["servers"].get("Gaggle", {})
    b = results["servers"].get("gooseBit", {})

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x is not None and y else None

    rows: list[tuple[str, str, str, str, str, str]] = []
    verdicts: dict[str, Any] = {}

    def row(
        phase: str, label: str, path: tuple[str, ...], digits: int, goal: str = ""
    ) -> tuple[float | None, float | None, float | None]:
        gv, bv = _get(g, *path), _get(b, *path)
        r = ratio(gv, bv)
        rows.append((phase, label, _num(gv, digits), _num(bv, digits), _ratio_text(r), goal))
        return gv, bv, r

    def met(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**NOT met**")

    n, rn = args.devices, args.rollout_devices
    p1 = f"1. steady polls, {n:,} registered devices, {args.connections} connections"
    gv, _, r = row(p1, "polls/s", ("steady", "polls_per_s"), 0)
    ok = None if r is None else r >= GOAL_POLL_RATIO
    verdicts["poll_ratio"] = {"value": r, "goal": GOAL_POLL_RATIO, "aim": AIM_POLL_RATIO, "met": ok}
    rows[-1] = (*rows[-1][:5], f">= {GOAL_POLL_RATIO:g}x (aim {AIM_POLL_RATIO:g}x): {met(ok)}")
    row("", "p50 ms", ("steady", "p50_ms"), 1)
    gv, _, _ = row("", "p99 ms", ("steady", "p99_ms"), 1)
    ok = None if gv is None else gv < GOAL_P99_MS
    verdicts["p99_ms"] = {"value": gv, "goal": GOAL_P99_MS, "met": ok}
    rows[-1] = (*rows[-1][:5], f"Gaggle < {GOAL_P99_MS:g} ms: {met(ok)}")
    p2 = f"2. first contact, {n:,} new devices"
    _, _, r = row(p2, "registrations/s", ("first_contact", "registrations_per_s"), 0)
    ok = None if r is None else r >= GOAL_REG_RATIO
    verdicts["registration_ratio"] = {"value": r, "goal": GOAL_REG_RATIO, "met": ok}
    rows[-1] = (*rows[-1][:5], f">= {GOAL_REG_RATIO:g}x: {met(ok)}")
    row("", "all listed after, s", ("first_contact", "all_listed_s"), 1)
    rows[-1] = (*rows[-1][:2], *_unfinished(rows[-1][2:4], (g, b), "first_contact"), *rows[-1][4:])
    mib = _get(g, "rollout", "image_bytes") or _get(b, "rollout", "image_bytes") or 0
    p3 = (
        f"3. rollout, {rn:,} devices, {mib / 2**20:.1f} MiB image, "
        f"polls every {args.rollout_poll:g} s"
    )
    _, _, r = row(p3, "all success after, s", ("rollout", "all_success_s"), 1)
    rows[-1] = (*rows[-1][:2], *_unfinished(rows[-1][2:4], (g, b), "rollout"), *rows[-1][4:])
    sooner = 1 / r if r else None
    ok = None if sooner is None else sooner >= GOAL_ROLLOUT_SOONER
    verdicts["rollout_sooner"] = {"value": sooner, "goal": GOAL_ROLLOUT_SOONER, "met": ok}
    rows[-1] = (
        *rows[-1][:4],
        rows[-1][4] + (f" ({sooner:.1f}x sooner)" if sooner else ""),
        f">= {GOAL_ROLLOUT_SOONER:g}x sooner: {met(ok)}",
    )
    gv, _, _ = row("", "finished actions offered again", ("rollout", "stats", "reoffered"), 0)
    ok = None if gv is None else gv == 0
    verdicts["reoffered"] = {"value": gv, "goal": 0, "met": ok}
    rows[-1] = (*rows[-1][:4], "-", f"Gaggle 0: {met(ok)}")
    row("", "server CPU s", ("rollout", "usage", "server_cpu_s"), 1)
    row("", "peak memory MiB (RSS)", ("rollout", "usage", "peak_rss_mib"), 0)
    row("", "peak memory MiB (PSS)", ("rollout", "usage", "peak_pss_mib"), 0)
    # Over a rollout that ran out of time the CPU and memory cover the whole wait: no ratio.
    late = [bool(_get(res, "rollout", "timed_out")) for res in (g, b)]
    if any(late):
        for i in range(len(rows) - 3, len(rows)):  # CPU and memory
            cells = [
                f"{text} (in {_get(res, 'rollout', 'elapsed_s'):.0f} s)" if slow else text
                for text, res, slow in zip(rows[i][2:4], (g, b), late, strict=True)
            ]
            rows[i] = (rows[i][0], rows[i][1], *cells, "-", rows[i][5])

    lines = [
        f"Fleet benchmark, {results['started'][:16].replace('T', ' ')} UTC, Gaggle "
        f"{results['code']} vs gooseBit {GOOSEBIT_VERSION}; {machine_text(results['machine'])}",
        "",
        "| phase | figure | Gaggle | gooseBit | Gaggle/gooseBit | goal |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += ["", *notes(g, b)]
    return "\n".join(lines), verdicts


def _unfinished(
    texts: tuple[str, ...], servers: tuple[dict[str, Any], ...], phase: str
) -> tuple[str, ...]:
    """A figure a server never reached: what it reached instead, e.g. ``> 600 s (959/1000)``."""
    out = []
    for text, res in zip(texts, servers, strict=True):
        ph = res.get(phase) or {}
        if text != "-" or not ph:
            out.append(text)
        elif phase == "first_contact":
            out.append(f"not all ({ph['listed']:,}/{ph['devices']:,})")
        elif "elapsed_s" in ph:
            failed = f", {ph['failures']} failed" if ph["failures"] else ""
            at = ph.get("last_success_s")
            when = f"; the last at {at:.1f}" if at else ""
            out.append(
                f"> {ph['elapsed_s']:.0f} ({ph['successes']:,}/{ph['devices']:,}{failed}{when})"
            )
        else:
            out.append(text)
    return tuple(out)


def _ratio_text(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.3f}" if r < 0.1 else f"{r:.2f}"


def machine_text(m: dict[str, Any]) -> str:
    """One line about the machine."""
    return (
        f"{m['cpus']} CPUs ({m['cpu_model'] or 'unknown model'}), "
        f"{m['memory_mib'] / 1024:.0f} GiB, Python {m['python']}, {m['platform']}"
    )


def cpu_note(usage: dict[str, Any]) -> str:
    """CPU seconds of server, simulator and the rest of the machine over a phase."""
    parts = usage.get("server_cpu_parts_s") or {}
    detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if v >= 0.05)
    return (
        f"CPU s: server {usage['server_cpu_s']:.1f}"
        + (f" ({detail})" if len(parts) > 1 else "")
        + ", bench process (simulator) "
        f"{usage['bench_process_cpu_s']:.1f}, other {usage.get('other_cpu_s', 0):.1f}, of "
        f"{usage['machine_capacity_s']:.1f} available"
    )


def notes(g: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Lines under the table: timeouts, errors, CPU per phase."""
    out: list[str] = []
    for res in (g, b):
        if not res:
            continue
        name = res["name"]
        fc, st, ro = res.get("first_contact"), res.get("steady"), res.get("rollout")
        if res.get("error"):
            out.append(f"- {name}: FAILED: {res['error']}")
        if fc:
            if fc["fleet_timed_out"]:
                out.append(
                    f"- {name}: first contact ran out of time: {fc['registered']:,} of "
                    f"{fc['devices']:,} registered"
                )
            if fc["all_listed_s"] is None:
                out.append(f"- {name}: only {fc['listed']:,} devices listed when the time ran out")
            last = fc["list_read_s"][-1] if fc["list_read_s"] else 0
            out.append(
                f"- {name} first contact: {fc['registered']:,} registered in "
                f"{fc['fleet_s']:.1f} s; {len(fc['list_read_s'])} list reads, the last took "
                f"{last:.2f} s; {cpu_note(fc['usage'])}"
            )
        if st:
            out.append(
                f"- {name} steady polls: {st['polls']:,} polls in {st['seconds']:g} s, "
                f"{st['poll_errors']} errors; {cpu_note(st['usage'])}"
            )
        if ro and "usage" in ro:
            state = "time ran out, " if ro.get("timed_out") else ""
            usage = ro["usage"]
            out.append(
                f"- {name} rollout: {state}{ro['successes']:,} successes, {ro['failures']:,} "
                f"failures, {ro['stats'].get('download_bytes', 0) / 2**30:.2f} GiB downloaded; "
                f"upload {ro['upload_s']:.1f} s; {cpu_note(usage)}; RSS "
                f"{usage['rss_start_mib']:.0f} MiB before, peak {usage['peak_rss_mib']:.0f}; "
                f"server shows {json.dumps(ro.get('server_view'), default=str)[:160]}"
            )
    return out


def chart(results: dict[str, Any], out: Path) -> None:
    """Bar charts of every figure, Gaggle next to gooseBit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = results["servers"].get("Gaggle", {})
    b = results["servers"].get("gooseBit", {})
    panels = [
        ("steady polls/s (higher is better)", ("steady", "polls_per_s"), True),
        ("steady poll p99 ms", ("steady", "p99_ms"), True),
        ("registrations/s", ("first_contact", "registrations_per_s"), True),
        ("all registered devices listed after s", ("first_contact", "all_listed_s"), False),
        ("rollout: all success after s", ("rollout", "all_success_s"), False),
        ("rollout: server CPU s", ("rollout", "usage", "server_cpu_s"), False),
        ("rollout: peak memory MiB (RSS)", ("rollout", "usage", "peak_rss_mib"), False),
        ("rollout: peak memory MiB (PSS)", ("rollout", "usage", "peak_pss_mib"), False),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    flat = list(axes.flat)
    for ax, (title, path, log) in zip(flat, panels, strict=False):
        values = [_get(g, *path), _get(b, *path)]
        heights = [v if v is not None else 0 for v in values]
        bars = ax.bar(["Gaggle", "gooseBit"], heights, color=["#2b7bb9", "#d9822b"])
        # A rollout that ran out of time: what it reached; its CPU and memory cover the wait.
        late = [bool(path[0] == "rollout" and _get(r, "rollout", "timed_out")) for r in (g, b)]
        for bar, v, res, slow in zip(bars, values, (g, b), late, strict=True):
            text = "n/a" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
            if slow:
                ro = res["rollout"]
                text = (
                    f"{ro['successes']:,}/{ro['devices']:,} done\n"
                    f"when {ro['elapsed_s']:.0f} s ran out"
                    if v is None
                    else f"{text}\n(in {ro['elapsed_s']:.0f} s)"
                )
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax.margins(y=0.25)  # room for the labels above the bars
        if log and all(v for v in values):
            ax.set_yscale("log")
        ratio = values[0] / values[1] if values[0] is not None and values[1] else None
        ratio = None if any(late) else ratio
        ax.set_title(title + (f"\nGaggle/gooseBit {ratio:.3g}" if ratio else ""), fontsize=10)
    fig.suptitle(
        f"Fleet benchmark {results['started'][:16].replace('T', ' ')} UTC: Gaggle "
        f"{results['code']} vs gooseBit {GOOSEBIT_VERSION}, "
        f"{results['params']['devices']:,} devices, "
        f"{results['params']['rollout_devices']:,} in the rollout\n"
        + machine_text(results["machine"]),
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def overload_report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any] | None:
    """The overload table and goal lines with their verdicts, when the scenario ran."""
    runs = (results["servers"].get("Gaggle") or {}).get("overload") or []
    if not runs:
        return None
    lines = [
        f"Overload benchmark, {results['started'][:16].replace('T', ' ')} UTC, Gaggle "
        f"{results['code']}; {machine_text(results['machine'])}",
        "",
        *fleet_overload.table(runs, args.overload_poll),
    ]
    for r in runs:
        lines.append(
            f"- {r['devices']:,} devices: registered in {r['registered_s']:.1f} s, polling every "
            f"{args.overload_poll:g} s again after {r.get('settled_s', 0):.1f} s; rollout "
            f"request {r['rollout_request_s']:.2f} s; registry lists "
            f"{r['listed_new_version']:,} with {NEW_VERSION}; {cpu_note(r['usage'])}"
        )
    return {
        "table": "\n".join(lines),
        "verdicts": {str(r["devices"]): fleet_overload.verdict(r) for r in runs},
    }


def overload_charts(results: dict[str, Any], out: Path) -> list[Path]:
    """One timeline PNG per overload run, next to the JSON."""
    written = []
    for r in (results["servers"].get("Gaggle") or {}).get("overload") or []:
        png = out.with_name(f"{out.stem}-overload-{r['devices']}.png")
        title = (
            f"Overload {results['started'][:16].replace('T', ' ')} UTC, Gaggle "
            f"{results['code']}: one rollout to {r['devices']:,} devices polling every "
            f"{results['params']['overload_poll']} s"
        )
        fleet_overload.chart(r, title, png)
        written.append(png)
    return written


# --------------------------------------------------------------------------------------------
# Main


async def run(
    args: argparse.Namespace, tmp: Path, children: Children, started: list[Server]
) -> dict[str, Any]:
    """Both servers, one after the other; the results."""
    when = datetime.now(UTC)
    busy0, t0 = machine_busy_seconds(), time.perf_counter()
    await asyncio.sleep(3)
    idle_load = (machine_busy_seconds() - busy0) / (
        (time.perf_counter() - t0) * (os.cpu_count() or 1)
    )
    say(f"machine busy before the start: {idle_load:.0%} of its CPUs (other processes)")
    if idle_load > 0.2:
        say("the machine is not idle: the figures will be lower and noisier than they could be")
    (tmp / "image").mkdir()
    image = await asyncio.to_thread(build_image, tmp / "image", args.image_mib, args.seed)
    digest = await asyncio.to_thread(lambda: hashlib.sha256(image.read_bytes()).hexdigest())
    say(f"image {image.name}: {image.stat().st_size:,} bytes, sha256 {digest[:16]}...")
    results: dict[str, Any] = {
        "started": when.isoformat(),
        "code": git_version("libs", "services", "bench"),
        "machine": {**machine(), "busy_before_start": round(idle_load, 3)},
        "params": {k: v for k, v in vars(args).items() if k not in ("keep_logs",)},
        "image": {"name": image.name, "bytes": image.stat().st_size, "sha256": digest},
        "servers": {},
    }
    for name in args.servers:
        server: Server
        if name == "gaggle":
            settings = dict(item.split("=", 1) for item in args.stack_env)
            if args.overload:  # the devices poll as the gateway says: every --overload-poll s
                settings["GAGGLE_GATEWAY_POLLING_SLEEP"] = _hms(args.overload_poll)
            server = GaggleStack(children, tmp / "gaggle" / "data", settings)
        else:
            server = GoosebitPeer(children, tmp / "goosebit", free_port())
        try:
            results["servers"][server.name] = await run_server(server, args, image, started)
        except Exception as exc:
            if args.stop_on_error:
                raise
            say(f"{server.name}: FAILED: {exc}")
            results["servers"][server.name] = {"name": server.name, "error": str(exc)[:2000]}
            args.keep_logs = True
    return results


def _hms(seconds: int) -> str:
    """``HH:MM:SS`` of whole seconds (the DDI ``sleep`` format)."""
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _sigterm(_signo: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description="Gaggle vs gooseBit: polls, first contact, rollout.")
    p.add_argument("--devices", type=int, default=10_000, help="phases 1 and 2 (10000)")
    p.add_argument("--rollout-devices", type=int, default=1_000, help="phase 3 (1000)")
    p.add_argument("--connections", type=int, default=64, help="simulator connections (64)")
    p.add_argument("--poll-seconds", type=float, default=20.0, help="phase 1 measured (20)")
    p.add_argument("--warmup", type=float, default=3.0, help="phase 1 warm-up, not counted (3)")
    p.add_argument(
        "--rollout-poll", type=float, default=5.0, help="phase 3 poll interval of each device (5)"
    )
    p.add_argument(
        "--rollout-settle",
        type=float,
        default=3.0,
        help="phase 3: seconds devices go on polling after the last result (3)",
    )
    p.add_argument("--image-mib", type=float, default=4.0, help="rollout image payload MiB (4)")
    p.add_argument(
        "--overload-devices", type=int, default=10_000, help="overload scenario fleet (10000)"
    )
    p.add_argument(
        "--overload-poll",
        type=int,
        default=5,
        help="overload: the gateway's polling sleep, whole seconds, obeyed by the devices (5)",
    )
    p.add_argument(
        "--overload-small",
        type=int,
        default=0,
        help="overload: also run a fleet of this size first, for comparison (0: none)",
    )
    p.add_argument(
        "--overload-image-kib", type=float, default=64.0, help="overload image payload KiB (64)"
    )
    p.add_argument(
        "--overload-connections",
        type=int,
        default=1000,
        help="overload: simulator requests (and connections) in flight at most (1000)",
    )
    p.add_argument(
        "--overload-cap",
        type=int,
        default=None,
        help="overload: set tenant default's cap on updates in flight first (default: as it is)",
    )
    p.add_argument(
        "--verify",
        default="sha256",
        choices=["sha256", "head", "none"],
        help="what devices check of a download (sha256)",
    )
    p.add_argument("--seed", type=int, default=0, help="simulator and image seed (0)")
    p.add_argument(
        "--servers",
        default="gaggle,goosebit",
        help="comma-separated, in order: gaggle, goosebit (both)",
    )
    p.add_argument(
        "--phases",
        default="1,2,3",
        help="which phases to run (1,2,3,overload; phase 1 needs phase 2's devices)",
    )
    p.add_argument("--phase-timeout", type=float, default=600.0, help="seconds per phase (600)")
    p.add_argument("--start-timeout", type=float, default=180.0, help="server start (180)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument(
        "--stack-env",
        action="append",
        default=[],
        metavar="GAGGLE_X=VALUE",
        help="a setting for Gaggle's stack (repeatable), e.g. GAGGLE_GATEWAY_BUSY_MAX_FACTOR=1",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory")
    p.add_argument("--stop-on-error", action="store_true", help="stop at the first failure")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.servers or any(s not in ("gaggle", "goosebit") for s in args.servers):
        p.error("--servers: gaggle, goosebit or both")
    tokens = {x.strip() for x in args.phases.split(",") if x.strip()}
    args.overload = "overload" in tokens
    try:
        args.phases = sorted({int(x) for x in tokens - {"overload"}})
    except ValueError:
        p.error("--phases: a comma-separated list of 1, 2, 3, overload")
    if (
        not (args.phases or args.overload)
        or not set(args.phases) <= {1, 2, 3}
        or (1 in args.phases and 2 not in args.phases)
    ):
        p.error("--phases: some of 1, 2, 3, overload; phase 1 needs phase 2")
    if min(args.devices, args.rollout_devices, args.connections) < 1 or args.poll_seconds <= 0:
        p.error("sizes and durations must be positive")
    if (
        min(args.overload_devices, args.overload_poll, args.overload_connections) < 1
        or args.overload_small < 0
    ):
        p.error("--overload-devices and --overload-poll must be positive")
    if args.overload_cap is not None and not 1 <= args.overload_cap <= MAX_UPDATES_IN_FLIGHT_LIMIT:
        p.error(f"--overload-cap: a whole number from 1 to {MAX_UPDATES_IN_FLIGHT_LIMIT:,}")
    for item in args.stack_env:
        if not item.startswith("GAGGLE_") or "=" not in item:
            p.error(f"--stack-env {item!r}: GAGGLE_<SETTING>=<value>")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (goals met or not), 1 on failure, 130 on Ctrl-C."""
    args = parse_args(argv)
    # Ctrl-C and SIGTERM raise KeyboardInterrupt where the program is, also inside the event
    # loop (asyncio's own SIGINT handling only cancels the main task, which a phase may absorb);
    # asyncio.run then cancels the fleets, and the servers are stopped below.
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, _sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="gaggle-fleetbench-"))
    children = Children(stop_timeout=20.0)
    started: list[Server] = []
    code = 0
    try:
        say(f"temporary directory {tmp}")
        # uvloop, as `gaggle-sim` runs: the load generator then takes less of the CPU the two
        # servers need (the same for both).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(run(args, tmp, children, started))
        table, verdicts = report(results, args) if args.phases else ("", {})
        overload = overload_report(results, args)
        if overload:
            table = "\n\n".join(t for t in (table, overload["table"]) if t)
            verdicts["overload"] = overload["verdicts"]
        results["verdicts"] = verdicts
        results["table"] = table
        print(table)  # noqa: T201
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = results["started"][:19].replace("-", "").replace(":", "")
        out = RESULTS_DIR / f"fleet-{stamp}Z.json"
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"results written to {out.relative_to(BENCH_DIR.parent)}")
        if not args.no_chart and args.phases:
            png = out.with_suffix(".png")
            chart(results, png)
            say(f"chart written to {png.relative_to(BENCH_DIR.parent)}")
        if not args.no_chart:
            for png in overload_charts(results, out):
                say(f"chart written to {png.relative_to(BENCH_DIR.parent)}")
        if any("error" in s for s in results["servers"].values()):
            code = 1
    except KeyboardInterrupt:
        say("interrupted; stopping every child process")
        code = 130
    except Exception as exc:
        say(f"FAILED: {exc}")
        args.keep_logs = True
        code = 1
    finally:
        for server in started:
            with contextlib.suppress(Exception):
                server.stop()
        children.stop_all()
        if args.keep_logs:
            say(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
