"""Gaggle's embedded stack (``gaggle-stack``, as ``make run`` starts it) for the fleet benchmark.

Everything in a temporary ``GAGGLE_DATA_DIR``, every port free and on 127.0.0.1: the four services
(``GAGGLE_<SERVICE>_PORT``) and NATS (``GAGGLE_STACK_NATS_PORT``); PostgreSQL is the embedded one
on a Unix socket in the data folder. No other setting is given: the defaults of ``make run``.
When the stack writes ``$GAGGLE_DATA_DIR/admin.key``, every operator request carries
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from benchlib import Children, child_env, postmaster_pid, say, tail, wait_ready

from gaggle_contracts.kv import MAX_UPDATES_IN_FLIGHT
from gaggle_servers import free_port

TENANT_SETTINGS = (
    "polling_sleep",
    "polling_sleep_open_action",
    "anonymous",
    "auto_register",
    "target_token",
)
"""A tenant's settings that ``PUT`` replaces and ``GET`` shows (besides the cap)."""

HOST = "127.0.0.1"
TENANT = "DEFAULT"
SERVICES = ("gateway", "registry", "artifacts", "rollouts")


class GaggleStack:
    """One ``gaggle-stack`` in ``data_dir``."""

    name = "Gaggle"

    def __init__(
        self, children: Children, data_dir: Path, settings: dict[str, str] | None = None
    ) -> None:
        self.children = children
        self.data_dir = data_dir
        self.settings = dict(settings or {})
        """Extra ``GAGGLE_*`` settings for the stack, e.g. the gateway's polling sleep."""
        self.ports = {s: free_port() for s in SERVICES}
        self.nats_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "gaggle-stack.log"
        self.postmaster = 0
        self.facts: dict[str, Any] = {}

    def url(self, service: str) -> str:
        """Base URL of a service."""
        return f"http://{HOST}:{self.ports[service]}"

    @property
    def ddi_base(self) -> str:
        """What devices are given: gateway URL plus tenant."""
        return f"{self.url('gateway')}/{TENANT}"

    def roots(self) -> list[int]:
        """Process trees that make up the server: the stack (services, NATS) and PostgreSQL.

        ``pg_ctl`` detaches the postmaster from the stack, so it is a tree of its own.
        """
        return [pid for pid in (self.proc.pid if self.proc else 0, self.postmaster) if pid]

    def headers(self) -> dict[str, str]:
        """``Authorization: Bearer <admin key>`` once the stack wrote one."""
        key_file = self.data_dir / "admin.key"
        with contextlib.suppress(OSError):
            key = key_file.read_text().strip()
            if key:
                return {"Authorization": f"Bearer {key}"}
        return {}

    async def start(self, timeout: float) -> None:
        """Start the stack; wait until every service is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = child_env(
            GAGGLE_DATA_DIR=str(self.data_dir),
            GAGGLE_STACK_NATS_PORT=str(self.nats_port),
            **{f"GAGGLE_{s.upper()}_PORT": str(p) for s, p in self.ports.items()},
            **self.settings,
        )
        env.pop("DATABASE_URL", None)  # never an outside PostgreSQL
        script = Path(sys.executable).parent / "gaggle-stack"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "gaggle_stack"]
        say(f"Gaggle: starting gaggle-stack in {self.data_dir}")
        self.proc = self.children.spawn(cmd, env, self.log)
        deadline = time.monotonic() + timeout
        for service in SERVICES:
            left = max(1.0, deadline - time.monotonic())
            await wait_ready(service, self.proc, self.log, f"{self.url(service)}/readyz", left)
        self.postmaster = postmaster_pid(self.data_dir / "pg")
        self.facts = {
            "services": "gateway, registry, artifacts, rollouts (one process each, defaults)",
            "database": "embedded PostgreSQL (pgserver)",
            "nats": f"nats-server -js on {self.nats_port}",
            "operator auth": "admin.key" if self.headers() else "none (no admin.key written)",
        }
        say(
            "Gaggle up: "
            + ", ".join(f"{s} {p}" for s, p in self.ports.items())
            + f", NATS {self.nats_port}, postmaster pid {self.postmaster or '?'}"
        )

    async def upload(self, client: httpx.AsyncClient, image: Path) -> str:
        """``POST /api/v1/software`` (multipart ``file``) on artifacts; the software id."""
        with image.open("rb") as f:
            r = await client.post(
                f"{self.url('artifacts')}/api/v1/software",
                files={"file": (image.name, f, "application/octet-stream")},
                headers=self.headers(),
            )
        if r.status_code != 201:
            raise RuntimeError(f"Gaggle upload: {r.status_code} {r.text[:500]}")
        return str(r.json()["id"])

    async def start_rollout(
        self, client: httpx.AsyncClient, software_id: str, name: str, timeout: float
    ) -> dict[str, Any]:
        """``POST /api/v1/rollouts`` (one wave of 100 %, feed ``default``, ``start``).

        Retried while rollouts has not heard of the software or the devices yet (404/409): those
        reach it as events, a moment after artifacts and the registry answered.
        """
        deadline = time.monotonic() + timeout
        body = {"name": name, "software_id": software_id, "feed": "default", "start": True}
        while True:
            r = await client.post(
                f"{self.url('rollouts')}/api/v1/rollouts", json=body, headers=self.headers()
            )
            if r.status_code == 201:
                return dict(r.json())
            if r.status_code not in (404, 409) or time.monotonic() > deadline:
                raise RuntimeError(f"Gaggle rollout: {r.status_code} {r.text[:500]}")
            await asyncio.sleep(0.05)

    async def set_cap(
        self,
        client: httpx.AsyncClient,
        cap: int | None,
        tenant: str = "default",
        polling_sleep: str | None = None,
    ) -> int:
        """The tenant's cap on updates in flight, first set to ``cap`` unless None.

        ``PUT /api/v1/tenants/{tenant}`` replaces all of a tenant's settings, so the others are
        read first and sent back as they are (the gateway token is kept when omitted), but for
        ``polling_sleep`` when given. A tenant never configured polls at the gateway's
        ``GAGGLE_GATEWAY_POLLING_SLEEP`` and reads back the registry's default interval (one
        minute): whoever starts the stack with another interval passes it here, or the PUT
        would set the tenant's to a minute. None leaves the tenant untouched.
        """
        url = f"{self.url('registry')}/api/v1/tenants/{tenant}"
        r = await client.get(url, headers=self.headers())
        if r.status_code not in (200, 404):
            raise RuntimeError(f"Gaggle tenant {tenant}: {r.status_code} {r.text[:500]}")
        doc: dict[str, Any] = r.json() if r.status_code == 200 else {}
        if cap is None:
            return int(doc.get("max_updates_in_flight", MAX_UPDATES_IN_FLIGHT))
        body = {k: doc[k] for k in TENANT_SETTINGS if k in doc}
        body["max_updates_in_flight"] = cap
        if polling_sleep is not None:
            body["polling_sleep"] = polling_sleep
        r = await client.put(url, json=body, headers=self.headers())
        if r.status_code not in (200, 201):
            raise RuntimeError(f"Gaggle tenant {tenant} cap: {r.status_code} {r.text[:500]}")
        return int(r.json()["max_updates_in_flight"])

    async def rollout_state(self, client: httpx.AsyncClient, rollout: dict[str, Any]) -> Any:
        """``GET /api/v1/rollouts/{id}``: state and counters."""
        r = await client.get(
            f"{self.url('rollouts')}/api/v1/rollouts/{rollout['id']}", headers=self.headers()
        )
        r.raise_for_status()
        doc = r.json()
        return {"state": doc.get("state"), "counters": doc.get("counters")}

    async def gateway_metrics(self, client: httpx.AsyncClient) -> str:
        """The gateway's ``/metrics`` page (Prometheus text)."""
        r = await client.get(f"{self.url('gateway')}/metrics", headers=self.headers())
        r.raise_for_status()
        return r.text

    async def count_listed(
        self, client: httpx.AsyncClient, prefix: str, hw_model: str, sw_version: str
    ) -> int:
        """Devices the registry lists with this id prefix, board and version (all pages)."""
        params: dict[str, Any] = {"hw_model": hw_model, "sw_version": sw_version, "limit": 1000}
        count = 0
        while True:
            r = await client.get(
                f"{self.url('registry')}/api/v1/devices", params=params, headers=self.headers()
            )
            r.raise_for_status()
            page = r.json()
            count += sum(1 for d in page["items"] if d["controller_id"].startswith(prefix))
            if not page.get("next"):
                return count
            params["cursor"] = page["next"]

    async def wait_known(
        self, client: httpx.AsyncClient, prefix: str, hw_model: str, n: int, timeout: float
    ) -> None:
        """Until the registry lists ``n`` devices of ``hw_model`` (configData is asynchronous)."""
        deadline = time.monotonic() + timeout
        while await self.count_listed(client, prefix, hw_model, "1.0.0") < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the registry did not list {n} {hw_model} devices in time")
            await asyncio.sleep(0.2)

    def check_alive(self) -> None:
        """Raise if the stack died."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"gaggle-stack exited with {self.proc.returncode}:\n{tail(self.log)}"
            )

    def stop(self) -> None:
        """Stop the stack (it stops its services, NATS and PostgreSQL); then PostgreSQL if left."""
        if self.proc is not None:
            # Like Ctrl-C on `make run`: the stack itself stops the services, NATS, PostgreSQL.
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(40)
            self.children.stop(self.proc)  # whatever is left of its process group
            self.proc = None
        pid = self.postmaster or postmaster_pid(self.data_dir / "pg")
        self.postmaster = 0
        if not pid or _gone(pid, 5.0):
            return
        say(f"Gaggle: PostgreSQL (pid {pid}) outlived the stack; fast shutdown")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if not _gone(pid, 10.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` exits (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
