"""``gaggle-stack``: NATS, PostgreSQL, the object store folder, the four services and the console.

Everything lives under ``GAGGLE_DATA_DIR`` (default ``./.gaggle``), so a second start finds the same
data; the admin key (``admin.key``) and, once all answer, the URLs (``urls.toml``) are there for the
``gaggle`` command line. ``GAGGLE_DATABASE_URL`` (or ``DATABASE_URL``) uses an existing PostgreSQL
instead of the embedded one; ``GAGGLE_NATS_URL`` an existing NATS. Ctrl-C stops everything.

Like compose's ``restart: unless-stopped``, a process that dies (a service, nats-server, the
postmaster) is started again after a back-off while the others keep running. Each service has a
warm spare (``GAGGLE_STACK_SPARES=0`` turns them off), so a service is back in well under a second
of its restart instead of the seconds its imports take (:mod:`gaggle_stack.launcher`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from gaggle_contracts.access import key_hash, key_id_of, new_api_key
from gaggle_runtime.db import ensure_database, with_database
from gaggle_servers import EmbeddedPostgres, NatsProcess, port_in_use
from gaggle_stack.launcher import Launcher, spares_wanted

DEFAULT_NATS_PORT = 4250
NATS_PORT_VARIABLE = "GAGGLE_STACK_NATS_PORT"
ADMIN_KEY_FILE = "admin.key"
URLS_FILE = "urls.toml"
"""Where the running stack serves, next to the admin key; ``gaggle`` (the CLI) reads it."""
# compose's back-off: 1 s doubling to 30 s, and a process that stayed up this long starts at 1 s.
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
SETTLED_AFTER = 30.0
SPARE_AFTER = 10.0
"""Seconds a restarted service runs before its next spare is started (not to slow its start)."""


@dataclass(frozen=True)
class ServiceSpec:
    """One service process of the stack."""

    name: str
    module: str
    env_prefix: str
    default_port: int

    @property
    def port(self) -> int:
        """The port from ``GAGGLE_<SERVICE>_PORT`` or the default."""
        return int(os.environ.get(f"{self.env_prefix}PORT", self.default_port))


SERVICES = (
    ServiceSpec("gateway", "gaggle_gateway", "GAGGLE_GATEWAY_", 8080),
    ServiceSpec("registry", "gaggle_registry", "GAGGLE_REGISTRY_", 8081),
    ServiceSpec("artifacts", "gaggle_artifacts", "GAGGLE_ARTIFACTS_", 8082),
    ServiceSpec("rollouts", "gaggle_rollouts", "GAGGLE_ROLLOUTS_", 8083),
    ServiceSpec("console", "gaggle_console", "GAGGLE_CONSOLE_", 8084),
)
CONSOLE_CALLS = ("registry", "rollouts", "artifacts")
"""The services whose URLs the console is given (``GAGGLE_CONSOLE_<SERVICE>_URL``)."""


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Backoff:
    """When to start a dead process again: each quick death doubles the wait, up to a cap."""

    started_at: float = 0.0
    delay: float = 0.0
    due: float | None = None

    def schedule(self, now: float) -> float:
        """Set ``due`` after a death at ``now``; returns the wait."""
        if now - self.started_at >= SETTLED_AFTER:
            self.delay = 0.0
        self.delay = min(self.delay * 2, MAX_DELAY) if self.delay else FIRST_DELAY
        self.due = now + self.delay
        return self.delay


def taken_ports() -> list[str]:
    """One line per port the stack would listen on that something else already holds."""
    wanted: list[tuple[int, str, str]] = []
    if not os.environ.get("GAGGLE_NATS_URL"):
        port = int(os.environ.get(NATS_PORT_VARIABLE, DEFAULT_NATS_PORT))
        wanted.append((port, "NATS", NATS_PORT_VARIABLE))
    wanted += [(s.port, s.name, f"{s.env_prefix}PORT") for s in SERVICES]
    return [
        f"port {port} ({what}) is already in use; stop what listens there, "
        f"or choose another port with {variable}"
        for port, what, variable in wanted
        if port_in_use(port)
    ]


class Stack:
    """The running stack: starts, watches and restarts its processes, and stops them in order."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.nats: NatsProcess | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.launchers: dict[str, Launcher] = {}
        self.spares = spares_wanted()
        self.env: dict[str, str] = {}
        self.backoff: dict[str, Backoff] = {}

    def start_infrastructure(self) -> dict[str, str]:
        """NATS and PostgreSQL (embedded unless given); returns the environment for services."""
        env: dict[str, str] = {}
        nats_url = os.environ.get("GAGGLE_NATS_URL")
        if not nats_url:
            port = int(os.environ.get("GAGGLE_STACK_NATS_PORT", DEFAULT_NATS_PORT))
            self.nats = NatsProcess(
                self.data_dir / "nats", port, self.data_dir / "nats.log", own_session=True
            )
            self.nats.start()
            self.backoff["nats"] = Backoff(time.monotonic())
            nats_url = self.nats.url
        env["GAGGLE_NATS_URL"] = nats_url

        db_url = os.environ.get("GAGGLE_DATABASE_URL") or os.environ.get("DATABASE_URL")
        if not db_url:
            self.postgres = EmbeddedPostgres(self.data_dir / "pg")
            db_url = with_database(self.postgres.start(), "gaggle")
            self.backoff["postgres"] = Backoff(time.monotonic())
        asyncio.run(ensure_database(db_url))
        env["GAGGLE_DATABASE_URL"] = db_url
        objects = self.data_dir / "objects"
        objects.mkdir(parents=True, exist_ok=True)
        env.setdefault("GAGGLE_STORAGE_DIR", str(objects))
        return env

    def start_services(self, env: dict[str, str]) -> None:
        """Start the services and the console with ``env`` added to ours."""
        self.env = {**os.environ, **env}
        for spec in SERVICES:
            self.env.setdefault(f"{spec.env_prefix}PORT", str(spec.port))
        self.env.update(console_env(self.env))
        for spec in SERVICES:
            # Their own session keeps the terminal's Ctrl-C away: stop() signals them, in order.
            self.launchers[spec.name] = Launcher(spec.module, self.env, own_session=True)
            self._spawn(spec)

    def _spawn(self, spec: ServiceSpec) -> None:
        self.children[spec.name] = self.launchers[spec.name].start()
        self.backoff[spec.name] = Backoff(time.monotonic())

    def keep_spares(self, now: float) -> None:
        """Start a spare for each service that has none and has run ``SPARE_AFTER`` seconds."""
        if not self.spares:
            return
        for name, launcher in self.launchers.items():
            running = self.children[name].poll() is None
            settled = now - self.backoff[name].started_at >= SPARE_AFTER
            if running and settled and not launcher.has_spare:
                launcher.prepare_spare()

    def supervise(self) -> None:
        """Note processes that died, and start those whose back-off has passed."""
        now = time.monotonic()
        dead: dict[str, str] = {}
        for name, proc in self.children.items():
            if proc.poll() is not None:
                dead[name] = f"exited with {proc.returncode}"
        if self.nats is not None and self.nats.proc is not None and not self.nats.running:
            dead["nats"] = f"exited with {self.nats.proc.returncode}"
        if self.postgres is not None and not self.postgres.running:
            dead["postgres"] = "postmaster exited"
        self.keep_spares(now)
        for name, why in dead.items():
            backoff = self.backoff[name]
            if backoff.due is None:
                wait = backoff.schedule(now)
                _say(f"gaggle-stack: {name} {why}; restarting in {wait:.0f} s")
            elif now >= backoff.due:
                self._restart(name, backoff, now)

    def _restart(self, name: str, backoff: Backoff, now: float) -> None:
        try:
            if name == "nats" and self.nats is not None:
                if port_in_use(self.nats.port):
                    raise RuntimeError(f"port {self.nats.port} is taken by another process")
                self.nats.start()
            elif name == "postgres" and self.postgres is not None:
                self.postgres.restart()
            else:
                self._spawn(next(s for s in SERVICES if s.name == name))
        except (RuntimeError, OSError, subprocess.SubprocessError, AssertionError) as exc:
            wait = backoff.schedule(time.monotonic())
            _say(f"gaggle-stack: {name} did not start again ({exc}); retrying in {wait:.0f} s")
            return
        backoff.due = None
        backoff.started_at = time.monotonic()
        _say(f"gaggle-stack: {name} restarted")

    def wait_ready(self, timeout: float) -> None:
        """Wait until every service answers ``/readyz`` with 200."""
        deadline = time.monotonic() + timeout
        pending = {s.name: s for s in SERVICES}
        while pending and time.monotonic() < deadline:
            for name, spec in list(pending.items()):
                proc = self.children[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while starting")
                if _ready(spec.port):
                    del pending[name]
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"not ready after {timeout:.0f} s: {', '.join(pending)}")

    def stop(self) -> None:
        """Services first (they drain and publish their last events), then NATS, then PostgreSQL."""
        _say("Stopping the services ...")
        for launcher in self.launchers.values():
            launcher.discard_spare()
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.children.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.nats:
            _say("Stopping NATS ...")
            self.nats.stop()
        if self.postgres:
            _say("Stopping PostgreSQL ...")
            self.postgres.stop()


def admin_key(data_dir: Path) -> tuple[str, bool]:
    """The default tenant's admin key from ``<data dir>/admin.key``; created (0600) if missing.

    Returns the key and whether it was created now.

    Raises:
        RuntimeError: the file holds something that is not a Gaggle API key.
    """
    path = data_dir / ADMIN_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        _, key = new_api_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key, True
    if key_id_of(key) is None:
        raise RuntimeError(f"{path} does not hold a Gaggle API key; remove it to get a new one")
    return key, False


def write_urls(data_dir: Path, urls: dict[str, str]) -> Path:
    """Write ``urls`` (name to URL) to ``<data dir>/urls.toml``, replacing it whole.

    The file (mode 0600) is written beside and then renamed over the old one, so a reader never
    sees half of it. Returns its path.
    """
    path = data_dir / URLS_FILE
    lines = [
        "# Where gaggle-stack (make run) serves; written at each start. The gaggle command line",
        "# reads it when no URL is given by a flag, the environment or its config file.",
        # A JSON string is a TOML basic string: the same quotes and escapes.
        *(f"{name} = {json.dumps(url)}" for name, url in urls.items()),
    ]
    partial = path.with_name(f".{URLS_FILE}.{os.getpid()}")
    # Yours only, as the admin key: a NATS URL given in GAGGLE_NATS_URL may hold a password.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    partial.replace(path)
    return path


def console_env(env: dict[str, str]) -> dict[str, str]:
    """The console's ``GAGGLE_CONSOLE_<SERVICE>_URL`` settings: the stack's services on their ports.

    Those already in ``env`` are kept.
    """
    ports = {spec.name: spec.port for spec in SERVICES}
    return {
        f"GAGGLE_CONSOLE_{name.upper()}_URL": env.get(
            f"GAGGLE_CONSOLE_{name.upper()}_URL", f"http://127.0.0.1:{ports[name]}"
        )
        for name in CONSOLE_CALLS
    }


def stack_urls(nats_url: str) -> dict[str, str]:
    """The URL of each service (on its port) and of NATS."""
    urls = {spec.name: f"http://127.0.0.1:{spec.port}" for spec in SERVICES}
    urls["nats"] = nats_url
    return urls


def new_admin_key() -> None:
    """``gaggle-admin-key``: a new key, and the registry setting that creates it at start."""
    _, key = new_api_key()
    _say(f"key (keep it secret; shown once): {key}")
    _say(f"GAGGLE_REGISTRY_BOOTSTRAP_KEY={key_id_of(key)}:{key_hash(key)}")


def main() -> None:
    """Start the stack, print its URLs, and keep it up until Ctrl-C or SIGTERM."""
    started = time.monotonic()
    data_dir = Path(os.environ.get("GAGGLE_DATA_DIR", ".gaggle")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(data_dir)
    stopping = False

    def _stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    taken = taken_ports()
    if taken:
        for line in taken:
            _say(f"gaggle-stack: {line}")
        _say("gaggle-stack: not started; Gaggle never uses a server it did not start itself there")
        sys.exit(1)
    code = 0
    try:
        key, created = admin_key(data_dir)
        env = stack.start_infrastructure()
        env["GAGGLE_REGISTRY_BOOTSTRAP_KEY"] = f"{key_id_of(key)}:{key_hash(key)}"
        stack.start_services(env)
        stack.wait_ready(float(os.environ.get("GAGGLE_STACK_READY_TIMEOUT", "60")))
        urls = stack_urls(env["GAGGLE_NATS_URL"])
        urls_file = write_urls(data_dir, urls)
        _say(f"\nGaggle is up in {time.monotonic() - started:.1f} s (data in {data_dir})")
        for name, url in urls.items():
            _say(f"  {name:<10} {url}")
        _say(f"(in {urls_file}, where the gaggle command line finds them)")
        _say(f"Operators sign in to the console with an API key: {urls['console']}")
        _say(
            "Devices poll the gateway: http://127.0.0.1:"
            f"{SERVICES[0].port}/DEFAULT/controller/v1/<controller-id>"
        )
        key_file = data_dir / ADMIN_KEY_FILE
        if created:
            _say(f"\nAdmin API key of tenant 'default' (shown once; kept in {key_file}):")
            _say(f"  {key}")
        else:
            _say(f"Admin API key of tenant 'default': in {key_file}")
        _say('Operators send it as "Authorization: Bearer <key>".')
        _say("Press Ctrl-C to stop.")
        while not stopping:
            stack.supervise()
            time.sleep(0.2)
    except RuntimeError as exc:
        _say(f"gaggle-stack: {exc}")
        code = 1
    finally:
        _say("Stopping Gaggle ...")
        stack.stop()
        _say("Stopped.")
    sys.exit(code)


if __name__ == "__main__":
    main()
