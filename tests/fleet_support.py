"""What the chaos and cluster tests share: services as child processes, the image they roll out,
the simulated fleet, and the server's view of what the devices reported.

Both run the services as ``make run`` runs them (``python -m gaggle_<name>``, one log file each),
roll out one image to a simulated fleet and then compare every report the gateway answered 200
with what the registry and rollouts stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from gaggle_contracts.access import key_hash, new_api_key
from gaggle_sim import Device, Fleet, FleetConfig
from gaggle_swu.build import make_rawfile_swu

TENANT = "default"
REVISION = "1.0"
OLD_VERSION = "1.0.0"
NEW_VERSION = "2.0.0"
FAILING_SHARE = 0.1


class ServiceProcesses:
    """Service processes on their own ports, each logging to ``folder/<name>.log``.

    ``ports`` names every process (a service, or a replica of one); ``env`` is what they all
    get: the test's NATS and PostgreSQL, a bootstrap API key for ``TENANT`` and ``extra_env``.
    """

    tail_lines = 15

    def __init__(
        self,
        folder: Path,
        nats_url: str,
        database_url: str,
        ports: dict[str, int],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.ports = ports
        key_id, self.key = new_api_key()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GAGGLE_")}
        self.env.update(
            {
                "GAGGLE_NATS_URL": nats_url,
                "GAGGLE_DATABASE_URL": database_url,
                "GAGGLE_STORAGE_DIR": str(folder / "objects"),
                "GAGGLE_LOG_JSON": "false",
                "GAGGLE_GATEWAY_POLLING_SLEEP": "00:00:01",
                "GAGGLE_REGISTRY_BOOTSTRAP_KEY": f"{key_id}:{key_hash(self.key)}",
                "GAGGLE_REGISTRY_BOOTSTRAP_TENANT": TENANT,
                **(extra_env or {}),
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def ready(self, client: httpx.AsyncClient, name: str) -> bool:
        """Whether ``name`` answers its ``/readyz`` with 200."""
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get(f"{self.url(name)}/readyz")).status_code == 200
        return False

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tails()}")

    def tails(self, lines: int | None = None) -> str:
        """The last lines of every process's log."""
        lines = lines or self.tail_lines
        out = []
        for name in self.ports:
            try:
                text = self.log(name).read_text(errors="replace")
            except OSError:
                text = ""
            out.append(f"--- {name} log (last {lines} lines)")
            out.extend(text.splitlines()[-lines:])
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def upload_image(
    client: httpx.AsyncClient, artifacts_url: str, headers: dict[str, str], name: str, board: str
) -> str:
    """Upload a ``NEW_VERSION`` image for ``board`` (``<name>-<version>.swu``); its software id."""
    image = make_rawfile_swu(
        os.urandom(64 * 1024),
        version=NEW_VERSION,
        board=board,
        revisions=[REVISION],
        install_path=f"/tmp/{name}/payload.bin",
        key=None,
        cert=None,
    )
    r = await client.post(
        f"{artifacts_url}/api/v1/software",
        files={"file": (f"{name}-{NEW_VERSION}.swu", image, "application/octet-stream")},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def start_rollout(
    client: httpx.AsyncClient,
    rollouts_url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    retry_for: float = 0.0,
) -> dict[str, Any]:
    """Create the rollout ``body`` describes; for ``retry_for`` seconds retried on 404 or 409
    (rollouts does not know the software yet)."""
    deadline = time.monotonic() + retry_for
    while True:
        r = await client.post(f"{rollouts_url}/api/v1/rollouts", json=body, headers=headers)
        if r.status_code == 201:
            return dict(r.json())
        assert r.status_code in (404, 409) and time.monotonic() < deadline, r.text
        await asyncio.sleep(0.1)


def fleet_config(
    url: str,
    count: int,
    *,
    id_prefix: str,
    board: str,
    seed: int,
    connections: int,
    slow_share: float,
    slow_install_seconds: float,
) -> FleetConfig:
    """A fleet of ``count`` devices on ``OLD_VERSION`` that keeps every acknowledged report."""
    return FleetConfig(
        url,
        count,
        id_prefix=id_prefix,
        hw_model=board,
        hw_revision=REVISION,
        sw_version=OLD_VERSION,
        poll=1.0,
        jitter=0.3,
        connections=connections,
        timeout=10,
        fail_share=FAILING_SHARE,
        slow_share=slow_share,
        install_seconds=2.0,
        slow_install_seconds=slow_install_seconds,
        record_reports=True,
        seed=seed,
    )


def results(fleets: list[Fleet]) -> int:
    """Devices that reported the result of their update."""
    return sum(f.stats.successes + f.stats.failures for f in fleets)


def acknowledged(fleets: list[Fleet]) -> int:
    """Reports the gateway answered 200."""
    return sum(len(d.acknowledged) for f in fleets for d in f.devices)


def settled(fleets: list[Fleet], devices: int) -> bool:
    """Every one of ``devices`` reported its result and, after a success, its new version."""
    done = sum(f.stats.successes + f.stats.failures + f.stats.final_retries_gone for f in fleets)
    return done >= devices and not any(
        d.report_version or d.install is not None for f in fleets for d in f.devices
    )


def feedback_key(execution: Any, finished: Any, details: Any) -> tuple[str, str, tuple[str, ...]]:
    """What identifies a feedback report in an action's history."""
    return (str(execution), str(finished), tuple(str(d) for d in details or ()))


def expected_attributes(device: Device) -> dict[str, Any] | None:
    """The attributes the registry must show: every acknowledged configData merged in order."""
    merged: dict[str, Any] | None = None
    for report in device.acknowledged:
        if report.kind == "configData":
            merged = {**(merged or {}), **report.body["data"]}
    return merged


async def server_view(
    database_url: str, id_like: str, *, device_reports_only: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Registry devices and rollouts actions, with their history, of the devices ``id_like``.

    With ``device_reports_only`` the history holds only the rows of device reports (those with
    an event id); without, every status row with an ``execution``.
    """
    conn = await asyncpg.connect(database_url)
    try:
        devices = {
            r["controller_id"]: dict(r)
            for r in await conn.fetch(
                "SELECT controller_id, hw_model, hw_revision, sw_version, attributes, "
                "update_state FROM registry.devices WHERE tenant = $1 AND controller_id LIKE $2",
                TENANT,
                id_like,
            )
        }
        rows = await conn.fetch(
            "SELECT a.id, a.controller_id, a.status, a.active, s.event_id, s.execution, "
            "s.finished, s.details FROM rollouts.actions a LEFT JOIN rollouts.action_status s "
            "ON s.action_id = a.id AND (NOT $3::bool OR s.event_id IS NOT NULL) "
            "WHERE a.tenant = $1 AND a.controller_id LIKE $2 ORDER BY a.id, s.id",
            TENANT,
            id_like,
            device_reports_only,
        )
    finally:
        await conn.close()
    actions: dict[str, Any] = {}
    for r in rows:
        action = actions.setdefault(r["controller_id"], {}).setdefault(
            str(r["id"]), {"status": r["status"], "active": r["active"], "history": []}
        )
        if r["event_id" if device_reports_only else "execution"] is not None:
            details = r["details"]
            if isinstance(details, str):
                details = json.loads(details)
            action["history"].append(feedback_key(r["execution"], r["finished"], details))
    for device in devices.values():
        if isinstance(device["attributes"], str):
            device["attributes"] = json.loads(device["attributes"])
    return devices, actions
