"""gooseBit 0.2.12 from PyPI, in its own virtual environment, started with its defaults.

What this module relies on, read from the installed package (``site-packages/goosebit``):

* Settings (``goosebit/settings/schema.py``): pydantic settings, environment ``GOOSEBIT_*``
  (nested with ``__``) or a ``goosebit.yaml`` in the working directory, next to the package, or
  ``/etc/goosebit.yaml``. Defaults: port 60053, tenant ``DEFAULT``, ``poll_time`` 00:01:00,
  ``max_concurrent_updates`` 1000, device authentication off (``device_auth.enable: false``),
  ``db_uri`` SQLite in ``db.sqlite3`` next to the package, ``artifacts_dir`` ``artifacts`` next
  to the package, filesystem storage, ``track_device_ip`` true, a random ``secret_key`` per start.
  We set only ``GOOSEBIT_DB_URI`` (still SQLite, in a temporary folder), ``GOOSEBIT_ARTIFACTS_DIR``
  (same folder) and ``GOOSEBIT_PORT``.
* First start: the schema comes from aerich migrations shipped in the package
  (``goosebit/db/migrations``); the app refuses to start on an empty database ("DB does not
  exist, try running `aerich upgrade`"). gooseBit's own Docker image runs
  ``aerich --config aerich.toml upgrade`` with ``tortoise_orm = goosebit.db.config.TORTOISE_CONF``
  and ``location = <site-packages>/goosebit/db/migrations``, then one server process ("We
  currently do not fully support multiple workers", issue 125). We do the same.
* Serving: ``python -m goosebit`` is ``uvicorn.run(app, host="0.0.0.0", port=config.port)``, every
  other uvicorn setting at its default (one process; the package pulls plain ``uvicorn``, so no
  uvloop or httptools: asyncio and h11; access log on). We run ``python -m uvicorn goosebit:app``
  with the same settings but ``--host 127.0.0.1``, so nothing listens beyond loopback.
* Operators (``goosebit/__init__.py``, ``goosebit/auth``): ``POST /setup`` (form ``username``,
  ``password``) creates the first user with permissions ``["*"]`` and answers
  ``{"access_token": <JWT>, "token_type": "bearer"}``; every ``/api`` route takes
  ``Authorization: Bearer <JWT>`` (or the ``session_id`` cookie).
* ``PUT /api/v1/software``: multipart ``file`` -> ``{"id": <int>}``. The first cpio member must be
  ``sw-description`` (libconfig); ``software.version`` is required; compatibility is read from
  ``software.<board>.hardware-compatibility`` (exact revision strings). Stored under
  ``artifacts_dir/<sha1>/<filename>``; devices get only its SHA-1.
* ``PUT /api/v1/rollouts`` ``{"name", "feed", "software_id"}`` -> ``{"success", "id"}``. A device
  (update mode ``rollout`` and feed ``default`` by default) gets the software of the newest
  unpaused rollout of its feed whose software lists the device's hardware (model, revision from
  its configData), unless it already runs that version. ``GET /api/v1/rollouts`` shows
  ``success_count`` and ``failure_count``.
* ``GET /api/v1/devices``: every device in one answer ``{"devices": [...]}``, each with the
  update it would get now (one rollout look-up per device).
* DDI (``goosebit/updater``): under ``/DEFAULT/controller/v1/{id}`` (the tenant is a path prefix,
  matched as written). Every DDI request first reads the device row and writes its last seen time
  and address (``track_device_ip``); the device object itself is cached for 600 s. An unknown id is
  registered on its first request; its state is ``unknown`` until configData, and the base poll
  then asks for configData (``sleep`` 00:00:10). No device token is needed by default.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from benchlib import Children, child_env, http_status, say, tail

GOOSEBIT_VERSION = "0.2.12"
REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".gaggle" / "bench-venvs" / f"goosebit-{GOOSEBIT_VERSION}"
TENANT = "DEFAULT"
HOST = "127.0.0.1"
ADMIN_USER = "bench"
ADMIN_PASSWORD = "bench-password"  # noqa: S105 (a throwaway server on loopback)


def _uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        raise RuntimeError("uv not found: run `make sync` first (it installs uv into .tools/)")
    return found


def _run(args: list[str], timeout: float, cwd: Path | None = None, **env: str) -> str:
    done = subprocess.run(  # noqa: S603
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=child_env(**env) if env else None,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def ensure_venv(timeout: float = 300.0) -> Path:
    """The venv's Python with ``goosebit==0.2.12``; created (uv, Python 3.11) on first use."""
    python = VENV / "bin" / "python"
    probe = ["-c", "import importlib.metadata as m; print(m.version('goosebit'))"]
    if python.exists():
        try:
            if _run([str(python), *probe], 60).strip() == GOOSEBIT_VERSION:
                return python
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
    say(f"installing goosebit=={GOOSEBIT_VERSION} into {VENV.relative_to(REPO)} (uv)")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    _run([_uv(), "venv", "--quiet", "--clear", "--python", "3.11", str(VENV)], timeout)
    _run(
        [
            _uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            f"goosebit=={GOOSEBIT_VERSION}",
        ],
        timeout,
    )
    return python


class GoosebitPeer:
    """One gooseBit server on ``127.0.0.1:port`` with its SQLite database in ``workdir``."""

    name = "gooseBit"

    def __init__(self, children: Children, workdir: Path, port: int) -> None:
        self.children = children
        self.workdir = workdir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "goosebit.log"
        self.token = ""
        self.facts: dict[str, Any] = {}

    @property
    def base(self) -> str:
        """Operator API base URL."""
        return f"http://{HOST}:{self.port}"

    @property
    def ddi_base(self) -> str:
        """What devices are given: server URL plus tenant."""
        return f"{self.base}/{TENANT}"

    def roots(self) -> list[int]:
        """Process trees that make up the server."""
        return [self.proc.pid] if self.proc else []

    def headers(self) -> dict[str, str]:
        """Operator authentication."""
        return {"Authorization": f"Bearer {self.token}"}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in child_env().items() if not k.startswith("GOOSEBIT_")}
        env.update(
            GOOSEBIT_DB_URI=f"sqlite://{self.workdir / 'db.sqlite3'}",
            GOOSEBIT_ARTIFACTS_DIR=str(self.workdir / "artifacts"),
            GOOSEBIT_PORT=str(self.port),
        )
        return env

    async def start(self, timeout: float) -> None:
        """Install if needed, migrate, start one server, create the admin user."""
        python = await asyncio.to_thread(ensure_venv)
        configs = (Path("/etc/goosebit.yaml"), REPO / "goosebit.yaml")
        if any(await asyncio.to_thread(lambda: [c.exists() for c in configs])):
            raise RuntimeError("a goosebit.yaml would change gooseBit's defaults; remove it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        package = (
            await asyncio.to_thread(
                _run,
                [
                    str(python),
                    "-c",
                    "import goosebit, os; print(os.path.dirname(goosebit.__file__))",
                ],
                60,
            )
        ).strip()
        aerich_toml = self.workdir / "aerich.toml"
        aerich_toml.write_text(
            "[tool.aerich]\n"
            'tortoise_orm = "goosebit.db.config.TORTOISE_CONF"\n'
            f"location = {json.dumps(package + '/db/migrations')}\n"
        )
        env = self._env()
        say("gooseBit: aerich upgrade (schema migrations shipped in the package)")
        done = await asyncio.to_thread(
            subprocess.run,
            [str(python), "-m", "aerich", "--config", str(aerich_toml), "upgrade"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.workdir,
            env=env,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"aerich upgrade failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        self.proc = self.children.spawn(
            [
                str(python),
                "-m",
                "uvicorn",
                "goosebit:app",
                "--host",
                HOST,
                "--port",
                str(self.port),
            ],
            env,
            self.log,
        )
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(http_status, f"{self.base}/docs") != 200:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gooseBit exited with {self.proc.returncode}:\n{tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"gooseBit not up after {timeout:.0f} s:\n{tail(self.log)}")
            await asyncio.sleep(0.2)
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                f"{self.base}/setup", data={"username": ADMIN_USER, "password": ADMIN_PASSWORD}
            )
            r.raise_for_status()
            self.token = r.json()["access_token"]
        version = (
            await asyncio.to_thread(
                _run,
                [str(python), "-c", "import uvicorn, sys; print(uvicorn.__version__, sys.version)"],
                60,
            )
        ).strip()
        self.facts = {
            "goosebit": GOOSEBIT_VERSION,
            "uvicorn and python": version,
            "database": "sqlite (default)",
            "workers": 1,
            "venv": str(VENV.relative_to(REPO)),
        }
        say(f"gooseBit {GOOSEBIT_VERSION} up on {self.base} (SQLite in {self.workdir})")

    async def upload(self, client: httpx.AsyncClient, image: Path) -> str:
        """``PUT /api/v1/software``; the software id."""
        with image.open("rb") as f:
            r = await client.put(
                f"{self.base}/api/v1/software",
                files={"file": (image.name, f, "application/octet-stream")},
                headers=self.headers(),
            )
        if r.status_code != 200:
            raise RuntimeError(f"gooseBit upload: {r.status_code} {r.text[:500]}")
        return str(r.json()["id"])

    async def start_rollout(
        self, client: httpx.AsyncClient, software_id: str, name: str, timeout: float
    ) -> dict[str, Any]:
        """``PUT /api/v1/rollouts`` for feed ``default``: devices see it at their next poll."""
        r = await client.put(
            f"{self.base}/api/v1/rollouts",
            json={"name": name, "feed": "default", "software_id": int(software_id)},
            headers=self.headers(),
        )
        if r.status_code != 200:
            raise RuntimeError(f"gooseBit rollout: {r.status_code} {r.text[:500]}")
        return dict(r.json())

    async def rollout_state(self, client: httpx.AsyncClient, rollout: dict[str, Any]) -> Any:
        """The rollout as ``GET /api/v1/rollouts`` shows it (success and failure counts)."""
        r = await client.get(f"{self.base}/api/v1/rollouts", headers=self.headers())
        r.raise_for_status()
        for item in r.json().get("rollouts", []):
            if str(item.get("id")) == str(rollout.get("id")):
                return item
        return None

    async def count_listed(
        self, client: httpx.AsyncClient, prefix: str, hw_model: str, sw_version: str
    ) -> int:
        """Devices ``GET /api/v1/devices`` lists with this id prefix, board and version."""
        r = await client.get(f"{self.base}/api/v1/devices", headers=self.headers())
        r.raise_for_status()
        return sum(
            1
            for d in r.json()["devices"]
            if d["id"].startswith(prefix)
            and (d.get("hardware") or {}).get("model") == hw_model
            and d.get("sw_version") == sw_version
        )

    async def wait_known(
        self, client: httpx.AsyncClient, prefix: str, hw_model: str, n: int, timeout: float
    ) -> None:
        """Nothing to wait for: gooseBit stores configData before it answers it."""

    def check_alive(self) -> None:
        """Raise if the server died."""
        if self.proc is not None and self.proc.poll() is not None:
            code = self.proc.returncode
            raise RuntimeError(f"gooseBit exited with {code}:\n{tail(self.log)}")

    def stop(self) -> None:
        """Stop the server."""
        if self.proc is not None:
            self.children.stop(self.proc)
            self.proc = None


if __name__ == "__main__":
    # `python bench/goosebit_peer.py` only installs (or checks) the venv.
    print(ensure_venv())  # noqa: T201
    sys.exit(0)
