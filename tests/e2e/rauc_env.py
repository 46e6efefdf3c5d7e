"""Provision and run the real ``rauc-hawkbit`` 0.2.0 DDI client for end-to-end tests (stdlib only).

``rauc-hawkbit`` 0.2.0 declares ``aiohttp>=3.3.2`` and ``gbulb>=0.5``. gbulb pulls in PyGObject
and pycairo, which are built from source and need system C libraries. Only the D-Bus client
needs them: the plain ``DDIClient`` that the driver uses needs only aiohttp. So the venv gets
rauc-hawkbit plus a fully pinned aiohttp closure, each installed with ``--no-deps`` and
``--only-binary :all:``. These are versions checked on CPython 3.11.

Usage (async test)::

    python = ensure_rauc_hawkbit_venv(tmp_root)
    res = await run_driver_async(python, url=f"http://127.0.0.1:{port}", controller_id="dev-1",
                                 scenario="success", download_dir=tmp_path)
    assert res.returncode == 0, res.stderr
    steps = res.steps  # parsed JSON lines
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "DRIVER_PATH",
    "RAUC_HAWKBIT_PINS",
    "DriverResult",
    "driver_command",
    "ensure_rauc_hawkbit_venv",
    "run_driver",
    "run_driver_async",
]

#: The driver script, executed with the venv's python.
DRIVER_PATH = Path(__file__).resolve().with_name("rauc_hawkbit_driver.py")

#: Exact set installed (all with --no-deps): rauc-hawkbit without gbulb/PyGObject + aiohttp closure.
RAUC_HAWKBIT_PINS: tuple[str, ...] = (
    "rauc-hawkbit==0.2.0",
    "aiohttp==3.14.5",
    "aiohappyeyeballs==2.7.1",
    "aiosignal==1.4.0",
    "attrs==26.1.0",
    "frozenlist==1.8.0",
    "idna==3.20",
    "multidict==7.2.1",
    "propcache==0.5.4",
    "typing-extensions==4.16.0",
    "yarl==1.25.1",
)

VENV_NAME = "rauc-hawkbit"
_MARKER = ".gaggle-rauc-hawkbit-pins"
_CHECK = (
    "import importlib.metadata as m, sys, json\n"
    "import rauc_hawkbit.ddi.client, rauc_hawkbit.ddi.deployment_base\n"
    "import rauc_hawkbit.ddi.cancel_action\n"
    "pins = json.loads(sys.argv[1])\n"
    "bad = [p for p in pins if m.version(p.split('==')[0]) != p.split('==')[1]]\n"
    "sys.exit(1 if bad else 0)\n"
)


class DriverResult(NamedTuple):
    """Outcome of one driver run: ``(returncode, stdout_lines, stderr)``."""

    returncode: int
    stdout_lines: list[str]
    stderr: str

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The stdout JSON lines, parsed (non-JSON lines are skipped)."""
        out = []
        for line in self.stdout_lines:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def step(self, name: str) -> list[dict[str, Any]]:
        """All parsed steps with ``step == name``."""
        return [s for s in self.steps if s.get("step") == name]


def _venv_python(venv_dir: Path) -> Path:
    if os.name == "nt":  # pragma: no cover
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def _uv_command() -> list[str]:
    """The ``uv`` running the tests, else ``uv`` from PATH, else ``python -m uv``.

    Raises RuntimeError if none works.
    """
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv:
        return [uv]
    probe = subprocess.run(
        [sys.executable, "-m", "uv", "--version"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        return [sys.executable, "-m", "uv"]
    raise RuntimeError(
        "uv not found: put `uv` on PATH or install it into this interpreter (`pip install uv`)"
    )


def _is_valid(venv_dir: Path) -> bool:
    python = _venv_python(venv_dir)
    marker = venv_dir / _MARKER
    if not python.exists() or not marker.exists():
        return False
    if marker.read_text() != "\n".join(RAUC_HAWKBIT_PINS):
        return False
    check = subprocess.run(
        [str(python), "-c", _CHECK, json.dumps(RAUC_HAWKBIT_PINS)], capture_output=True, text=True
    )
    return check.returncode == 0


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Inter-process lock so parallel test workers do not build the venv twice."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )


def ensure_rauc_hawkbit_venv(base_dir: Path, python: str | os.PathLike[str] | None = None) -> Path:
    """Create (once; reused while valid) ``base_dir/"rauc-hawkbit"`` with the pinned packages.

    ``python`` is the interpreter for the venv (default: the running one, ``sys.executable``).
    Returns the venv's python. Raises RuntimeError if uv is missing or the install fails.
    """
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    venv_dir = base_dir / VENV_NAME
    if _is_valid(venv_dir):
        return _venv_python(venv_dir)
    with _locked(base_dir / f"{VENV_NAME}.lock"):
        if _is_valid(venv_dir):  # built by another worker meanwhile
            return _venv_python(venv_dir)
        uv = _uv_command()
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)  # do not let uv target the caller's venv
        env.setdefault("UV_PYTHON_DOWNLOADS", "never")
        env.setdefault("UV_NO_PROGRESS", "1")
        interpreter = str(python) if python is not None else sys.executable
        # cwd=base_dir keeps uv away from any surrounding project/workspace configuration.
        if venv_dir.exists():  # invalid or stale: rebuild from scratch
            shutil.rmtree(venv_dir)
        _run([*uv, "venv", "--no-project", "-p", interpreter, str(venv_dir)], cwd=base_dir, env=env)
        _run(
            [
                *uv,
                "pip",
                "install",
                "--python",
                str(_venv_python(venv_dir)),
                "--no-deps",
                "--only-binary",
                ":all:",
                *RAUC_HAWKBIT_PINS,
            ],
            cwd=base_dir,
            env=env,
        )
        (venv_dir / _MARKER).write_text("\n".join(RAUC_HAWKBIT_PINS))
        if not _is_valid(venv_dir):
            raise RuntimeError(f"rauc-hawkbit venv at {venv_dir} failed its import/version check")
    return _venv_python(venv_dir)


def driver_command(
    python: Path,
    *,
    url: str,
    controller_id: str,
    scenario: str,
    download_dir: Path,
    tenant: str = "DEFAULT",
    token: str = "",
    attributes: dict[str, Any] | str | None = None,
    timeout: float = 60.0,
    max_sleep: float | None = None,
    progress_style: str | None = None,
    final_poll: bool = True,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Build the argv for ``rauc_hawkbit_driver.py``; ``attributes`` may be a dict or JSON text."""
    if attributes is None:
        attributes = {"client": "rauc-hawkbit-0.2.0"}
    attrs = attributes if isinstance(attributes, str) else json.dumps(attributes)
    cmd = [
        str(python),
        str(DRIVER_PATH),
        "--url",
        url,
        "--tenant",
        tenant,
        "--controller-id",
        controller_id,
        f"--token={token}",
        "--attributes",
        attrs,
        "--scenario",
        scenario,
        "--timeout",
        str(timeout),
        "--download-dir",
        str(download_dir),
    ]
    if max_sleep is not None:
        cmd += ["--max-sleep", str(max_sleep)]
    if progress_style is not None:
        cmd += ["--progress-style", progress_style]
    if not final_poll:
        cmd.append("--no-final-poll")
    return cmd + list(extra_args)


def run_driver(python: Path, **args: Any) -> subprocess.CompletedProcess[str]:
    """Run the driver synchronously (keyword args as for ``driver_command``).

    Does not raise on a non-zero exit code; inspect ``returncode``/``stdout``.
    """
    timeout = float(args.get("timeout", 60.0))
    return subprocess.run(
        driver_command(python, **args), capture_output=True, text=True, timeout=timeout + 30
    )


async def run_driver_async(python: Path, **args: Any) -> DriverResult:
    """Run the driver as an asyncio subprocess (keyword args as for ``driver_command``).

    The driver limits itself with ``--timeout``. After that plus 30 s grace it is killed and
    returncode -9 is returned.
    """
    timeout = float(args.get("timeout", 60.0))
    proc = await asyncio.create_subprocess_exec(
        *driver_command(python, **args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 30)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return DriverResult(
            -9,
            out.decode(errors="replace").splitlines(),
            err.decode(errors="replace") + "\n[killed: driver exceeded its timeout]",
        )
    return DriverResult(
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace").splitlines(),
        err.decode(errors="replace"),
    )
