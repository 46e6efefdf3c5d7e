"""`make run`'s stack as a user meets it: start, the README walk-through, Ctrl-C, start again."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gaggle_servers import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


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


def test_make_run_stack_serves_the_readme_walkthrough_and_keeps_data(tmp_path: Path) -> None:
    ports = {k: free_port() for k in ("nats", "gateway", "registry", "artifacts", "rollouts")}
    commands = [
        c.replace(":8080", f":{ports['gateway']}").replace(":8081", f":{ports['registry']}")
        for c in readme_commands()
    ]
    assert len(commands) == 3, commands
    stack = Stack(tmp_path / "data", ports)
    stack.start()
    key_file = tmp_path / "data" / "admin.key"
    key = key_file.read_text().strip()
    # Printed once, stored for the user only.
    assert key in stack.log.read_text()
    assert key_file.stat().st_mode & 0o777 == 0o600
    try:
        poll = json.loads(run(commands[0], key))
        assert poll["config"]["polling"]["sleep"] == "00:01:00"
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
    finally:
        code = stack.interrupt()
    log = stack.log.read_text()
    assert code == 0, log[-3000:]
    assert "Stopped." in log

    # A second start finds the same data again.
    again = Stack(tmp_path / "data", ports)
    again.start()
    assert key not in again.log.read_text()
    try:
        listed = json.loads(run(commands[1], key))
        assert [d["controller_id"] for d in listed["items"]] == ["dev-1"]
    finally:
        assert again.interrupt() == 0
