"""A service still waiting for NATS at start stops at once on SIGTERM or SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gaggle_servers import free_port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_service_waiting_for_nats_stops_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "gateway.log"
    env = {
        **os.environ,
        "GAGGLE_NATS_URL": f"nats://127.0.0.1:{free_port()}",  # nothing listens there
        "GAGGLE_GATEWAY_PORT": str(free_port()),
        "GAGGLE_LOG_JSON": "false",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gaggle_gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 30
            while b"NATS not reachable yet" not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            sent = time.monotonic()
            proc.send_signal(sig)
            proc.wait(timeout=10)
            stopped_after = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert stopped_after < 3, (stopped_after, text)
    assert "stopped before the start was done" in text, text
    assert text.count("NATS not reachable yet") < 5, text
