"""Poll benchmark: the DDI gateway's base poll next to a bare FastAPI endpoint, same run.

    .venv/bin/python bench/poll_bench.py [--devices 10000 --connections 64 --duration 10 \
        --workers 1,2]

Starts its own NATS (free port, temporary directory), seeds ``--devices`` known devices into KV
``devices`` for tenant ``default``, then for each worker count W: starts the gateway
(``python -m gaggle_gateway`` with ``GAGGLE_GATEWAY_WORKERS=W``) and ``bench/bare_app.py`` (same
uvicorn options, same W, a body as long as the gateway's poll answer), waits until every worker of
both is up, and drives each with wrk (``-t2 -c<connections> -d<duration> --latency``, a Lua
script cycling through all controller ids): a warm-up, then the measured load phase. Prints
requests per second, p50 and p99 latency, the ratio gateway/bare per W, and whether the goals
(ratio >= 0.8, gateway p99 < 25 ms) are met; writes the same as JSON to
``bench/results/poll-<timestamp>.json``.

The check scenario (on unless ``--no-checks``; needs wrk) puts attended upgrade checks
(``POST /{tenant}/upgrade/v1/check``, by board) next to the polls, against the same gateway in
the same run: it also starts PostgreSQL (embedded) and the rollouts service
(``python -m gaggle_rollouts``), announces one software for the board, and cycles through
``--check-variants`` distinct checks (half of them answered 200 with an offer, half 204 up to
date). Each gateway worker asks rollouts once per distinct check and then answers it from memory
for ``GAGGLE_GATEWAY_UPGRADE_MEMORY_S`` (10 s by default), as a fleet of identical devices would
be answered.

Everything listens on 127.0.0.1 only; every step has a time limit; every child process (NATS,
gateway and bare workers, wrk) is stopped at the end, also on errors and Ctrl-C. Without wrk
(``apt-get install wrk``) a built-in Python load generator is used instead and says so; it
competes harder for the CPU, so its figures are lower and only roughly comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import orjson
from benchlib import Children, child_env, say, tail

from gaggle_contracts import names
from gaggle_contracts.events import Compatibility, SoftwareCreated
from gaggle_contracts.kv import DeviceEntry
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_runtime.db import ensure_database, with_database
from gaggle_runtime.jetstream import ensure_all
from gaggle_servers import EmbeddedPostgres, NatsProcess, free_port

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
TENANT = "default"
ID_PREFIX = "bench-"
GOAL_RATIO = 0.8
GOAL_P99_MS = 25.0
WRK_INSTALL_HINT = (
    "wrk not found. Install it for trustworthy figures: `sudo apt-get install wrk` "
    "(Debian/Ubuntu), `sudo dnf install wrk` (Fedora) or `brew install wrk` (macOS)."
)


CHECK_BOARD = "benchboard"
CHECK_OFFERED = "2.0.0"


def check_body(k: int) -> bytes:
    """The k-th distinct check: even ones run an older version (200), odd ones a newer (204)."""
    version = f"1.0.{k}" if k % 2 == 0 else f"2.0.{k}"
    return orjson.dumps({"board": CHECK_BOARD, "revision": "1.0", "version": version})


def controller_id(i: int) -> str:
    """The i-th seeded controller id."""
    return f"{ID_PREFIX}{i:06d}"


# --------------------------------------------------------------------------------------------
# Child processes


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``; (status, body), status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    port: int,
    marker: str,
    workers: int,
    timeout: float,
) -> None:
    """Wait until ``workers`` workers logged ``marker`` and ``/readyz`` says 200.

    Raises:
        RuntimeError: the process exited, or ``timeout`` passed; the log's tail is included.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        started = log.read_text(errors="replace").count(marker)
        if started >= workers and http_get(f"http://{HOST}:{port}/readyz")[0] == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{tail(log)}")


def http_post(url: str, body: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """POST JSON ``body`` to ``url``; (status, body), status 0 when nothing answered."""
    request = urllib.request.Request(  # noqa: S310 (loopback only)
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


# --------------------------------------------------------------------------------------------
# Seeding


async def seed(nats_url: str, devices: int, timeout: float) -> None:
    """Create the stream and buckets, then put ``devices`` known devices into KV ``devices``."""
    async with asyncio.timeout(timeout):
        nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await ensure_all(js, CommonSettings(nats_url=nats_url))
            kv = await js.key_value(names.BUCKET_DEVICES)
            value = DeviceEntry(config_requested=False).model_dump_json().encode()
            batch = 500
            for start in range(0, devices, batch):
                await asyncio.gather(
                    *(
                        kv.put(names.kv_key(TENANT, controller_id(i)), value)
                        for i in range(start, min(start + batch, devices))
                    )
                )
        finally:
            await nc.close()


async def announce_software(nats_url: str, timeout: float) -> None:
    """``software.created`` for one image of the check board, as artifacts would publish it."""
    async with asyncio.timeout(timeout):
        broker = make_broker(nats_url, "poll-bench")
        await broker.connect()
        try:
            digest = "0" * 64
            await publish_event(
                broker,
                SoftwareCreated(
                    tenant=TENANT,
                    software_id="1",
                    name="bench-image",
                    version=CHECK_OFFERED,
                    filename="bench-image.swu",
                    size=1 << 20,
                    md5=digest[:32],
                    sha1=digest[:40],
                    sha256=digest,
                    compatibility=[Compatibility(hw_model=CHECK_BOARD, hw_revision="*")],
                    external_url="https://images.example/bench-image.swu",
                ),
            )
        finally:
            await broker.stop()


def start_rollouts(
    args: argparse.Namespace, children: Children, tmp: Path, nats_url: str, pg_url: str
) -> subprocess.Popen[bytes]:
    """The rollouts service on its own database, answering checks; the software announced."""
    database_url = with_database(pg_url, "bench")
    asyncio.run(ensure_database(database_url))
    port = free_port()
    log = tmp / "rollouts.log"
    say(f"starting rollouts on {HOST}:{port}")
    proc = children.spawn(
        [sys.executable, "-m", "gaggle_rollouts"],
        child_env(
            GAGGLE_NATS_URL=nats_url,
            GAGGLE_DATABASE_URL=database_url,
            GAGGLE_ROLLOUTS_HOST=HOST,
            GAGGLE_ROLLOUTS_PORT=str(port),
            GAGGLE_LOG_JSON="false",
            GAGGLE_LOG_LEVEL="INFO",
        ),
        log,
    )
    wait_ready("rollouts", proc, log, port, "service started", 1, args.start_timeout)
    asyncio.run(announce_software(nats_url, timeout=30))
    return proc


def check_check_answers(port: int, timeout: float) -> bytes:
    """Wait until a check is offered the announced software; one offer's body.

    Raises:
        RuntimeError: no offer within ``timeout``, or a 204 that should be an offer.
    """
    url = f"http://{HOST}:{port}/{TENANT}/upgrade/v1/check"
    deadline = time.monotonic() + timeout
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, body = http_post(url, check_body(0))
        if status == 200:
            break
        time.sleep(0.5)  # rollouts has not taken in the software yet; each worker remembers
    else:
        raise RuntimeError(f"a check answered {status} {body!r}, not an offer")
    status, _ = http_post(url, check_body(1))
    if status != 204:
        raise RuntimeError(f"a check of a newer version answered {status}, not 204")
    return body


# --------------------------------------------------------------------------------------------
# Load generation


@dataclass
class Load:
    """One measured load phase."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    """Socket errors, timeouts and non-2xx answers."""
    raw: str = field(default="", repr=False)


WRK_SCRIPT = """
-- Cycles every connection's requests through all seeded controller ids.
local n = {devices}
local reqs = {{}}
local i = 0
local threads = 0

function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function init(args)
  for k = 0, n - 1 do
    reqs[k] = wrk.format("GET", string.format("/{tenant}/controller/v1/{prefix}%06d", k))
  end
  i = (offset or 0) % n
end

function request()
  i = (i + 1) % n
  return reqs[i]
end
"""

WRK_CHECK_SCRIPT = """
-- Cycles every connection's requests through the distinct checks.
local n = @variants@
local reqs = {}
local i = 0
local threads = 0

function setup(thread)
  thread:set("offset", threads * 31)
  threads = threads + 1
end

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  for k = 0, n - 1 do
    local version
    if k % 2 == 0 then version = "1.0." .. k else version = "2.0." .. k end
    local body = '{"board":"@board@","revision":"1.0","version":"' .. version .. '"}'
    reqs[k] = wrk.format("POST", "/@tenant@/upgrade/v1/check", headers, body)
  end
  i = (offset or 0) % n
end

function request()
  i = (i + 1) % n
  return reqs[i]
end
"""

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def _find(pattern: str, out: str) -> re.Match[str]:
    m = re.search(pattern, out, re.M)
    if m is None:
        raise RuntimeError(f"unexpected wrk output (no {pattern!r}):\n{out}")
    return m


def parse_wrk(out: str) -> Load:
    """Read requests/s, p50, p99 and errors from ``wrk --latency`` output."""
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = _find(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    p50 = _find(r"^\s+50%\s+(\S+)", out)
    p99 = _find(r"^\s+99%\s+(\S+)", out)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return Load(
        requests=int(total.group(1)),
        seconds=_ms(total.group(2) + total.group(3)) / 1000,
        rps=rps,
        p50_ms=_ms(p50.group(1)),
        p99_ms=_ms(p99.group(1)),
        errors=errors,
        raw=out,
    )


def run_wrk(script: Path, port: int, threads: int, connections: int, duration: float) -> Load:
    """One wrk run against ``port``."""
    args = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        f"http://{HOST}:{port}/",
    ]
    done = subprocess.run(  # noqa: S603
        args, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


async def _py_load(port: int, connections: int, duration: float, devices: int) -> Load:
    """Closed-loop HTTP/1.1 keep-alive load from this process (fallback without wrk)."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def conn(offset: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        i = offset
        try:
            while True:
                i = (i + 1) % devices
                req = (
                    f"GET /{TENANT}/controller/v1/{controller_id(i)} HTTP/1.1\r\n"
                    f"Host: {HOST}:{port}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m:
                    await reader.readexactly(int(m.group(1)))
                latencies.append(time.perf_counter() - t0)
                if not head.startswith(b"HTTP/1.1 2"):
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    async with asyncio.timeout(duration + 30):
        results = await asyncio.gather(
            *(conn(k * 7919) for k in range(connections)), return_exceptions=True
        )
    errors += sum(1 for r in results if isinstance(r, BaseException))
    seconds = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        raise RuntimeError("no request completed")

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return Load(len(latencies), seconds, len(latencies) / seconds, pct(0.50), pct(0.99), errors)


def run_python(port: int, connections: int, duration: float, devices: int) -> Load:
    """The fallback load generator, with uvloop when available."""
    try:
        import uvloop

        return uvloop.run(_py_load(port, connections, duration, devices))
    except ImportError:
        return asyncio.run(_py_load(port, connections, duration, devices))


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Row:
    """One target at one worker count."""

    target: str
    workers: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    rounds: list[dict[str, float]]


def measure(
    args: argparse.Namespace, script: Path | None, port: int, target: str, workers: int
) -> Row:
    """Warm up, then ``args.rounds`` load phases; the round with the median req/s is kept."""

    def once(duration: float) -> Load:
        if script is not None:
            return run_wrk(script, port, args.threads, args.connections, duration)
        return run_python(port, args.connections, duration, args.devices)

    say(f"{target} W={workers}: warm-up {args.warmup:g} s")
    once(args.warmup)
    loads: list[Load] = []
    for r in range(args.rounds):
        say(
            f"{target} W={workers}: load {args.duration:g} s at {args.connections} connections"
            + (f" (round {r + 1}/{args.rounds})" if args.rounds > 1 else "")
        )
        load = once(args.duration)
        say(
            f"  {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
            f"errors {load.errors}"
        )
        loads.append(load)
    ordered = sorted(loads, key=lambda x: x.rps)
    mid = ordered[(len(ordered) - 1) // 2]
    return Row(
        target,
        workers,
        mid.rps,
        mid.p50_ms,
        mid.p99_ms,
        mid.errors,
        mid.requests,
        [{"rps": x.rps, "p50_ms": x.p50_ms, "p99_ms": x.p99_ms, "errors": x.errors} for x in loads],
    )


def check_poll_answers(port: int, devices: int) -> bytes:
    """A few polls of seeded ids must be 200 and known (no configData link); return one body.

    Raises:
        RuntimeError: an answer is not what a known device gets.
    """
    body = b""
    for i in {0, devices // 2, devices - 1}:
        url = f"http://{HOST}:{port}/{TENANT}/controller/v1/{controller_id(i)}"
        status, body = http_get(url)
        if status != 200 or b"configData" in body:
            raise RuntimeError(f"poll of a seeded device answered {status} {body!r}")
    return body


def bench_workers(
    args: argparse.Namespace,
    children: Children,
    tmp: Path,
    nats_url: str,
    script: Path | None,
    workers: int,
    check_script: Path | None = None,
) -> tuple[Row, Row, int, Row | None]:
    """Gateway and bare app at one worker count; both stopped before returning."""
    gw_port, bare_port = free_port(), free_port()
    gw_log, bare_log = tmp / f"gateway-w{workers}.log", tmp / f"bare-w{workers}.log"
    say(f"starting gateway with {workers} worker(s) on {HOST}:{gw_port}")
    gateway = children.spawn(
        [sys.executable, "-m", "gaggle_gateway"],
        child_env(
            GAGGLE_NATS_URL=nats_url,
            GAGGLE_GATEWAY_HOST=HOST,
            GAGGLE_GATEWAY_PORT=str(gw_port),
            GAGGLE_GATEWAY_WORKERS=str(workers),
            GAGGLE_LOG_JSON="false",
            GAGGLE_LOG_LEVEL="INFO",
        ),
        gw_log,
    )
    try:
        wait_ready(
            "gateway", gateway, gw_log, gw_port, "service started", workers, args.start_timeout
        )
        body = check_poll_answers(gw_port, args.devices)
        say(f"gateway ready; a poll answer is {len(body)} bytes: {body.decode()}")
        say(f"starting bare FastAPI app with {workers} worker(s) on {HOST}:{bare_port}")
        pythonpath = os.pathsep.join(
            p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
        bare = children.spawn(
            [
                sys.executable,
                "-m",
                "bare_app",
                "--host",
                HOST,
                "--port",
                str(bare_port),
                "--workers",
                str(workers),
            ],
            child_env(
                PYTHONPATH=pythonpath, BENCH_BARE_BODY=body.decode(), BENCH_BARE_RENDER=args.bare
            ),
            bare_log,
        )
        try:
            wait_ready(
                "bare app",
                bare,
                bare_log,
                bare_port,
                "bare worker ready",
                workers,
                args.start_timeout,
            )
            bare_body = http_get(f"http://{HOST}:{bare_port}/{TENANT}/controller/v1/x")[1]
            if len(bare_body) != len(body):
                raise RuntimeError(f"bare body is {len(bare_body)} bytes, poll {len(body)}")
            gw_row = measure(args, script, gw_port, "gateway", workers)
            check_row = None
            if check_script is not None:
                offer = check_check_answers(gw_port, args.start_timeout)
                say(f"checks answered; an offer is {len(offer)} bytes")
                check_row = measure(args, check_script, gw_port, "check", workers)
            bare_row = measure(args, script, bare_port, "bare", workers)
            for name, proc, log in (("gateway", gateway, gw_log), ("bare app", bare, bare_log)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} died under load:\n{tail(log)}")
        finally:
            children.stop(bare)
    finally:
        children.stop(gateway)
    return gw_row, bare_row, len(body), check_row


def report(rows: list[Row], args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """The printed table and the per-worker-count verdicts."""
    lines = [
        f"{'target':<8} {'workers':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r.target:<8} {r.workers:>7} {r.rps:>9,.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.errors:>7}"
        )
    lines.append("")
    verdicts: list[dict[str, Any]] = []
    for w in sorted({r.workers for r in rows}):
        gw = next(r for r in rows if r.target == "gateway" and r.workers == w)
        bare = next(r for r in rows if r.target == "bare" and r.workers == w)
        ratio = gw.rps / bare.rps if bare.rps else 0.0
        v = {
            "workers": w,
            "ratio": round(ratio, 3),
            "ratio_met": ratio >= GOAL_RATIO,
            "gateway_p99_ms": gw.p99_ms,
            "p99_met": gw.p99_ms < GOAL_P99_MS,
            "errors": gw.errors + bare.errors,
        }
        verdicts.append(v)
        lines.append(
            f"W={w}: gateway/bare = {ratio:.2f} (goal >= {GOAL_RATIO}: "
            f"{'met' if v['ratio_met'] else 'NOT met'}); gateway p99 = {gw.p99_ms:.1f} ms at "
            f"{args.connections} connections (goal < {GOAL_P99_MS:g} ms: "
            f"{'met' if v['p99_met'] else 'NOT met'})"
            + (f"; {v['errors']} errors!" if v["errors"] else "")
        )
        check = next((r for r in rows if r.target == "check" and r.workers == w), None)
        if check is not None:
            v["checks_per_s"] = round(check.rps, 1)
            v["polls_per_s"] = round(gw.rps, 1)
            lines.append(
                f"W={w}: {check.rps:,.0f} checks/s next to {gw.rps:,.0f} polls/s "
                f"(checks/polls = {check.rps / gw.rps if gw.rps else 0.0:.2f}), check p99 = "
                f"{check.p99_ms:.1f} ms"
                + (f"; {check.errors} check errors!" if check.errors else "")
            )
    return "\n".join(lines), verdicts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(
        description="DDI base-poll throughput and latency: gateway vs bare FastAPI endpoint."
    )
    p.add_argument("--devices", type=int, default=10_000, help="known devices seeded (10000)")
    p.add_argument("--connections", type=int, default=64, help="concurrent connections (64)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load phase (10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target (3)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure, e.g. 1,2 (1,2)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="load phases per target; the median by req/s is reported (1)",
    )
    p.add_argument(
        "--bare",
        choices=["bytes", "dict"],
        default="bytes",
        help="the bare endpoint returns pre-rendered bytes, as the gateway does, or a dict that "
        "FastAPI serialises itself (bytes)",
    )
    p.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="wrk, the built-in Python generator, or auto: wrk if installed (auto)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds a server may take to become ready (60)",
    )
    p.add_argument(
        "--checks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure attended upgrade checks against the same gateway (needs wrk; "
        "starts PostgreSQL and rollouts) (on)",
    )
    p.add_argument(
        "--check-variants",
        type=int,
        default=100,
        help="distinct checks cycled through (100)",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the temporary directory with the server logs"
    )
    args = p.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        p.error("--workers: comma-separated integers, e.g. 1,2")
    if not args.worker_counts or min(args.worker_counts) < 1:
        p.error("--workers: at least one count, each >= 1")
    if args.check_variants < 1:
        p.error("--check-variants must be positive")
    if args.devices < 1 or args.connections < 1 or args.duration <= 0 or args.rounds < 1:
        p.error("--devices, --connections, --duration and --rounds must be positive")
    return args


def _sigterm(_signo: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (goals met or not), 1 on failure, 130 on Ctrl-C."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    wrk = shutil.which("wrk")
    if args.loadgen == "wrk" and not wrk:
        say(WRK_INSTALL_HINT)
        return 2
    use_wrk = args.loadgen != "python" and wrk is not None
    if not use_wrk and args.loadgen == "auto":
        say(WRK_INSTALL_HINT)
        say(
            "falling back to the built-in Python load generator: it needs more CPU than wrk "
            "and takes it from the servers, so figures are lower and only roughly comparable"
        )

    tmp = Path(tempfile.mkdtemp(prefix="gaggle-bench-"))
    children = Children()
    nats_server = NatsProcess(tmp / "nats", log_file=tmp / "nats.log")
    postgres = EmbeddedPostgres(tmp / "pg")
    checks = args.checks and use_wrk
    if args.checks and not use_wrk:
        say("the check scenario needs wrk; measuring polls only")
    rows: list[Row] = []
    body_len = 0
    started = datetime.now(UTC)
    try:
        say(f"temporary directory {tmp}")
        nats_server.start()
        say(f"NATS on {nats_server.url}; seeding {args.devices:,} known devices")
        t0 = time.monotonic()
        asyncio.run(seed(nats_server.url, args.devices, timeout=120))
        say(f"seeded in {time.monotonic() - t0:.1f} s")
        script: Path | None = None
        if use_wrk:
            script = tmp / "poll.lua"
            script.write_text(
                WRK_SCRIPT.format(devices=args.devices, tenant=TENANT, prefix=ID_PREFIX)
            )
        check_script: Path | None = None
        if checks:
            pg_url = postgres.start()
            say(f"PostgreSQL started (embedded): {pg_url}")
            start_rollouts(args, children, tmp, nats_server.url, pg_url)
            check_script = tmp / "check.lua"
            check_script.write_text(
                WRK_CHECK_SCRIPT.replace("@variants@", str(args.check_variants))
                .replace("@board@", CHECK_BOARD)
                .replace("@tenant@", TENANT)
            )
        for w in args.worker_counts:
            gw_row, bare_row, body_len, check_row = bench_workers(
                args, children, tmp, nats_server.url, script, w, check_script
            )
            rows += [gw_row, bare_row] + ([check_row] if check_row else [])
    except KeyboardInterrupt:
        say("interrupted; stopping every child process")
        return 130
    except Exception as exc:
        say(f"FAILED: {exc}")
        say(f"logs kept in {tmp}")
        args.keep_logs = True
        return 1
    finally:
        children.stop_all()
        nats_server.stop()
        postgres.stop()
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)

    table, verdicts = report(rows, args)
    loadgen = "wrk" if use_wrk else "python (fallback)"
    header = (
        f"DDI base poll, {args.devices:,} known devices, {args.connections} connections, "
        f"{args.duration:g} s per phase, load generator {loadgen}"
        + (f" -t{args.threads}" if use_wrk else "")
        + f", {os.cpu_count()} CPUs shared with the load generator, body {body_len} bytes"
        + f", bare endpoint returns {args.bare}"
        + (f"; checks: {args.check_variants} distinct, by board" if checks else "")
    )
    print(header)  # noqa: T201
    print(table)  # noqa: T201
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"poll-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "params": {
                    "devices": args.devices,
                    "connections": args.connections,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "workers": args.worker_counts,
                    "threads": args.threads,
                    "rounds": args.rounds,
                    "loadgen": loadgen,
                    "checks": checks,
                    "check_variants": args.check_variants if checks else None,
                },
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "body_bytes": body_len,
                "goals": {"ratio_min": GOAL_RATIO, "p99_ms_max": GOAL_P99_MS},
                "rows": [asdict(r) for r in rows],
                "verdicts": verdicts,
                "median_ratio": statistics.median(v["ratio"] for v in verdicts),
            },
            indent=2,
        )
        + "\n"
    )
    say(f"results written to {out.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
