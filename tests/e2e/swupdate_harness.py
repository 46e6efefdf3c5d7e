"""Drive the real SWUpdate suricatta client (Debian package ``swupdate``) in end-to-end tests.

SWUpdate 2022.12 reports ``closed/success`` only after a restart, so one update takes two runs
(see shared/reference/client-traffic.md):

* phase 1 polls the DDI server, downloads and installs the ``.swu`` (a ``rawfile`` image writing
  into the work dir), posts ``proceeding`` feedbacks ending with "All Chunks Installed." and then
  waits for a reboot that never comes. We wait for the ``SWUPDATE successful`` log line and the
  payload file, then kill the process group.
* phase 2 restarts swupdate with suricatta ``-c 2`` (state TESTING) and the new ``sw_version``;
  it posts ``closed/success`` "Update Installed." for the action the server still offers.

Sandboxing: every run gets its own config file (``/etc/swupdate.cfg`` is never read), ``-H`` instead
of ``/etc/hwrevision``, ``TMPDIR=<workdir>/tmp`` for swupdate's IPC sockets and temp files, and its
own process group. stdout/stderr go to ``<workdir>/<phase>.stdout.log`` / ``.stderr.log``.

Concurrency model: the API is plain synchronous (``run_phase1`` / ``run_phase2``, polling with
``time.sleep``), with ``*_async`` twins that poll with ``asyncio.sleep`` and accept sync or async
``until`` callbacks. Use the async twins when the DDI server under test runs in the same event loop
as the test, otherwise the sync calls would block the server. Every wait is bounded by a timeout.

Server-side facts the tests depend on (measured with swupdate 2022.12+dfsg-4+deb12u3):

* swupdate uses the server's ``config.polling.sleep`` over ``-p``; ``00:00:00`` means 45 s. Serve
  ``00:00:01`` in tests: phase 1 then takes ~2.5 s, phase 2 ~0.3 s.
* The install starts one poll cycle after the first one (that cycle sends configData).
* "All Chunks Installed." is posted ~1 s after the ``SWUPDATE successful`` line (the log thread
  batches), so pass ``until=`` to :meth:`SwupdateDevice.run_phase1` if the test needs it.
* Keep offering the deploymentBase after the ``proceeding`` feedbacks: phase 2 reports only while
  the base poll still links it.
* The ``-u`` option string is split on blanks: no spaces in ids, tokens or URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO

SWUPDATE_PACKAGE = "swupdate"
#: Logged to stdout (needs ``-l 6``/``-v``) when an image was installed.
SUCCESS_LINE = "SWUPDATE successful"
#: Logged to stderr when an install fails ("Image invalid or corrupted. Not installing ...").
#: Plain ``SWUPDATE failed [0]`` lines are ordinary error logs: every start prints the harmless
#: "Cannot read stored update state." that way.
FAILURE_LINE = "SWUPDATE failed [1]"

#: Suricatta ``-c`` values: the update state confirmed to the server at startup.
CONFIRM_AGAIN = 1
CONFIRM_SUCCESS = 2
CONFIRM_FAILED = 3

Condition = Callable[[], bool]
AsyncCondition = Callable[[], "bool | Awaitable[bool]"]


class SwupdateError(RuntimeError):
    """A swupdate run failed or timed out; the message ends with the tail of its logs."""


def _apt_get(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _apt_install(packages: list[str], timeout: float) -> None:
    result = _apt_get("install", "-y", "--no-install-recommends", *packages, timeout=timeout)
    if result.returncode != 0:
        _apt_get("update", timeout=timeout)
        result = _apt_get("install", "-y", "--no-install-recommends", *packages, timeout=timeout)
    if result.returncode != 0:
        raise SwupdateError(
            f"apt-get install {' '.join(packages)} failed ({result.returncode}):\n"
            + result.stderr[-3000:]
        )


def ensure_swupdate(*, install_timeout: float = 600.0) -> str:
    """Return the path of the ``swupdate`` binary, installing the Debian package if needed.

    As root, missing ``swupdate`` (and ``openssl``, needed to sign test images) are installed with
    ``apt-get install -y`` (after ``apt-get update`` if the first attempt fails). Otherwise a
    :class:`SwupdateError` names the packages to install.

    Args:
        install_timeout: Bound for each apt-get call, in seconds.

    Returns:
        Absolute path of the swupdate executable.

    Raises:
        SwupdateError: If swupdate is missing and cannot be installed.
    """
    tools = {SWUPDATE_PACKAGE: "swupdate", "openssl": "openssl"}
    missing = [pkg for pkg, tool in tools.items() if _which(tool) is None]
    if missing:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SwupdateError(
                f"{', '.join(missing)} not found: install the Debian package(s) "
                f"with `apt-get install -y {' '.join(missing)}` (needs root)"
            )
        _apt_install(missing, install_timeout)
    path = _which("swupdate")
    if path is None:
        raise SwupdateError(f"swupdate still missing after installing package {SWUPDATE_PACKAGE!r}")
    return path


def _which(tool: str) -> str | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    return shutil.which(tool, path=search)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:])


def _libconfig_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class SwupdateDevice:
    """One simulated device: the real swupdate in suricatta (hawkBit) mode.

    Typical use::

        dev = SwupdateDevice(server_url=url, tenant="DEFAULT", controller_id="dev-1",
                             workdir=tmp_path / "dev", public_cert=cert)
        with dev:
            dev.run_phase1(payload_path, expected_payload=payload, until=lambda: saw_chunks())
            dev.run_phase2(lambda: server_closed_action(), sw_version="1.0.1")

    The payload path is whatever the test image's ``rawfile`` entry writes to; keep it inside
    ``workdir`` (e.g. ``dev.workdir / "installed.bin"``).
    """

    def __init__(
        self,
        *,
        server_url: str,
        tenant: str,
        controller_id: str,
        workdir: str | Path,
        public_cert: str | Path,
        board: str = "e2eboard",
        revision: str = "1.0",
        target_token: str | None = None,
        sw_version: str = "0.0.1",
        poll_delay: int = 1,
        retry: int = 3,
        retry_wait: int = 1,
        connection_timeout: int = 10,
        identify: Mapping[str, str] | None = None,
        extra_suricatta_args: list[str] | None = None,
        binary: str | None = None,
        loglevel: int = 6,
        kill_timeout: float = 5.0,
        log_tail_lines: int = 60,
    ) -> None:
        """Describe the device; nothing is started yet.

        Args:
            server_url: ``scheme://host:port`` of the DDI server, no path.
            tenant: DDI tenant segment of the URL.
            controller_id: DDI controller id.
            workdir: Directory for config, logs and ``tmp/`` (created).
            public_cert: PEM certificate that verifies the ``.swu`` signature (``-k``).
            board: Hardware board name (``-H board:revision``).
            revision: Hardware revision.
            target_token: Sent as ``Authorization: TargetToken <token>`` when given.
            sw_version: ``sw_version`` reported in configData by phase 1.
            poll_delay: Suricatta ``-p`` seconds (the server's ``sleep`` overrides it).
            retry: Suricatta ``-r``: download resume attempts.
            retry_wait: Suricatta ``-w``: seconds between resume attempts.
            connection_timeout: Suricatta ``-s`` connect timeout in seconds.
            identify: Extra configData attributes besides client, hw_boardname, hw_revision and
                sw_version.
            extra_suricatta_args: Appended verbatim to the ``-u`` argument string.
            binary: swupdate executable (default: :func:`ensure_swupdate`).
            loglevel: swupdate ``-l`` (6 = TRACE, needed for the success line).
            kill_timeout: Seconds to wait after SIGTERM before SIGKILL.
            log_tail_lines: Lines of each log included in error messages.
        """
        self.server_url = server_url.rstrip("/")
        self.tenant = tenant
        self.controller_id = controller_id
        self.workdir = Path(workdir).resolve()
        self.public_cert = Path(public_cert).resolve()
        self.board = board
        self.revision = revision
        self.target_token = target_token
        self.sw_version = sw_version
        self.poll_delay = poll_delay
        self.retry = retry
        self.retry_wait = retry_wait
        self.connection_timeout = connection_timeout
        self.identify = dict(identify or {})
        self.extra_suricatta_args = list(extra_suricatta_args or [])
        self.binary = binary
        self.loglevel = loglevel
        self.kill_timeout = kill_timeout
        self.log_tail_lines = log_tail_lines
        self.phase: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)

    # -- files -------------------------------------------------------------------------------

    def stdout_path(self, phase: str | None = None) -> Path:
        """Path of the stdout log of ``phase`` (default: the current/last phase)."""
        return self.workdir / f"{phase or self.phase}.stdout.log"

    def stderr_path(self, phase: str | None = None) -> Path:
        """Path of the stderr log of ``phase`` (default: the current/last phase)."""
        return self.workdir / f"{phase or self.phase}.stderr.log"

    def config_text(self, sw_version: str) -> str:
        """Return the swupdate config file: log settings, key file and configData attributes."""
        attrs = {
            "client": "swupdate-suricatta",
            "hw_boardname": self.board,
            "hw_revision": self.revision,
            "sw_version": sw_version,
            **self.identify,
        }
        ident = ",\n".join(
            f"  {{ name = {_libconfig_str(k)}; value = {_libconfig_str(v)}; }}"
            for k, v in attrs.items()
        )
        return (
            "globals: {\n"
            "  verbose = true;\n"
            f"  loglevel = {self.loglevel};\n"
            f"  public-key-file = {_libconfig_str(str(self.public_cert))};\n"
            "};\n"
            f"identify: (\n{ident}\n);\n"
        )

    def command(self, config: Path, *, confirm: int | None = None) -> list[str]:
        """Return the swupdate argv for one run.

        Args:
            config: The config file written by :meth:`config_text`.
            confirm: Suricatta ``-c`` state (2 = success) or None.

        Returns:
            The argv list.
        """
        suricatta = [
            f"-t {self.tenant}",
            f"-i {self.controller_id}",
            f"-u {self.server_url}",
            f"-p {self.poll_delay}",
            f"-r {self.retry}",
            f"-w {self.retry_wait}",
            f"-s {self.connection_timeout}",
        ]
        if self.target_token:
            suricatta.append(f"-k {self.target_token}")
        if confirm is not None:
            suricatta.append(f"-c {confirm}")
        suricatta.extend(self.extra_suricatta_args)
        return [
            self.binary or ensure_swupdate(),
            "-f",
            str(config),
            "-H",
            f"{self.board}:{self.revision}",
            "-k",
            str(self.public_cert),
            "-v",
            "-l",
            str(self.loglevel),
            "-u",
            " ".join(suricatta),
        ]

    # -- process control ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the swupdate main process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, phase: str, *, sw_version: str, confirm: int | None = None) -> None:
        """Start swupdate in its own process group; logs go to ``<workdir>/<phase>.*.log``.

        Args:
            phase: Name used for the log and config files (e.g. ``phase1``).
            sw_version: Reported as ``sw_version`` in configData.
            confirm: Suricatta ``-c`` value, or None.

        Raises:
            SwupdateError: If a run is already active.
        """
        if self.running:
            raise SwupdateError(f"swupdate already running (phase {self.phase})")
        self.stop()
        self.phase = phase
        config = self.workdir / f"{phase}.cfg"
        config.write_text(self.config_text(sw_version))
        argv = self.command(config, confirm=confirm)
        (self.workdir / f"{phase}.cmd").write_text(" ".join(repr(a) for a in argv) + "\n")
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.workdir / "tmp"),
        }
        out = self.stdout_path().open("wb")
        err = self.stderr_path().open("wb")
        self._files = [out, err]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=self.workdir,
            start_new_session=True,
        )

    def stop(self) -> int | None:
        """Terminate the whole process group (SIGTERM, then SIGKILL after ``kill_timeout``).

        Returns:
            The main process's exit code, or None if nothing was started.
        """
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    code = proc.wait(timeout=self.kill_timeout)
                except subprocess.TimeoutExpired:
                    continue
                # Children of swupdate may outlive the main process: reap the group.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
        for f in self._files:
            f.close()
        self._files = []
        return code

    def __enter__(self) -> SwupdateDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- diagnostics -------------------------------------------------------------------------

    def log_text(self, phase: str | None = None, *, stderr: bool = False) -> str:
        """Return the stdout (or stderr) log of ``phase`` (default: current/last)."""
        path = self.stderr_path(phase) if stderr else self.stdout_path(phase)
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, phase: str | None = None) -> str:
        """Return the last lines of both logs of ``phase``, for error messages."""
        n = self.log_tail_lines
        return (
            f"--- {self.stdout_path(phase)} (last {n} lines) ---\n"
            f"{_tail(self.stdout_path(phase), n)}\n"
            f"--- {self.stderr_path(phase)} (last {n} lines) ---\n"
            f"{_tail(self.stderr_path(phase), n)}"
        )

    def _fail(self, message: str) -> SwupdateError:
        for f in self._files:
            f.flush()
        tail = self.log_tail()
        self.stop()
        return SwupdateError(f"{message}\n{tail}")

    # -- phase 1 -----------------------------------------------------------------------------

    def _phase1_state(self, payload: Path, expected: bytes | None) -> bool:
        log = self.log_text()
        if FAILURE_LINE in self.log_text(stderr=True):
            raise self._fail(f"swupdate reported a failed install ({FAILURE_LINE!r})")
        if SUCCESS_LINE not in log or not payload.is_file():
            if not self.running:
                raise self._fail("swupdate exited before the install finished")
            return False
        if expected is not None and payload.read_bytes() != expected:
            raise self._fail(f"installed payload {payload} differs from the expected bytes")
        return True

    def _start_phase1(self) -> None:
        self.start("phase1", sw_version=self.sw_version)

    def run_phase1(
        self,
        payload_path: str | Path,
        *,
        expected_payload: bytes | None = None,
        until: Condition | None = None,
        timeout: float = 90.0,
        poll_interval: float = 0.2,
    ) -> float:
        """Run phase 1: install the offered update, then kill swupdate.

        Waits until the ``SWUPDATE successful`` line is logged, ``payload_path`` exists (and equals
        ``expected_payload`` if given) and ``until()`` (if given, e.g. "the server has the
        All Chunks Installed. feedback") is true; then stops the process group.

        Args:
            payload_path: Where the image's ``rawfile`` entry writes.
            expected_payload: Bytes the installed file must equal.
            until: Extra condition polled after the install is seen.
            timeout: Seconds allowed for the whole phase.
            poll_interval: Seconds between checks.

        Returns:
            Seconds the phase took.

        Raises:
            SwupdateError: On install failure, early exit or timeout (with the log tail).
        """
        payload = Path(payload_path)
        t0 = time.monotonic()
        self._start_phase1()
        try:
            while True:
                if self._phase1_state(payload, expected_payload) and (until is None or until()):
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    raise self._fail(f"phase 1 did not complete within {timeout:.0f}s")
                time.sleep(poll_interval)
        finally:
            self.stop()

    async def run_phase1_async(
        self,
        payload_path: str | Path,
        *,
        expected_payload: bytes | None = None,
        until: AsyncCondition | None = None,
        timeout: float = 90.0,
        poll_interval: float = 0.2,
    ) -> float:
        """Async twin of :meth:`run_phase1`; ``until`` may return a bool or an awaitable."""
        payload = Path(payload_path)
        t0 = time.monotonic()
        self._start_phase1()
        try:
            while True:
                if self._phase1_state(payload, expected_payload) and (
                    until is None or await _check(until)
                ):
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    raise self._fail(f"phase 1 did not complete within {timeout:.0f}s")
                await asyncio.sleep(poll_interval)
        finally:
            self.stop()

    # -- phase 2 and generic runs ------------------------------------------------------------

    def _check_alive(self, what: str) -> None:
        if not self.running:
            raise self._fail(f"swupdate exited during {what}")

    def run_until(
        self,
        until: Condition,
        *,
        phase: str,
        sw_version: str,
        confirm: int | None = None,
        timeout: float = 60.0,
        poll_interval: float = 0.25,
    ) -> float:
        """Start swupdate, wait until ``until()`` is true, then stop it.

        Args:
            until: Condition polled every ``poll_interval`` (e.g. queries the server).
            phase: Name for the log/config files.
            sw_version: Reported in configData.
            confirm: Suricatta ``-c`` value.
            timeout: Seconds allowed.
            poll_interval: Seconds between checks.

        Returns:
            Seconds until the condition held.

        Raises:
            SwupdateError: If swupdate exits early or the timeout passes (with the log tail).
        """
        t0 = time.monotonic()
        self.start(phase, sw_version=sw_version, confirm=confirm)
        try:
            while not until():
                self._check_alive(phase)
                if time.monotonic() - t0 > timeout:
                    raise self._fail(f"{phase}: condition not met within {timeout:.0f}s")
                time.sleep(poll_interval)
            return time.monotonic() - t0
        finally:
            self.stop()

    async def run_until_async(
        self,
        until: AsyncCondition,
        *,
        phase: str,
        sw_version: str,
        confirm: int | None = None,
        timeout: float = 60.0,
        poll_interval: float = 0.25,
    ) -> float:
        """Async twin of :meth:`run_until`; ``until`` may return a bool or an awaitable."""
        t0 = time.monotonic()
        self.start(phase, sw_version=sw_version, confirm=confirm)
        try:
            while not await _check(until):
                self._check_alive(phase)
                if time.monotonic() - t0 > timeout:
                    raise self._fail(f"{phase}: condition not met within {timeout:.0f}s")
                await asyncio.sleep(poll_interval)
            return time.monotonic() - t0
        finally:
            self.stop()

    def run_phase2(
        self,
        until: Condition,
        *,
        sw_version: str,
        confirm: int = CONFIRM_SUCCESS,
        timeout: float = 60.0,
        poll_interval: float = 0.25,
    ) -> float:
        """Run phase 2: restart with ``-c 2`` so swupdate posts ``closed/success``.

        Args:
            until: Condition polled until true (e.g. "the server recorded closed/success").
            sw_version: The installed version (the image's ``software.version``).
            confirm: Suricatta ``-c`` value (3 reports "Update Failed.").
            timeout: Seconds allowed.
            poll_interval: Seconds between checks.

        Returns:
            Seconds until the condition held.
        """
        return self.run_until(
            until,
            phase="phase2",
            sw_version=sw_version,
            confirm=confirm,
            timeout=timeout,
            poll_interval=poll_interval,
        )

    async def run_phase2_async(
        self,
        until: AsyncCondition,
        *,
        sw_version: str,
        confirm: int = CONFIRM_SUCCESS,
        timeout: float = 60.0,
        poll_interval: float = 0.25,
    ) -> float:
        """Async twin of :meth:`run_phase2`."""
        return await self.run_until_async(
            until,
            phase="phase2",
            sw_version=sw_version,
            confirm=confirm,
            timeout=timeout,
            poll_interval=poll_interval,
        )


async def _check(cond: AsyncCondition) -> bool:
    result = cond()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
