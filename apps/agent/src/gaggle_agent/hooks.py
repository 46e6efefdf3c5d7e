"""Running one hook: Upparat's contract (arguments, exit codes, stdout lines).

A hook is an executable called with ``$1`` the seconds since it was first called for this action
and step, ``$2`` the retry count, ``$3`` the meta JSON, then hook-specific arguments (``install``:
the downloaded file(s); ``restart``: ``true``/``false`` for a forced update). Exit 0 is success,
exit 3 asks to be called again after ``retry_interval``, anything else is a failure. Every stdout
line is a progress message; the last one is the hook's result. stderr goes to the agent's log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RETRY", "HookResult", "run_hook"]

log = logging.getLogger(__name__)

RETRY = 3
"""The exit code that asks to be called again later."""
MAX_LINE = 4000
"""Longer stdout lines are cut (a DDI detail holds at most 4096 characters)."""


@dataclass
class HookResult:
    """How one run of a hook ended."""

    name: str
    exit_code: int
    lines: list[str] = field(default_factory=list)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """Exit code 0."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def retry(self) -> bool:
        """Exit code 3: call again later."""
        return self.exit_code == RETRY and not self.timed_out

    @property
    def result(self) -> str:
        """The last stdout line (empty if there was none)."""
        return self.lines[-1] if self.lines else ""

    def describe(self) -> str:
        """How it ended, for a report."""
        if self.timed_out:
            return f"{self.name} hook timed out"
        if self.exit_code < 0:
            return f"{self.name} hook killed by signal {-self.exit_code}"
        return f"{self.name} hook exited with {self.exit_code}"


def run_hook(
    name: str,
    path: Path,
    args: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    every: float | None = None,
    while_running: Callable[[], None] | None = None,
) -> HookResult:
    """Run ``path`` with ``args``; ``while_running()`` is called every ``every`` seconds meanwhile.

    If ``while_running`` raises, the hook (its whole process group) is stopped and the exception
    goes on. A hook that cannot be started counts as exit code 127, as in a shell.
    """
    log.debug("hook start name=%s args=%s", name, list(args))
    try:
        proc = subprocess.Popen(  # noqa: S603 (the operator's own hook)
            [str(path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        log.error("hook cannot start name=%s path=%s error=%s", name, path, exc)
        return HookResult(name, 127, [f"cannot run {path}: {exc.strerror or exc}"])
    lines: list[str] = []
    lock = threading.Lock()

    stdout, stderr = proc.stdout, proc.stderr
    if stdout is None or stderr is None:  # pragma: no cover (both are pipes)
        raise RuntimeError("hook pipes missing")

    def read_stdout() -> None:
        for raw in stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE]
            with lock:
                lines.append(line)
            if on_line is not None:
                on_line(line)

    def read_stderr() -> None:
        for raw in stderr:
            log.info("hook stderr name=%s line=%s", name, raw.decode("utf-8", "replace").rstrip())

    readers = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                _stop(proc)
                break
            step = min(left, every) if every else left
            try:
                proc.wait(step)
                break
            except subprocess.TimeoutExpired:
                if while_running is not None and time.monotonic() < deadline:
                    while_running()
    except BaseException:
        _stop(proc)
        raise
    finally:
        for reader in readers:
            reader.join(5)
    with lock:
        result = HookResult(name, proc.returncode, list(lines), timed_out)
    log.info("hook done name=%s exit=%s result=%r", name, result.exit_code, result.result)
    return result


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the hook's process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
