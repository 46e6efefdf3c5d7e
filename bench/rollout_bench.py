"""Rollouts benchmark: creation to every device's deployment in KV; last feedback to finished.

    .venv/bin/python bench/rollout_bench.py [--devices 10000 --rounds 3]

Starts its own NATS (free port) and PostgreSQL (embedded, Unix socket) in a temporary directory,
then the rollouts service the documented way (``python -m gaggle_rollouts``), waits for
``/readyz``, and:

1. Fleet: publishes ``--devices`` ``device.updated`` events (``change=registered`` with board,
   revision and installed version, ``bench-000000``, ...) for tenant ``default``, as the registry
   would after each device's configData, and waits until the rollouts consumer has acked them
   all. The devices have no policy, so they are in mode rollout, feed ``default``.
2. Floor: puts ``--devices`` values of the size of a real deployment entry straight into a fresh
   KV bucket with nats-py, once one at a time and once ``--inflight`` at a time: what any
   rollout needs at least to get a document per device into KV.
3. Rounds (``--rounds``), each with a new software version (``software.created``):
   a. ``POST /api/v1/rollouts`` with ``start=true`` and one wave of 100 %; a KV watcher on
      ``deployments`` times until every device's entry has an open action for that version
      (as seen by the watcher, and as stored by JetStream per the entries' timestamps).
   b. Publishes a closed/success ``action.feedback`` event (what the gateway publishes for a
      device's final feedback) for all devices but one, ``--inflight`` publishes in flight, and
      times until the rollout counts them all (absorption rate, and the lag behind the last
      publish). Then the last device's feedback alone, and the time until
      ``GET /api/v1/rollouts/{id}`` says ``finished`` (polled every 20 ms; the
      ``rollout.progressed`` event with state ``finished`` is timed as well).
4. Prints a table per round, the medians, the goals (every deployment in KV in < 10 s; last
   feedback to ``finished`` in < 2 s) and whether they are met; writes the same to
   ``bench/results/rollout-<UTC timestamp>.json`` (git-ignored).

Everything listens on 127.0.0.1 or a Unix socket (never the machine's NATS on 4222 or PostgreSQL on
5432); every phase has a time limit; every child process is stopped at the end, also after errors,
Ctrl-C or SIGTERM. The client (KV watcher, publishers) shares the machine's CPUs with the service,
PostgreSQL and NATS; the CPU seconds of each say where the time went. ``--keep-logs`` keeps the
temporary directory (always kept after a failure), ``--rollouts-env NAME=VALUE`` changes the
service's configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
from benchlib import (
    Children,
    CpuMeter,
    admin_key,
    bounded,
    cpu_text,
    git_version,
    run_with_servers,
    say,
    tail,
)
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from rollout_feedback import (
    RolloutsProcess,
    add_floor_consumer,
    baseline_checkout,
    first_delivery,
    floor_drain,
)

from gaggle_contracts import names
from gaggle_contracts.events import (
    ActionFeedback,
    Compatibility,
    DeviceUpdated,
    FeedbackStatus,
    RolloutProgressed,
    SoftwareCreated,
)
from gaggle_contracts.kv import (
    ArtifactDoc,
    ChunkDoc,
    DeploymentDoc,
    DeploymentEntry,
    OpenAction,
    TenantConfig,
)
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import make_broker, publish_raw
from gaggle_runtime.db import ensure_database, with_database
from gaggle_runtime.jetstream import ensure_all
from gaggle_servers import free_port

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
TENANT = "default"
BOARD = "bench-board"
REVISION = "1.0"
INSTALLED = "1.0.0"
GOAL_ALL_IN_KV_S = 10.0
GOAL_LAST_TO_FINISHED_S = 2.0
GOAL_FEEDBACK_PER_S = 5_000
FLOOR_BUCKET = "bench_floor"


def code_version() -> str:
    """The commit the service runs from, ``+dirty`` when its code differs from it."""
    return git_version("services/rollouts", "libs")


def controller_id(i: int) -> str:
    """The i-th device of the fleet."""
    return f"bench-{i:06d}"


def version_of(round_no: int) -> str:
    """The software version a round rolls out."""
    return f"2.{round_no}.0"


# --------------------------------------------------------------------------------------------
# The service


async def wait_drained(js: Any, kind: str, timeout: float) -> None:
    """Wait until the rollouts consumer of ``kind`` has acked everything in the stream."""
    durable = names.durable("rollouts", kind)

    async def drained() -> None:
        while True:
            info = await js.consumer_info(names.STREAM, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.1)

    await bounded(f"consumer {durable} draining", timeout, drained())


async def publish_all(
    broker: Any, events: list[tuple[str, bytes, str]], inflight: int, timeout: float
) -> float:
    """Publish ``(subject, payload, msg id)`` with ``inflight`` acks awaited at once; seconds."""
    sem = asyncio.Semaphore(inflight)

    async def one(subject: str, payload: bytes, msg_id: str) -> None:
        async with sem:
            await publish_raw(broker, subject, payload, msg_id, timeout=30)

    t0 = time.perf_counter()
    await bounded("publishing", timeout, asyncio.gather(*(one(*e) for e in events)))
    return time.perf_counter() - t0


def software_event(round_no: int) -> SoftwareCreated:
    """The software a round rolls out."""
    version = version_of(round_no)
    payload = f"bench image {version}".encode()
    return SoftwareCreated(
        tenant=TENANT,
        software_id=f"bench-{round_no}",
        name="bench-image",
        version=version,
        filename=f"bench-image-{version}.swu",
        size=64 * 1024 * 1024,
        md5=hashlib.md5(payload).hexdigest(),  # noqa: S324 - hawkBit's hash
        sha1=hashlib.sha1(payload).hexdigest(),  # noqa: S324 - hawkBit's hash
        sha256=hashlib.sha256(payload).hexdigest(),
        compatibility=[Compatibility(hw_model=BOARD, hw_revision="*")],
        object_key=f"{TENANT}/bench-{round_no}/bench-image-{version}.swu",
    )


# --------------------------------------------------------------------------------------------
# Floor: KV puts straight from nats-py


def floor_value(sw: SoftwareCreated, action_id: int) -> bytes:
    """A deployment entry as rollouts would write it for ``sw`` (same shape, same size)."""
    return (
        DeploymentEntry(
            open=OpenAction(
                action_id=str(action_id),
                c=hashlib.sha1(str(action_id).encode()).hexdigest()[:8],  # noqa: S324 - not security
                deployment=DeploymentDoc(
                    chunks=[
                        ChunkDoc(
                            module_id=sw.software_id,
                            name=sw.name,
                            version=sw.version,
                            artifacts=[
                                ArtifactDoc(
                                    filename=sw.filename,
                                    size=sw.size,
                                    md5=sw.md5,
                                    sha1=sw.sha1,
                                    sha256=sw.sha256,
                                    object_key=sw.object_key,
                                )
                            ],
                        )
                    ]
                ),
                history=["Assigned by rollout bench."],
            )
        )
        .model_dump_json()
        .encode()
    )


@dataclass
class Floor:
    """Phase 2."""

    puts: int
    value_bytes: int
    sequential_s: float
    pipelined_s: float
    inflight: int


async def floor_phase(nc: NatsClient, args: argparse.Namespace, sw: SoftwareCreated) -> Floor:
    """Time ``--devices`` KV puts, one at a time and ``--inflight`` at a time."""
    js = nc.jetstream()
    kv = await js.create_key_value(
        KeyValueConfig(
            bucket=FLOOR_BUCKET, history=1, storage=StorageType.FILE, max_value_size=1 << 20
        )
    )
    values = [floor_value(sw, 1_000_000 + i) for i in range(args.devices)]
    keys = [names.kv_key(TENANT, controller_id(i)) for i in range(args.devices)]

    async def sequential() -> None:
        for key, value in zip(keys, values, strict=True):
            await kv.put(key, value)

    t0 = time.perf_counter()
    await bounded("sequential KV puts", args.phase_timeout, sequential())
    seq_s = time.perf_counter() - t0

    sem = asyncio.Semaphore(args.inflight)

    async def one(key: str, value: bytes) -> None:
        async with sem:
            await kv.put(key, value)

    t0 = time.perf_counter()
    await bounded(
        "pipelined KV puts",
        args.phase_timeout,
        asyncio.gather(*(one(k, v) for k, v in zip(keys, values, strict=True))),
    )
    pipe_s = time.perf_counter() - t0
    await js.delete_key_value(FLOOR_BUCKET)
    floor = Floor(args.devices, len(values[0]), seq_s, pipe_s, args.inflight)
    say(
        f"floor: {args.devices:,} KV puts of {floor.value_bytes} bytes: one at a time "
        f"{seq_s:.2f} s, {args.inflight} in flight {pipe_s:.2f} s"
    )
    return floor


# --------------------------------------------------------------------------------------------
# Rounds


@dataclass
class Round:
    """One rollout, created to finished."""

    round: int
    rollout_id: str
    version: str
    members: int
    post_s: float
    """POST /rollouts answered."""
    first_in_kv_s: float
    all_in_kv_s: float
    """Every device's open action seen by the KV watcher."""
    last_stored_s: float
    """JetStream timestamp of the last of those KV writes (server clock, same machine)."""
    create_cpu_s: dict[str, float]
    feedback_mode: str
    """``backlog``: published while the service was down; ``live``: while it ran."""
    feedback_published_s: float
    """All but the last device's success feedback published (acked by JetStream)."""
    absorbed_s: float
    """backlog: the service's first delivery -> the rollout counts them all.
    live: first feedback published -> the rollout counts them all."""
    absorbed_lag_s: float
    """backlog: service started -> its first delivery. live: last publish acked -> counted."""
    floor_s: float | None
    """backlog: a bare nats-py consumer fetching and acking the same events."""
    feedback_cpu_s: dict[str, float]
    last_to_finished_s: float
    """The last feedback published -> GET says finished."""
    last_to_finished_event_s: float | None
    """The last feedback published -> the rollout.progressed event saying finished arrived."""
    progressed_events: int
    final: dict[str, Any] = field(default_factory=dict)


class ProgressWatch:
    """``rollout.progressed`` events of the bench tenant as they arrive (core subscription)."""

    def __init__(self) -> None:
        self.finished_at: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.sub: Any = None
        self._finished: dict[str, asyncio.Event] = {}

    def finished(self, rid: str) -> asyncio.Event:
        """Set once the event saying ``rid`` finished has arrived."""
        return self._finished.setdefault(rid, asyncio.Event())

    async def start(self, nc: NatsClient) -> None:
        """Subscribe."""

        async def on(msg: Any) -> None:
            event = RolloutProgressed.model_validate_json(msg.data)
            self.count[event.rollout_id] = self.count.get(event.rollout_id, 0) + 1
            if event.state == "finished":
                self.finished_at.setdefault(event.rollout_id, time.perf_counter())
                self.finished(event.rollout_id).set()

        self.sub = await nc.subscribe(names.subject(TENANT, RolloutProgressed.kind), cb=on)


class KvWatch:
    """Watches ``deployments``: when each device's entry got an open action of one version."""

    def __init__(self, version: str, devices: int) -> None:
        self.version = version
        self.devices = devices
        self.seen: dict[str, tuple[float, datetime, str]] = {}
        """KV key -> (perf_counter seen, JetStream timestamp, action id)."""
        self.done = asyncio.Event()
        self.watcher: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, nc: NatsClient) -> None:
        """Watch every key of the tenant; initial values are skipped by version."""
        kv = await nc.jetstream().key_value(names.BUCKET_DEPLOYMENTS)
        self.watcher = await kv.watch(f"{TENANT}.>", ignore_deletes=True)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for entry in self.watcher:
            if entry is None or entry.value is None or entry.key in self.seen:
                continue
            now = time.perf_counter()
            doc = orjson.loads(entry.value)
            opened = doc.get("open")
            if not opened:
                continue
            chunks = opened["deployment"]["chunks"]
            if not chunks or chunks[0]["version"] != self.version:
                continue
            self.seen[entry.key] = (now, entry.created, opened["action_id"])
            if len(self.seen) >= self.devices:
                self.done.set()

    async def stop(self) -> None:
        """Stop watching."""
        with contextlib.suppress(Exception):
            await self.watcher.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def get_rollout(client: httpx.AsyncClient, base: str, rid: str) -> dict[str, Any]:
    """GET /api/v1/rollouts/{id}."""
    r = await client.get(f"{base}/api/v1/rollouts/{rid}", params={"tenant": TENANT})
    if r.status_code != 200:
        raise RuntimeError(f"GET /rollouts/{rid} -> {r.status_code} {r.text}")
    doc: dict[str, Any] = r.json()
    return doc


async def poll_rollout(
    client: httpx.AsyncClient,
    base: str,
    rid: str,
    check: Callable[[dict[str, Any]], bool],
    interval: float,
    what: str,
    timeout: float,
) -> tuple[float, dict[str, Any]]:
    """Poll until ``check`` holds; (perf_counter when it was seen, the document)."""

    async def loop() -> tuple[float, dict[str, Any]]:
        while True:
            doc = await get_rollout(client, base, rid)
            if check(doc):
                return time.perf_counter(), doc
            if doc["state"] in ("aborted", "paused"):
                raise RuntimeError(f"rollout {rid} is {doc['state']}: {doc}")
            await asyncio.sleep(interval)

    return await bounded(what, timeout, loop())


async def run_round(
    round_no: int,
    args: argparse.Namespace,
    nc: NatsClient,
    broker: Any,
    client: httpx.AsyncClient,
    service: RolloutsProcess,
    progress: ProgressWatch,
) -> Round:
    """Create a rollout for a new version, time it into KV, feed back success, time finished."""
    js = nc.jetstream()
    base = service.base
    meter = service.meter
    assert meter is not None  # noqa: S101 - started
    sw = software_event(round_no)
    await publish_raw(broker, sw.subject, sw.model_dump_json().encode(), sw.message_id)
    await wait_drained(js, SoftwareCreated.kind, 60)

    watch = KvWatch(sw.version, args.devices)
    await watch.start(nc)
    body = {
        "name": f"bench round {round_no}",
        "software_id": sw.software_id,
        "feed": "default",
        "waves": [{"percent": 100}],
        "success_threshold": 100,
        "error_threshold": 100,
        "error_action": "pause",
        "action_type": "forced",
        "start": True,
    }
    say(f"round {round_no}: POST /rollouts for {sw.version}")
    cpu0 = meter.snapshot()
    wall0 = datetime.now(UTC)
    t0 = time.perf_counter()
    try:
        r = await client.post(
            f"{base}/api/v1/rollouts", params={"tenant": TENANT}, json=body, timeout=120
        )
        post_s = time.perf_counter() - t0
        if r.status_code != 201:
            raise RuntimeError(f"POST /rollouts -> {r.status_code} {r.text}")
        created = r.json()
        rid = str(created["id"])
        members = int(created["counters"]["total"])
        if members != args.devices:
            raise RuntimeError(f"rollout has {members} members, not {args.devices}: {created}")
        await bounded("every deployment in KV", args.phase_timeout, watch.done.wait())
    finally:
        await watch.stop()
    create_cpu = CpuMeter.used(cpu0, meter.snapshot())
    seen = list(watch.seen.values())
    all_in_kv_s = max(s[0] for s in seen) - t0
    first_in_kv_s = min(s[0] for s in seen) - t0
    last_stored_s = (max(s[1] for s in seen) - wall0).total_seconds()
    actions = {names.parse_kv_key(k)[1]: v[2] for k, v in watch.seen.items()}
    if len(set(actions.values())) != len(actions):
        raise RuntimeError("two devices share an action id")
    say(
        f"round {round_no}: rollout {rid} answered in {post_s:.2f} s; all {members:,} "
        f"deployments in KV after {all_in_kv_s:.2f} s; " + cpu_text(create_cpu, all_in_kv_s)
    )

    # Feedback: every device but one, as fast as NATS takes it; then the last one alone.
    occurred = datetime.now(UTC)
    status = FeedbackStatus(execution="closed", finished="success", details=["bench"])
    events = []
    for cid, action_id in sorted(actions.items()):
        event = ActionFeedback(
            tenant=TENANT,
            controller_id=cid,
            action_id=action_id,
            status=status,
            occurred_at=occurred,
        )
        events.append((event.subject, event.model_dump_json().encode(), event.message_id))
    last = events.pop()
    if args.feedback == "live":
        fed = await live_feedback(round_no, args, broker, client, service, rid, events)
    else:
        fed = await backlog_feedback(round_no, args, nc, broker, client, service, rid, events)
    t_last = time.perf_counter()
    await publish_raw(broker, *last, timeout=30)
    finished_at, final = await poll_rollout(
        client,
        base,
        rid,
        lambda d: d["state"] == "finished",
        0.02,
        "finished",
        args.phase_timeout,
    )
    # The event may trail the GET by a moment.
    with contextlib.suppress(RuntimeError):
        await bounded("finished event", 5, progress.finished(rid).wait())
    event_at = progress.finished_at.get(rid)
    if int(final["counters"]["success"]) != members:
        raise RuntimeError(f"rollout {rid} finished with {final['counters']}")
    result = Round(
        round=round_no,
        rollout_id=rid,
        version=sw.version,
        members=members,
        post_s=post_s,
        first_in_kv_s=first_in_kv_s,
        all_in_kv_s=all_in_kv_s,
        last_stored_s=last_stored_s,
        create_cpu_s=create_cpu,
        feedback_mode=args.feedback,
        feedback_published_s=fed.published_s,
        absorbed_s=fed.absorbed_s,
        absorbed_lag_s=fed.lag_s,
        floor_s=fed.floor_s,
        feedback_cpu_s=fed.cpu_s,
        last_to_finished_s=finished_at - t_last,
        last_to_finished_event_s=(event_at - t_last) if event_at is not None else None,
        progressed_events=progress.count.get(rid, 0),
        final=final,
    )
    say(
        f"round {round_no}: last feedback -> finished {result.last_to_finished_s * 1000:.0f} ms"
        f" (GET), {progressed_text(result)} (event); "
        f"{result.progressed_events} rollout.progressed events"
    )
    return result


@dataclass
class Fed:
    """How the feedback of all devices but one was absorbed."""

    published_s: float
    absorbed_s: float
    lag_s: float
    cpu_s: dict[str, float]
    floor_s: float | None = None


async def count_successes(
    client: httpx.AsyncClient, base: str, rid: str, bulk: int, timeout: float
) -> float:
    """Poll the rollout every 50 ms until it counts ``bulk`` successes; perf_counter then."""
    seen_at, doc = await poll_rollout(
        client,
        base,
        rid,
        lambda d: int(d["counters"]["success"]) >= bulk,
        0.05,
        "feedback absorbed",
        timeout,
    )
    if doc["state"] != "running":
        raise RuntimeError(f"rollout {rid} is {doc['state']} with one device left: {doc}")
    return seen_at


async def live_feedback(
    round_no: int,
    args: argparse.Namespace,
    broker: Any,
    client: httpx.AsyncClient,
    service: RolloutsProcess,
    rid: str,
    events: list[tuple[str, bytes, str]],
) -> Fed:
    """Publish while the service runs; time from the first publish until all are counted."""
    bulk = len(events)
    base = service.base
    meter = service.meter
    assert meter is not None  # noqa: S101 - started
    cpu0 = meter.snapshot()
    t0 = time.perf_counter()
    published_s = await publish_all(broker, events, args.inflight, args.phase_timeout)
    say(f"round {round_no}: {bulk:,} success feedback events published in {published_s:.2f} s")
    seen_at = await count_successes(client, base, rid, bulk, args.phase_timeout)
    cpu = CpuMeter.used(cpu0, meter.snapshot())
    absorbed_s = seen_at - t0
    say(
        f"round {round_no}: {bulk:,} successes counted {absorbed_s:.2f} s after the first "
        f"publish ({bulk / absorbed_s:,.0f}/s); " + cpu_text(cpu, absorbed_s)
    )
    return Fed(published_s, absorbed_s, seen_at - (t0 + published_s), cpu)


async def backlog_feedback(
    round_no: int,
    args: argparse.Namespace,
    nc: NatsClient,
    broker: Any,
    client: httpx.AsyncClient,
    service: RolloutsProcess,
    rid: str,
    events: list[tuple[str, bytes, str]],
) -> Fed:
    """Publish while the service is down; time from its first delivery until all are counted.

    The same backlog is drained first by a bare nats-py consumer that only acks (the floor).
    """
    bulk = len(events)
    await add_floor_consumer(nc)
    say(f"round {round_no}: stopping rollouts to publish the feedback as a backlog")
    await service.stop()
    published_s = await publish_all(broker, events, args.inflight, args.phase_timeout)
    floor_s = await floor_drain(nc, bulk, args.phase_timeout)
    say(
        f"round {round_no}: {bulk:,} success feedback events published in {published_s:.2f} s; "
        f"a bare consumer fetched and acked them in {floor_s:.2f} s ({bulk / floor_s:,.0f}/s)"
    )
    t_spawn = time.perf_counter()
    meter = service.spawn()
    first = asyncio.create_task(first_delivery(nc, ActionFeedback.kind, meter))
    try:
        await service.ready(args.start_timeout)
        seen_at = await count_successes(client, service.base, rid, bulk, args.phase_timeout)
        cpu1 = meter.snapshot()
        t_first, cpu0 = await bounded("first delivery", 5, first)
    finally:
        first.cancel()
    cpu = CpuMeter.used(cpu0, cpu1)
    absorbed_s = seen_at - t_first
    say(
        f"round {round_no}: {bulk:,} successes counted {absorbed_s:.2f} s after the first "
        f"delivery ({bulk / absorbed_s:,.0f}/s); " + cpu_text(cpu, absorbed_s)
    )
    return Fed(published_s, absorbed_s, t_first - t_spawn, cpu, floor_s)


def progressed_text(r: Round) -> str:
    """The event's figure, or why there is none."""
    if r.last_to_finished_event_s is None:
        return "no finished event"
    return f"{r.last_to_finished_event_s * 1000:.0f} ms"


# --------------------------------------------------------------------------------------------
# Main


async def run(
    args: argparse.Namespace,
    children: Children,
    tmp: Path,
    nats_url: str,
    nats_pid: int,
    pg_url: str,
    started: datetime,
) -> dict[str, Any]:
    """Start rollouts, announce the fleet, measure the floor and the rounds; the results."""
    database_url = with_database(pg_url, "bench")
    await bounded("database creation", 30, ensure_database(database_url))
    common = CommonSettings(nats_url=nats_url, database_url=database_url)
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=0)
    broker = make_broker(nats_url, "rollout-bench")
    try:
        await ensure_all(nc.jetstream(), common)
        # The whole fleet updates at once: the tenant's cap on updates in flight, as registry
        # publishes it, is the fleet's size (the default cap would queue all but 1,000).
        tenants = await nc.jetstream().key_value(names.BUCKET_TENANTS)
        cap = TenantConfig(max_updates_in_flight=args.devices)
        await tenants.put(TENANT, cap.model_dump_json().encode())
        key, _ = await admin_key(nats_url, TENANT)
        code = args.code_label or code_version()
        service = RolloutsProcess(
            children,
            tmp,
            {
                "GAGGLE_NATS_URL": nats_url,
                "GAGGLE_DATABASE_URL": database_url,
                "GAGGLE_LOG_JSON": "false",
                "GAGGLE_LOG_LEVEL": "INFO",
                **args.env,
            },
            free_port(),
            nats_pid,
            args.code_dir,
        )
        say(f"starting rollouts at {code} on {service.base}")
        meter = await service.start(args.start_timeout)
        await broker.connect()

        say(f"announcing {args.devices:,} devices (device.updated)")
        fleet = []
        for i in range(args.devices):
            event = DeviceUpdated(
                tenant=TENANT,
                controller_id=controller_id(i),
                change="registered",
                hw_model=BOARD,
                hw_revision=REVISION,
                sw_version=INSTALLED,
            )
            fleet.append((event.subject, event.model_dump_json().encode(), event.message_id))
        cpu0 = meter.snapshot()
        t0 = time.perf_counter()
        await publish_all(broker, fleet, args.inflight, args.phase_timeout)
        await wait_drained(nc.jetstream(), DeviceUpdated.kind, args.phase_timeout)
        fleet_s = time.perf_counter() - t0
        fleet_cpu = CpuMeter.used(cpu0, meter.snapshot())
        say(f"fleet known to rollouts after {fleet_s:.2f} s; " + cpu_text(fleet_cpu, fleet_s))

        floor = await floor_phase(nc, args, software_event(0))
        progress = ProgressWatch()
        await progress.start(nc)
        rounds: list[Round] = []
        bearer = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=30, headers=bearer) as client:
            for round_no in range(1, args.rounds + 1):
                rounds.append(
                    await run_round(round_no, args, nc, broker, client, service, progress)
                )
                if not service.alive():
                    raise RuntimeError(f"rollouts died:\n{tail(service.log)}")
        log_text = await asyncio.to_thread(service.log.read_text, errors="replace")
        res = {
            "code": code,
            "fleet_s": fleet_s,
            "fleet_cpu_s": fleet_cpu,
            "floor": floor,
            "rounds": rounds,
            "tracebacks_logged": count_tracebacks(log_text),
        }
        emit(res, args, started)
        return res
    finally:
        with contextlib.suppress(Exception):
            await broker.stop()
        await nc.close()


def count_tracebacks(log_text: str) -> int:
    """Tracebacks in the service log, but for FastStream's pull-fetch timeouts.

    FastStream logs an empty pull (``_fetch_n`` timing out on an idle consumer) with a traceback
    and goes on; that is not an error of the service.
    """
    blocks = log_text.split("Traceback (most recent call last)")[1:]
    return sum(1 for block in blocks if "in _fetch_n" not in block[:2000])


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return float(statistics.median(values))


def report(res: dict[str, Any], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The printed table and the verdicts."""
    floor: Floor = res["floor"]
    rounds: list[Round] = res["rounds"]
    lines = [
        f"Rollouts at {res['code']}, {args.devices:,} devices, one wave of 100 %, tenant "
        f"{TENANT}, {os.cpu_count()} CPUs shared by rollouts, PostgreSQL, NATS and this client"
        + (f"; rollouts env {' '.join(args.rollouts_env)}" if args.rollouts_env else ""),
        "",
        f"fleet: {args.devices:,} device.updated events consumed by rollouts in "
        f"{res['fleet_s']:.2f} s ({args.devices / res['fleet_s']:,.0f}/s)",
        f"floor: {floor.puts:,} KV puts of {floor.value_bytes} bytes straight from nats-py: one at "
        f"a time {floor.sequential_s:.2f} s, {floor.inflight} in flight {floor.pipelined_s:.2f} s",
        "",
        "create -> deployments in KV (s; 'stored': JetStream timestamp of the last KV write)",
        f"{'round':>5} {'POST':>7} {'first':>7} {'all':>7} {'stored':>7} {'/floor':>7} {'/seq':>6}",
    ]
    for r in rounds:
        lines.append(
            f"{r.round:>5} {r.post_s:>7.2f} {r.first_in_kv_s:>7.2f} {r.all_in_kv_s:>7.2f} "
            f"{r.last_stored_s:>7.2f} {r.all_in_kv_s / floor.pipelined_s:>7.1f} "
            f"{r.all_in_kv_s / floor.sequential_s:>6.2f}"
        )
    lines += ["", *feedback_table(rounds, args)]
    all_kv = median([r.all_in_kv_s for r in rounds])
    last = median([r.last_to_finished_s for r in rounds])
    kv_met = all_kv < GOAL_ALL_IN_KV_S
    last_met = last < GOAL_LAST_TO_FINISHED_S
    lines += [
        "  CPU during the last round's rollout creation: "
        + cpu_text(rounds[-1].create_cpu_s, rounds[-1].all_in_kv_s),
        "  CPU during the last round's feedback: "
        + cpu_text(rounds[-1].feedback_cpu_s, rounds[-1].absorbed_s),
        "",
        f"create -> all {args.devices:,} deployments in KV = {all_kv:.2f} s median "
        f"({all_kv / floor.pipelined_s:.1f}x the pipelined floor) "
        f"(goal < {GOAL_ALL_IN_KV_S:g} s: {'met' if kv_met else 'NOT met'})",
        f"last success feedback -> finished = {last * 1000:.0f} ms median "
        f"(goal < {GOAL_LAST_TO_FINISHED_S:g} s: {'met' if last_met else 'NOT met'})",
    ]
    if res["tracebacks_logged"]:
        lines.append(f"rollouts logged {res['tracebacks_logged']} tracebacks (see its log)")
    verdicts = {
        "all_in_kv_s": round(all_kv, 3),
        "all_in_kv_met": kv_met,
        "ratio_to_floor": round(all_kv / floor.pipelined_s, 2),
        "last_to_finished_s": round(last, 3),
        "last_to_finished_met": last_met,
    }
    return "\n".join(lines), verdicts


def feedback_table(rounds: list[Round], args: argparse.Namespace) -> list[str]:
    """The feedback phase's lines: per round, absorbed reports/s (and the floor's)."""
    if args.feedback == "live":
        lines = [
            f"feedback: {args.devices - 1:,} success events published ({args.inflight} in "
            "flight) while rollouts runs, then the last one alone; 'counted': first publish -> "
            "the rollout counts them all",
            f"{'round':>5} {'publish':>8} {'counted':>8} {'per s':>7} {'lag':>6} "
            f"{'last->finished GET':>19} {'event':>7} {'events':>7}",
        ]
    else:
        lines = [
            f"feedback: {args.devices - 1:,} success events published while rollouts is down, "
            "then it is started; 'counted': its consumer's first delivery -> the rollout counts "
            "them all; 'floor': a bare nats-py consumer fetching and acking the same events; "
            "then the last one alone",
            f"{'round':>5} {'publish':>8} {'counted':>8} {'per s':>7} {'floor/s':>8} "
            f"{'last->finished GET':>19} {'event':>7} {'events':>7}",
        ]
    for r in rounds:
        event = (
            f"{r.last_to_finished_event_s * 1000:>5.0f}ms"
            if r.last_to_finished_event_s is not None
            else "   none"
        )
        middle = (
            f"{r.absorbed_lag_s:>5.2f}s"
            if r.floor_s is None
            else f"{(r.members - 1) / r.floor_s:>8,.0f}"
        )
        lines.append(
            f"{r.round:>5} {r.feedback_published_s:>7.2f}s {r.absorbed_s:>7.2f}s "
            f"{(r.members - 1) / r.absorbed_s:>7,.0f} {middle} "
            f"{r.last_to_finished_s * 1000:>17.0f}ms {event} {r.progressed_events:>7}"
        )
    return lines


def absorbed_rate(res: dict[str, Any]) -> float:
    """Median reports/s absorbed over the rounds of a run."""
    return median([(r.members - 1) / r.absorbed_s for r in res["rounds"]])


def cpu_per_report(res: dict[str, Any]) -> float:
    """Median CPU ms per absorbed report of rollouts, PostgreSQL and NATS together."""
    return median(
        [
            sum(r.feedback_cpu_s.get(k, 0.0) for k in ("rollouts", "postgres", "nats"))
            * 1000
            / (r.members - 1)
            for r in res["rounds"]
        ]
    )


def verdict_lines(this: dict[str, Any], baseline: dict[str, Any] | None, mode: str) -> list[str]:
    """The comparison with the baseline and the floor, and the goal line.

    The CPU per report (rollouts, PostgreSQL, NATS) does not depend on what else runs on the
    machine, unlike the rates; ``cores / CPU per report`` is what the machine's cores would
    absorb if nothing else ran.
    """
    rate = absorbed_rate(this)
    cores = os.cpu_count() or 1
    lines = [""]
    if baseline is not None:
        base = absorbed_rate(baseline)
        lines.append(
            f"feedback absorbed ({mode}): {this['code']} {rate:,.0f} reports/s, baseline "
            f"{baseline['code']} {base:,.0f} reports/s: {rate / base:.1f}x the baseline"
        )
    for label, res in (("this", this), ("baseline", baseline)):
        if res is not None:
            ms = cpu_per_report(res)
            lines.append(
                f"CPU per report ({label}, {res['code']}): {ms:.2f} ms of rollouts + PostgreSQL "
                f"+ NATS; {cores} cores alone would absorb at most {cores * 1000 / ms:,.0f}/s"
            )
    floors = [(r.members - 1) / r.floor_s for r in this["rounds"] if r.floor_s]
    if floors:
        floor = median(floors)
        lines.append(
            f"floor (bare nats-py consumer fetching and acking the same events): {floor:,.0f}/s; "
            f"rollouts absorbs {rate / floor:.2f} of it"
        )
    met = "met" if rate >= GOAL_FEEDBACK_PER_S else "not met"
    lines.append(
        f"feedback absorbed = {rate:,.0f} reports/s (goal >= {GOAL_FEEDBACK_PER_S:,}/s: {met})"
    )
    return lines


def emit(res: dict[str, Any], args: argparse.Namespace, started: datetime) -> None:
    """Print the table, write the JSON results."""
    table, verdicts = report(res, args)
    print(table)  # noqa: T201
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"rollout-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "code": res["code"],
                "params": {k: v for k, v in vars(args).items() if k not in ("keep_logs", "env")},
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "goals": {
                    "all_in_kv_s_max": GOAL_ALL_IN_KV_S,
                    "last_to_finished_s_max": GOAL_LAST_TO_FINISHED_S,
                },
                "fleet_s": res["fleet_s"],
                "fleet_cpu_s": res["fleet_cpu_s"],
                "floor": asdict(res["floor"]),
                "rounds": [asdict(r) for r in res["rounds"]],
                "tracebacks_logged": res["tracebacks_logged"],
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
        description="Rollouts: creation to every deployment in KV, last feedback to finished."
    )
    p.add_argument("--devices", type=int, default=10_000, help="devices in the rollout (10000)")
    p.add_argument("--rounds", type=int, default=3, help="rollouts, one after the other (3)")
    p.add_argument(
        "--inflight", type=int, default=256, help="publishes or KV puts awaited at once (256)"
    )
    p.add_argument(
        "--phase-timeout", type=float, default=300.0, help="seconds any one phase may take (300)"
    )
    p.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds the service may take (60)"
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the temporary directory with the logs"
    )
    p.add_argument(
        "--feedback",
        choices=("backlog", "live"),
        default="backlog",
        help="backlog: publish the feedback while rollouts is down, time how fast it absorbs "
        "it once started (default); live: publish while it runs",
    )
    p.add_argument(
        "--baseline-ref",
        metavar="GIT_REF",
        help="run the same benchmark first against this git ref (checked out in a temporary "
        "worktree) and compare, e.g. main",
    )
    p.add_argument(
        "--rollouts-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the rollouts service, e.g. GAGGLE_PULL_BATCH=1 (repeatable)",
    )
    args = p.parse_args(argv)
    try:
        args.env = dict(item.split("=", 1) for item in args.rollouts_env)
    except ValueError:
        p.error("--rollouts-env: NAME=VALUE")
    if any(not k.startswith("GAGGLE_") for k in args.env):
        p.error("--rollouts-env: only GAGGLE_* settings")
    if args.devices < 2 or args.rounds < 1 or args.inflight < 1 or args.phase_timeout <= 0:
        p.error("--devices must be at least 2; --rounds, --inflight, --phase-timeout positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (goals met or not), 1 on failure, 130 on Ctrl-C.

    With ``--baseline-ref``, the baseline runs first, the same way, on its own NATS and
    PostgreSQL; then this checkout; then the two are compared.
    """
    args = parse_args(argv)
    runs: dict[str, dict[str, Any]] = {}

    def keeping(label: str) -> Callable[..., Any]:
        async def kept(*parts: Any) -> dict[str, Any]:
            runs[label] = await run(*parts)
            return runs[label]

        return kept

    if args.baseline_ref:
        holder = Path(tempfile.mkdtemp(prefix="gaggle-robase-"))
        try:
            with baseline_checkout(args.baseline_ref, holder) as (code_dir, commit):
                args.code_dir, args.code_label = code_dir, f"{args.baseline_ref}={commit}"
                done = run_with_servers(args, "gaggle-robench-", keeping("baseline"))
        finally:
            shutil.rmtree(holder, ignore_errors=True)
        if done:
            return done
    args.code_dir, args.code_label = None, None
    done = run_with_servers(args, "gaggle-robench-", keeping("this"))
    if done:
        return done
    print("\n".join(verdict_lines(runs["this"], runs.get("baseline"), args.feedback)))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
