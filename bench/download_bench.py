"""Download benchmark: the gateway's CPU per artifact download, streamed and redirected to S3.

    .venv/bin/python bench/download_bench.py [--sizes-mib 1,16] [--downloads 50] [--workers 4]
        [--cache-mib 64] [--idle-s 5]

Starts its own NATS, a moto S3 server (``python -m moto.server``, its own process) and one
gateway process (``python -m gaggle_gateway``, S3 back-end, artifact cache of ``--cache-mib``:
on by default, as deployed; ``0`` streams every download from S3),
all on 127.0.0.1. Two tenants get the same devices and the same artifacts: one with
``download_redirect`` off (the gateway streams the artifact from S3), one with it on (the
gateway answers 302 with a presigned URL). Every artifact is one random object per size.

For each size and each tenant, ``--downloads`` downloads as a device does them (a HEAD, then a
GET, with its ``TargetToken``; redirects followed, the ``Authorization`` header not sent to S3),
``--workers`` at a time; each body is hashed and checked against the artifact's SHA-1. One
warm-up download per size and tenant first (the first streamed one fills the gateway's cache).
Measured: the gateway process's CPU seconds (user + system, from ``/proc``) over the downloads,
and the wall time. The gateway's idle CPU (its background tasks: KV watches, sightings flush),
measured over ``--idle-s`` seconds before, is taken off for the downloads' wall time: a
redirected download is slower (moto serves it) and would otherwise be charged more idle time.
Printed: CPU milliseconds per download for each mode (raw and net of idle) and the ratio
streamed / redirected of the net figures, per size, in the same run. moto's own CPU is left
out: it is the store in both modes, and stands for whatever serves the bucket (MinIO, S3, a CDN).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from benchlib import Children, child_env, cpu_seconds, http_status, say, tail, wait_ready

from gaggle_contracts import names
from gaggle_contracts.kv import (
    ArtifactDoc,
    ChunkDoc,
    DeploymentDoc,
    DeploymentEntry,
    DeviceEntry,
    OpenAction,
    TenantConfig,
    token_hash,
)
from gaggle_servers import NatsProcess, free_port
from gaggle_storage import StorageSettings, open_store
from gaggle_testing import kv_put

HOST = "127.0.0.1"
BUCKET = "gaggle-bench"
DEVICES = 8
"""Devices per tenant; downloads are spread over them."""


def start_moto(children: Children, tmp: Path, timeout: float) -> str:
    """A moto S3 server in its own process; its ``host:port``."""
    port = free_port()
    proc = children.spawn(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        child_env(),
        tmp / "moto.log",
    )
    deadline = time.monotonic() + timeout
    while http_status(f"http://{HOST}:{port}/moto-api/") == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"moto did not start:\n{tail(tmp / 'moto.log')}")
        time.sleep(0.1)
    return f"{HOST}:{port}"


async def put_objects(storage: StorageSettings, sizes_mib: list[int]) -> list[ArtifactDoc]:
    """One random object per size in the bucket; their artifact documents."""
    store = open_store(storage)
    await store.ensure_bucket()  # type: ignore[attr-defined]
    artifacts = []
    for size in sizes_mib:
        data = os.urandom(size << 20)
        key = f"bench/{size}/image-{size}mib.swu"

        async def chunks(data: bytes = data) -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1 << 20):
                yield data[i : i + (1 << 20)]

        await store.write(key, chunks())
        artifacts.append(
            ArtifactDoc(
                filename=f"image-{size}mib.swu",
                size=len(data),
                md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
                sha1=hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                sha256=hashlib.sha256(data).hexdigest(),
                object_key=key,
            )
        )
    return artifacts


async def put_fleet(nats_url: str, tenant: str, redirect: bool, arts: list[ArtifactDoc]) -> None:
    """The tenant's setting, and ``DEVICES`` devices each with an action holding every artifact."""
    config = TenantConfig(download_redirect=redirect).model_dump_json().encode()
    await kv_put(nats_url, names.BUCKET_TENANTS, tenant, config)
    chunk = ChunkDoc(module_id="7", name="bench", version="1.0", artifacts=arts)
    entry = DeploymentEntry(
        open=OpenAction(action_id="1", c="1", deployment=DeploymentDoc(chunks=[chunk]))
    )
    for i in range(DEVICES):
        key = names.kv_key(tenant, f"dev-{i}")
        device = DeviceEntry(token_hash=token_hash(f"token-{i}")).model_dump_json().encode()
        await kv_put(nats_url, names.BUCKET_DEVICES, key, device)
        await kv_put(nats_url, names.BUCKET_DEPLOYMENTS, key, entry.model_dump_json().encode())


async def download(
    client: httpx.AsyncClient, gateway: str, tenant: str, device: int, art: ArtifactDoc
) -> bool:
    """HEAD then GET as a device; whether the GET was redirected. The body must match."""
    url = f"{gateway}/{tenant}/controller/v1/dev-{device}/softwaremodules/7/artifacts/"
    url += art.filename
    auth = {"Authorization": f"TargetToken token-{device}"}
    head = await client.head(url, headers=auth, follow_redirects=True)
    if head.status_code != 200 or int(head.headers["content-length"]) != art.size:
        raise RuntimeError(f"HEAD {url}: {head.status_code}")
    sha1 = hashlib.sha1(usedforsecurity=False)
    redirected = False
    async with client.stream("GET", url, headers=auth) as r:
        if r.status_code == 302:
            redirected = True
            target = r.headers["location"]
        elif r.status_code == 200:
            async for chunk in r.aiter_bytes():
                sha1.update(chunk)
        else:
            raise RuntimeError(f"GET {url}: {r.status_code}")
    if redirected:
        # As the clients do: Authorization is not sent to another origin.
        async with client.stream("GET", target) as r:
            if r.status_code != 200:
                raise RuntimeError(f"GET {target}: {r.status_code}")
            async for chunk in r.aiter_bytes():
                sha1.update(chunk)
    if sha1.hexdigest() != art.sha1:
        raise RuntimeError(f"{url}: SHA-1 mismatch")
    return redirected


async def measure(
    gateway: str, pid: int, tenant: str, art: ArtifactDoc, count: int, workers: int
) -> dict[str, Any]:
    """``count`` downloads of ``art``, ``workers`` at a time; the gateway's CPU and wall time."""
    async with httpx.AsyncClient(timeout=120) as client:
        expected = await download(client, gateway, tenant, 0, art)  # warm-up
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                n = queue.pop()
                if await download(client, gateway, tenant, n % DEVICES, art) != expected:
                    raise RuntimeError("a download changed between streamed and redirected")

        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(workers)))
        cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    return {"redirected": expected, "cpu_s": cpu, "wall_s": wall, "downloads": count}


async def run(args: argparse.Namespace, children: Children, tmp: Path, nats_url: str) -> None:
    """Start moto and the gateway, put the fleet, measure each size in both modes, print."""
    s3 = await asyncio.to_thread(start_moto, children, tmp, args.start_timeout)
    say(f"moto S3 on {s3}")
    storage = StorageSettings(
        backend="s3",
        s3_endpoint=s3,
        s3_bucket=BUCKET,
        s3_access_key="bench",
        s3_secret_key="bench",  # noqa: S106 - moto takes any key
    )
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    arts = await put_objects(storage, sizes)
    await put_fleet(nats_url, "streamed", False, arts)
    await put_fleet(nats_url, "redirected", True, arts)
    port = free_port()
    env = child_env(
        GAGGLE_NATS_URL=nats_url,
        GAGGLE_LOG_LEVEL="WARNING",
        GAGGLE_GATEWAY_HOST=HOST,
        GAGGLE_GATEWAY_PORT=str(port),
        GAGGLE_GATEWAY_TENANTS="streamed,redirected",
        GAGGLE_GATEWAY_ARTIFACT_CACHE_MIB=str(args.cache_mib),
        GAGGLE_STORAGE_BACKEND="s3",
        GAGGLE_STORAGE_S3_ENDPOINT=s3,
        GAGGLE_STORAGE_S3_BUCKET=BUCKET,
        GAGGLE_STORAGE_S3_ACCESS_KEY="bench",
        GAGGLE_STORAGE_S3_SECRET_KEY="bench",  # noqa: S106 - moto takes any key
    )
    log = tmp / "gateway.log"
    proc = children.spawn([sys.executable, "-m", "gaggle_gateway"], env, log)
    gateway = f"http://{HOST}:{port}"
    await wait_ready("gateway", proc, log, f"{gateway}/readyz", args.start_timeout)
    say(f"gateway on {gateway} (pid {proc.pid})")
    cpu0 = cpu_seconds(proc.pid)
    await asyncio.sleep(args.idle_s)
    idle = (cpu_seconds(proc.pid) - cpu0) / args.idle_s
    say(f"gateway idle: {1000 * idle:.1f} ms CPU per second")
    results = []
    for size, art in zip(sizes, arts, strict=True):
        row: dict[str, Any] = {"size_mib": size}
        for tenant in ("streamed", "redirected"):
            m = await measure(gateway, proc.pid, tenant, art, args.downloads, args.workers)
            if m["redirected"] != (tenant == "redirected"):
                raise RuntimeError(f"tenant {tenant}: redirected={m['redirected']}")
            m["net_cpu_s"] = max(m["cpu_s"] - idle * m["wall_s"], 0.0)
            row[tenant] = m
            n = m["downloads"]
            say(
                f"{size:>3} MiB {tenant:<10}: gateway CPU {1000 * m['cpu_s'] / n:7.2f} ms/download"
                f" ({1000 * m['net_cpu_s'] / n:7.2f} net of idle), {n} downloads in"
                f" {m['wall_s']:.2f} s"
            )
        redirected_cpu = max(row["redirected"]["net_cpu_s"], 1e-9)
        row["ratio"] = row["streamed"]["net_cpu_s"] / redirected_cpu
        say(f"{size:>3} MiB streamed/redirected gateway CPU (net): {row['ratio']:.1f}x")
        results.append(row)
    summary = {
        "downloads": args.downloads,
        "workers": args.workers,
        "cache_mib": args.cache_mib,
        "idle_cpu_per_s": idle,
    }
    say(json.dumps({**summary, "results": results}))


def main() -> int:
    """Parse arguments, run with NATS in a temporary folder, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="1,16", help="artifact sizes, comma-separated")
    parser.add_argument("--downloads", type=int, default=50, help="downloads per size and mode")
    parser.add_argument("--workers", type=int, default=4, help="downloads at a time")
    parser.add_argument(
        "--cache-mib", type=int, default=64, help="gateway's artifact cache (0: streamed from S3)"
    )
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle CPU measured this long")
    parser.add_argument("--start-timeout", type=float, default=60.0)
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()

    def stop(_signo: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    tmp = Path(tempfile.mkdtemp(prefix="download-bench-"))
    children = Children()
    nats_server = NatsProcess(tmp / "nats", log_file=tmp / "nats.log")
    try:
        nats_server.start(timeout=args.start_timeout)
        say(f"NATS on {nats_server.url}")
        asyncio.run(run(args, children, tmp, nats_server.url))
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:
        say(f"FAILED: {exc}; logs kept in {tmp}")
        args.keep_logs = True
        return 1
    finally:
        children.stop_all()
        nats_server.stop()
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
