"""`make run`'s stack as a user meets it: start, walk-through, a crash, Ctrl-C, a taken port."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gaggle_servers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAMES = ("gateway", "registry", "artifacts", "rollouts", "console")


def readme_commands() -> list[str]:
    """The curl lines of the README's walk-through, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two-minute walk-through", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^(curl .+)$", section, flags=re.MULTILINE)


class Stack:
    def __init__(self, data_dir: Path, ports: dict[str, int]) -> None:
        self.env = {
            **os.environ,
            "GAGGLE_DATA_DIR": str(data_dir),
            "GAGGLE_STACK_NATS_PORT": str(ports["nats"]),
            "GAGGLE_GATEWAY_PORT": str(ports["gateway"]),
            "GAGGLE_REGISTRY_PORT": str(ports["registry"]),
            "GAGGLE_ARTIFACTS_PORT": str(ports["artifacts"]),
            "GAGGLE_ROLLOUTS_PORT": str(ports["rollouts"]),
            "GAGGLE_CONSOLE_PORT": str(ports["console"]),
            "GAGGLE_LOG_JSON": "false",
        }
        for key in ("GAGGLE_NATS_URL", "GAGGLE_DATABASE_URL", "DATABASE_URL"):
            self.env.pop(key, None)
        self.log = data_dir.parent / f"stack-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gaggle_stack"],
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if "Press Ctrl-C to stop." in self.log.read_text(errors="replace"):
                return time.monotonic() - started
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("stack did not come up:\n" + self.log.read_text()[-4000:])

    def interrupt(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


def run(cmd: str, key: str) -> str:
    out = subprocess.run(
        shlex.split(cmd.replace("$KEY", key)), capture_output=True, check=True, timeout=10
    )
    return out.stdout.decode()


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder of the test's own outside pytest's temporary root.

    The embedded PostgreSQL runs as another user when the stack runs as root, and pytest makes
    its temporary root private to the user (mode 0700) whenever a session starts.
    """
    folder = Path(tempfile.mkdtemp(prefix="gstack-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_make_run_stack_serves_the_readme_walkthrough_and_keeps_data(home: Path) -> None:
    ports = {k: free_port() for k in ("nats", *SERVICE_NAMES)}
    commands = [
        c.replace(":8080", f":{ports['gateway']}").replace(":8081", f":{ports['registry']}")
        for c in readme_commands()
    ]
    assert len(commands) == 3, commands
    stack = Stack(home / "data", ports)
    stack.start()
    key_file = home / "data" / "admin.key"
    key = key_file.read_text().strip()
    # Printed once, stored for the user only.
    assert key in stack.log.read_text()
    assert key_file.stat().st_mode & 0o777 == 0o600
    try:
        poll = json.loads(run(commands[0], key))
        # The default minute, moved by the device's own jitter (at most a tenth).
        hours, minutes, seconds = map(int, poll["config"]["polling"]["sleep"].split(":"))
        assert 54 <= hours * 3600 + minutes * 60 + seconds <= 66, poll
        assert poll["_links"]["configData"]["href"].endswith(
            "/DEFAULT/controller/v1/dev-1/configData"
        )
        deadline = time.monotonic() + 5
        while True:
            listed = json.loads(run(commands[1], key))
            if listed["items"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [d["controller_id"] for d in listed["items"]] == ["dev-1"]
        one = json.loads(run(commands[2], key))
        # Without the key, or with a wrong one, the registry answers 401.
        for bad in ("", "ggl_000000000000_" + "x" * 43):
            refused = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-H",
                    f"Authorization: Bearer {bad}",
                    f"http://127.0.0.1:{ports['registry']}/api/v1/devices",
                ],
                capture_output=True,
                check=True,
                timeout=10,
            )
            assert refused.stdout == b"401"
        assert one["controller_id"] == "dev-1"
        assert one["tenant"] == "default"
        # The URLs are written next to the key, where the command line finds them and the key
        # with no GAGGLE_*_URL set.
        urls = tomllib.loads((home / "data" / "urls.toml").read_text())
        assert urls == {
            **{name: f"http://127.0.0.1:{ports[name]}" for name in SERVICE_NAMES},
            "nats": f"nats://127.0.0.1:{ports['nats']}",
        }
        cli_env = {k: v for k, v in stack.env.items() if not k.endswith("_URL")}
        cli = subprocess.run(
            [sys.executable, "-m", "gaggle_cli", "--json", "devices", "list"],
            env=cli_env,
            cwd=home,
            capture_output=True,
            timeout=30,
        )
        assert cli.returncode == 0, cli.stderr.decode()
        assert [d["controller_id"] for d in json.loads(cli.stdout)["items"]] == ["dev-1"]
    finally:
        code = stack.interrupt()
    log = stack.log.read_text()
    assert code == 0, log[-3000:]
    assert "Stopped." in log

    # A second start finds the same data again.
    again = Stack(home / "data", ports)
    again.start()
    assert key not in again.log.read_text()
    try:
        listed = json.loads(run(commands[1], key))
        assert [d["controller_id"] for d in listed["items"]] == ["dev-1"]
    finally:
        assert again.interrupt() == 0


def children_of(pid: int) -> dict[int, str]:
    """The direct children of ``pid`` with their command lines."""
    found: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except FileNotFoundError:
                continue
            found[int(child)] = cmd
    return found


def child_pids(stack: Stack, needle: str) -> list[int]:
    """The stack's children whose command line has ``needle``, oldest first."""
    assert stack.proc is not None
    pids = [p for p, cmd in children_of(stack.proc.pid).items() if needle in cmd]
    return sorted(pids, key=started_at)


def started_at(pid: int) -> int:
    """When ``pid`` started (clock ticks after boot; 0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def child_pid(stack: Stack, needle: str) -> int | None:
    """The process serving: a service's warm spare is always started after it."""
    pids = child_pids(stack, needle)
    return pids[0] if pids else None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def postmaster_pid(pg_dir: Path) -> int:
    try:
        return int((pg_dir / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_stack_restarts_killed_processes_and_stops_services_before_nats(home: Path) -> None:
    ports = {k: free_port() for k in ("nats", *SERVICE_NAMES)}
    stack = Stack(home / "data", ports)
    stack.start()
    try:
        gateway = child_pid(stack, "gaggle_gateway")
        nats = child_pid(stack, "nats-server")
        assert gateway is not None and nats is not None
        os.kill(gateway, signal.SIGKILL)
        os.kill(nats, signal.SIGKILL)
        killed = time.monotonic()
        # Both come back on their own, in new processes, and the gateway is ready again.
        deadline = killed + 20
        while time.monotonic() < deadline:
            new_gateway = child_pid(stack, "gaggle_gateway")
            new_nats = child_pid(stack, "nats-server")
            back = new_gateway not in (None, gateway) and new_nats not in (None, nats)
            if back and ready(ports["gateway"]):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("not restarted:\n" + stack.log.read_text()[-3000:])
        recovered = time.monotonic() - killed
        assert recovered < 15, recovered
        # The rest kept running all along.
        assert stack.proc is not None and stack.proc.poll() is None
        for other in ("registry", "artifacts", "rollouts"):
            assert ready(ports[other]), other
        log = stack.log.read_text()
        assert "gateway exited with -9; restarting in 1 s" in log
        assert "nats exited with -9; restarting in 1 s" in log
        assert "gateway restarted" in log and "nats restarted" in log

        # The postmaster, killed, starts again on the same data: the registry's devices answer.
        key = (home / "data" / "admin.key").read_text().strip()
        listing = f"curl -sf -H 'Authorization: Bearer $KEY' http://127.0.0.1:{ports['registry']}/api/v1/devices"
        assert json.loads(run(listing, key))["items"] == []
        postmaster = postmaster_pid(home / "data" / "pg")
        os.kill(postmaster, signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 30
        while time.monotonic() < deadline:
            pid = postmaster_pid(home / "data" / "pg")
            if pid != postmaster and alive(pid):
                try:
                    assert json.loads(run(listing, key))["items"] == []
                    break
                except subprocess.CalledProcessError:
                    pass
            time.sleep(0.2)
        else:
            raise AssertionError("postgres not back:\n" + stack.log.read_text()[-3000:])
        assert "postgres postmaster exited; restarting in 1 s" in stack.log.read_text()
        pg_recovered = time.monotonic() - killed
        assert pg_recovered < 20, pg_recovered
        # Every service gets a warm spare once it has run 10 s: a second process of it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            services = [p for s in SERVICE_NAMES for p in child_pids(stack, f"gaggle_{s}")]
            if len(services) == 2 * len(SERVICE_NAMES):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no spares: {services}\n" + stack.log.read_text()[-3000:])
        nats = child_pid(stack, "nats-server")
    finally:
        code = stack.interrupt()
    log = stack.log.read_text()
    assert code == 0, log[-3000:]
    assert nats is not None
    assert not alive(nats) and not any(alive(p) for p in services)
    order = [log.index(f"Stopping {what} ...") for what in ("the services", "NATS", "PostgreSQL")]
    assert order == sorted(order), log[-3000:]


@pytest.mark.parametrize(
    ("taken", "what", "variable"),
    [("nats", "NATS", "GAGGLE_STACK_NATS_PORT"), ("gateway", "gateway", "GAGGLE_GATEWAY_PORT")],
)
def test_stack_refuses_a_taken_port_and_starts_nothing(
    home: Path, taken: str, what: str, variable: str
) -> None:
    ports = {k: free_port() for k in ("nats", *SERVICE_NAMES)}
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", ports[taken]))
        foreign.listen()
        stack = Stack(home / "data", ports)
        out = subprocess.run(
            [sys.executable, "-m", "gaggle_stack"],
            env=stack.env,
            capture_output=True,
            timeout=30,
        )
    text = out.stdout.decode() + out.stderr.decode()
    assert out.returncode != 0
    assert f"port {ports[taken]} ({what}) is already in use" in text, text
    assert f"choose another port with {variable}" in text
    assert "Gaggle is up" not in text
    # Nothing was started: no store, no database, no key.
    assert not (home / "data" / "nats").exists()
    assert not (home / "data" / "pg").exists()
