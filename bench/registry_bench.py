"""Registry benchmark: ``device.seen`` sightings absorbed per second, and device-list latency.

    .venv/bin/python bench/registry_bench.py [--devices 100000 --sightings 1000000 --concurrency 8]

Starts its own NATS (free port) and PostgreSQL (embedded, Unix socket) in a temporary directory,
then the registry the documented way (``python -m gaggle_registry``), waits for ``/readyz``, and:

1. Seed: COPYs ``--devices`` devices (``bench-000000``, ...) of tenant ``default`` straight into
   ``registry.devices`` once the service has migrated its schema, and sets their last seen time
   and address in ``registry.device_presence``. Hardware models, revisions, software versions,
   update states, tags (region, ``beta``, ``canary``, one of 1,000 sites), names and last-seen
   times are varied and skewed, so the list filters select from about 0.1 % to 80 % of the
   devices. Then ``VACUUM ANALYZE``.
2. Sightings: pauses the registry's durable consumer ``registry_device_seen``, publishes
   ``--sightings`` sightings as ``DeviceSeen`` events of ``--batch`` (5,000) sightings each on
   ``ota.v1.default.device.seen`` (``publish_raw``, ``Nats-Msg-Id`` = event id), every device
   once per round in a fresh random order, as polls arrive; then resumes the consumer and times
   until it has acked everything (``num_pending == 0`` and ``num_ack_pending == 0``). The rate
   reported is sightings / (resume -> all acked): publishing is excluded and reported on its own
   line. Afterwards every device's ``last_seen_at`` and ``last_address`` must be those of its
   last round. Redeliveries (from the consumer sequence), deadlocks logged by the registry, and
   the CPU seconds of the registry, PostgreSQL (backends and workers included), NATS, this client
   and the rest of the machine say where the time went.
3. List: ``GET /api/v1/devices`` at ``--concurrency`` requests in flight, after a warm-up: first
   page (default sort), deep pages following ``next`` (default sort and ``-last_seen``),
   ``sort=-last_seen``, and the filters ``hw_model``, ``state``, ``tag``, ``q``, ``seen_after``
   and a combination. The client is one lean keep-alive HTTP/1.1 connection per worker
   (``--client httpx`` for httpx, which costs the shared CPUs about 1.4 ms per answer); every
   answer is checked afterwards (status, filter, order, no overlap between the pages of a chain).
   The same listings are then run from here on one connection as the service runs them
   (``fetch_listing``), giving the database's share per kind (``db p50``/``db p99``), and
   ``EXPLAIN (ANALYZE, BUFFERS)`` of each kind's slowest request is stored in the results.
4. Prints a table, the goals (>= 20,000 sightings/s; list p99 < 50 ms) and whether they are met
   (plans of kinds over the goal go to stderr); writes the same, with every list sample, to
   ``bench/results/registry-<UTC timestamp>.json`` (git-ignored).

``--registry-env GAGGLE_PULL_BATCH=1`` (any ``GAGGLE_*`` setting) changes the registry's
configuration, ``--vacuum`` runs ``VACUUM ANALYZE`` between phases 2 and 3, ``--kinds`` picks the
list requests. Everything listens on 127.0.0.1 or a Unix socket (never the machine's NATS on 4222
or PostgreSQL on 5432); every phase has a time limit; every child process is stopped at the end,
also after errors, Ctrl-C or SIGTERM. ``--keep-logs`` keeps the temporary directory (always kept
after a failure); ``--hold`` keeps the servers running after the results until Ctrl-C, for psql
(``psql "<database URL printed>"``) and py-spy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import nats
import orjson
from benchlib import (
    Children,
    CpuMeter,
    admin_key,
    bounded,
    child_env,
    cpu_text,
    git_version,
    postmaster_pid,
    run_with_servers,
    say,
    tail,
    wait_ready,
)

from gaggle_contracts import names
from gaggle_contracts.events import DeviceSeen
from gaggle_registry.domain import decode_cursor
from gaggle_registry.listing import DeviceQuery, build_list_query, fetch_listing
from gaggle_runtime.bus import make_broker, publish_raw
from gaggle_runtime.db import ensure_database, with_database
from gaggle_servers import free_port

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
TENANT = "default"
ID_PREFIX = "bench-"
GOAL_SIGHTINGS_PER_S = 20_000.0
GOAL_LIST_P99_MS = 50.0
DURABLE = names.durable("registry", DeviceSeen.kind)
ROUND_GAP = timedelta(seconds=60)
"""Between two sightings of the same device in consecutive rounds."""
SPREAD_S = 6 * 3600
"""Last sightings are spread over the six hours before the end of the last round."""

T = TypeVar("T")


def code_version() -> str:
    """The commit the service runs from, ``+dirty`` when its code differs from it."""
    return git_version("services/registry", "libs")


def controller_id(i: int) -> str:
    """The i-th seeded controller id."""
    return f"{ID_PREFIX}{i:06d}"


# --------------------------------------------------------------------------------------------
# Child processes


# --------------------------------------------------------------------------------------------
# Seeding

MODELS = [  # (hw_model, weight): a skewed fleet
    ("gw-100", 40),
    ("gw-200", 25),
    ("sensor-s1", 15),
    ("sensor-s2", 8),
    ("cam-x", 5),
    ("cam-xl", 4),
    ("edge-9", 2.5),
    ("lab-proto", 0.5),
]
REVISIONS = ["a", "b", "c", "d"]
VERSIONS = [f"4.{minor}.0" for minor in range(12)]
VERSION_WEIGHTS = [1, 1, 1, 2, 2, 3, 4, 5, 8, 12, 25, 36]
STATES = [  # (update_state, weight)
    ("up_to_date", 78),
    ("unknown", 10),
    ("pending", 5),
    ("downloading", 2),
    ("installing", 1.5),
    ("success", 3),
    ("error", 0.5),
]
REGIONS = ["eu", "us", "apac"]
CITIES = ["Hamburg", "Lyon", "Austin", "Osaka", "Porto", "Turku", "Quito", "Perth", "Graz", "Oslo"]
SITES = 1000


def seed_rows(
    devices: int, now: datetime, rng: random.Random
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows for ``registry.devices`` (``SEED_COLUMNS``) and presence (``PRESENCE_COLUMNS``)."""
    models, model_w = zip(*MODELS, strict=True)
    states, state_w = zip(*STATES, strict=True)
    rows = []
    presence = []
    for i in range(devices):
        model = rng.choices(models, model_w)[0]
        revision = rng.choice(REVISIONS)
        version = rng.choices(VERSIONS, VERSION_WEIGHTS)[0]
        state = rng.choices(states, state_w)[0]
        tags = [rng.choice(REGIONS), f"site-{rng.randrange(SITES):04d}"]
        if rng.random() < 0.05:
            tags.append("beta")
        if rng.random() < 0.01:
            tags.append("canary")
        name = f"{model} {i} {rng.choice(CITIES)}" if rng.random() < 0.4 else None
        created = now - timedelta(seconds=rng.randrange(365 * 86400))
        seen = (
            None if rng.random() < 0.03 else now - timedelta(seconds=rng.randrange(7, 37) * 86400)
        )
        attributes = {
            "hw_boardname": model,
            "hw_revision": revision,
            "sw_version": version,
            "serial": f"SN{rng.randrange(10**9):09d}",
            "kernel": f"6.{rng.randrange(1, 13)}.{rng.randrange(40)}",
        }
        installed = version if state in ("up_to_date", "success") else None
        rows.append(
            (
                TENANT,
                controller_id(i),
                name,
                f"sha256:{rng.getrandbits(128):032x}",
                model,
                revision,
                version,
                json.dumps(attributes),
                False,
                state,
                tags,
                "poll",
                created,
                created,
                installed,
            )
        )
        presence.append(
            (controller_id(i), seen, f"192.168.{(i >> 8) & 255}.{i & 255}" if seen else None)
        )
    return rows, presence


SEED_COLUMNS = [
    "tenant",
    "controller_id",
    "name",
    "token_hash",
    "hw_model",
    "hw_revision",
    "sw_version",
    "attributes",
    "config_requested",
    "update_state",
    "tags",
    "registered_via",
    "created_at",
    "updated_at",
    "installed_version",
]
PRESENCE_COLUMNS = ["controller_id", "last_seen_at", "last_address"]


async def seed(database_url: str, devices: int, now: datetime, rng: random.Random) -> float:
    """COPY the devices into the migrated tables and ANALYZE them; return the seconds it took.

    Every device gets its presence row from the table's trigger; its last seen time and address
    are then set from a COPY into a temporary table.
    """
    t0 = time.perf_counter()
    rows, presence = seed_rows(devices, now, rng)
    conn = await asyncpg.connect(database_url)
    try:
        existing = await conn.fetchval("SELECT count(*) FROM registry.devices")
        if existing:
            raise RuntimeError(f"registry.devices already holds {existing} rows")
        async with conn.transaction():
            await conn.copy_records_to_table(
                "devices", schema_name="registry", columns=SEED_COLUMNS, records=rows
            )
            await conn.execute(
                "CREATE TEMPORARY TABLE seed_presence"
                " (controller_id text, last_seen_at timestamptz, last_address text) ON COMMIT DROP"
            )
            await conn.copy_records_to_table(
                "seed_presence", columns=PRESENCE_COLUMNS, records=presence
            )
            await conn.execute(
                "UPDATE registry.device_presence AS p"
                " SET last_seen_at = s.last_seen_at, last_address = s.last_address"
                " FROM seed_presence AS s"
                " WHERE p.tenant = $1 AND p.controller_id = s.controller_id",
                TENANT,
            )
        await conn.execute("VACUUM ANALYZE registry.devices")
        await conn.execute("VACUUM ANALYZE registry.device_presence")
    finally:
        await conn.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Sightings


@dataclass
class Plan:
    """The sightings to publish, and what each device's row must say afterwards."""

    payloads: list[tuple[str, bytes]]
    """(message id, DeviceSeen JSON) per event."""
    sightings: int
    rounds: int
    final_seen: dict[str, datetime]
    final_address: dict[str, str]


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def plan_sightings(
    devices: int, sightings: int, batch: int, end: datetime, rng: random.Random
) -> Plan:
    """Every device once per round, rounds in order, each round's polls in a random order.

    A device's sighting in round r is at ``end - (rounds-1-r) * ROUND_GAP - offset(device)``,
    its address ``10.<r>.<hi>.<lo>``; so its last round holds both its newest time and address.
    """
    rounds = max(1, -(-sightings // devices))
    offsets = [rng.randrange(SPREAD_S) for _ in range(devices)]
    ids = [controller_id(i) for i in range(devices)]
    occurred = _iso(datetime.now(UTC))
    payloads: list[tuple[str, bytes]] = []
    order = list(range(devices))
    final_seen: dict[str, datetime] = {}
    final_address: dict[str, str] = {}
    for r in range(rounds):
        rng.shuffle(order)
        base = end - (rounds - 1 - r) * ROUND_GAP
        seen = [base - timedelta(seconds=off) for off in offsets]
        seen_text = [_iso(s) for s in seen]
        for start in range(0, devices, batch):
            chunk = order[start : start + batch]
            event_id = str(uuid.uuid4())
            body = {
                "event_id": event_id,
                "tenant": TENANT,
                "occurred_at": occurred,
                "schema_version": 1,
                "sightings": [
                    {
                        "controller_id": ids[i],
                        "seen_at": seen_text[i],
                        "address": f"10.{r % 256}.{(i >> 8) & 255}.{i & 255}",
                    }
                    for i in chunk
                ],
            }
            payloads.append((event_id, orjson.dumps(body)))
        if r == rounds - 1:
            for i in range(devices):
                final_seen[ids[i]] = seen[i]
                final_address[ids[i]] = f"10.{r % 256}.{(i >> 8) & 255}.{i & 255}"
    # The payloads are what the gateway would send: they must validate as the contract.
    DeviceSeen.model_validate_json(payloads[0][1])
    return Plan(payloads, rounds * devices, rounds, final_seen, final_address)


@dataclass
class SightingsResult:
    """Phase 2."""

    events: int
    sightings: int
    batch: int
    rounds: int
    event_bytes_max: int
    publish_s: float
    publish_per_s: float
    drain_s: float
    """Consumer resumed -> everything acked."""
    drain_from_first_delivery_s: float
    sightings_per_s: float
    """sightings / drain_s: what the registry absorbed, publishing excluded."""
    peak_per_s: float
    """Best one-second window of acked sightings."""
    redelivered: int
    deadlocks_logged: int
    errors_logged: int
    rows_checked: int
    rows_wrong: int
    cpu_s: dict[str, float]
    progress: list[dict[str, float]] = field(default_factory=list)


async def consumer_state(js: Any) -> Any:
    """Consumer info of the registry's ``device.seen`` durable."""
    return await js.consumer_info(names.STREAM, DURABLE)


async def sightings_phase(
    args: argparse.Namespace,
    nats_url: str,
    database_url: str,
    registry: subprocess.Popen[bytes],
    registry_log: Path,
    meter: CpuMeter,
    end: datetime,
    rng: random.Random,
) -> SightingsResult:
    """Pause the consumer, publish every event, resume, time until all acked, check rows."""
    say(f"building {args.sightings:,} sightings in events of {args.batch:,}")
    plan = await asyncio.to_thread(
        plan_sightings, args.devices, args.sightings, args.batch, end, rng
    )
    biggest = max(len(p) for _, p in plan.payloads)
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    broker = make_broker(nats_url, "registry-bench")
    try:
        if biggest > nc.max_payload:
            raise RuntimeError(
                f"an event is {biggest:,} bytes, NATS allows {nc.max_payload:,}: lower --batch"
            )
        js = nc.jetstream()
        info = await bounded("consumer look-up", 10, consumer_state(js))
        if info.num_pending or info.num_ack_pending:
            raise RuntimeError(f"consumer {DURABLE} not idle before the run: {info}")
        start_seq = info.delivered.stream_seq
        start_deliveries = info.delivered.consumer_seq

        def redeliveries(info: Any) -> int:
            """Deliveries so far beyond the first of each event delivered."""
            first = len(plan.payloads) - info.num_pending
            return int(info.delivered.consumer_seq - start_deliveries - first)

        await js.pause_consumer(names.STREAM, DURABLE, _iso(datetime.now(UTC) + timedelta(hours=1)))
        say(f"consumer {DURABLE} paused; publishing {len(plan.payloads)} events")
        await broker.connect()
        subject = names.subject(TENANT, DeviceSeen.kind)
        sem = asyncio.Semaphore(8)

        async def publish(msg_id: str, payload: bytes) -> None:
            async with sem:
                await publish_raw(broker, subject, payload, msg_id, timeout=30)

        t0 = time.perf_counter()
        await bounded(
            "publishing",
            args.phase_timeout,
            asyncio.gather(*(publish(m, p) for m, p in plan.payloads)),
        )
        publish_s = time.perf_counter() - t0
        say(f"published in {publish_s:.2f} s ({plan.sightings / publish_s:,.0f} sightings/s)")
        info = await consumer_state(js)
        if info.num_pending != len(plan.payloads):
            raise RuntimeError(
                f"{info.num_pending} events pending after publishing {len(plan.payloads)}"
            )
        per_event = args.batch

        cpu0 = meter.snapshot()
        progress: list[dict[str, float]] = []
        first_delivery: float | None = None
        say("resuming the consumer; waiting until every event is acked")
        t0 = time.perf_counter()
        await js.resume_consumer(names.STREAM, DURABLE)
        deadline = t0 + args.phase_timeout
        last_sample = -1.0
        while True:
            info = await consumer_state(js)
            now = time.perf_counter() - t0
            if first_delivery is None and info.delivered.stream_seq > start_seq:
                first_delivery = now
            if info.num_pending == 0 and info.num_ack_pending == 0:
                drain_s = now
                break
            if registry.poll() is not None:
                raise RuntimeError(f"registry died while draining:\n{tail(registry_log)}")
            if now - last_sample >= 1.0:
                acked = len(plan.payloads) - info.num_pending - info.num_ack_pending
                progress.append({"t": round(now, 2), "acked_events": acked})
                say(
                    f"  {now:5.1f} s: {acked}/{len(plan.payloads)} events acked, "
                    f"{info.num_ack_pending} in flight, "
                    f"{redeliveries(info)} redelivered"
                )
                last_sample = now
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"consumer not drained after {args.phase_timeout:g} s: {info.num_pending} "
                    f"pending, {info.num_ack_pending} unacked"
                )
            await asyncio.sleep(0.05)
        cpu1 = meter.snapshot()
        progress.append({"t": round(drain_s, 2), "acked_events": len(plan.payloads)})
        # Every delivery advances the consumer sequence, redeliveries included.
        redelivered = redeliveries(info)
    finally:
        with contextlib.suppress(Exception):
            await broker.stop()
        await nc.close()

    peak = 0.0
    for a, b in itertools.pairwise(progress):
        if b["t"] > a["t"]:
            peak = max(
                peak, (b["acked_events"] - a["acked_events"]) * per_event / (b["t"] - a["t"])
            )
    checked, wrong = await check_rows(database_url, plan)
    log_text = (await asyncio.to_thread(registry_log.read_text, errors="replace")).lower()
    result = SightingsResult(
        events=len(plan.payloads),
        sightings=plan.sightings,
        batch=args.batch,
        rounds=plan.rounds,
        event_bytes_max=biggest,
        publish_s=publish_s,
        publish_per_s=plan.sightings / publish_s,
        drain_s=drain_s,
        drain_from_first_delivery_s=drain_s - (first_delivery or 0.0),
        sightings_per_s=plan.sightings / drain_s,
        peak_per_s=peak,
        redelivered=redelivered,
        deadlocks_logged=log_text.count("asyncpg.exceptions.deadlockdetectederror"),
        errors_logged=log_text.count("traceback"),
        rows_checked=checked,
        rows_wrong=wrong,
        cpu_s=CpuMeter.used(cpu0, cpu1),
        progress=progress,
    )
    say(
        f"drained in {drain_s:.2f} s: {result.sightings_per_s:,.0f} sightings/s; "
        + cpu_text(result.cpu_s, drain_s)
    )
    if wrong:
        raise RuntimeError(f"{wrong} of {checked} devices do not show their last sighting")
    return result


async def check_rows(database_url: str, plan: Plan) -> tuple[int, int]:
    """(devices checked, devices whose last_seen_at/last_address are not their last round's)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT controller_id, last_seen_at, last_address FROM registry.device_presence"
            " WHERE tenant = $1",
            TENANT,
        )
    finally:
        await conn.close()
    wrong = 0
    for row in rows:
        cid = row["controller_id"]
        if cid not in plan.final_seen:
            continue
        if (
            row["last_seen_at"] != plan.final_seen[cid]
            or row["last_address"] != (plan.final_address[cid])
        ):
            wrong += 1
    missing = len(plan.final_seen) - sum(1 for r in rows if r["controller_id"] in plan.final_seen)
    return len(plan.final_seen), wrong + missing


# --------------------------------------------------------------------------------------------
# Listing


@dataclass
class Sample:
    """One list request."""

    kind: str
    params: dict[str, str]
    ms: float
    items: int
    at_s: float = 0.0
    """When it started, seconds into the measured phase."""


def _ts(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def check_page(kind: str, params: dict[str, str], items: list[dict[str, Any]]) -> str | None:
    """Why a page's items do not match its request, or None."""
    for it in items:
        if "hw_model" in params and it["hw_model"] != params["hw_model"]:
            return "hw_model filter"
        if "sw_version" in params and it["sw_version"] != params["sw_version"]:
            return "sw_version filter"
        if "state" in params and it["update_state"] != params["state"]:
            return "state filter"
        if "tag" in params and params["tag"] not in it["tags"]:
            return "tag filter"
        if "seen_after" in params and (
            it["last_seen_at"] is None or _ts(it["last_seen_at"]) < _ts(params["seen_after"])
        ):
            return "seen_after filter"
        if "q" in params:
            term = params["q"].lower()
            if term not in it["controller_id"].lower() and term not in (it["name"] or "").lower():
                return "q filter"
    keys: list[Any]
    if params.get("sort", "controller_id").lstrip("-") == "last_seen":
        keys = [
            (
                _ts(it["last_seen_at"]) if it["last_seen_at"] else datetime.min.replace(tzinfo=UTC),
                it["controller_id"],
            )
            for it in items
        ]
    else:
        keys = [it["controller_id"] for it in items]
    if keys != sorted(keys, reverse=params.get("sort", "").startswith("-")):
        return f"order ({kind})"
    return None


KINDS = [
    "first_page",
    "deep",
    "last_seen",
    "deep_last_seen",
    "hw_model",
    "state",
    "tag",
    "q",
    "seen_after",
    "combined",
]


def list_jobs(
    args: argparse.Namespace, end: datetime, rng: random.Random
) -> list[tuple[str, dict[str, str], int]]:
    """(kind, parameters, pages to follow) per job, shuffled."""
    n = args.requests_per_kind
    models = [m for m, _ in MODELS]
    singles: dict[str, Callable[[int], dict[str, str]]] = {
        "first_page": lambda k: {},
        "last_seen": lambda k: {"sort": "-last_seen"},
        "hw_model": lambda k: {"hw_model": models[k % len(models)]},
        "state": lambda k: {"state": ["error", "pending", "up_to_date", "installing"][k % 4]},
        "tag": lambda k: {"tag": ["beta", "canary", "eu", f"site-{k % SITES:04d}"][k % 4]},
        "q": lambda k: {
            "q": [f"{k % 1000:04d}", CITIES[k % len(CITIES)].lower(), "gw-200 12", "nomatch"][k % 4]
        },
        "seen_after": lambda k: {
            "seen_after": _iso(end - timedelta(minutes=[5, 30, 120, 600][k % 4]))
        },
        "combined": lambda k: {
            "hw_model": models[k % 3],
            "sw_version": VERSIONS[-1 - k % 3],
            "sort": "-last_seen",
        },
    }
    jobs: list[tuple[str, dict[str, str], int]] = []
    for kind, make in singles.items():
        if kind in args.kind_list:
            jobs += [(kind, {"tenant": TENANT, **make(k)}, 1) for k in range(n)]
    chains = max(1, n // args.chain_pages)
    for kind, params in (("deep", {}), ("deep_last_seen", {"sort": "-last_seen"})):
        if kind in args.kind_list:
            jobs += [(kind, {"tenant": TENANT, **params}, args.chain_pages + 1)] * chains
    rng.shuffle(jobs)
    return jobs


@dataclass
class ListRun:
    """Phase 3 as a whole."""

    samples: list[Sample]
    warmup_requests: int
    errors: list[str]
    seconds: float
    requests_per_s: float
    cpu_s: dict[str, float]


class RawHttp:
    """One keep-alive HTTP/1.1 connection with the least client work per request.

    httpx spent about 1.4 ms of CPU per 60 KB answer here, on the same two cores as the
    registry and PostgreSQL, which added 10-20 ms to the measured p99; ``--client httpx`` still
    uses it.
    """

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> tuple[int, bytes]:
        """GET ``target`` (path and query); (status, body)."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
        body = await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1]), body

    async def close(self) -> None:
        """Close the connection."""
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def list_phase(
    args: argparse.Namespace,
    port: int,
    key: str,
    end: datetime,
    rng: random.Random,
    meter: CpuMeter,
) -> ListRun:
    """Warm up, then run every job at ``--concurrency``; answers are checked afterwards."""
    path = "/api/v1/devices"
    pages: list[tuple[str, dict[str, str], int, bytes]] = []
    """(kind, parameters, chain id, body) of every answer, checked once the phase is over."""
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    bearer = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(limits=limits, timeout=30.0, headers=bearer) as client:
        phase_start = time.perf_counter()

        async def get(conn: RawHttp, params: dict[str, str]) -> tuple[float, float, bytes]:
            t0 = time.perf_counter()
            if args.client == "httpx":
                resp = await client.get(f"http://{HOST}:{port}{path}", params=params)
                status, body = resp.status_code, resp.content
            else:
                status, body = await conn.get(f"{path}?{urllib.parse.urlencode(params)}")
            ms = (time.perf_counter() - t0) * 1000
            if status != 200:
                raise RuntimeError(f"{status} for {params}: {body[:300]!r}")
            return t0 - phase_start, ms, body

        async def run_job(
            conn: RawHttp,
            chain: int,
            kind: str,
            params: dict[str, str],
            count: int,
            out: list[Sample] | None,
        ) -> None:
            cursor: str | None = None
            for page in range(count):
                p = dict(params)
                if cursor:
                    p["cursor"] = cursor
                at, ms, body = await get(conn, p)
                # The first page of a deep chain is a first page; the rest are deep pages.
                label = (
                    kind
                    if page or count == 1
                    else ("first_page" if "sort" not in params else "last_seen")
                )
                pages.append((label, p, chain, body))
                if out is not None:
                    out.append(Sample(label, p, ms, body.count(b'"controller_id"'), round(at, 3)))
                if count == 1:
                    break
                cursor = orjson.loads(body)["next"]
                if cursor is None:
                    break

        async def workers(
            jobs: list[tuple[str, dict[str, str], int]], out: list[Sample] | None
        ) -> None:
            queue: list[tuple[int, tuple[str, dict[str, str], int]]] = list(enumerate(jobs))
            queue.reverse()

            async def worker() -> None:
                conn = RawHttp(port, key)
                try:
                    while queue:
                        chain, (kind, params, count) = queue.pop()
                        await run_job(conn, chain, kind, params, count, out)
                finally:
                    await conn.close()

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        warm = list_jobs(argparse.Namespace(**{**vars(args), "requests_per_kind": 8}), end, rng)
        say(f"list warm-up: {sum(p for *_, p in warm)} requests")
        await bounded("list warm-up", args.phase_timeout, workers(warm, None))
        pages.clear()
        jobs = list_jobs(args, end, rng)
        samples: list[Sample] = []
        say(
            f"list phase: {sum(p for *_, p in jobs)} requests at concurrency {args.concurrency}, "
            f"client {args.client}"
        )
        cpu0 = meter.snapshot()
        phase_start = t0 = time.perf_counter()
        await bounded("list phase", args.phase_timeout, workers(jobs, samples))
        seconds = time.perf_counter() - t0
        cpu = CpuMeter.used(cpu0, meter.snapshot())
        say(
            f"  {len(samples)} requests in {seconds:.1f} s ({len(samples) / seconds:,.0f}/s); "
            + cpu_text(cpu, seconds)
        )
    errors = check_pages(pages)
    return ListRun(samples, sum(p for *_, p in warm), errors, seconds, len(samples) / seconds, cpu)


def check_pages(pages: list[tuple[str, dict[str, str], int, bytes]]) -> list[str]:
    """Every answer matches its filter and order, and the pages of a chain do not overlap."""
    errors: list[str] = []
    seen: dict[int, set[str]] = defaultdict(set)
    for label, params, chain, body in pages:
        items = orjson.loads(body)["items"]
        problem = check_page(label, params, items)
        ids = {it["controller_id"] for it in items}
        if ids & seen[chain]:
            problem = "pages overlap"
        seen[chain] |= ids
        if problem:
            errors.append(f"{label} {params}: {problem}")
    return errors


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def device_query(params: dict[str, str]) -> DeviceQuery:
    """The repository query the registry builds for these HTTP parameters (as routes.py)."""
    sort = params.get("sort", "controller_id")
    return DeviceQuery(
        tenant=params.get("tenant", TENANT).lower(),
        state=params.get("state"),
        hw_model=params.get("hw_model"),
        hw_revision=params.get("hw_revision"),
        sw_version=params.get("sw_version"),
        tag=params.get("tag"),
        seen_before=_ts(params["seen_before"]) if "seen_before" in params else None,
        seen_after=_ts(params["seen_after"]) if "seen_after" in params else None,
        q=params.get("q"),
        sort=sort.lstrip("-"),
        descending=sort.startswith("-"),
        after=decode_cursor(params["cursor"]) if "cursor" in params else None,
        limit=int(params.get("limit", "100")),
    )


@dataclass
class KindRow:
    """Latency of one kind of list request."""

    kind: str
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_items: float
    db_p50_ms: float = 0.0
    db_p99_ms: float = 0.0
    """The same listing from this process, one connection, run as the service runs it."""
    plan: str = ""
    """EXPLAIN (ANALYZE, BUFFERS) of this kind's slowest parameters."""
    slowest_params: dict[str, str] = field(default_factory=dict)


async def db_side(database_url: str, samples: list[Sample], rows: list[KindRow]) -> None:
    """Time each kind's SQL directly and EXPLAIN ANALYZE its slowest request's parameters."""
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_kind[s.kind].append(s)
    conn = await asyncpg.connect(database_url)
    try:
        for row in rows:
            kind_samples = by_kind[row.kind]
            times = []
            for s in kind_samples:
                t0 = time.perf_counter()
                await fetch_listing(conn, device_query(s.params))
                times.append((time.perf_counter() - t0) * 1000)
            row.db_p50_ms = percentile(times, 0.50)
            row.db_p99_ms = percentile(times, 0.99)
            slowest = max(kind_samples, key=lambda s: s.ms)
            row.slowest_params = slowest.params
            sql, qargs = build_list_query(device_query(slowest.params))
            explain = await conn.prepare(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", name="")
            plan = await explain.fetch(*qargs)
            row.plan = "\n".join(r[0] for r in plan)
    finally:
        await conn.close()


def summarise(samples: list[Sample]) -> tuple[list[KindRow], KindRow]:
    """Per-kind rows (in a fixed order) and the overall row."""
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_kind[s.kind].append(s)

    def row(kind: str, group: list[Sample]) -> KindRow:
        ms = [s.ms for s in group]
        return KindRow(
            kind,
            len(group),
            percentile(ms, 0.50),
            percentile(ms, 0.99),
            max(ms),
            sum(s.items for s in group) / len(group),
        )

    rows = [row(k, by_kind[k]) for k in KINDS if by_kind.get(k)]
    return rows, row("overall", samples)


# --------------------------------------------------------------------------------------------
# The run


TABLES = ("registry.devices", "registry.device_presence")


async def table_stats(database_url: str) -> dict[str, Any]:
    """Row versions, HOT updates, vacuum and analyze runs and size of each registry table."""
    conn = await asyncpg.connect(database_url)
    try:
        stats = await conn.fetch(
            "SELECT relname, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count,"
            " analyze_count, autoanalyze_count, pg_total_relation_size(relid) AS total_bytes"
            " FROM pg_stat_user_tables WHERE relid = ANY($1::regclass[]) ORDER BY relname",
            list(TABLES),
        )
        return {r["relname"]: {k: v for k, v in r.items() if k != "relname"} for r in stats}
    finally:
        await conn.close()


async def run(
    args: argparse.Namespace,
    children: Children,
    tmp: Path,
    nats_url: str,
    nats_pid: int,
    pg_url: str,
    started: datetime,
) -> dict[str, Any]:
    """Start the registry, seed, sightings phase, list phase; the results."""
    database_url = with_database(pg_url, "bench")
    await bounded("database creation", 30, ensure_database(database_url))
    key, key_env = await admin_key(nats_url, TENANT)
    port = free_port()
    log = tmp / "registry.log"
    code = code_version()
    say(f"starting the registry on {HOST}:{port}")
    registry = children.spawn(
        [sys.executable, "-m", "gaggle_registry"],
        child_env(
            **key_env,
            GAGGLE_NATS_URL=nats_url,
            GAGGLE_DATABASE_URL=database_url,
            GAGGLE_REGISTRY_HOST=HOST,
            GAGGLE_REGISTRY_PORT=str(port),
            GAGGLE_LOG_JSON="false",
            GAGGLE_LOG_LEVEL="INFO",
            **args.env,
        ),
        log,
    )
    await wait_ready("registry", registry, log, f"http://{HOST}:{port}/readyz", args.start_timeout)
    say(f"registry ready (pid {registry.pid}); seeding {args.devices:,} devices")
    rng = random.Random(args.seed)
    now = datetime.now(UTC).replace(microsecond=0)
    seed_s = await bounded(
        "seeding",
        args.phase_timeout,
        seed(database_url, args.devices, now - timedelta(hours=1), rng),
    )
    say(f"seeded in {seed_s:.1f} s")
    meter = CpuMeter("registry", registry.pid, postmaster_pid(tmp / "pg"), nats_pid)
    sightings = await sightings_phase(args, nats_url, database_url, registry, log, meter, now, rng)
    table = {"after sightings": await table_stats(database_url)}
    say(f"table after sightings: {table['after sightings']}")
    if args.vacuum:
        say("VACUUM ANALYZE of the registry's tables before the list phase (--vacuum)")
        conn = await asyncpg.connect(database_url)
        try:
            for table_name in TABLES:
                await bounded(
                    "vacuum", args.phase_timeout, conn.execute(f"VACUUM ANALYZE {table_name}")
                )
        finally:
            await conn.close()
        table["after vacuum"] = await table_stats(database_url)
    listing = await list_phase(args, port, key, now, rng, meter)
    table["after list"] = await table_stats(database_url)
    if registry.poll() is not None:
        raise RuntimeError(f"registry died during the list phase:\n{tail(log)}")
    kinds, overall = summarise(listing.samples)
    await bounded(
        "database-side timing", args.phase_timeout, db_side(database_url, listing.samples, kinds)
    )
    res = {
        "code": code,
        "seed_s": seed_s,
        "sightings": sightings,
        "table": table,
        "kinds": kinds,
        "overall": overall,
        "list": listing,
    }
    emit(res, args, started)
    if args.hold:
        say(
            f"holding: registry pid {registry.pid} on port {port}, database {database_url}; "
            "Ctrl-C to stop"
        )
        await asyncio.Event().wait()
    return res


def report(res: dict[str, Any], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The printed table and the verdicts."""
    s: SightingsResult = res["sightings"]
    overall: KindRow = res["overall"]
    listing: ListRun = res["list"]
    lines = [
        f"Registry at {res['code']}, {args.devices:,} devices, tenant {TENANT}, "
        f"{os.cpu_count()} CPUs shared by the registry, PostgreSQL, NATS and this client"
        + (f"; registry env {' '.join(args.registry_env)}" if args.registry_env else ""),
        "",
        f"device.seen: {s.sightings:,} sightings in {s.events} events of {s.batch:,} "
        f"({s.rounds} rounds over every device, max event {s.event_bytes_max / 1024:,.0f} KiB)",
        f"  published (consumer paused)  {s.publish_s:8.2f} s  {s.publish_per_s:>10,.0f} "
        "sightings/s  (not counted below)",
        f"  absorbed (resume -> all acked){s.drain_s:7.2f} s  {s.sightings_per_s:>10,.0f} "
        f"sightings/s  (best 1 s window {s.peak_per_s:,.0f}/s)",
        f"  drain {cpu_text(s.cpu_s, s.drain_s)}",
        f"  redelivered {s.redelivered}, deadlocks logged {s.deadlocks_logged}, tracebacks "
        f"logged {s.errors_logged}; last_seen_at/last_address right on "
        f"{s.rows_checked - s.rows_wrong:,}/{s.rows_checked:,} devices",
        "",
        f"GET /api/v1/devices, limit 100, concurrency {args.concurrency}, client {args.client}, "
        f"{overall.requests} requests after {listing.warmup_requests} warm-up in "
        f"{listing.seconds:.1f} s ({listing.requests_per_s:,.0f}/s), "
        f"{len(listing.errors)} wrong answers" + (", after VACUUM" if args.vacuum else ""),
        f"  {cpu_text(listing.cpu_s, listing.seconds)}",
        f"{'kind':<15} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'items':>6} "
        f"{'db p50':>7} {'db p99':>7}",
    ]
    for r in [*res["kinds"], overall]:
        db = f"{r.db_p50_ms:>7.2f} {r.db_p99_ms:>7.2f}" if r.kind != "overall" else ""
        lines.append(
            f"{r.kind:<15} {r.requests:>8} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.max_ms:>8.2f} "
            f"{r.mean_items:>6.0f} {db}"
        )
    absorb_met = s.sightings_per_s >= GOAL_SIGHTINGS_PER_S
    p99_met = overall.p99_ms < GOAL_LIST_P99_MS
    slow = [r.kind for r in res["kinds"] if r.p99_ms >= GOAL_LIST_P99_MS]
    lines += [
        "",
        f"sightings absorbed = {s.sightings_per_s:,.0f}/s (goal >= {GOAL_SIGHTINGS_PER_S:,.0f}/s: "
        f"{'met' if absorb_met else 'NOT met'})",
        f"list p99 = {overall.p99_ms:.1f} ms overall (goal < {GOAL_LIST_P99_MS:g} ms: "
        f"{'met' if p99_met else 'NOT met'})"
        + (f"; kinds at or over the goal: {', '.join(slow)}" if slow else ""),
    ]
    if listing.errors:
        lines.append(f"WRONG ANSWERS: {listing.errors[:5]}")
    verdicts = {
        "sightings_per_s": round(s.sightings_per_s),
        "sightings_met": absorb_met,
        "list_p99_ms": round(overall.p99_ms, 2),
        "list_p99_met": p99_met,
        "kinds_over_p99_goal": slow,
    }
    return "\n".join(lines), verdicts


def emit(res: dict[str, Any], args: argparse.Namespace, started: datetime) -> None:
    """Print the table (and the plans of slow kinds), write the JSON results."""
    table, verdicts = report(res, args)
    print(table)  # noqa: T201
    slow = set(verdicts["kinds_over_p99_goal"])
    for r in res["kinds"]:
        if r.kind in slow:
            say(f"plan of the slowest {r.kind} request {r.slowest_params}:\n{r.plan}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"registry-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "code": res["code"],
                "params": {
                    k: v
                    for k, v in vars(args).items()
                    if k not in ("keep_logs", "hold", "kind_list", "registry_env")
                },
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "goals": {
                    "sightings_per_s_min": GOAL_SIGHTINGS_PER_S,
                    "list_p99_ms_max": GOAL_LIST_P99_MS,
                },
                "seed_s": res["seed_s"],
                "sightings": asdict(res["sightings"]),
                "table": res["table"],
                "list": {
                    "seconds": res["list"].seconds,
                    "requests_per_s": res["list"].requests_per_s,
                    "warmup_requests": res["list"].warmup_requests,
                    "cpu_s": res["list"].cpu_s,
                    "errors": res["list"].errors,
                    "kinds": [asdict(r) for r in [*res["kinds"], res["overall"]]],
                    "samples": [
                        [s.kind, s.at_s, round(s.ms, 3), s.items, s.params]
                        for s in res["list"].samples
                    ],
                },
                "verdicts": verdicts,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    say(f"results written to {out.relative_to(BENCH_DIR.parent)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(
        description="Registry: device.seen sightings absorbed per second, device-list latency."
    )
    p.add_argument("--devices", type=int, default=100_000, help="devices seeded (100000)")
    p.add_argument(
        "--sightings",
        type=int,
        default=1_000_000,
        help="sightings published, rounded up to whole rounds over every device (1000000)",
    )
    p.add_argument("--batch", type=int, default=5_000, help="sightings per event (5000)")
    p.add_argument(
        "--requests-per-kind", type=int, default=100, help="list requests per kind (100)"
    )
    p.add_argument("--chain-pages", type=int, default=25, help="pages each deep chain follows (25)")
    p.add_argument("--concurrency", type=int, default=8, help="list requests in flight (8)")
    p.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="list client: one lean keep-alive HTTP/1.1 connection per worker, or httpx (raw)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed of the data (1)")
    p.add_argument(
        "--phase-timeout", type=float, default=600.0, help="seconds any one phase may take (600)"
    )
    p.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds the registry may take (60)"
    )
    p.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM ANALYZE the registry's tables between the sightings and the list phase",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the temporary directory with the logs"
    )
    p.add_argument(
        "--hold",
        action="store_true",
        help="after measuring, keep the servers running until Ctrl-C (for psql, py-spy)",
    )
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"list request kinds to run, comma-separated (all: {','.join(KINDS)})",
    )
    p.add_argument(
        "--registry-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the registry, e.g. GAGGLE_PULL_BATCH=1 (repeatable)",
    )
    args = p.parse_args(argv)
    args.kind_list = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not args.kind_list or any(k not in KINDS for k in args.kind_list):
        p.error(f"--kinds: a comma-separated choice of {','.join(KINDS)}")
    try:
        args.env = dict(item.split("=", 1) for item in args.registry_env)
    except ValueError:
        p.error("--registry-env: NAME=VALUE")
    if any(not k.startswith("GAGGLE_") for k in args.env):
        p.error("--registry-env: only GAGGLE_* settings")
    if min(args.devices, args.sightings, args.batch, args.requests_per_kind) < 1:
        p.error("--devices, --sightings, --batch and --requests-per-kind must be positive")
    if args.concurrency < 1 or args.chain_pages < 1 or args.phase_timeout <= 0:
        p.error("--concurrency, --chain-pages and --phase-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (goals met or not), 1 on failure, 130 on Ctrl-C."""
    return run_with_servers(parse_args(argv), "gaggle-rbench-", run)


if __name__ == "__main__":
    sys.exit(main())
