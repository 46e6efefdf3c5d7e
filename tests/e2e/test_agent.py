"""``gaggle-agent`` as a real process against the real stack (registry, rollouts, gateway).

The device is played by shell hooks in the test's folder: ``version`` prints the content of a
version file, ``install`` copies the downloaded file and writes the new version (read from the
meta JSON) into that file, ``restart`` and ``ready`` note their call. Every hook appends
``<name> <$1> <$2>`` to ``calls``, so a test can tell what ran and how often.

The last test runs the same happy path against gooseBit 0.2.12 (``bench/goosebit_peer.py``), a
DDI server that is not Gaggle.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_servers import free_port
from gaggle_testing.proxy import Request, TcpProxy
from tests.e2e.conftest import (
    BOARD,
    REVISION,
    ROOT,
    E2EStack,
    format_action,
    has_detail,
    random_id,
    tail,
)

OLD_VERSION = "1.0.0"

VERSION_HOOK = 'echo "version $1 $2" >> "$DIR/calls"\ncat "$DIR/version"\n'
INSTALL_HOOK = """echo "install $1 $2" >> "$DIR/calls"
echo "installing $4"
cp "$4" "$DIR/installed.bin"
printf '%s' "$3" | sed -n 's/^{"action_id": "[^"]*", "version": "\\([^"]*\\)".*/\\1/p' \\
    > "$DIR/version"
echo "installed $(cat "$DIR/version")"
"""
RESTART_HOOK = 'echo "restart $1 $2 $4" >> "$DIR/calls"\necho "restarting"\n'
READY_HOOK = 'echo "ready $1 $2" >> "$DIR/calls"\necho "all services up"\n'
DOWNLOAD_HOOK = 'echo "download $1 $2" >> "$DIR/calls"\necho "go"\n'


class AgentProcess:
    """One ``gaggle-agent`` process with its configuration, hooks and log in ``folder``."""

    def __init__(
        self,
        folder: Path,
        *,
        url: str,
        tenant: str,
        controller_id: str,
        hooks: dict[str, str] | None = None,
        retry_interval: float = 0.2,
        max_retries: int = 5,
    ) -> None:
        self.folder = folder
        self.controller_id = controller_id
        self.log = folder / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "version").write_text(OLD_VERSION + "\n")
        scripts = {
            "version": VERSION_HOOK,
            "download": DOWNLOAD_HOOK,
            "install": INSTALL_HOOK,
            "restart": RESTART_HOOK,
            "ready": READY_HOOK,
            **(hooks or {}),
        }
        lines = []
        for name, body in scripts.items():
            path = folder / "hooks" / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(f'#!/bin/sh\nDIR="{folder}"\n{body}')
            path.chmod(0o755)
            lines.append(f'{name} = "hooks/{name}"')
        self.config = folder / "agent.toml"
        self.config.write_text(
            "[server]\n"
            f'url = "{url}"\ntenant = "{tenant}"\ncontroller_id = "{controller_id}"\n'
            "timeout = 10\n"
            "[device]\n"
            f'hw_boardname = "{BOARD}"\nhw_revision = "{REVISION}"\n'
            "[agent]\n"
            'download_dir = "downloads"\nstate_file = "state/agent.json"\n'
            f"retry_interval = {retry_interval}\nmax_retries = {max_retries}\n"
            "default_sleep = 1\ndownload_attempts = 5\n"
            "[hooks]\n" + "\n".join(lines) + "\n"
        )

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gaggle_agent", "-c", str(self.config), "-v"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def calls(self, name: str | None = None) -> list[str]:
        path = self.folder / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [c for c in lines if name is None or c.split()[0] == name]

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.folder / "state" / "agent.json").read_text()))

    def diagnostics(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- agent calls ---\n{self.calls()}\n--- agent log (tail) ---\n{tail(text, 60)}"


@pytest.fixture
def agents() -> Any:
    started: list[AgentProcess] = []

    def make(*args: Any, **kwargs: Any) -> AgentProcess:
        agent = AgentProcess(*args, **kwargs)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


async def until(check: Callable[[], bool], what: str, diagnostics: Callable[[], str]) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within 30 s\n{diagnostics()}")


def agent_for(stack: E2EStack, make: Any, tmp_path: Path, **kwargs: Any) -> AgentProcess:
    cid = random_id("agent")
    url = kwargs.pop("url", stack.gateway_url)
    agent: AgentProcess = make(
        tmp_path / "device", url=url, tenant=stack.tenant.upper(), controller_id=cid, **kwargs
    )
    return agent


async def publish(stack: E2EStack, version: str, size: int = 200_000) -> Any:
    return await stack.publish_software(
        os.urandom(size), version=version, filename=f"agent-{version}.swu"
    )


def executions(action: dict[str, Any]) -> list[str]:
    return [h["execution"] for h in action.get("history") or [] if h.get("execution")]


def closed_as(action: dict[str, Any]) -> list[str]:
    """``finished`` of every ``closed`` report in the history (one, normally)."""
    return [h["finished"] for h in action.get("history") or [] if h.get("execution") == "closed"]


async def wait_closed(
    stack: E2EStack, action_id: str, status: str, agent: AgentProcess, *details: str
) -> dict[str, Any]:
    """The action once it has ``status`` and every detail (reports are applied in the background:
    a progress report can land after the closing one)."""
    return await stack.wait_action(
        action_id,
        status,
        until=lambda a: all(has_detail(a, text) for text in details),
        diagnostics=agent.diagnostics,
        timeout=30,
    )


# -- against Gaggle ------------------------------------------------------------------------------


async def test_agent_installs_an_update_and_reports_its_new_version(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    agent = agent_for(e2e_stack, agents, tmp_path)
    agent.start()
    cid = agent.controller_id
    # First contact: configData with the board and the version the hook reports.
    device = await e2e_stack.wait_device(
        cid, lambda d: d["sw_version"] == OLD_VERSION, diagnostics=agent.diagnostics
    )
    assert (device["hw_model"], device["hw_revision"]) == (BOARD, REVISION), device
    software = await publish(e2e_stack, "2.0.0")
    action = await e2e_stack.create_action(cid, software.software_id, "forced")
    # Every stdout line of the hooks is in the action's history.
    expected = [
        "Update to 2.0.0 installed.",
        "ready: all services up",
        f"install: installing {tmp_path}/device/downloads/",
        "install: installed 2.0.0",
        "restart: restarting",
        "md5, sha1, sha256 OK",
    ]
    done = await wait_closed(e2e_stack, action["id"], "finished", agent, *expected)
    context = f"{format_action(done)}\n{agent.diagnostics()}"
    assert closed_as(done) == ["success"], context
    assert (tmp_path / "device" / "installed.bin").read_bytes() == software.data
    # A forced download skips the download hook (Upparat's "force"); restart gets "true".
    assert [c.split()[0] for c in agent.calls() if c.split()[0] != "version"] == [
        "install",
        "restart",
        "ready",
    ], context
    assert agent.calls("restart")[0].endswith(" true"), context
    # The new version reaches the registry through configData.
    await e2e_stack.wait_device(
        cid,
        lambda d: d["sw_version"] == "2.0.0" and d["attributes"].get("sw_version") == "2.0.0",
        diagnostics=agent.diagnostics,
    )
    # The downloaded file is cleaned up; the state file remembers the action as done.
    state = agent.state()
    assert state["action"] is None and action["id"] in state["done"], state
    assert state["installed_version"] == "2.0.0"
    assert not (tmp_path / "device" / "downloads" / action["id"]).exists()


async def test_install_hook_that_asks_twice_to_retry_succeeds_the_third_time(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    install = (
        'n=$(cat "$DIR/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$DIR/count"\n'
        'if [ "$n" -le 2 ]; then echo "install $1 $2" >> "$DIR/calls"; '
        'echo "device busy, try $n"; exit 3; fi\n' + INSTALL_HOOK
    )
    agent = agent_for(e2e_stack, agents, tmp_path, hooks={"install": install}, max_retries=3)
    software = await publish(e2e_stack, "2.1.0")
    action = await e2e_stack.create_action(agent.controller_id, software.software_id)
    agent.start()
    done = await wait_closed(
        e2e_stack,
        action["id"],
        "finished",
        agent,
        "install: device busy, try 1",
        "install: device busy, try 2",
        "install: installed 2.1.0",
    )
    context = f"{format_action(done)}\n{agent.diagnostics()}"
    retries = [int(c.split()[2]) for c in agent.calls("install")]
    assert retries == [0, 1, 2], context  # $2: the retry count
    assert closed_as(done) == ["success"], context


async def test_ready_hook_that_never_gets_ready_fails_the_action_after_max_retries(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    ready = 'echo "ready $1 $2" >> "$DIR/calls"\necho "still starting ($2)"\nexit 3\n'
    agent = agent_for(e2e_stack, agents, tmp_path, hooks={"ready": ready}, max_retries=2)
    software = await publish(e2e_stack, "2.2.0")
    action = await e2e_stack.create_action(agent.controller_id, software.software_id)
    agent.start()
    done = await wait_closed(
        e2e_stack, action["id"], "error", agent, "ready hook timed out", "ready: still starting (2)"
    )
    context = f"{format_action(done)}\n{agent.diagnostics()}"
    assert [int(c.split()[2]) for c in agent.calls("ready")] == [0, 1, 2], context
    assert closed_as(done) == ["failure"], context
    # $1 counts seconds from the first call: it never goes back.
    seconds = [int(c.split()[1]) for c in agent.calls("ready")]
    assert seconds == sorted(seconds), context


def whole_download(request: Request) -> bool:
    """An artifact download from its start (no ``Range``)."""
    return (
        request.method == "GET" and "/artifacts/" in request.path and "range" not in request.headers
    )


async def test_a_download_cut_midway_resumes_with_range_and_the_file_is_intact(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    port = httpx.URL(e2e_stack.gateway_url).port
    assert port is not None
    # The first whole artifact download is cut after 300 kB.
    proxy = TcpProxy(("127.0.0.1", port), cut_after=300_000, cut_on=whole_download)
    await proxy.start()
    try:
        agent = agent_for(e2e_stack, agents, tmp_path, url=f"http://127.0.0.1:{proxy.port}")
        software = await publish(e2e_stack, "2.3.0", size=1_000_000)
        action = await e2e_stack.create_action(agent.controller_id, software.software_id)
        agent.start()
        done = await wait_closed(e2e_stack, action["id"], "finished", agent)
    finally:
        await proxy.stop()
    context = f"{format_action(done)}\n{agent.diagnostics()}\nrequests={proxy.requests}"
    assert proxy.cut, context
    downloads = [r for r in proxy.requests if r.method == "GET" and "/artifacts/" in r.path]
    assert len(downloads) == 2, context
    assert "range" not in downloads[0].headers, context
    m = re.fullmatch(r"bytes=(\d+)-", downloads[1].headers.get("range", ""))
    assert m and 0 < int(m.group(1)) < len(software.data), context
    installed = (tmp_path / "device" / "installed.bin").read_bytes()
    assert hashlib.sha256(installed).hexdigest() == software.sha256, context
    assert closed_as(done) == ["success"], context


async def test_cancel_is_accepted_before_install_and_rejected_during_it(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    # The download hook postpones (exit 3) until told; the install hook blocks until told.
    download = (
        'echo "download $1 $2" >> "$DIR/calls"\n'
        'if [ ! -e "$DIR/may-download" ]; then echo "not now"; exit 3; fi\necho go\n'
    )
    install = (
        'touch "$DIR/install-started"\n'
        'while [ ! -e "$DIR/may-finish" ]; do sleep 0.1; done\n' + INSTALL_HOOK
    )
    agent = agent_for(
        e2e_stack,
        agents,
        tmp_path,
        hooks={"download": download, "install": install},
        max_retries=200,
    )
    folder = tmp_path / "device"
    first = await publish(e2e_stack, "3.0.0")
    action = await e2e_stack.create_action(agent.controller_id, first.software_id, "soft")
    agent.start()
    await until(lambda: bool(agent.calls("download")), "download hook called", agent.diagnostics)
    await e2e_stack.cancel_action(action["id"])
    canceled = await wait_closed(
        e2e_stack, action["id"], "canceled", agent, "Cancellation accepted"
    )
    context = f"{format_action(canceled)}\n{agent.diagnostics()}"
    assert not agent.calls("install") and not (folder / "install-started").exists(), context
    assert not (folder / "downloads" / action["id"]).exists(), context

    second = await publish(e2e_stack, "3.1.0")
    action = await e2e_stack.create_action(agent.controller_id, second.software_id, "forced")
    await until(
        lambda: (folder / "install-started").exists(), "install hook started", agent.diagnostics
    )
    await e2e_stack.cancel_action(action["id"])
    rejected = await e2e_stack.wait_action(
        action["id"],
        until=lambda a: "rejected" in executions(a),
        diagnostics=agent.diagnostics,
    )
    context = f"{format_action(rejected)}\n{agent.diagnostics()}"
    assert rejected["active"] is True, context
    assert has_detail(rejected, "Cancellation rejected: installation already started"), context
    (folder / "may-finish").touch()
    done = await wait_closed(e2e_stack, action["id"], "finished", agent)
    assert closed_as(done) == ["success"], format_action(done)
    assert (folder / "installed.bin").read_bytes() == second.data


async def test_agent_killed_between_install_and_ready_finishes_after_it_starts_again(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    # The restart hook stands for a reboot: it never returns before the agent is killed.
    restart = (
        'echo "restart $1 $2 $4" >> "$DIR/calls"\necho $$ > "$DIR/restart.pid"\n'
        "echo rebooting\nexec sleep 60\n"
    )
    agent = agent_for(e2e_stack, agents, tmp_path, hooks={"restart": restart})
    folder = tmp_path / "device"
    software = await publish(e2e_stack, "4.0.0")
    action = await e2e_stack.create_action(agent.controller_id, software.software_id)
    agent.start()
    await until(lambda: (folder / "restart.pid").exists(), "restart hook ran", agent.diagnostics)
    agent.kill9()
    os.kill(int((folder / "restart.pid").read_text()), signal.SIGKILL)
    state = agent.state()
    assert state["action"]["phase"] == "restarting", state
    assert state["action"]["action_id"] == action["id"], state
    running = await e2e_stack.get_action(action["id"])
    assert running["active"] is True and "closed" not in executions(running), running
    assert not agent.calls("ready"), agent.diagnostics()

    agent.start()
    done = await wait_closed(e2e_stack, action["id"], "finished", agent, "ready: all services up")
    context = f"{format_action(done)}\n{agent.diagnostics()}"
    assert closed_as(done) == ["success"], context
    assert len(agent.calls("install")) == 1, context  # not installed again
    assert len(agent.calls("restart")) == 1, context  # no second "reboot"
    assert len(agent.calls("ready")) == 1, context
    await e2e_stack.wait_device(
        agent.controller_id, lambda d: d["sw_version"] == "4.0.0", diagnostics=agent.diagnostics
    )


async def create_action_with(
    stack: E2EStack, controller_id: str, software_id: str, **extra: Any
) -> dict[str, Any]:
    """``POST /devices/{id}/actions`` with extra fields, once rollouts knows the software."""
    await stack.ensure_device(controller_id)
    for _ in range(150):
        r = await stack.client.post(
            f"{stack.rollouts.url}/api/v1/devices/{controller_id}/actions",
            params={"tenant": stack.tenant},
            json={"software_id": software_id, "type": "forced", **extra},
        )
        if r.status_code == 201:
            return dict(r.json())
        assert r.status_code in (404, 503), f"{r.status_code} {r.text}"
        await asyncio.sleep(0.1)
    raise AssertionError("rollouts never learnt of the software")


async def test_closed_maintenance_window_downloads_but_does_not_install(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    agent = agent_for(e2e_stack, agents, tmp_path)
    software = await publish(e2e_stack, "6.0.0")
    now = datetime.now(UTC)
    window = {
        "start": (now + timedelta(hours=2)).strftime("%H:%M"),
        "end": (now + timedelta(hours=3)).strftime("%H:%M"),
    }
    action = await create_action_with(
        e2e_stack, agent.controller_id, software.software_id, maintenance_window=window
    )
    agent.start()
    waiting = await e2e_stack.wait_action(
        action["id"],
        until=lambda a: has_detail(a, "waiting for the maintenance window"),
        diagnostics=agent.diagnostics,
    )
    context = f"{format_action(waiting)}\n{agent.diagnostics()}"
    downloaded = tmp_path / "device" / "downloads" / action["id"] / software.filename
    assert downloaded.read_bytes() == software.data, context
    assert agent.state()["action"]["phase"] == "downloaded", context
    await asyncio.sleep(2.5)  # a few more polls: still nothing installed
    assert not agent.calls("install"), agent.diagnostics()
    # Nothing is installed yet, so a cancel is accepted and the download removed.
    await e2e_stack.cancel_action(action["id"])
    await e2e_stack.wait_action(action["id"], "canceled", diagnostics=agent.diagnostics)
    await until(lambda: not downloaded.exists(), "download removed", agent.diagnostics)
    assert not agent.calls("install"), agent.diagnostics()


async def test_an_action_awaiting_confirmation_is_confirmed_by_the_confirm_hook(
    e2e_stack: E2EStack, agents: Any, tmp_path: Path
) -> None:
    confirm = 'echo "confirm $1 $2" >> "$DIR/calls"\necho "operator agreed"\n'
    agent = agent_for(e2e_stack, agents, tmp_path, hooks={"confirm": confirm})
    software = await publish(e2e_stack, "7.0.0")
    action = await create_action_with(
        e2e_stack, agent.controller_id, software.software_id, confirmation_required=True
    )
    assert action["status"] == "wait_for_confirmation", action
    agent.start()
    done = await wait_closed(e2e_stack, action["id"], "finished", agent, "operator agreed")
    context = f"{format_action(done)}\n{agent.diagnostics()}"
    assert len(agent.calls("confirm")) == 1, context
    assert agent.calls("install"), context
    assert closed_as(done) == ["success"], context


# -- against gooseBit ----------------------------------------------------------------------------


@pytest.mark.timeout(420)  # the first run installs gooseBit into .gaggle/bench-venvs
async def test_agent_installs_an_update_from_goosebit(agents: Any, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import goosebit_peer
        from benchlib import Children
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from gaggle_swu.build import make_rawfile_swu

    try:
        await asyncio.to_thread(goosebit_peer.ensure_venv)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.skip(f"gooseBit {goosebit_peer.GOOSEBIT_VERSION} venv cannot be created: {exc}")

    class FastPollingGoosebit(goosebit_peer.GoosebitPeer):  # type: ignore[misc]
        def _env(self) -> dict[str, str]:
            env: dict[str, str] = super()._env()
            env["GOOSEBIT_POLL_TIME"] = "00:00:01"
            return env

    children = Children()
    peer = FastPollingGoosebit(children, tmp_path / "goosebit", free_port())
    try:
        await peer.start(timeout=120)
        image = tmp_path / "agent-5.0.0.swu"
        image.write_bytes(
            make_rawfile_swu(
                os.urandom(100_000),
                version="5.0.0",
                board=BOARD,
                revisions=[REVISION],
                install_path="/tmp/agent-e2e/payload.bin",
                key=None,
                cert=None,
            )
        )
        async with httpx.AsyncClient(timeout=30) as client:
            software_id = await peer.upload(client, image)
            rollout = await peer.start_rollout(client, software_id, "agent-e2e", timeout=30)
            agent: AgentProcess = agents(
                tmp_path / "device",
                url=peer.base,
                tenant=goosebit_peer.TENANT,
                controller_id=random_id("agent-gb"),
            )
            agent.start()

            def diagnostics() -> str:
                return f"{agent.diagnostics()}\n--- gooseBit log ---\n{tail(peer.log.read_text())}"

            state: Any = None
            for _ in range(600):
                state = await peer.rollout_state(client, rollout)
                if state and (state["success_count"] or state["failure_count"]):
                    break
                peer.check_alive()
                await asyncio.sleep(0.1)
            assert state and state["success_count"] == 1, f"{state}\n{diagnostics()}"
            assert state["failure_count"] == 0, f"{state}\n{diagnostics()}"
            assert (tmp_path / "device" / "installed.bin").read_bytes() == image.read_bytes()
            calls = [c.split()[0] for c in agent.calls() if c.split()[0] != "version"]
            assert calls == ["install", "restart", "ready"], diagnostics()
            # gooseBit lists the device on its new version (configData after the update).
            for _ in range(100):
                if await peer.count_listed(client, agent.controller_id, BOARD, "5.0.0") == 1:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"gooseBit does not list the device on 5.0.0\n{diagnostics()}")
    finally:
        await asyncio.to_thread(children.stop_all)
