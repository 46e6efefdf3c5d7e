"""Scale benchmark: one 2-core box, a fleet polling every minute, a rollout in waves to all of it.

    make bench-scale                                  # 100,000 devices
    .venv/bin/python bench/scale_bench.py --devices 10000 [--poll 60 --waves 1,10,89]
    .venv/bin/python bench/scale_bench.py --memory-only   # PSS per idle service, then stop

Starts Gaggle's embedded stack (``gaggle-stack`` as ``make run`` does, in a temporary
``GAGGLE_DATA_DIR``, free ports; see ``gaggle_peer.py``) with the gateway's polling sleep at
``--poll`` seconds, and the fleet simulator ``gaggle_sim`` in this process. Phases:

1. **Idle.** PSS (``/proc/<pid>/smaps_rollup``) of every process of the stack once it is ready
   and its warm spares are up: the memory figure of an idle service.
2. **Registration.** ``--devices`` new devices make first contact through DDI (poll,
   configData), their first polls spread over ``--ramp-up`` seconds, then poll as the gateway
   says (every ``--poll`` s, jitter 10 %); until the registry lists every one of them and every
   device's last answer handed it the normal interval again.
3. **Steady.** ``--steady-seconds`` of the fleet polling with nothing to do: polls/s, poll p50
   and p99 measured over that window only, CPU per process, event, KV and PostgreSQL write
   rates.
4. **Rollout.** A real ``.swu`` with ``--image-mib`` MiB of payload, one rollout in waves
   (``--waves``, percent), the tenant's cap on updates in flight at ``--cap``; until every device
   was told of its success and its configData with the new version was answered 200 and the
   rollout is finished. Time per wave (from the wave's start, as rollouts records it, until
   every device of the wave succeeded), CPU per process, feedback/event/KV rates, answers other
   than 2xx/429.
5. **After.** PSS per process again, ``pg_database_size``, and the gateway mirror's bytes per
   entry, measured in a separate process that loads the stack's real ``devices`` and
   ``deployments`` buckets through the gateway's own ``BucketMirror`` under ``tracemalloc``
   (and its RSS delta).

Prints a Markdown report and writes ``bench/results/scale-<UTC time>.json``. Everything listens on
127.0.0.1 (never the machine's NATS 4222 or PostgreSQL 5432); every child is stopped at the end,
also after errors, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import fleet_overload
import httpx
import nats
import uvloop
from benchlib import Children, git_version, machine_busy_seconds, say
from fleet_bench import _hms, _tree, build_image, fleet_config, machine, machine_text, settle
from gaggle_peer import GaggleStack

from gaggle_contracts import names
from gaggle_servers import free_port
from gaggle_sim import Fleet

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BOARD = "sim-scale"
PREFIX = "scale-"
NEW_VERSION = "2.0.0"
GOAL_P99_MS = 50.0
_PAGE = os.sysconf("SC_PAGE_SIZE")

_LABELS = (
    ("gaggle_gateway", "gateway"),
    ("gaggle_registry", "registry"),
    ("gaggle_artifacts", "artifacts"),
    ("gaggle_rollouts", "rollouts"),
    ("gaggle_console", "console"),
    ("gaggle-stack", "stack (supervisor)"),
    ("gaggle_stack", "stack (supervisor)"),
    ("nats-server", "nats"),
    ("postgres", "postgres"),
)


# --------------------------------------------------------------------------------------------
# Processes: CPU and memory per process of the stack, spares told apart


def _label(pid: int) -> str:
    """Which part of the stack ``pid`` is; ``(spare)`` for a warm spare waiting to be started."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "other"
    name = next((label for key, label in _LABELS if key in cmd), "other")
    if name in ("gateway", "registry", "artifacts", "rollouts", "console"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            if b"GAGGLE_STANDBY_FD=" in f.read():
                name += " (spare)"
    return name


def _rollup(pid: int) -> dict[str, int]:
    """``smaps_rollup`` of ``pid`` in bytes: Rss, Pss, Private_Clean, Private_Dirty, ..."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == b"kB":
                out[parts[0].rstrip(b":").decode()] = int(parts[1]) * 1024
    return out


def memory_by_part(roots: list[int]) -> dict[str, dict[str, float]]:
    """RSS, PSS and USS in MiB and the process count per part of the stack (PostgreSQL summed).

    RSS counts every shared page once per process (libraries, PostgreSQL's shared buffers);
    PSS divides each shared page among the processes that map it, so PSS adds up to what the
    machine holds; USS is what only that process holds (what stopping it would free).
    """
    pids, _ = _tree(roots)
    parts: dict[str, dict[str, float]] = {}
    for pid in pids:
        try:
            roll = _rollup(pid)
        except (OSError, ValueError):
            continue
        part = parts.setdefault(
            _label(pid), {"processes": 0, "rss": 0.0, "pss": 0.0, "uss": 0.0, "anon": 0.0}
        )
        part["processes"] += 1
        part["rss"] += roll.get("Rss", 0) / 2**20
        part["pss"] += roll.get("Pss", 0) / 2**20
        part["uss"] += (roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0)) / 2**20
        part["anon"] += roll.get("Anonymous", 0) / 2**20
    return {k: {f: round(v, 1) for f, v in d.items()} for k, d in sorted(parts.items())}


def cpu_by_part(roots: list[int], own: bool = True) -> dict[str, float]:
    """CPU seconds so far per part of the stack; ``simulator``: this process (``own``)."""
    pids, cpu = _tree(roots)
    parts: dict[str, float] = {}
    for pid in pids:
        name = _label(pid).removesuffix(" (spare)")
        parts[name] = parts.get(name, 0.0) + cpu[pid]
    if own:
        times = os.times()
        parts["simulator (bench process)"] = times.user + times.system
    parts["machine"] = machine_busy_seconds()
    return parts


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per part between two readings; ``other``: the rest of the machine."""
    used = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in after}
    ours = sum(v for k, v in used.items() if k != "machine")
    used["other"] = round(max(0.0, used["machine"] - ours), 2)
    return used


# --------------------------------------------------------------------------------------------
# Rates: JetStream (events, KV writes) and PostgreSQL (rows written per schema)


class Counters:
    """Reads the counters the rates are differences of."""

    def __init__(self, nats_url: str, pg_socket_dir: Path) -> None:
        self.nats_url = nats_url
        self.pg_socket_dir = pg_socket_dir
        self._nc: Any = None
        self._pg: asyncpg.Connection | None = None

    async def open(self) -> None:
        """Connect to the stack's NATS and PostgreSQL."""
        self._nc = await nats.connect(self.nats_url, name="scale-bench")
        self._pg = await asyncpg.connect(
            host=str(self.pg_socket_dir), user="postgres", database="gaggle"
        )

    async def close(self) -> None:
        """Disconnect."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()

    async def read(self) -> dict[str, float]:
        """Stream sequences (messages ever stored) and PostgreSQL's rows written per schema."""
        out: dict[str, float] = {"t": time.perf_counter()}
        js = self._nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            key = "events" if name == names.STREAM else f"kv {name.removeprefix('KV_')}"
            out[key] = float(info.state.last_seq)
            out[f"{key} bytes"] = float(info.state.bytes)
        if self._pg is None:
            raise RuntimeError("not connected")
        rows = await self._pg.fetch(
            "SELECT schemaname, sum(n_tup_ins) AS ins, sum(n_tup_upd) AS upd,"
            " sum(n_tup_del) AS del FROM pg_stat_user_tables GROUP BY schemaname"
        )
        for r in rows:
            out[f"pg {r['schemaname']} rows written"] = float(r["ins"] + r["upd"] + r["del"])
        row = await self._pg.fetchrow(
            "SELECT xact_commit, pg_database_size(datname) AS size FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        if row is None:
            raise RuntimeError("no statistics for the database")
        out["pg commits"] = float(row["xact_commit"])
        out["pg database bytes"] = float(row["size"])
        return out

    async def tables(self) -> list[dict[str, Any]]:
        """The largest tables: size with indexes and TOAST, MiB, and live rows."""
        if self._pg is None:
            raise RuntimeError("not connected")
        rows = await self._pg.fetch(
            "SELECT schemaname || '.' || relname AS name, pg_total_relation_size(relid) AS size,"
            " n_live_tup AS rows FROM pg_stat_user_tables ORDER BY size DESC LIMIT 12"
        )
        return [
            {"table": r["name"], "mib": round(r["size"] / 2**20, 2), "rows": r["rows"]}
            for r in rows
        ]

    async def subjects(self) -> dict[str, int]:
        """Messages the events stream holds per subject kind (the subject's last two tokens)."""
        js = self._nc.jetstream()
        with contextlib.suppress(Exception):
            info = await js.stream_info(names.STREAM, subjects_filter=">")
            kinds: dict[str, int] = {}
            for subject, count in (info.state.subjects or {}).items():
                kind = ".".join(subject.split(".")[-2:])
                kinds[kind] = kinds.get(kind, 0) + count
            return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
        return {}


def rates(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-second rates of every counter between two readings (sizes as they are after)."""
    dt = after["t"] - before["t"]
    out: dict[str, float] = {"seconds": round(dt, 1)}
    for key, value in after.items():
        if key in ("t", "pg database bytes"):
            continue
        out[f"{key}/s"] = round((value - before.get(key, 0.0)) / dt, 1) if dt > 0 else 0.0
    out["pg database MiB"] = round(after.get("pg database bytes", 0.0) / 2**20, 1)
    return out


# --------------------------------------------------------------------------------------------
# The gateway mirror's bytes per entry, measured in a process of its own


def mirror_probe(nats_url: str, *, before: bool = True) -> dict[str, Any]:
    """Load the ``devices`` and ``deployments`` buckets as the gateway does; bytes per entry.

    Each figure comes from a fresh interpreter (``--mirror-probe``) that imports everything and
    connects first, then loads one bucket through the gateway's own ``BucketMirror``:

    * ``traced``: what ``tracemalloc`` counts the mirror holding once loaded (keys, parsed
      models, the dictionary), the watch's buffers collected;
    * ``rss``: what the process grew by, allocator overhead included (no tracemalloc running,
      whose own bookkeeping would count too).

    Each is measured as the mirror works now (equal payloads share one parsed value) and with
    that sharing switched off (one parsed model per entry, as before).
    """
    out: dict[str, Any] = {}
    for bucket in (names.BUCKET_DEVICES, names.BUCKET_DEPLOYMENTS):
        figures: dict[str, Any] = {}
        for share in ("shared", "unshared") if before else ("shared",):
            for method in ("traced", "rss"):
                done = subprocess.run(  # noqa: S603
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--mirror-probe",
                        f"{nats_url} {bucket} {share} {method}",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                if done.returncode != 0:
                    figures[f"{share} {method} error"] = done.stderr[-1500:]
                    continue
                one = json.loads(done.stdout)
                figures["entries"] = one["entries"]
                figures["kv_bytes_per_entry"] = one["kv_bytes_per_entry"]
                figures[f"{share} {method}"] = one["bytes_per_entry"]
                if method == "traced":
                    figures[f"{share} top"] = one["top"]
        out[bucket] = figures
    return out


class _NoSharing(dict[bytes, Any]):
    """A ``BucketMirror._parsed`` that remembers nothing: one parsed model per entry."""

    def get(self, key: bytes, default: Any = None) -> Any:
        return default

    def __setitem__(self, key: bytes, value: Any) -> None:
        return None


async def _probe(spec: str) -> dict[str, Any]:
    """One bucket loaded into a ``BucketMirror``: entries and bytes per entry (see above)."""
    import ctypes
    import gc
    import tracemalloc

    from gaggle_gateway.mirror import Mirror
    from gaggle_runtime.mirror import BucketMirror

    nats_url, bucket, share, method = spec.split()
    libc = ctypes.CDLL("libc.so.6")

    def rss() -> int:
        gc.collect()
        libc.malloc_trim(0)  # what the allocator could give back is not held by the mirror
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE

    nc = await nats.connect(nats_url, name="scale-bench-mirror-probe")
    try:
        js = nc.jetstream()
        kv = await js.key_value(bucket)
        kv_bytes = (await kv.status()).stream_info.state.bytes
        # The gateway's own mirror of the bucket, as it builds it.
        mirror: BucketMirror[Any] = {
            names.BUCKET_DEVICES: Mirror().devices,
            names.BUCKET_DEPLOYMENTS: Mirror().deployments,
        }[bucket]
        if share == "unshared":
            mirror._parsed = _NoSharing()
            mirror.compact = None
        gc.collect()
        before = rss()
        if method == "traced":
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
        task = asyncio.create_task(mirror.watch(lambda: js))
        await asyncio.wait_for(mirror.loaded.wait(), 300)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        mirror._parsed = {}  # the sharing memory is bounded; not what grows with the fleet
        gc.collect()
        top: list[dict[str, Any]] = []
        if method == "traced":
            held = tracemalloc.get_traced_memory()[0] - before
            top = [
                {"where": str(s.traceback[0]), "bytes": s.size, "count": s.count}
                for s in tracemalloc.take_snapshot().statistics("lineno")[:5]
            ]
            tracemalloc.stop()
        else:
            held = rss() - before
        n = len(mirror.values)
        return {
            "entries": n,
            "kv_bytes_per_entry": round(kv_bytes / n, 1) if n else None,
            "bytes_per_entry": round(held / n, 1) if n else None,
            "top": top,
        }
    finally:
        await nc.close()


# --------------------------------------------------------------------------------------------
# Phases


async def wait_listed(
    stack: GaggleStack, client: httpx.AsyncClient, n: int, version: str, timeout: float
) -> float:
    """Seconds until the registry lists ``n`` devices of the board with ``version``."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    while True:
        listed = 0
        with contextlib.suppress(httpx.TransportError):
            listed = await stack.count_listed(client, PREFIX, BOARD, version)
        if listed >= n:
            return time.perf_counter() - t0
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the registry listed {listed:,} of {n:,} devices with {version}")
        stack.check_alive()
        say(f"registry lists {listed:,} of {n:,} devices with {version}")
        await asyncio.sleep(3.0)


class Window:
    """Base-poll latencies recorded from now on (the simulator keeps them for the whole run)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.samples: list[float] = []
        self._orig: Callable[[float], None] | None = None

    def __enter__(self) -> Window:
        stats = self.fleet.stats
        self._orig = stats.latency
        samples = self.samples

        def record(ms: float, _orig: Callable[[float], None] = self._orig) -> None:
            samples.append(ms)
            _orig(ms)

        stats.latency = record  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._orig is not None:
            self.fleet.stats.latency = self._orig  # type: ignore[method-assign]

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile in ms, None without samples."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 2)


class Sampler:
    """PSS per part every ``every_s`` seconds: the peak of each part over a phase."""

    def __init__(self, roots: list[int], every_s: float = 5.0) -> None:
        self.roots = roots
        self.every_s = every_s
        self.peak: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sample from now on."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            parts = await asyncio.to_thread(memory_by_part, self.roots)
            total = 0.0
            for name, figures in parts.items():
                self.peak[name] = max(self.peak.get(name, 0.0), figures["pss"])
                total += figures["pss"]
            self.peak["total"] = max(self.peak.get("total", 0.0), total)
            await asyncio.sleep(self.every_s)

    async def stop(self) -> dict[str, float]:
        """The peaks, MiB."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {k: round(v, 1) for k, v in self.peak.items()}


async def idle_memory(
    stack: GaggleStack, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, float]]:
    """PSS per process once the stack is up and its spares have imported everything.

    Also the CPU seconds each part used over the last half of that wait: what an idle stack
    costs, to tell the per-poll cost from the background's.
    """
    await asyncio.sleep(args.idle_wait / 2)
    cpu0 = await asyncio.to_thread(cpu_by_part, stack.roots(), False)
    await asyncio.sleep(args.idle_wait / 2)
    cpu1 = await asyncio.to_thread(cpu_by_part, stack.roots(), False)
    used = cpu_used(cpu0, cpu1)
    used["seconds"] = round(args.idle_wait / 2, 1)
    return await asyncio.to_thread(memory_by_part, stack.roots()), used


async def register(
    stack: GaggleStack,
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    fleet: Fleet,
    counters: Counters,
) -> dict[str, Any]:
    """The fleet makes first contact and settles at the normal interval."""
    n = args.devices
    c0 = await counters.read()
    cpu0 = await asyncio.to_thread(cpu_by_part, stack.roots())
    t0 = time.perf_counter()
    await fleet.start()
    deadline = t0 + args.phase_timeout
    while fleet.stats.config_sent < n:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {fleet.stats.config_sent:,} of {n:,} devices registered")
        stack.check_alive()
        await asyncio.sleep(1.0)
    sent_s = time.perf_counter() - t0
    say(f"{n:,} configData answered 200 after {sent_s:.1f} s")
    await wait_listed(stack, client, n, "1.0.0", args.phase_timeout)
    listed_s = time.perf_counter() - t0
    try:
        settled_s: float | None = await settle(fleet, args.poll, args.settle_timeout)
    except TimeoutError:
        # The gateway still stretches some devices' sleep: measured as it is, and said.
        settled_s = None
        say(f"not every device polls every {args.poll:g} s after {args.settle_timeout:g} s")
    cpu1 = await asyncio.to_thread(cpu_by_part, stack.roots())
    c1 = await counters.read()
    say(
        f"{n:,} devices registered: configData in {sent_s:.1f} s, listed after {listed_s:.1f} s,"
        f" every device polls every {args.poll:g} s again "
        f"{'(not all)' if settled_s is None else f'{settled_s:.1f} s'} later"
    )
    return {
        "config_sent_s": round(sent_s, 1),
        "listed_s": round(listed_s, 1),
        "registrations_per_s": round(n / listed_s, 1),
        "settled_s": None if settled_s is None else round(settled_s, 1),
        "cpu_s": cpu_used(cpu0, cpu1),
        "rates": rates(c0, c1),
        "answers": fleet_overload.since(fleet.stats.snapshot(), _zero()),
    }


def _zero() -> dict[str, Any]:
    return {
        "other_answers": 0,
        "throttle_wait_s": 0.0,
        "throttled": {},
        "server_errors": {},
        "dropped": {},
        "answers": {},
    }


async def steady(
    stack: GaggleStack, args: argparse.Namespace, fleet: Fleet, counters: Counters
) -> dict[str, Any]:
    """The fleet polls with nothing to do for ``--steady-seconds``."""
    say(
        f"steady: {args.steady_seconds:g} s of {args.devices:,} devices polling every "
        f"{args.poll:g} s"
    )
    before = fleet.stats.snapshot()
    c0 = await counters.read()
    cpu0 = await asyncio.to_thread(cpu_by_part, stack.roots())
    sampler = Sampler(stack.roots())
    sampler.start()
    with Window(fleet) as window:
        await asyncio.sleep(args.steady_seconds)
    peak = await sampler.stop()
    cpu1 = await asyncio.to_thread(cpu_by_part, stack.roots())
    c1 = await counters.read()
    seconds = c1["t"] - c0["t"]
    res = {
        "seconds": round(seconds, 1),
        "polls": len(window.samples),
        "polls_per_s": round(len(window.samples) / seconds, 1),
        "asked_polls_per_s": round(args.devices / args.poll, 1),
        "p50_ms": window.percentile(50),
        "p99_ms": window.percentile(99),
        "max_ms": window.percentile(100),
        "cpu_s": cpu_used(cpu0, cpu1),
        "rates": rates(c0, c1),
        "peak_pss_mib": peak,
        "answers": fleet_overload.since(fleet.stats.snapshot(), before),
    }
    say(
        f"steady: {res['polls_per_s']:,.0f} polls/s, p50 {res['p50_ms']} ms, "
        f"p99 {res['p99_ms']} ms; CPU {json.dumps(res['cpu_s'])}"
    )
    return res


async def rollout(
    stack: GaggleStack,
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    fleet: Fleet,
    software_id: str,
    counters: Counters,
) -> dict[str, Any]:
    """One rollout in waves to every device; until all are confirmed and the rollout finished."""
    n = args.devices
    before = fleet.stats.snapshot()
    c0 = await counters.read()
    cpu0 = await asyncio.to_thread(cpu_by_part, stack.roots())
    sampler = Sampler(stack.roots())
    sampler.start()
    body = {
        "name": "scale",
        "software_id": software_id,
        "feed": "default",
        "waves": [{"percent": p} for p in args.waves],
        "success_threshold": args.success_threshold,
        "start": True,
    }
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    while True:
        r = await client.post(
            f"{stack.url('rollouts')}/api/v1/rollouts", json=body, headers=stack.headers()
        )
        if r.status_code == 201:
            break
        if r.status_code not in (404, 409) or time.perf_counter() - t0 > 60:
            raise RuntimeError(f"rollout: {r.status_code} {r.text[:500]}")
        await asyncio.sleep(0.5)
    doc = r.json()
    request_s = time.perf_counter() - t0
    say(
        f"rollout {doc['id']} created in {request_s:.2f} s: "
        f"waves {[w['size'] for w in doc['waves']]}"
    )
    url = f"{stack.url('rollouts')}/api/v1/rollouts/{doc['id']}"
    waves: dict[int, dict[str, Any]] = {
        w["wave"]: {"wave": w["wave"], "size": w["size"]} for w in doc["waves"]
    }
    timeline: list[dict[str, Any]] = []
    deadline = t0 + args.phase_timeout
    state = doc["state"]
    all_confirmed_s: float | None = None
    last_say = 0.0
    with Window(fleet) as window:
        while True:
            now = time.perf_counter() - t0
            stack.check_alive()
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = await client.get(url, headers=stack.headers(), timeout=30)
                if r.status_code == 200:
                    view = r.json()
                    state = view["state"]
                    for w in view["waves"]:
                        mark = waves[w["wave"]]
                        wave_counters = w["counters"]
                        if w.get("started_at") and "started_s" not in mark:
                            at = datetime.fromisoformat(w["started_at"])
                            mark["started_s"] = round((at - started).total_seconds(), 1)
                        if wave_counters.get("success", 0) >= w["size"] and "done_s" not in mark:
                            mark["done_s"] = round(now, 1)
                    timeline.append(
                        {
                            "t": round(now, 1),
                            "confirmed": fleet_overload.confirmed(fleet, NEW_VERSION),
                            **view["counters"],
                        }
                    )
            confirmed = fleet_overload.confirmed(fleet, NEW_VERSION)
            if confirmed >= n and all_confirmed_s is None:
                all_confirmed_s = round(time.perf_counter() - t0, 1)
            if all_confirmed_s is not None and state == "finished":
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"rollout: {confirmed:,} of {n:,} confirmed, state {state}")
            if now - last_say >= 15:
                last_say = now
                say(
                    f"rollout at {now:.0f} s: state {state}, {fleet.stats.successes:,} successes, "
                    f"{confirmed:,} confirmed; waves {list(waves.values())}"
                )
            await asyncio.sleep(args.sample_every)
    finished_s = time.perf_counter() - t0
    peak = await sampler.stop()
    cpu1 = await asyncio.to_thread(cpu_by_part, stack.roots())
    c1 = await counters.read()
    for mark in waves.values():
        if "started_s" in mark and "done_s" in mark:
            mark["took_s"] = round(mark["done_s"] - mark["started_s"], 1)
    snap = fleet.stats.snapshot()
    res = {
        "rollout_id": doc["id"],
        "request_s": round(request_s, 2),
        "waves": list(waves.values()),
        "all_confirmed_s": all_confirmed_s,
        "finished_s": round(finished_s, 1),
        "successes": snap["successes"],
        "failures": snap["failures"],
        "downloaded_gib": round(snap["download_bytes"] / 2**30, 2),
        "poll_p50_ms": window.percentile(50),
        "poll_p99_ms": window.percentile(99),
        "cpu_s": cpu_used(cpu0, cpu1),
        "rates": rates(c0, c1),
        "peak_pss_mib": peak,
        "answers": fleet_overload.since(snap, before),
        "timeline": timeline,
    }
    say(
        f"rollout: all {n:,} confirmed after {all_confirmed_s} s, finished after "
        f"{finished_s:.1f} s; waves {res['waves']}"
    )
    return res


def save(results: dict[str, Any], *, partial: bool = False) -> Path:
    """Write ``results`` to ``bench/results/scale-<start>Z.json`` (also between phases)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = results["started"][:19].replace("-", "").replace(":", "")
    out = RESULTS_DIR / f"scale-{stamp}Z.json"
    out.write_text(json.dumps({**results, "partial": partial}, indent=2, default=str) + "\n")
    return out


async def run(args: argparse.Namespace, tmp: Path, children: Children) -> dict[str, Any]:
    """Start the stack, run the phases, stop it; the results."""
    when = datetime.now(UTC)
    busy0, b0 = machine_busy_seconds(), time.perf_counter()
    await asyncio.sleep(3)
    idle_load = (machine_busy_seconds() - busy0) / (
        (time.perf_counter() - b0) * (os.cpu_count() or 1)
    )
    say(f"machine busy before the start: {idle_load:.0%} of its CPUs (other processes)")
    results: dict[str, Any] = {
        "started": when.isoformat(),
        "code": git_version("libs", "services", "apps", "bench"),
        "machine": {**machine(), "busy_before_start": round(idle_load, 3)},
        "params": {k: v for k, v in vars(args).items() if k != "keep_logs"},
    }
    settings = dict(item.split("=", 1) for item in args.stack_env)
    settings.setdefault("GAGGLE_GATEWAY_POLLING_SLEEP", _hms(args.poll))
    settings.setdefault("GAGGLE_CONSOLE_PORT", str(free_port()))  # not the default 8084
    stack = GaggleStack(children, tmp / "gaggle" / "data", settings)
    counters: Counters | None = None
    try:
        await stack.start(args.start_timeout)
        results["idle_memory_mib"], results["idle_cpu_s"] = await idle_memory(stack, args)
        say(
            "idle PSS per part (MiB): "
            + json.dumps({k: v["pss"] for k, v in results["idle_memory_mib"].items()})
        )
        if args.memory_only:
            return results
        counters = Counters(f"nats://127.0.0.1:{stack.nats_port}", stack.data_dir / "pg")
        await counters.open()
        async with httpx.AsyncClient(timeout=120) as client:
            cap = await stack.set_cap(
                client, args.cap or args.devices, polling_sleep=_hms(args.poll)
            )
            results["cap"] = cap
            (tmp / "image").mkdir()
            image = await asyncio.to_thread(
                build_image, tmp / "image", args.image_mib, args.seed, BOARD
            )
            results["image_bytes"] = image.stat().st_size
            software_id = await stack.upload(client, image)
            config = fleet_config(
                stack,
                args,
                count=args.devices,
                id_prefix=PREFIX,
                hw_model=BOARD,
                poll="server",
                connections=args.connections,
                ramp_up=float(args.ramp_up),
                timeout=60.0,
            )
            fleet = Fleet(config)
            try:
                results["registration"] = await register(stack, args, client, fleet, counters)
                save(results, partial=True)
                results["memory_registered_mib"] = await asyncio.to_thread(
                    memory_by_part, stack.roots()
                )
                results["steady"] = await steady(stack, args, fleet, counters)
                save(results, partial=True)
                results["rollout"] = await rollout(
                    stack, args, client, fleet, software_id, counters
                )
                results["listed_new_s"] = round(
                    await wait_listed(stack, client, args.devices, NEW_VERSION, 120), 1
                )
                results["totals"] = fleet_overload.since(fleet.stats.snapshot(), _zero())
            finally:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(60):
                        await fleet.stop()
        results["memory_after_mib"] = await asyncio.to_thread(memory_by_part, stack.roots())
        if args.after_wait > 0:
            say(f"idle for {args.after_wait:g} s after the rollout, then PSS again")
            await asyncio.sleep(args.after_wait)
            results["memory_idle_after_mib"] = await asyncio.to_thread(
                memory_by_part, stack.roots()
            )
        results["events_by_kind"] = await counters.subjects()
        results["tables"] = await counters.tables()
        size = (await counters.read())["pg database bytes"]
        results["pg_database_mib"] = round(size / 2**20, 1)
        say("measuring the gateway mirror's bytes per entry (separate process)")
        results["mirror"] = await asyncio.to_thread(
            partial(mirror_probe, before=not args.no_before), f"nats://127.0.0.1:{stack.nats_port}"
        )
    finally:
        if counters is not None:
            await counters.close()
        await asyncio.to_thread(stack.stop)
    return results


# --------------------------------------------------------------------------------------------
# Report


def memory_table(title: str, parts: dict[str, dict[str, float]]) -> list[str]:
    """PSS (and RSS, USS) per part of the stack, MiB."""
    lines = [
        title,
        "",
        "| process | count | PSS MiB | USS MiB | RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    totals = {"processes": 0.0, "pss": 0.0, "uss": 0.0, "rss": 0.0}
    for name, f in parts.items():
        lines.append(
            f"| {name} | {f['processes']:.0f} | {f['pss']:,.1f} | {f['uss']:,.1f} "
            f"| {f['rss']:,.1f} |"
        )
        for k in totals:
            totals[k] += f[k]
    lines.append(
        f"| **total** | {totals['processes']:.0f} | {totals['pss']:,.1f} | {totals['uss']:,.1f} "
        f"| {totals['rss']:,.1f} |"
    )
    return lines


def _cpu_line(cpu: dict[str, float], seconds: float) -> str:
    parts = ", ".join(
        f"{k} {v:.1f}" for k, v in cpu.items() if k not in ("machine", "seconds") and v >= 0.05
    )
    return f"{parts}; machine busy {cpu['machine']:.1f} of {seconds * (os.cpu_count() or 1):.1f}"


def _rate_line(r: dict[str, float]) -> str:
    shown = [
        (k.removesuffix("/s"), v)
        for k, v in r.items()
        if k.endswith("/s")
        and v
        and (not k.startswith("kv ") or k in ("kv devices/s", "kv deployments/s"))
    ]
    return (
        ", ".join(f"{k} {v:,.1f}/s" for k, v in shown)
        + f"; database {r['pg database MiB']:,.1f} MiB"
    )


def _answers_line(a: dict[str, Any]) -> str:
    def total(d: dict[str, int]) -> int:
        return sum(d.values())

    return (
        f"5xx {total(a['server_errors']):,} "
        f"{a['server_errors'] if total(a['server_errors']) else ''}, "
        f"dropped {total(a['dropped']):,}, 429 {total(a['throttled']):,}, "
        f"other than 2xx/429 {a['other_answers']:,}"
    )


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    """The Markdown report."""
    n = args.devices
    lines = [
        f"Scale benchmark, {res['started'][:16].replace('T', ' ')} UTC, {res['code']}; "
        f"{machine_text(res['machine'])}; machine busy before the start "
        f"{res['machine']['busy_before_start']:.0%}",
        "",
    ]
    lines += memory_table(
        "Idle stack (ready, its warm spares started, no device), per process:",
        res["idle_memory_mib"],
    )
    idle = res.get("idle_cpu_s") or {}
    if idle:
        lines += [
            "",
            f"- idle CPU s over {idle['seconds']:g} s: {_cpu_line(idle, idle['seconds'])}",
        ]
    if args.memory_only:
        return "\n".join(lines)
    reg, st, ro = res["registration"], res["steady"], res["rollout"]
    feedback = ro["answers"]["answers"].get("feedback", {})
    ok_feedback = sum(v for k, v in feedback.items() if 200 <= int(k) < 300)
    seconds = ro["finished_s"]
    lines += [
        "",
        f"{n:,} devices polling every {args.poll:g} s, "
        f"{res['image_bytes'] / 2**20:.2f} MiB image, "
        f"waves {'/'.join(f'{w:g}%' for w in args.waves)}, "
        f"cap on updates in flight {res['cap']:,}, "
        f"simulator {args.connections} connections",
        "",
        "| phase | figure | value | goal |",
        "| --- | --- | ---: | --- |",
        f"| registration | configData of all answered after, s | {reg['config_sent_s']:,.1f} | |",
        f"| | all listed by the registry after, s | {reg['listed_s']:,.1f} | |",
        f"| | registrations/s | {reg['registrations_per_s']:,.1f} | |",
        f"| steady ({st['seconds']:.0f} s) | polls/s (asked {st['asked_polls_per_s']:,.0f}) "
        f"| {st['polls_per_s']:,.0f} | |",
        f"| | poll p50 / p99 / max ms | {st['p50_ms']} / {st['p99_ms']} / {st['max_ms']} "
        f"| p99 < {GOAL_P99_MS:g}: "
        f"{'met' if (st['p99_ms'] or 1e9) < GOAL_P99_MS else 'NOT met'} |",
    ]
    for w in ro["waves"]:
        lines.append(
            f"| rollout | wave {w['wave']} ({w['size']:,} devices): "
            "started at / all succeeded at / took, s | "
            f"{w.get('started_s', '-')} / {w.get('done_s', '-')} / {w.get('took_s', '-')} | |"
        )
    lines += [
        f"| | all confirmed after, s | {ro['all_confirmed_s']} | |",
        f"| | rollout finished after, s | {ro['finished_s']} | |",
        f"| | successes / failures | {ro['successes']:,} / {ro['failures']:,} | all / 0 |",
        f"| | downloaded, GiB | {ro['downloaded_gib']:,.2f} | |",
        f"| | poll p50 / p99 during the rollout, ms "
        f"| {ro['poll_p50_ms']} / {ro['poll_p99_ms']} | |",
        f"| | feedback answered 2xx per s | {ok_feedback / seconds:,.1f} | |",
        f"| whole run | answers 5xx | {sum(res['totals']['server_errors'].values()):,} | 0 |",
        "| | answers other than 2xx/429 (5xx, dropped, other) "
        f"| {res['totals']['other_answers']:,} | |",
        f"| after | PostgreSQL database, MiB | {res['pg_database_mib']:,.1f} | |",
    ]
    mirror = res.get("mirror", {})
    for bucket in ("devices", "deployments"):
        m = mirror.get(bucket)
        if m and "entries" in m:
            lines.append(
                f"| | gateway mirror `{bucket}` ({m['entries']:,} entries), bytes per entry: "
                "traced / RSS, shared (now) vs unshared (before); JetStream bytes | "
                f"{m.get('shared traced')} / {m.get('shared rss')} vs "
                f"{m.get('unshared traced')} / {m.get('unshared rss')}; "
                f"{m['kv_bytes_per_entry']} | |"
            )
    lines += [
        "",
        f"- registration CPU s: {_cpu_line(reg['cpu_s'], reg['rates']['seconds'])}",
        f"- registration rates: {_rate_line(reg['rates'])}",
        f"- registration answers: {_answers_line(reg['answers'])}",
        f"- steady CPU s: {_cpu_line(st['cpu_s'], st['seconds'])}",
        f"- steady rates: {_rate_line(st['rates'])}",
        f"- steady answers: {_answers_line(st['answers'])}",
        f"- rollout CPU s: {_cpu_line(ro['cpu_s'], ro['rates']['seconds'])}",
        f"- rollout rates: {_rate_line(ro['rates'])}",
        f"- rollout answers: {_answers_line(ro['answers'])}",
        f"- events the stream holds, by kind: {json.dumps(res.get('events_by_kind', {}))}",
        "- largest tables after the rollout (MiB, rows): "
        + ", ".join(f"{t['table']} {t['mib']:,.1f} ({t['rows']:,})" for t in res.get("tables", [])),
        f"- peak PSS MiB, steady: {json.dumps(st['peak_pss_mib'])}",
        f"- peak PSS MiB, rollout: {json.dumps(ro['peak_pss_mib'])}",
        "",
    ]
    lines += memory_table(
        f"After the rollout ({n:,} devices registered and updated), per process:",
        res["memory_after_mib"],
    )
    if "memory_idle_after_mib" in res:
        title = f"{args.after_wait:g} s later, idle again (devices stopped), per process:"
        lines += ["", *memory_table(title, res["memory_idle_after_mib"])]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The arithmetic for a larger fleet, from one run's results

POLL_BENCH_POLLS_PER_S = 19_054
"""``make bench-poll``: base polls/s one gateway worker answered (bench/README.md)."""
REGISTRY_BENCH_CPU_US = (6.5 + 21.3 + 0.8) / 1_000_000 * 1e6
"""``registry_bench.py``: registry + PostgreSQL + NATS CPU µs per sighting absorbed
(6.5 + 21.3 + 0.8 CPU-s for 1,000,000 sightings, bench/README.md)."""
ROLLOUT_BENCH_MS_PER_REPORT = 0.124
"""``rollout_bench.py``: the rollouts process's CPU ms per feedback report (one thread)."""
SIGHTINGS_PER_EVENT = 5000
"""The gateway's ``MAX_SIGHTINGS_PER_EVENT``: one ``device.seen`` event carries at most this."""
SERVER_PARTS = ("gateway", "registry", "rollouts", "artifacts", "postgres", "nats")


def plan(res: dict[str, Any], fleet: int, intervals: tuple[int, ...]) -> str:
    """What ``fleet`` devices need at each poll interval, from the measured unit costs."""
    n = res["params"]["devices"]
    st, ro, idle = res["steady"], res["rollout"], res.get("idle_cpu_s") or {}
    polls_s = st["polls_per_s"]

    def marginal(part: str) -> float:
        """CPU seconds per poll of ``part``: steady minus idle, per poll."""
        busy = st["cpu_s"].get(part, 0.0) / st["seconds"]
        base = idle.get(part, 0.0) / idle["seconds"] if idle else 0.0
        return max(0.0, busy - base) / polls_s

    per_poll = {p: marginal(p) for p in SERVER_PARTS}
    sighting_cpu = per_poll["registry"] + per_poll["postgres"] + per_poll["nats"]
    seconds = ro["rates"]["seconds"]
    per_device = {p: ro["cpu_s"].get(p, 0.0) / n for p in SERVER_PARTS}
    rollout_cpu = sum(per_device.values())
    rr = ro["rates"]
    events_dev = rr["events/s"] * seconds / n
    event_bytes_dev = rr.get("events bytes/s", 0.0) * seconds / n
    kv_dev = rr["kv deployments/s"] * seconds / n
    rows_dev = {
        k.removeprefix("pg ").removesuffix(" rows written/s"): v * seconds / n
        for k, v in rr.items()
        if k.endswith("rows written/s")
    }
    feedback = ro["answers"]["answers"].get("feedback", {})
    reports_dev = sum(v for k, v in feedback.items() if 200 <= int(k) < 300) / n
    sr = st["rates"]
    rows_poll = {
        k.removeprefix("pg ").removesuffix(" rows written/s"): v / polls_s
        for k, v in sr.items()
        if k.endswith("rows written/s")
    }
    seen_bytes = sr.get("events bytes/s", 0.0) / polls_s
    mirror = res.get("mirror", {})
    dev_m = mirror.get("devices", {})
    dep_m = mirror.get("deployments", {})
    db_dev = res["pg_database_mib"] * 2**20 / n
    mirror_entry = (dev_m.get("shared traced") or 0) + (dep_m.get("shared traced") or 0)
    mirror_rss = (dev_m.get("shared rss") or 0) + (dep_m.get("shared rss") or 0)
    run = f"`bench/scale_bench.py --devices {n}` ({res['started'][:16]} UTC)"
    others = ", ".join(f"{p} {v * 1000:.3f}" for p, v in per_poll.items() if p != "gateway")
    lines = [
        "| id | figure | value | measured by |",
        "| --- | --- | ---: | --- |",
        f"| M1 | gateway CPU ms per poll (steady minus idle) | {per_poll['gateway'] * 1000:.3f}"
        f" | {run} |",
        f"| M2 | other parts' CPU ms per poll | {others} | {run} |",
        f"| M3 | registry rows written per poll | {rows_poll.get('registry', 0):.3f} | {run} |",
        f"| M4 | rollouts rows written per poll | {rows_poll.get('rollouts', 0):.3f} | {run} |",
        "| M5 | server CPU ms per device updated | "
        + ", ".join(f"{p} {v * 1000:.2f}" for p, v in per_device.items())
        + f"; all {rollout_cpu * 1000:.1f} | {run} |",
        f"| M6 | events per device updated | {events_dev:.1f} ({event_bytes_dev:,.0f} bytes) "
        f"| {run} |",
        f"| M7 | deployments KV writes per device updated | {kv_dev:.1f} | {run} |",
        f"| M8 | feedback reports per device updated | {reports_dev:.1f} | {run} |",
        "| M9 | rows written per device updated | "
        + ", ".join(f"{k} {v:.1f}" for k, v in rows_dev.items() if v)
        + f" | {run} |",
        f"| M10 | JetStream bytes per KV entry | devices {dev_m.get('kv_bytes_per_entry')}, "
        f"deployments {dep_m.get('kv_bytes_per_entry')} | {run} |",
        f"| M11 | gateway mirror bytes per entry, tracemalloc (RSS after a cold load) | devices "
        f"{dev_m.get('shared traced')} ({dev_m.get('shared rss')}), before "
        f"{dev_m.get('unshared traced')} ({dev_m.get('unshared rss')}); deployments "
        f"{dep_m.get('shared traced')} ({dep_m.get('shared rss')}), before "
        f"{dep_m.get('unshared traced')} ({dep_m.get('unshared rss')}) | {run} |",
        f"| M12 | PostgreSQL bytes per device after one rollout | {db_dev:,.0f} | {run} |",
        f"| M13 | base polls/s of one gateway worker | {POLL_BENCH_POLLS_PER_S:,} | "
        "`make bench-poll` (bench/README.md) |",
        f"| M14 | registry + PostgreSQL + NATS CPU µs per sighting | {REGISTRY_BENCH_CPU_US:.1f}"
        " | `bench/registry_bench.py` (bench/README.md) |",
        f"| M15 | rollouts CPU ms per feedback report (one thread) | "
        f"{ROLLOUT_BENCH_MS_PER_REPORT} | `bench/rollout_bench.py` (bench/README.md) |",
        "",
        f"{fleet:,} devices:",
        "",
        "| poll interval | polls/s | gateway cores (M1 / M13) | sightings: "
        "registry+PG+NATS cores (M2 / M14) | registry rows/s (M3) | rollouts rows/s (M4) "
        "| device.seen events/s (at least) | device.seen MB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for interval in intervals:
        rate = fleet / interval
        lines.append(
            f"| {interval // 60} min | {rate:,.0f} | {rate * per_poll['gateway']:,.1f} / "
            f"{rate / POLL_BENCH_POLLS_PER_S:,.1f} | {rate * sighting_cpu:,.1f} / "
            f"{rate * REGISTRY_BENCH_CPU_US / 1e6:,.1f} | "
            f"{rate * rows_poll.get('registry', 0):,.0f} | "
            f"{rate * rows_poll.get('rollouts', 0):,.0f} | {rate / SIGHTINGS_PER_EVENT:,.0f} | "
            f"{rate * seen_bytes / 1e6:,.2f} |"
        )
    lines += [
        "",
        "| fleet memory and storage | value |",
        "| --- | ---: |",
        f"| JetStream KV `devices` | {fleet * (dev_m.get('kv_bytes_per_entry') or 0) / 2**30:,.2f}"
        " GiB |",
        "| JetStream KV `deployments` (after a rollout) | "
        f"{fleet * (dep_m.get('kv_bytes_per_entry') or 0) / 2**30:,.2f} GiB |",
        "| one gateway process mirroring all of it (M11: tracemalloc / RSS after a cold load) | "
        f"{fleet * mirror_entry / 2**30:,.2f} / {fleet * mirror_rss / 2**30:,.2f} GiB |",
        f"| PostgreSQL after one rollout | {fleet * db_dev / 2**30:,.1f} GiB |",
        f"| image bytes moved by one rollout | {fleet * res['image_bytes'] / 2**40:,.2f} TiB |",
        "",
        "| one rollout to all | value |",
        "| --- | ---: |",
        f"| server CPU | {fleet * rollout_cpu / 3600:,.0f} core-hours |",
        f"| events | {fleet * events_dev / 1e6:,.0f} million "
        f"({fleet * event_bytes_dev / 2**30:,.1f} GiB) |",
        f"| deployments KV writes (each to every gateway watching) | {fleet * kv_dev / 1e6:,.0f}"
        " million |",
        f"| rows written | {fleet * sum(rows_dev.values()) / 1e6:,.0f} million |",
        f"| feedback reports | {fleet * reports_dev / 1e6:,.0f} million; one rollouts process "
        f"at {ROLLOUT_BENCH_MS_PER_REPORT} ms each: "
        f"{fleet * reports_dev * ROLLOUT_BENCH_MS_PER_REPORT / 1000 / 3600:,.1f} h |",
        "",
        f"A rollout to all {fleet:,} in a given time (R devices/s; a wave lasts at least one poll "
        "interval, so three waves at 60-minute polls take three hours at the least):",
        "",
        "| rollout in | R devices/s | server cores (M5) | events/s (M6) | deployments KV "
        "writes/s = watch deliveries/s per gateway process (M7) | rows/s "
        + " / ".join(k for k in rows_dev if rows_dev[k])
        + " (M9) | image Gbit/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for hours in (1, 6, 24):
        r = fleet / (hours * 3600)
        lines.append(
            f"| {hours} h | {r:,.0f} | {r * rollout_cpu:,.1f} | {r * events_dev:,.0f} | "
            f"{r * kv_dev:,.0f} | "
            + " / ".join(f"{r * v:,.0f}" for v in rows_dev.values() if v)
            + f" | {r * res['image_bytes'] * 8 / 1e9:,.1f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description="Gaggle on one box: a fleet, steady polls, a rollout.")
    p.add_argument("--devices", type=int, default=100_000, help="fleet size (100000)")
    p.add_argument("--poll", type=int, default=60, help="polling interval, s (60)")
    p.add_argument(
        "--ramp-up",
        type=float,
        default=None,
        help="first polls spread over, s (devices/600, at least --poll)",
    )
    p.add_argument("--steady-seconds", type=float, default=60.0, help="steady window, s (60)")
    p.add_argument("--waves", default="1,10,89", help="wave sizes in percent (1,10,89)")
    p.add_argument(
        "--success-threshold", type=int, default=80, help="next wave after this %% of one (80)"
    )
    p.add_argument("--cap", type=int, default=0, help="cap on updates in flight (0: --devices)")
    p.add_argument("--image-mib", type=float, default=1.0, help="image payload MiB (1)")
    p.add_argument(
        "--connections", type=int, default=1000, help="simulator requests in flight (1000)"
    )
    p.add_argument("--verify", default="sha256", choices=["sha256", "head", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sample-every", type=float, default=2.0, help="rollout progress read every, s (2)"
    )
    p.add_argument(
        "--idle-wait", type=float, default=30.0, help="s after ready before idle PSS (30)"
    )
    p.add_argument(
        "--after-wait", type=float, default=75.0, help="idle s after the rollout, then PSS (75)"
    )
    p.add_argument(
        "--no-before",
        action="store_true",
        help="measure the mirror only as it works now, not also without sharing",
    )
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=300.0,
        help="s to wait for every device to poll at the normal interval again (300)",
    )
    p.add_argument("--memory-only", action="store_true", help="only the idle PSS per process")
    p.add_argument("--phase-timeout", type=float, default=1800.0, help="s per phase (1800)")
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--stack-env", action="append", default=[], metavar="GAGGLE_X=VALUE")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--mirror-probe", metavar="NATS_URL", help=argparse.SUPPRESS)
    p.add_argument(
        "--plan",
        metavar="RESULTS_JSON",
        help="print the arithmetic for --plan-devices devices from a run's results file, and stop",
    )
    p.add_argument("--plan-devices", type=int, default=10_000_000, help="(10000000)")
    args = p.parse_args(argv)
    try:
        args.waves = [float(w) for w in args.waves.split(",") if w.strip()]
    except ValueError:
        p.error("--waves: comma-separated percentages")
    if not args.waves or min(args.waves) <= 0 or abs(sum(args.waves) - 100) > 1e-6:
        p.error("--waves: positive percentages adding up to 100")
    if min(args.devices, args.poll, args.connections) < 1:
        p.error("--devices, --poll and --connections must be positive")
    if args.ramp_up is None:
        args.ramp_up = max(float(args.poll), args.devices / 600)
    for item in args.stack_env:
        if not item.startswith("GAGGLE_") or "=" not in item:
            p.error(f"--stack-env {item!r}: GAGGLE_<SETTING>=<value>")
    # fleet_config's fields the other benchmark has
    args.seed = int(args.seed)
    return args


def _sigterm(_signo: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran, 1 on failure, 130 on Ctrl-C."""
    args = parse_args(argv)
    if args.mirror_probe:
        print(json.dumps(asyncio.run(_probe(args.mirror_probe))))  # noqa: T201
        return 0
    if args.plan:
        res = json.loads(Path(args.plan).read_text())
        print(plan(res, args.plan_devices, (60, 300, 3600)))  # noqa: T201
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, _sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="gaggle-scalebench-"))
    children = Children(stop_timeout=30.0)
    code = 0
    try:
        say(f"temporary directory {tmp}")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(run(args, tmp, children))
        text = report(results, args)
        results["table"] = text
        print(text)  # noqa: T201
        out = save(results)
        say(f"results written to {out.relative_to(BENCH_DIR.parent)}")
    except KeyboardInterrupt:
        say("interrupted; stopping every child process")
        code = 130
    except Exception as exc:
        say(f"FAILED: {exc!r}")
        args.keep_logs = True
        code = 1
    finally:
        children.stop_all()
        if args.keep_logs:
            say(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
