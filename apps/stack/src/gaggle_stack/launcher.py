"""Starting a service process, from a warm spare when one is ready.

A cold start of a service is nearly all imports (FastAPI, pydantic, FastStream, the service's
models): about 1.5 s of CPU, several seconds on a busy machine. A spare is the same
``python -m <package>`` started ahead of time with ``GAGGLE_STANDBY_FD``
(:func:`gaggle_runtime.serve.await_activation`): it imports everything and waits. Starting the
service then only tells the spare to go on, and it serves in a few hundred milliseconds.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from gaggle_runtime.serve import READY, STANDBY_FD_VARIABLE, START

Process = subprocess.Popen[bytes]


class Launcher:
    """One service's processes: the running one is the caller's; the spare is kept here."""

    def __init__(
        self,
        module: str,
        env: dict[str, str],
        *,
        log_file: Path | None = None,
        own_session: bool = False,
    ) -> None:
        self.module = module
        self.env = env
        self.log_file = log_file
        """Where the process writes (appended); None: this process's stdout and stderr."""
        self.own_session = own_session
        self._spare: Process | None = None
        self._sock: socket.socket | None = None
        self._warm = False

    @property
    def has_spare(self) -> bool:
        """Whether a spare is there (warm or still importing)."""
        return self._spare is not None and self._spare.poll() is None

    def start(self) -> Process:
        """The service's process: the spare told to serve, or else a cold start."""
        spare, sock = self._spare, self._sock
        self._spare, self._sock, self._warm = None, None, False
        if spare is not None and sock is not None and spare.poll() is None:
            try:
                sock.sendall(START)
                return spare
            except OSError:
                spare.kill()
                spare.wait()
            finally:
                sock.close()
        return self._popen(self.env, ())

    def prepare_spare(self) -> None:
        """Start a spare, unless one is there already."""
        if self.has_spare:
            return
        self.discard_spare()
        ours, theirs = socket.socketpair()
        try:
            env = {**self.env, STANDBY_FD_VARIABLE: str(theirs.fileno())}
            self._spare = self._popen(env, (theirs.fileno(),))
        finally:
            theirs.close()
        self._sock = ours

    def spare_warm(self, timeout: float = 0.0) -> bool:
        """Whether the spare has done its imports (waiting up to ``timeout`` seconds to know)."""
        if self._warm or self._sock is None or not self.has_spare:
            return self._warm and self.has_spare
        readable, _, _ = select.select([self._sock], [], [], timeout)
        if readable:
            self._warm = self._sock.recv(len(READY)) == READY
        return self._warm

    def discard_spare(self) -> None:
        """Stop the spare, if any."""
        spare, sock = self._spare, self._sock
        self._spare, self._sock, self._warm = None, None, False
        if sock is not None:
            sock.close()  # a spare waiting for its start sees the end and exits
        if spare is not None and spare.poll() is None:
            spare.terminate()
            try:
                spare.wait(5)
            except subprocess.TimeoutExpired:
                spare.kill()
                spare.wait()

    def _popen(self, env: dict[str, str], pass_fds: tuple[int, ...]) -> Process:
        out: IO[Any] | None = None
        if self.log_file is not None:
            out = self.log_file.open("ab")
        try:
            return subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", self.module],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=self.own_session,
                pass_fds=pass_fds,
            )
        finally:
            if out is not None:
                out.close()


def spares_wanted() -> bool:
    """Whether ``make run`` keeps warm spares (``GAGGLE_STACK_SPARES``, on unless ``0``)."""
    return os.environ.get("GAGGLE_STACK_SPARES", "1") not in ("0", "false", "no")
