"""Artifacts benchmark: a large .swu through the artifacts service next to a plain copy, same store.

    .venv/bin/python bench/artifacts_bench.py [--size-mib 256] [--backends local,s3]

Builds a ``--size-mib`` image (one random ``rawfile`` payload, written to a temporary file in a
streaming way, never whole in memory), starts its own NATS, PostgreSQL and, for ``s3``, a moto
S3 server (``python -m moto.server``), and for each back-end:

1. starts the artifacts service (``python -m gaggle_artifacts``) on a free port with that store,
   waits for ``/readyz`` and warms it up with one small upload (deleted again);
2. plain copy: writes the image's bytes into the same store from this process
   (``await store.write(key, chunks)``, 1 MiB chunks read from the file), then reads them back
   (``store.read(key)``), no HTTP;
3. upload: ``POST /api/v1/software`` with the file streamed from disk as the raw body (1 MiB
   chunks, ``Content-Length`` set), checking the 201 answer's size and SHA-256, while a thread
   samples the service's RSS; the peak is also taken from ``VmHWM`` (reset before the upload
   through ``/proc/<pid>/clear_refs``);
4. download: ``GET /api/v1/software/{id}/download`` streamed and discarded.

Every read (plain read and download) feeds a SHA-256 that must match the image's, so both sides of
the download ratio do the same work. Prints MiB/s per phase, the ratios upload/plain write and
download/plain read, the service's RSS before the upload and its peak during it, and whether the
goals (download >= 0.5 of the plain read, upload memory < 100 MiB extra) are met; writes the same
as JSON to ``bench/results/artifacts-<timestamp>.json``.

Everything listens on 127.0.0.1 only (never the machine's NATS on 4222 or PostgreSQL on 5432);
every phase has a time limit; every child process is stopped at the end, also on errors, Ctrl-C
and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx
from benchlib import Children, admin_key, bounded, child_env, http_status, say, tail

from gaggle_runtime.db import ensure_database, with_database
from gaggle_servers import EmbeddedPostgres, NatsProcess, free_port, wait_for_port
from gaggle_storage import ObjectStore, S3Store, StorageSettings, open_store
from gaggle_swu.build import SW_DESCRIPTION, SW_DESCRIPTION_SIG, build_swu, render_sw_description
from gaggle_swu.cpio import CpioWriter

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
MIB = 1024 * 1024
CHUNK = MIB
"""Client read size: the file is read and sent in 1 MiB pieces, for the plain copy too."""
PAYLOAD = "payload.bin"
S3_BUCKET = "gaggle-bench"
S3_KEY = "testing"
GOAL_DOWNLOAD_RATIO = 0.5
GOAL_EXTRA_MIB = 100.0
BACKENDS = ("local", "s3")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Child processes


def wait_ready(
    proc: subprocess.Popen[bytes], log: Path, port: int, marker: str, timeout: float
) -> None:
    """Wait until ``marker`` is in the log and ``/readyz`` says 200.

    Raises:
        RuntimeError: the process exited, or ``timeout`` passed; the log's tail is included.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"artifacts exited with {proc.returncode}:\n{tail(log)}")
        if (
            marker in log.read_text(errors="replace")
            and http_status(f"http://{HOST}:{port}/readyz") == 200
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"artifacts not ready after {timeout:.0f} s:\n{tail(log)}")


# --------------------------------------------------------------------------------------------
# Memory of the service


def status_kib(pid: int, field_name: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/<pid>/status``; 0 when unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0, own processes); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Samples a process's RSS from a thread while a phase runs; the peak, also from VmHWM."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.before_kib = 0
        self.peak_kib = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._page_kib = os.sysconf("SC_PAGE_SIZE") // 1024

    def _rss_kib(self) -> int:
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * self._page_kib
        except (OSError, IndexError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self._rss_kib())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.before_kib = status_kib(self.pid, "VmRSS")
        self.hwm_reset = reset_peak(self.pid)
        self.peak_kib = self.before_kib
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm_reset:
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmHWM"))

    @property
    def extra_mib(self) -> float:
        """Peak minus the RSS before the phase."""
        return (self.peak_kib - self.before_kib) / 1024


# --------------------------------------------------------------------------------------------
# The image


class _HashingSink(io.RawIOBase):
    """A write-only file that hashes what passes through into ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.out.write(data)
        self.size += len(data)
        return len(data)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Signer:
    """A CMS signer for ``--signed`` images: a self-signed key and certificate (openssl)."""

    def __init__(self, directory: Path) -> None:
        from gaggle_swu.pki import make_identity  # only with --signed

        self.identity = make_identity("gaggle bench signer", datetime.now(UTC))
        self.key, self.cert = self.identity.write(directory, "bench-signer")

    def sign(self, desc: str) -> bytes:
        """``sw-description.sig`` for ``desc``, as ``openssl cms -sign`` makes it."""
        from gaggle_swu.build import sign_cms

        return sign_cms(desc.encode(), self.key, self.cert)


def _sw_description(payload_sha256: str) -> str:
    return render_sw_description(
        version="1.0.0",
        board="bench",
        revisions=["1.0"],
        filename=PAYLOAD,
        sha256=payload_sha256,
        path="/tmp/gaggle-bench-payload",  # noqa: S108 (text inside the image, never used)
    )


def build_image(path: Path, size: int, signer: Signer | None = None) -> str:
    """Write a ``.swu`` of exactly ``size`` bytes with one random payload to ``path``; its SHA-256.

    With ``signer``, ``sw-description.sig`` follows the sw-description (a CMS signature's length
    does not depend on what it signs).

    The payload goes to a temporary file first (its SHA-256 belongs in the sw-description, which
    comes before it in the archive), then is copied into the archive by ``CpioWriter.add_stream``
    in 64 KiB pieces. Memory stays at a few MiB whatever ``size``.
    """
    # Everything but the payload: two headers, the sw-description (fixed length: the payload's
    # hash is 64 hex digits whatever it is) and the trailer; all padded to multiples of 4.
    probe = io.BytesIO()
    with CpioWriter(probe) as w:
        w.add(SW_DESCRIPTION, _sw_description("0" * 64).encode())
        if signer is not None:
            w.add(SW_DESCRIPTION_SIG, signer.sign(_sw_description("0" * 64)))
        w.add(PAYLOAD, b"")
    payload_size = size - len(probe.getvalue())
    if payload_size <= 0 or payload_size % 4:
        raise ValueError(f"cannot build an image of {size} bytes")
    payload_path = path.with_name(path.name + ".payload")
    try:
        payload_hash = hashlib.sha256()
        with payload_path.open("wb") as f:
            left = payload_size
            while left:
                block = os.urandom(min(CHUNK, left))
                payload_hash.update(block)
                f.write(block)
                left -= len(block)
        with path.open("wb") as out, payload_path.open("rb") as src:
            sink = _HashingSink(out)
            with CpioWriter(sink) as w:  # type: ignore[arg-type]
                desc = _sw_description(payload_hash.hexdigest())
                w.add(SW_DESCRIPTION, desc.encode())
                if signer is not None:
                    w.add(SW_DESCRIPTION_SIG, signer.sign(desc))
                w.add_stream(PAYLOAD, src, payload_size)
    finally:
        payload_path.unlink(missing_ok=True)
    if sink.size != size:
        raise RuntimeError(f"built {sink.size} bytes, wanted {size}")
    return sink.sha256.hexdigest()


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in 1 MiB pieces (from the page cache after the first pass)."""
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            yield block


# --------------------------------------------------------------------------------------------
# Phases


@dataclass
class Round:
    """One round of the four phases on one back-end; seconds and KiB."""

    plain_write_s: float
    plain_read_s: float
    upload_s: float
    download_s: float
    rss_before_upload_kib: int
    rss_peak_upload_kib: int
    rss_before_download_kib: int
    rss_peak_download_kib: int
    peak_from_hwm: bool
    upload_cpu_s: float = 0.0
    """CPU seconds (user + system) the service spent on the upload: a figure other load on the
    machine barely changes, unlike the MiB/s."""


@dataclass
class BackendResult:
    """Medians over the rounds (throughput) and the worst round (memory)."""

    backend: str
    size: int
    plain_write_mibs: float
    plain_read_mibs: float
    upload_mibs: float
    download_mibs: float
    upload_ratio: float
    download_ratio: float
    rss_before_mib: float
    rss_peak_mib: float
    upload_extra_mib: float
    download_extra_mib: float
    upload_cpu_s_per_gib: float = 0.0
    rounds: list[Round] = field(default_factory=list)


async def timed(what: str, seconds: float, work: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    """Run ``work()`` within ``seconds``; (elapsed seconds, result)."""
    t0 = time.perf_counter()
    result = await bounded(what, seconds, work())
    return time.perf_counter() - t0, result


async def read_all(chunks: AsyncIterator[bytes]) -> tuple[int, str]:
    """Consume a stream: (bytes, SHA-256)."""
    digest = hashlib.sha256()
    n = 0
    async for chunk in chunks:
        digest.update(chunk)
        n += len(chunk)
    return n, digest.hexdigest()


def _raw_get(port: int, url: str, key: str, timeout: float) -> tuple[int, str]:
    """GET with ``http.client`` in this thread, 1 MiB ``readinto``: (bytes, SHA-256).

    A lean client, closer to what devices use (curl in SWUpdate) than httpx, whose pure-Python
    HTTP parsing in 64 KiB steps becomes the bottleneck above about 400 MiB/s on a loaded core.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(
            "GET", httpx.URL(url).raw_path.decode(), headers={"Authorization": f"Bearer {key}"}
        )
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"download answered {resp.status}: {resp.read(500)!r}")
        digest = hashlib.sha256()
        view = memoryview(bytearray(CHUNK))
        n = 0
        while k := resp.readinto(view):
            digest.update(view[:k])
            n += k
        return n, digest.hexdigest()
    finally:
        conn.close()


class Artifacts:
    """The running service, as the benchmark talks to it."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        port: int,
        pid: int,
        key: str,
        *,
        raw_download: bool,
        timeout: float,
    ) -> None:
        self.client = client
        self.key = key
        self.port = port
        self.base = f"http://{HOST}:{port}/api/v1/software"
        self.pid = pid
        self.raw_download = raw_download
        self.timeout = timeout

    async def upload(self, name: str, body: AsyncIterator[bytes], size: int) -> Any:
        """POST the raw body; the 201 answer's JSON.

        Raises:
            RuntimeError: any other answer.
        """
        r = await self.client.post(
            self.base,
            params={"filename": name},
            content=body,
            headers={"content-type": "application/octet-stream", "content-length": str(size)},
        )
        if r.status_code != 201:
            raise RuntimeError(f"upload answered {r.status_code}: {r.text[:500]}")
        return r.json()

    async def trust(self, pem: str) -> None:
        """Add the signer's certificate to the tenant's trust store."""
        r = await self.client.post(
            self.base.replace("/software", "/trust"), json={"name": "bench", "pem": pem}
        )
        if r.status_code != 201:
            raise RuntimeError(f"trusting the signer answered {r.status_code}: {r.text[:500]}")

    async def download(self, software_id: str) -> tuple[int, str]:
        """GET the image streamed and discarded: (bytes, SHA-256)."""
        path = f"{self.base}/{software_id}/download"
        if self.raw_download:
            return await asyncio.to_thread(_raw_get, self.port, path, self.key, self.timeout)
        async with self.client.stream("GET", path) as r:
            if r.status_code != 200:
                raise RuntimeError(f"download answered {r.status_code}")
            return await read_all(r.aiter_raw())

    async def delete(self, software_id: str) -> None:
        """Remove it again (hard: no device ever had it), with its bytes."""
        r = await self.client.delete(f"{self.base}/{software_id}")
        if r.status_code != 200:
            raise RuntimeError(f"delete answered {r.status_code}: {r.text[:500]}")


def check(what: str, got: tuple[int, str], size: int, sha256: str) -> None:
    """The bytes read back are the image's.

    Raises:
        RuntimeError: they are not.
    """
    if got != (size, sha256):
        raise RuntimeError(f"{what}: got {got[0]} bytes, SHA-256 {got[1]}; wanted {size}, {sha256}")


async def warm_up(svc: Artifacts, timeout: float) -> None:
    """One small upload and its deletion: first-use costs stay out of the measured upload."""
    desc = _sw_description(hashlib.sha256(b"\0" * MIB).hexdigest())
    data = build_swu(desc, [(PAYLOAD, b"\0" * MIB)])

    async def body() -> AsyncIterator[bytes]:
        yield data

    answer = await bounded("warm-up upload", timeout, svc.upload("w.swu", body(), len(data)))
    got = await bounded("warm-up download", timeout, svc.download(answer["id"]))
    check("warm-up download", got, len(data), hashlib.sha256(data).hexdigest())
    await bounded("warm-up delete", timeout, svc.delete(answer["id"]))


async def one_round(
    args: argparse.Namespace,
    store: ObjectStore,
    svc: Artifacts,
    image: Path,
    size: int,
    sha256: str,
    label: str,
) -> Round:
    """Plain write, plain read, upload, download; everything removed again afterwards."""
    limit = args.phase_timeout
    key = f"bench-plain/{uuid.uuid4().hex}/image.swu"
    try:
        say(f"{label}: plain write")
        t_pw, written = await timed(
            "plain write", limit, lambda: store.write(key, file_chunks(image))
        )
        if written != size:
            raise RuntimeError(f"plain write stored {written} bytes, wanted {size}")
        say(f"{label}: plain read")
        t_pr, got = await timed("plain read", limit, lambda: read_all(store.read(key)))
        check("plain read", got, size, sha256)
    finally:
        with contextlib.suppress(Exception):
            await bounded("plain delete", 60, store.delete(key))

    say(f"{label}: upload")
    cpu_before = cpu_seconds(svc.pid)
    with RssSampler(svc.pid) as up_mem:
        t_up, answer = await timed(
            "upload", limit, lambda: svc.upload("image.swu", file_chunks(image), size)
        )
    upload_cpu = cpu_seconds(svc.pid) - cpu_before
    try:
        if answer["size"] != size or answer["hashes"]["sha256"] != sha256:
            raise RuntimeError(f"upload answer does not match the image: {answer}")
        if args.signed and answer.get("trust") != "verified":
            raise RuntimeError(f"the signed image was not verified: {answer.get('signature')}")
        say(f"{label}: download")
        with RssSampler(svc.pid) as down_mem:
            t_dl, got = await timed("download", limit, lambda: svc.download(answer["id"]))
        check("download", got, size, sha256)
    finally:
        with contextlib.suppress(Exception):
            await bounded("delete", 60, svc.delete(answer["id"]))
    mibs = size / MIB
    say(
        f"  plain write {mibs / t_pw:,.0f} MiB/s, plain read {mibs / t_pr:,.0f} MiB/s, "
        f"upload {mibs / t_up:,.0f} MiB/s, download {mibs / t_dl:,.0f} MiB/s, "
        f"upload RSS {up_mem.before_kib / 1024:.0f} -> {up_mem.peak_kib / 1024:.0f} MiB, "
        f"upload CPU {upload_cpu:.2f} s"
    )
    return Round(
        plain_write_s=t_pw,
        plain_read_s=t_pr,
        upload_s=t_up,
        download_s=t_dl,
        rss_before_upload_kib=up_mem.before_kib,
        rss_peak_upload_kib=up_mem.peak_kib,
        rss_before_download_kib=down_mem.before_kib,
        rss_peak_download_kib=down_mem.peak_kib,
        peak_from_hwm=up_mem.hwm_reset,
        upload_cpu_s=upload_cpu,
    )


def summarise(backend: str, size: int, rounds: list[Round]) -> BackendResult:
    """Median throughput over the rounds; memory of the round that grew most."""
    mibs = size / MIB

    def rate(attr: str) -> float:
        return statistics.median(mibs / float(getattr(r, attr)) for r in rounds)

    worst = max(rounds, key=lambda r: r.rss_peak_upload_kib - r.rss_before_upload_kib)
    pw, pr, up, dl = (rate(a) for a in ("plain_write_s", "plain_read_s", "upload_s", "download_s"))
    return BackendResult(
        backend=backend,
        size=size,
        plain_write_mibs=pw,
        plain_read_mibs=pr,
        upload_mibs=up,
        download_mibs=dl,
        upload_ratio=up / pw,
        download_ratio=dl / pr,
        rss_before_mib=worst.rss_before_upload_kib / 1024,
        rss_peak_mib=worst.rss_peak_upload_kib / 1024,
        upload_extra_mib=(worst.rss_peak_upload_kib - worst.rss_before_upload_kib) / 1024,
        download_extra_mib=max(
            (r.rss_peak_download_kib - r.rss_before_download_kib) / 1024 for r in rounds
        ),
        upload_cpu_s_per_gib=statistics.median(r.upload_cpu_s for r in rounds) * 1024 / mibs,
        rounds=rounds,
    )


def storage_settings(backend: str, tmp: Path, s3_endpoint: str | None) -> dict[str, str]:
    """``GAGGLE_STORAGE_*`` for one back-end."""
    if backend == "local":
        return {"GAGGLE_STORAGE_BACKEND": "local", "GAGGLE_STORAGE_DIR": str(tmp / "objects")}
    assert s3_endpoint is not None  # noqa: S101
    return {
        "GAGGLE_STORAGE_BACKEND": "s3",
        "GAGGLE_STORAGE_S3_ENDPOINT": s3_endpoint,
        "GAGGLE_STORAGE_S3_ACCESS_KEY": S3_KEY,
        "GAGGLE_STORAGE_S3_SECRET_KEY": S3_KEY,
        "GAGGLE_STORAGE_S3_BUCKET": S3_BUCKET,
    }


async def bench_backend(
    args: argparse.Namespace,
    children: Children,
    tmp: Path,
    backend: str,
    nats_url: str,
    database_url: str,
    s3_endpoint: str | None,
    image: Path,
    size: int,
    sha256: str,
) -> BackendResult:
    """Start the service on ``backend``, run the rounds, stop it."""
    env_storage = storage_settings(backend, tmp, s3_endpoint)
    settings = StorageSettings.model_validate(
        {k.removeprefix("GAGGLE_STORAGE_").lower(): v for k, v in env_storage.items()}
    )
    store = open_store(settings)
    if isinstance(store, S3Store):
        await bounded("bucket creation", 30, store.ensure_bucket())
    key, _ = await admin_key(nats_url, "default")
    port = free_port()
    log = tmp / f"artifacts-{backend}.log"
    say(f"starting artifacts ({backend} store) on {HOST}:{port}")
    proc = children.spawn(
        [sys.executable, "-m", "gaggle_artifacts"],
        child_env(
            GAGGLE_NATS_URL=nats_url,
            GAGGLE_DATABASE_URL=database_url,
            GAGGLE_ARTIFACTS_HOST=HOST,
            GAGGLE_ARTIFACTS_PORT=str(port),
            GAGGLE_ARTIFACTS_MAX_UPLOAD_BYTES=str(max(2 * size, 1024**3)),
            GAGGLE_LOG_JSON="false",
            GAGGLE_LOG_LEVEL="INFO",
            **env_storage,
        ),
        log,
    )
    try:
        await asyncio.to_thread(wait_ready, proc, log, port, "service started", args.start_timeout)
        timeout = httpx.Timeout(args.phase_timeout, connect=10)
        bearer = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(timeout=timeout, headers=bearer) as client:
            svc = Artifacts(
                client,
                port,
                proc.pid,
                key,
                raw_download=args.download_client == "raw",
                timeout=args.phase_timeout,
            )
            if args.signed:
                await svc.trust(args.signer_pem)
            await warm_up(svc, 60)
            rounds = []
            for r in range(args.rounds):
                label = backend + (f" round {r + 1}/{args.rounds}" if args.rounds > 1 else "")
                rounds.append(await one_round(args, store, svc, image, size, sha256, label))
                if proc.poll() is not None:
                    raise RuntimeError(f"artifacts died:\n{tail(log)}")
    finally:
        children.stop(proc)
    return summarise(backend, size, rounds)


def start_moto(children: Children, tmp: Path, timeout: float) -> str:
    """A moto S3 server in its own process (not sharing our GIL); its ``host:port``."""
    port = free_port()
    proc = children.spawn(
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        child_env(),
        tmp / "moto.log",
    )
    wait_for_port(HOST, port, timeout, proc)
    return f"{HOST}:{port}"


# --------------------------------------------------------------------------------------------
# Report


def verdicts(results: list[BackendResult]) -> list[dict[str, Any]]:
    """Goal checks per back-end."""
    return [
        {
            "backend": r.backend,
            "download_ratio": round(r.download_ratio, 3),
            "download_met": r.download_ratio >= GOAL_DOWNLOAD_RATIO,
            "upload_extra_mib": round(r.upload_extra_mib, 1),
            "memory_met": r.upload_extra_mib < GOAL_EXTRA_MIB,
        }
        for r in results
    ]


def report(results: list[BackendResult]) -> str:
    """The printed table and the goal lines."""
    head = (
        f"{'backend':<8} {'write':>8} {'read':>8} {'upload':>8} {'download':>9} "
        f"{'up/write':>9} {'down/read':>10} {'RSS before':>11} {'RSS peak':>9} {'extra':>7} "
        f"{'up CPU':>7}"
    )
    units = (
        f"{'':<8} {'MiB/s':>8} {'MiB/s':>8} {'MiB/s':>8} {'MiB/s':>9} {'':>9} {'':>10} "
        f"{'MiB':>11} {'MiB':>9} {'MiB':>7} {'s/GiB':>7}"
    )
    lines = [head, units]
    for r in results:
        lines.append(
            f"{r.backend:<8} {r.plain_write_mibs:>8,.0f} {r.plain_read_mibs:>8,.0f} "
            f"{r.upload_mibs:>8,.0f} {r.download_mibs:>9,.0f} {r.upload_ratio:>9.2f} "
            f"{r.download_ratio:>10.2f} {r.rss_before_mib:>11.0f} {r.rss_peak_mib:>9.0f} "
            f"{r.upload_extra_mib:>+7.0f} {r.upload_cpu_s_per_gib:>7.2f}"
        )
    lines.append("")
    for v in verdicts(results):
        lines.append(
            f"{v['backend']}: download/plain read = {v['download_ratio']:.2f} "
            f"(goal >= {GOAL_DOWNLOAD_RATIO}: {'met' if v['download_met'] else 'NOT met'}); "
            f"upload memory {v['upload_extra_mib']:+.0f} MiB "
            f"(goal < {GOAL_EXTRA_MIB:g} MiB: {'met' if v['memory_met'] else 'NOT met'})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(
        description="Artifacts upload/download throughput and upload memory next to a plain "
        "copy through the same object store."
    )
    p.add_argument("--size-mib", type=int, default=256, help="image size in MiB (256)")
    p.add_argument("--backends", default="local,s3", help="stores to measure: local,s3 (both)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds per back-end; median throughput, worst memory reported (1)",
    )
    p.add_argument(
        "--download-client",
        choices=["raw", "httpx"],
        default="raw",
        help="download with http.client in a thread (1 MiB readinto) or with httpx streaming; "
        "httpx's own parsing caps it near 400 MiB/s on this kind of machine (raw)",
    )
    p.add_argument(
        "--phase-timeout", type=float, default=300.0, help="seconds any one phase may take (300)"
    )
    p.add_argument(
        "--start-timeout", type=float, default=60.0, help="seconds a server may take to start (60)"
    )
    p.add_argument(
        "--signed",
        action="store_true",
        help="sign the image's sw-description (CMS, openssl) and trust the signer: uploads "
        "then verify the signature as well as the inner hashes",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the temporary directory with the server logs"
    )
    args = p.parse_args(argv)
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backend_list or any(b not in BACKENDS for b in args.backend_list):
        p.error(f"--backends: a comma-separated choice of {', '.join(BACKENDS)}")
    if args.size_mib < 2 or args.rounds < 1 or args.phase_timeout <= 0:
        p.error("--size-mib must be at least 2, --rounds and --phase-timeout positive")
    return args


def _sigterm(_signo: int, _frame: Any) -> None:
    raise KeyboardInterrupt


async def run(
    args: argparse.Namespace, children: Children, tmp: Path, nats_url: str, pg_url: str
) -> tuple[list[BackendResult], int, str]:
    """Build the image, then measure each back-end."""
    database_url = with_database(pg_url, "bench")
    await bounded("database creation", 30, ensure_database(database_url))
    size = args.size_mib * MIB
    image = tmp / "image.swu"
    say(f"building a {args.size_mib} MiB image in {image}")
    t0 = time.monotonic()
    signer = Signer(tmp) if args.signed else None
    args.signer_pem = signer.identity.cert_pem.decode() if signer else None
    sha256 = await bounded(
        "image build", args.phase_timeout, asyncio.to_thread(build_image, image, size, signer)
    )
    say(f"built in {time.monotonic() - t0:.1f} s, SHA-256 {sha256}")
    s3_endpoint = None
    if "s3" in args.backend_list:
        s3_endpoint = await asyncio.to_thread(start_moto, children, tmp, args.start_timeout)
        say(f"moto S3 on {s3_endpoint}")
    results = []
    for backend in args.backend_list:
        results.append(
            await bench_backend(
                args,
                children,
                tmp,
                backend,
                nats_url,
                database_url,
                s3_endpoint,
                image,
                size,
                sha256,
            )
        )
    return results, size, sha256


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (goals met or not), 1 on failure, 130 on Ctrl-C."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="gaggle-abench-"))
    children = Children()
    nats_server = NatsProcess(tmp / "nats", log_file=tmp / "nats.log")
    postgres = EmbeddedPostgres(tmp / "pg")
    started = datetime.now(UTC)
    try:
        say(f"temporary directory {tmp}")
        nats_server.start(timeout=args.start_timeout)
        say(f"NATS on {nats_server.url}")
        pg_url = postgres.start()
        say("PostgreSQL started (embedded, Unix socket in the temporary directory)")
        try:
            import uvloop

            runner: Callable[[Any], Any] = uvloop.run
        except ImportError:
            runner = asyncio.run
        results, size, sha256 = runner(run(args, children, tmp, nats_server.url, pg_url))
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
        if args.keep_logs:
            with contextlib.suppress(OSError):
                (tmp / "image.swu").unlink()
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    header = (
        f"Artifacts service, {args.size_mib} MiB image ({size:,} bytes), "
        f"{args.rounds} round(s) per store, {os.cpu_count()} CPUs shared by client, service and "
        "S3 server; client chunks 1 MiB; "
        f"download client {args.download_client}; every read checked against the SHA-256"
        + ("; image signed (CMS), signature verified on upload" if args.signed else "")
    )
    print(header)  # noqa: T201
    print(report(results))  # noqa: T201
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"artifacts-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "params": {
                    "size_mib": args.size_mib,
                    "backends": args.backend_list,
                    "rounds": args.rounds,
                    "phase_timeout_s": args.phase_timeout,
                    "client_chunk_bytes": CHUNK,
                    "download_client": args.download_client,
                    "signed": args.signed,
                },
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "image": {"size": size, "sha256": sha256},
                "goals": {
                    "download_ratio_min": GOAL_DOWNLOAD_RATIO,
                    "upload_extra_mib_max": GOAL_EXTRA_MIB,
                },
                "results": [asdict(r) for r in results],
                "verdicts": verdicts(results),
            },
            indent=2,
        )
        + "\n"
    )
    say(f"results written to {out.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
