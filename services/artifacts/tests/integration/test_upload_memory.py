"""A 1 GiB image uploaded to the artifacts service, run as its own process, in bounded memory.

The image is built streaming from a sparse payload file into a sparse archive, so the test costs
little disk space besides the stored object (1 GiB in ``tmp_path``) and no memory of its own.
The service is measured from outside: its RSS is sampled from ``/proc`` while the upload runs,
and its ``VmHWM`` (reset just before, when the kernel allows it) catches spikes between samples.
Takes about 15-20 s on a 2-core VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

from gaggle_servers import free_port
from gaggle_swu.build import SW_DESCRIPTION, render_sw_description
from gaggle_swu.cpio import CpioWriter

pytestmark = pytest.mark.integration

SIZE = 1024**3
MIB = 1024 * 1024
PAYLOAD = "rootfs.img"
LIMIT_MIB = 100


def _description(payload_sha256: str) -> str:
    return render_sw_description(
        version="9.9.9",
        board="bigboard",
        revisions=["1.0"],
        filename=PAYLOAD,
        sha256=payload_sha256,
        path="/tmp/rootfs.img",
    )


class _SparseSink(io.RawIOBase):
    """Writes into ``out``, seeking over all-zero pieces (the file stays sparse); hashes all."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(data)
        self.sha256.update(data)
        if data.count(0) == n:
            self.out.seek(n, os.SEEK_CUR)
        else:
            self.out.write(data)
        self.size += n
        return n

    def finish(self) -> None:
        self.out.truncate(self.size)  # a trailing hole still counts as the file's length


def build_image(path: Path, size: int) -> str:
    """A ``.swu`` of exactly ``size`` bytes, its payload all zeros; returns its SHA-256."""
    probe = io.BytesIO()
    with CpioWriter(probe) as w:
        w.add(SW_DESCRIPTION, _description("0" * 64).encode())
        w.add(PAYLOAD, b"")
    payload_size = size - len(probe.getvalue())
    assert payload_size > 0
    assert payload_size % 4 == 0
    payload = path.with_name("payload.img")
    with payload.open("wb") as f:
        f.truncate(payload_size)  # sparse: no disk space
    zeros, digest, left = bytes(MIB), hashlib.sha256(), payload_size
    while left:
        step = min(MIB, left)
        digest.update(zeros if step == MIB else zeros[:step])
        left -= step
    with path.open("wb") as out, payload.open("rb") as src:
        sink = _SparseSink(out)
        with CpioWriter(sink) as w:  # type: ignore[arg-type]
            w.add(SW_DESCRIPTION, _description(digest.hexdigest()).encode())
            w.add_stream(PAYLOAD, src, payload_size)
        sink.finish()
    payload.unlink()
    assert sink.size == size
    return sink.sha256.hexdigest()


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} for {pid}")


class PeakRss:
    """The highest RSS of ``pid`` while the ``with`` block runs (KiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = 0
        self.peak = 0
        self.hwm = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                statm = Path(f"/proc/{self.pid}/statm").read_bytes()
                self.peak = max(self.peak, int(statm.split()[1]) * page_kib)
            self._stop.wait(0.005)

    def __enter__(self) -> PeakRss:
        self.before = self.peak = _status_kib(self.pid, "VmRSS")
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.hwm = True
        except OSError:
            self.hwm = False
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM"))


@pytest.fixture
def artifacts_process(
    nats_url: str, database_url: str, tmp_path: Path
) -> Iterator[tuple[str, Any]]:
    """``python -m gaggle_artifacts`` on a free port with a local store in ``tmp_path``."""
    port = free_port()
    log = tmp_path / "artifacts.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAGGLE_")}
    env.update(
        GAGGLE_NATS_URL=nats_url,
        GAGGLE_DATABASE_URL=database_url,
        GAGGLE_ARTIFACTS_HOST="127.0.0.1",
        GAGGLE_ARTIFACTS_PORT=str(port),
        GAGGLE_ARTIFACTS_MAX_UPLOAD_BYTES=str(2 * SIZE),
        GAGGLE_STORAGE_BACKEND="local",
        GAGGLE_STORAGE_DIR=str(tmp_path / "objects"),
        GAGGLE_LOG_JSON="false",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gaggle_artifacts"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if os.environ.get("GAGGLE_TEST_SHOW_LOG"):
            sys.stderr.write(log.read_text(errors="replace"))


async def _wait_ready(client: httpx.AsyncClient, url: str, proc: Any, log: Path) -> None:
    for _ in range(300):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{url}/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("artifacts not ready in 30 s:\n" + log.read_text(errors="replace")[-3000:])


async def _file(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(MIB):
            yield block


@pytest.mark.timeout(300)
async def test_1gib_upload_in_bounded_memory(
    operator_auth: httpx.Auth, artifacts_process: tuple[str, Any], tmp_path: Path
) -> None:
    url, proc = artifacts_process
    image = tmp_path / "big.swu"
    sha256 = build_image(image, SIZE)
    assert image.stat().st_size == SIZE
    log = tmp_path / "artifacts.log"
    async with httpx.AsyncClient(
        auth=operator_auth, timeout=httpx.Timeout(240, connect=10)
    ) as client:
        await _wait_ready(client, url, proc, log)
        with PeakRss(proc.pid) as rss:
            r = await client.post(
                f"{url}/api/v1/software",
                params={"filename": "big.swu"},
                content=_file(image),
                headers={"content-type": "application/octet-stream", "content-length": str(SIZE)},
            )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["size"] == SIZE
    assert body["hashes"]["sha256"] == sha256
    assert body["version"] == "9.9.9"
    stored = tmp_path / "objects"
    assert sum(p.stat().st_size for p in stored.rglob("*") if p.is_file()) == SIZE
    grown = (rss.peak - rss.before) / 1024
    assert grown < LIMIT_MIB, (
        f"the service's RSS grew by {grown:.0f} MiB "
        f"({rss.before // 1024} -> {rss.peak // 1024} MiB) during a 1 GiB upload"
    )
