"""What the benchmarks share: progress lines, child processes stopped as groups, small waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

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
