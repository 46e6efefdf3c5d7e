"""What the benchmarks share: progress lines, child processes stopped as groups, small waits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gaggle_contracts.access import key_hash
from gaggle_runtime.auth import put_key
from gaggle_servers import EmbeddedPostgres, NatsProcess

BENCH_DIR = Path(__file__).resolve().parent
T = TypeVar("T")


def say(msg: str) -> None:
    """Progress on stderr, so stdout holds only the result table."""
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


class Children:
    """Every server process this run started; each in its own session, stopped as a group."""

    def __init__(self, stop_timeout: float = 10.0) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stop_timeout = stop_timeout

    def spawn(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``args`` with stdout and stderr into ``log``."""
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the group ourselves.
                cwd=BENCH_DIR.parent,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float | None = None) -> None:
        """SIGTERM the process group (a server and its workers), SIGKILL what lingers."""
        timeout = self.stop_timeout if timeout is None else timeout
        if proc in self.procs:
            self.procs.remove(proc)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # Workers may outlive their supervisor; the group id is the supervisor's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop_all(self) -> None:
        """Stop every process still running."""
        for proc in list(self.procs):
            self.stop(proc)


def child_env(**extra: str) -> dict[str, str]:
    """This environment without any GAGGLE_* setting (never the machine's NATS), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAGGLE_")}
    env.update(extra)
    return env


def tail(log: Path, lines: int = 30) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_status(url: str, timeout: float = 2.0) -> int:
    """Status of GET ``url``, 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


async def bounded(what: str, seconds: float, work: Awaitable[T]) -> T:
    """``await work`` within ``seconds``.

    Raises:
        RuntimeError: it took longer.
    """
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise RuntimeError(f"{what} took longer than {seconds:g} s") from None


# --------------------------------------------------------------------------------------------
# CPU accounting (Linux /proc), to tell whether the registry or PostgreSQL was busy

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, CPU seconds of its exited and reaped children) of ``pid``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / _TICK
    return int(fields[1]), own, (int(fields[13]) + int(fields[14])) / _TICK


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and its descendants, live or exited and reaped.

    PostgreSQL's postmaster reaps its backends, autovacuum and parallel workers, so their CPU
    time stays counted after they exit.
    """
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)] = stat[0]
                cpu[int(entry.name)] = stat[1] + stat[2]
    total, todo = 0.0, [root]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += cpu.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent outside idle and iowait since boot."""
    with contextlib.suppress(OSError):
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(values) - values[3] - values[4]) / _TICK
    return 0.0


class CpuMeter:
    """CPU seconds of the service under test, PostgreSQL, NATS, this process, and the rest."""

    def __init__(self, service: str, service_pid: int, postgres: int, nats_server: int) -> None:
        self.roots = {service: service_pid, "postgres": postgres, "nats": nats_server}

    def snapshot(self) -> dict[str, float]:
        """Counters now."""
        snap = {name: cpu_seconds(pid) for name, pid in self.roots.items()}
        times = os.times()
        snap["bench client"] = times.user + times.system
        snap["machine"] = machine_busy_seconds()
        return snap

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds per part between two snapshots; ``other``: the rest of the machine.

        ``other``: processes that are not ours (or children not reaped yet).
        """
        used = {k: round(after[k] - before[k], 2) for k in before}
        ours = sum(v for k, v in used.items() if k != "machine")
        used["other"] = round(max(0.0, used["machine"] - ours), 2)
        return used


def cpu_text(used: dict[str, float], seconds: float) -> str:
    """One line: CPU seconds per part, of the machine's capacity over ``seconds``."""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in used.items() if k != "machine")
    return (
        f"CPU s: {parts}; machine busy {used['machine']:.1f} of "
        f"{seconds * (os.cpu_count() or 1):.1f}"
    )


def postmaster_pid(data_dir: Path) -> int:
    """The embedded PostgreSQL's postmaster, from ``postmaster.pid``."""
    for candidate in (data_dir / "postmaster.pid", *data_dir.glob("*/postmaster.pid")):
        with contextlib.suppress(OSError, ValueError):
            return int(candidate.read_text().split("\n", 1)[0])
    return 0


def _sigterm(_signo: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run_with_servers(args: argparse.Namespace, prefix: str, run: Callable[..., Any]) -> int:
    """Start NATS and PostgreSQL in a temporary folder, run ``run``, stop everything.

    ``run(args, children, tmp, nats_url, nats_pid, pg_url, started)`` is the benchmark's
    coroutine; ``args`` needs ``start_timeout`` and ``keep_logs``. Returns 0 when it ran,
    1 on failure (logs kept), 130 on Ctrl-C or SIGTERM.
    """
    signal.signal(signal.SIGTERM, _sigterm)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children(stop_timeout=15.0)
    nats_server = NatsProcess(tmp / "nats", log_file=tmp / "nats.log")
    postgres = EmbeddedPostgres(tmp / "pg")
    started = datetime.now(UTC)
    try:
        say(f"temporary directory {tmp}")
        nats_server.start(timeout=args.start_timeout)
        say(f"NATS on {nats_server.url}")
        pg_url = postgres.start()
        say(f"PostgreSQL started (embedded): {pg_url}")
        try:
            import uvloop

            runner: Callable[[Any], Any] = uvloop.run
        except ImportError:
            runner = asyncio.run
        nats_pid = nats_server.proc.pid if nats_server.proc else 0
        runner(run(args, children, tmp, nats_server.url, nats_pid, pg_url, started))
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
    return 0


def git_version(*paths: str) -> str:
    """The checkout's commit, ``+dirty`` when files under ``paths`` differ from it."""

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(  # noqa: S603
                ["git", *cmd],  # noqa: S607
                cwd=BENCH_DIR.parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", *paths)
    return commit + ("+dirty" if dirty else "")


async def wait_ready(
    name: str, proc: subprocess.Popen[bytes], log: Path, url: str, timeout: float
) -> None:
    """Wait until ``url`` (a service's ``/readyz``) says 200.

    Raises:
        RuntimeError: the process exited, or ``timeout`` passed; the log's tail is included.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        if await asyncio.to_thread(http_status, url) == 200:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{tail(log)}")


async def admin_key(nats_url: str, tenant: str) -> tuple[str, dict[str, str]]:
    """An admin API key of ``tenant``: the key, and the environment that makes a registry keep it.

    The key goes straight into KV ``api_keys`` (what every service checks), so services started
    without a registry accept it too; a registry creates it in its table at start.
    """
    key_id, key = await put_key(nats_url, tenant, ["admin"], "bench")
    env = {
        "GAGGLE_REGISTRY_BOOTSTRAP_KEY": f"{key_id}:{key_hash(key)}",
        "GAGGLE_REGISTRY_BOOTSTRAP_TENANT": tenant,
    }
    return key, env
