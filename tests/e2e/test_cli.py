"""The operator command line ``gaggle`` against the real services.

Registry, artifacts, rollouts and the gateway run in the test's event loop (``e2e_stack`` plus
an artifacts service writing to the gateway's object folder); the CLI runs as a subprocess
(``python -m gaggle_cli``) pointed at them through the environment, and a small simulated fleet
(``gaggle_sim``) plays the devices.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_servers import free_port
from gaggle_sim import Fleet, FleetConfig
from gaggle_storage import StorageSettings
from gaggle_swu.build import make_rawfile_swu
from tests.e2e.conftest import BOARD, REVISION, E2EStack, random_id

NEW_VERSION = "2.0.0"


@dataclass(frozen=True)
class Run:
    """One finished ``gaggle`` run."""

    args: tuple[str, ...]
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.rc == 0, self
        return json.loads(self.out)


def one_line_error(run: Run, rc: int, *needles: str) -> str:
    """Assert ``run`` failed with ``rc`` and one ``gaggle: …`` line on stderr, nothing on stdout."""
    assert run.rc == rc, run
    assert run.out == "", run
    assert "Traceback" not in run.err, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("gaggle: "), run
    for needle in needles:
        assert needle in lines[0], run
    return lines[0]


class Gaggle:
    """Runs ``python -m gaggle_cli`` with an environment pointing at the test's services."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self.env = dict(env)
        self.cwd = cwd

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    async def spawn(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        """Start ``gaggle *args`` in the background (stdout and stderr piped)."""
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gaggle_cli",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(env),
            cwd=self.cwd,
        )

    async def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 20.0
    ) -> Run:
        proc = await self.spawn(*args, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(
                f"gaggle {' '.join(args)} did not end within {timeout:.0f}s\n"
                f"stdout: {out.decode()[-2000:]}\nstderr: {err.decode()[-2000:]}"
            ) from None
        assert proc.returncode is not None
        return Run(args, proc.returncode, out.decode(), err.decode())

    async def until(self, *args: str, timeout: float = 15.0) -> Run:
        """Run ``gaggle *args`` until it succeeds (the services learn of things shortly)."""
        deadline = time.monotonic() + timeout
        while True:
            run = await self(*args)
            if run.rc == 0 or time.monotonic() > deadline:
                return run
            await asyncio.sleep(0.2)


@dataclass
class CliStack:
    """The running stack, the CLI pointed at it, and the folder the test works in."""

    stack: E2EStack
    artifacts_url: str
    gaggle: Gaggle
    work: Path


@pytest.fixture
async def cli_stack(
    e2e_stack: E2EStack,
    common: CommonSettings,
    serve: Any,
    tmp_path: Path,
    operator_key: str,
) -> CliStack:
    """``e2e_stack`` plus artifacts, storing into the folder the gateway serves downloads from."""
    # e2e_stack's gateway and LocalStore use tmp_path / "objects": artifacts writes there too.
    assert e2e_stack.store.root == (tmp_path / "objects").resolve()
    artifacts = await serve(
        build_artifacts(
            common, ArtifactsSettings(), StorageSettings(backend="local", dir=tmp_path / "objects")
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GAGGLE_") and key != "XDG_CONFIG_HOME"
    }
    env.update(
        {
            "GAGGLE_REGISTRY_URL": e2e_stack.registry.url,
            "GAGGLE_ARTIFACTS_URL": artifacts.url,
            "GAGGLE_ROLLOUTS_URL": e2e_stack.rollouts.url,
            "GAGGLE_API_KEY": operator_key,
            "XDG_CONFIG_HOME": str(tmp_path / "no-config"),
            "COLUMNS": "200",
        }
    )
    return CliStack(e2e_stack, artifacts.url, Gaggle(env, work), work)


def fleet_config(stack: E2EStack, count: int, prefix: str) -> FleetConfig:
    """Devices of the test's tenant that poll at the gateway's 1 s interval, installing in 2 s."""
    return FleetConfig(
        f"{stack.gateway_url}/{stack.tenant}",
        count,
        id_prefix=prefix,
        hw_model=BOARD,
        hw_revision=REVISION,
        sw_version="1.0.0",
        poll="server",
        jitter=0.0,
        connections=8,
        timeout=10,
        # Long enough that a wave is still busy when the test pauses the rollout after start.
        install_seconds=2.0,
    )


async def read_until(stream: asyncio.StreamReader, needle: str, timeout: float) -> str:
    """Read lines of ``stream`` until one contains ``needle``; everything read."""
    seen = ""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"stream ended before {needle!r}; read: {seen}")
            seen += line.decode()
    return seen


@pytest.mark.timeout(120)  # ~20 s on a quiet machine; each CLI run starts a new Python
async def test_operator_cli_uploads_rolls_out_watches_and_tails(cli_stack: CliStack) -> None:
    gaggle, stack = cli_stack.gaggle, cli_stack.stack

    # -- upload with a progress bar; the same image again is refused in one line ----------------
    image = cli_stack.work / f"update-{NEW_VERSION}.swu"
    image.write_bytes(
        make_rawfile_swu(
            os.urandom(200_000),
            version=NEW_VERSION,
            board=BOARD,
            revisions=[REVISION],
            install_path="/tmp/gaggle-cli-test.bin",
            key=None,
            cert=None,
        )
    )
    # As on a terminal: the progress bar is drawn (and cleared at the end).
    uploaded = await gaggle("software", "upload", str(image), env={"TTY_COMPATIBLE": "1"})
    assert uploaded.rc == 0, uploaded
    assert "Uploading" in uploaded.err and "100%" in uploaded.err, uploaded
    assert "Uploaded software" in uploaded.out and NEW_VERSION in uploaded.out, uploaded
    again = await gaggle("software", "upload", str(image))
    one_line_error(
        again, 1, "artifacts answered 409 duplicate: this image is already in the catalogue"
    )

    listed = (await gaggle("--json", "software", "list", "--hw-model", BOARD)).json()
    assert [s["version"] for s in listed["items"]] == [NEW_VERSION], listed
    software = listed["items"][0]
    assert software["size"] == image.stat().st_size
    assert f"software_id {software['id']}" in again.err
    shown = await gaggle("software", "show", software["id"])
    assert shown.rc == 0 and software["hashes"]["sha256"] in shown.out, shown

    # -- devices: a small fleet makes first contact and keeps polling ---------------------------
    prefix = random_id("cli") + "-"
    config = fleet_config(stack, 5, prefix)
    ids = config.controller_ids()
    fleet = Fleet(config)
    logs: asyncio.subprocess.Process | None = None
    tail: asyncio.subprocess.Process | None = None
    await fleet.start()
    try:
        for cid in ids:
            await stack.wait_device(cid, lambda d: d["sw_version"] == "1.0.0")

        table = await gaggle("devices", "list", "--hw-model", BOARD, "--sw-version", "1.0.0")
        assert table.rc == 0, table
        assert "DEVICE" in table.out and "LAST SEEN" in table.out, table
        for cid in ids:
            assert cid in table.out, table
        filtered = (await gaggle("devices", "list", "--q", ids[1], "--json")).json()
        assert [d["controller_id"] for d in filtered["items"]] == [ids[1]], filtered

        device = await gaggle("devices", "show", ids[1])
        assert device.rc == 0, device
        assert "mode rollout, feed default" in device.out and "No actions." in device.out, device

        # -- policy: one device is pinned, so the rollout leaves it out -------------------------
        pinned = await gaggle("policy", "set", ids[0], "--mode", "pinned")
        assert pinned.rc == 0, pinned
        assert f"{ids[0]}: mode pinned, feed default" in pinned.out, pinned
        shown_policy = await gaggle("policy", "show", ids[0])
        assert shown_policy.out == f"{ids[0]}: mode pinned, feed default\n", shown_policy

        # -- logs: follow one device before its update begins ----------------------------------
        logs = await gaggle.spawn("devices", "logs", ids[2], "--count", "1", "--json")
        tail = await gaggle.spawn("devices", "logs", ids[3])  # for people, until Ctrl-C
        for proc in (logs, tail):
            assert proc.stderr is not None
            await read_until(proc.stderr, "Following the feedback", timeout=15)

        # -- rollout: create (rollouts may still be learning of the software), start, pause -----
        created = await gaggle.until(
            "--json",
            "rollouts",
            "create",
            "--name",
            "cli rollout",
            "--software",
            software["id"],
            "--waves",
            "50%,50%",
            "--error-threshold",
            "50",
        )
        rollout = created.json()
        rid = rollout["id"]
        assert rollout["state"] == "created" and len(rollout["waves"]) == 2, rollout
        started = await gaggle("rollouts", "start", rid)
        assert started.rc == 0 and f"Rollout {rid}: running, wave 1/2" in started.out, started
        paused = await gaggle("rollouts", "pause", rid)
        assert paused.rc == 0 and "paused" in paused.out, paused
        resumed = await gaggle("--json", "rollouts", "resume", rid)
        assert resumed.json()["state"] == "running", resumed

        # -- watch it to the end while the devices update ---------------------------------------
        watched = await gaggle(
            "rollouts", "watch", rid, "--interval", "0.3", "--timeout", "45", timeout=50
        )
        assert watched.rc == 0, watched
        lines = watched.out.strip().splitlines()
        assert "finished" in lines[-1], watched
        assert "4/4 success" in lines[-1], watched
        assert f"Rollout {rid} finished" in watched.err, watched

        out, err = await asyncio.wait_for(logs.communicate(), 20)
        assert logs.returncode == 0, (out, err)
        event = json.loads(out.decode().strip().splitlines()[0])
        assert event["event"] == "action.feedback", event
        assert event["data"]["controller_id"] == ids[2], event

        assert tail.stdout is not None
        seen = await read_until(tail.stdout, "  closed  success", timeout=15)
        tail.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(tail.communicate(), 20)
        assert tail.returncode == 0 and b"Traceback" not in err, (out, err)
        feedback = (seen + out.decode()).splitlines()
        assert all(f"  {ids[3]}  action " in line for line in feedback), feedback

        final = await gaggle("rollouts", "show", rid)
        assert "finished (every device is done)" in final.out, final
        assert "4/4 success" in final.out and "WAVE" in final.out, final
        one_line_error(
            await gaggle("rollouts", "pause", rid),
            1,
            "rollouts answered 409 invalid_transition: cannot pause a finished rollout",
        )
        updated = await gaggle("devices", "show", ids[2])
        assert NEW_VERSION in updated.out and "ACTION" in updated.out, updated
        untouched = (await gaggle("--json", "devices", "show", ids[0])).json()
        assert untouched["policy"]["mode"] == "pinned", untouched
        assert untouched["actions"] == [] and untouched["device"]["sw_version"] == "1.0.0"
    finally:
        await fleet.stop()
        for leftover in (logs, tail):
            if leftover is not None and leftover.returncode is None:
                leftover.kill()
                await leftover.wait()

    # -- abort: a created rollout is aborted; watching it ends with exit 1 ----------------------
    second = (
        await gaggle(
            "--json", "rollouts", "create", "--name", "to abort", "--software", software["id"]
        )
    ).json()
    aborted = await gaggle("rollouts", "abort", second["id"])
    assert aborted.rc == 0 and f"Rollout {second['id']}: aborted" in aborted.out, aborted
    watched = await gaggle("rollouts", "watch", second["id"])
    assert watched.rc == 1, watched
    assert "aborted" in watched.out, watched  # the last state seen, then why it ended
    assert watched.err == f"gaggle: rollout {second['id']} aborted: aborted by an operator\n"
    rollout_table = await gaggle("rollouts", "list")
    assert "cli rollout" in rollout_table.out and "to abort" in rollout_table.out, rollout_table

    # -- keys and audit: a viewer key may look but not change ----------------------------------
    issued = (await gaggle("--json", "keys", "issue", "--name", "ci", "--role", "viewer")).json()
    viewer = {"GAGGLE_API_KEY": issued["key"]}
    looked = await gaggle("rollouts", "list", env=viewer)
    assert looked.rc == 0, looked
    one_line_error(await gaggle("rollouts", "abort", rid, env=viewer), 1, "rollouts answered 403")
    keys = (await gaggle("--json", "keys", "list")).json()
    assert issued["id"] in [k["id"] for k in keys["items"]], keys
    assert (await gaggle("keys", "revoke", issued["id"])).rc == 0
    wanted = ("start_rollout", "pause_rollout", "resume_rollout")
    deadline = time.monotonic() + 10
    while True:  # the audit log is written from events, a moment later
        audit = await gaggle("audit", "--resource", f"rollouts/{rid}", "--since", "1h")
        assert audit.rc == 0 and "OUTCOME" in audit.out, audit
        if all(name in audit.out for name in wanted):
            break
        assert time.monotonic() < deadline, audit
        await asyncio.sleep(0.2)


async def test_a_bad_key_is_one_line_that_names_the_key(cli_stack: CliStack) -> None:
    bad = {"GAGGLE_API_KEY": "ggl_000000000000_" + "x" * 43}
    line = one_line_error(
        await cli_stack.gaggle("devices", "list", env=bad), 1, "registry answered 401"
    )
    assert "GAGGLE_API_KEY" in line, line
    # --key wins over the environment, and says so.
    line = one_line_error(
        await cli_stack.gaggle("--key", "nonsense", "software", "list"), 1, "artifacts answered 401"
    )
    assert "--key" in line, line


async def test_an_unreachable_service_is_exit_2(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GAGGLE_")},
        "GAGGLE_API_KEY": "ggl_000000000000_" + "x" * 43,
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    gaggle = Gaggle(env, tmp_path)
    run = await gaggle("--rollouts", f"http://127.0.0.1:{port}", "rollouts", "list")
    one_line_error(
        run, 2, f"gaggle: cannot reach rollouts at http://127.0.0.1:{port}: connection refused"
    )
    # --json changes nothing about errors: still one line on stderr, nothing on stdout.
    run = await gaggle("--json", "--registry", f"http://127.0.0.1:{port}", "devices", "show", "x")
    one_line_error(run, 2, "cannot reach registry")
