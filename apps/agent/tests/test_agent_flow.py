"""The agent's decisions against a fake DDI server (``httpx.MockTransport``) with real hook scripts.

The fake plays one action for controller ``dev``: deploymentBase with ``?c=``, one artifact with
three hashes (Range answered), cancel and confirmation when asked to. The end-to-end tests in
``tests/e2e/test_agent.py`` run the same agent against the real stack and gooseBit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_agent.agent import Agent
from gaggle_agent.config import Config
from gaggle_agent.ddi import DdiClient
from gaggle_agent.state import ActionState, State, StateStore

BASE = "/DEFAULT/controller/v1/dev"
HOST = "http://ddi.test"


class FakeDdi:
    """One device's view of a hawkBit-like server, recording what the device sent."""

    def __init__(self, data: bytes, **deployment: Any) -> None:
        self.data = data
        self.deployment = {"download": "forced", "update": "forced", **deployment}
        self.offer = "deploymentBase"
        self.feedback: list[dict[str, Any]] = []
        self.cancel_feedback: list[dict[str, Any]] = []
        self.confirmations: list[dict[str, Any]] = []
        self.configs: list[dict[str, Any]] = []
        self.downloads: list[str | None] = []
        self.fail_next_final = 0
        self.throttle_next_poll = 0
        self.polls = 0
        self.cancel_at_poll = 0

    def artifact(self) -> dict[str, Any]:
        href = f"{HOST}{BASE}/softwaremodules/3/artifacts/image-2.0.swu"
        return {
            "filename": "image-2.0.swu",
            "size": len(self.data),
            "hashes": {
                "sha1": hashlib.sha1(self.data, usedforsecurity=False).hexdigest(),
                "md5": hashlib.md5(self.data, usedforsecurity=False).hexdigest(),
                "sha256": hashlib.sha256(self.data).hexdigest(),
            },
            "_links": {"download": {"href": href}, "download-http": {"href": href}},
        }

    def section(self) -> dict[str, Any]:
        chunk = {"part": "os", "name": "image", "version": "2.0", "artifacts": [self.artifact()]}
        return {**self.deployment, "chunks": [chunk]}

    def executions(self) -> list[tuple[str, str]]:
        return [
            (f["status"]["execution"], f["status"]["result"]["finished"]) for f in self.feedback
        ]

    def details(self) -> list[str]:
        return [d for f in self.feedback for d in f["status"]["details"]]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else None
        if method == "GET" and path == BASE:
            self.polls += 1
            if self.throttle_next_poll:
                self.throttle_next_poll -= 1
                return httpx.Response(429, headers={"Retry-After": "0"})
            if self.cancel_at_poll and self.polls >= self.cancel_at_poll:
                self.offer, self.cancel_at_poll = "cancelAction", 0
            links: dict[str, Any] = {}
            if self.offer == "deploymentBase":
                links["deploymentBase"] = {"href": f"{HOST}{BASE}/deploymentBase/7?c=5"}
            elif self.offer == "cancelAction":
                links["cancelAction"] = {"href": f"{HOST}{BASE}/cancelAction/7"}
            elif self.offer == "confirmationBase":
                links["confirmationBase"] = {"href": f"{HOST}{BASE}/confirmationBase/7?c=5"}
            return httpx.Response(200, json={"config": {"polling": {}}, "_links": links})
        if method == "GET" and path == f"{BASE}/deploymentBase/7":
            return httpx.Response(200, json={"id": "7", "deployment": self.section()})
        if method == "GET" and path == f"{BASE}/confirmationBase/7":
            return httpx.Response(200, json={"id": "7", "confirmation": self.section()})
        if method == "GET" and path == f"{BASE}/cancelAction/7":
            return httpx.Response(200, json={"id": "7", "cancelAction": {"stopId": "7"}})
        if method == "GET" and "/artifacts/" in path:
            rng = request.headers.get("Range")
            self.downloads.append(rng)
            if rng:
                start = int(rng.removeprefix("bytes=").rstrip("-"))
                return httpx.Response(
                    206,
                    content=self.data[start:],
                    headers={
                        "Content-Range": f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
                    },
                )
            return httpx.Response(200, content=self.data)
        if method == "POST" and path == f"{BASE}/deploymentBase/7/feedback":
            assert body is not None
            if body["status"]["execution"] in ("closed", "downloaded"):
                if self.fail_next_final:
                    self.fail_next_final -= 1
                    return httpx.Response(503)
                self.offer = ""
            self.feedback.append(body)
            return httpx.Response(200)
        if method == "POST" and path == f"{BASE}/cancelAction/7/feedback":
            assert body is not None
            self.cancel_feedback.append(body)
            accepted = body["status"]["execution"] == "closed"
            self.offer = "" if accepted else "deploymentBase"
            return httpx.Response(200)
        if method == "POST" and path == f"{BASE}/confirmationBase/7/feedback":
            assert body is not None
            self.confirmations.append(body)
            if body["confirmation"] == "confirmed":
                self.offer = "deploymentBase"
            return httpx.Response(200)
        if method == "PUT" and path == f"{BASE}/configData":
            assert body is not None
            self.configs.append(body["data"])
            return httpx.Response(200)
        return httpx.Response(404, json={"message": f"no route {method} {path}"})


def hook(folder: Path, name: str, body: str) -> Path:
    path = folder / "hooks" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'#!/bin/sh\nDIR="{folder}"\necho "{name} $2" >> "$DIR/calls"\n{body}')
    path.chmod(0o755)
    return path


def standard_hooks(folder: Path) -> dict[str, Path]:
    (folder / "version").write_text("1.0\n")
    return {
        "version": hook(folder, "version", 'cat "$DIR/version"\n'),
        "install": hook(folder, "install", 'cp "$4" "$DIR/installed"\necho 2.0 > "$DIR/version"\n'),
        "ready": hook(folder, "ready", "echo fine\n"),
    }


def make_agent(
    tmp_path: Path,
    fake: FakeDdi,
    hooks: dict[str, Path] | None = None,
    handler: Callable[[httpx.Request], httpx.Response] | None = None,
    **settings: Any,
) -> Agent:
    config = Config(
        url=HOST,
        tenant="DEFAULT",
        controller_id="dev",
        download_dir=tmp_path / "downloads",
        state_file=tmp_path / "state.json",
        hooks=hooks if hooks is not None else standard_hooks(tmp_path),
        hw_boardname="board",
        hw_revision="1",
        **{"retry_interval": 0.0, "max_retries": 3, "default_sleep": 0.1, **settings},
    )
    http = httpx.Client(transport=httpx.MockTransport(handler or fake))
    return Agent(config, DdiClient(config, http=http, sleep=lambda s: None))


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return [c.split()[0] for c in path.read_text().splitlines()] if path.exists() else []


def test_happy_path_reports_configdata_progress_and_success(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(100_000))
    agent = make_agent(tmp_path, fake)
    agent.cycle()
    assert fake.executions()[-1] == ("closed", "success")
    assert all(e == ("proceeding", "none") for e in fake.executions()[:-1])
    assert "Downloaded image-2.0.swu: md5, sha1, sha256 OK." in fake.details()
    assert (tmp_path / "installed").read_bytes() == fake.data
    assert fake.configs[0] == {"hw_boardname": "board", "hw_revision": "1", "sw_version": "1.0"}
    assert fake.configs[-1]["sw_version"] == "2.0"
    assert fake.feedback[-1]["id"] == 7  # a number, as gooseBit wants
    assert agent.state.action is None and list(agent.state.done) == ["7"]


def test_unavailable_maintenance_window_downloads_but_installs_only_once_available(
    tmp_path: Path,
) -> None:
    fake = FakeDdi(os.urandom(10_000), update="skip", maintenanceWindow="unavailable")
    agent = make_agent(tmp_path, fake)
    for _ in range(3):
        agent.cycle()
    assert "install" not in calls(tmp_path)
    assert agent.state.action is not None and agent.state.action.phase == "downloaded"
    assert fake.details().count("Downloaded; waiting for the maintenance window.") == 1
    assert fake.downloads == [None]
    fake.deployment.update(update="forced", maintenanceWindow="available")
    agent.cycle()
    assert calls(tmp_path).count("install") == 1
    assert fake.executions()[-1] == ("closed", "success")
    assert fake.downloads == [None]  # not downloaded again


def test_update_skip_without_window_reports_downloaded(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000), update="skip")
    agent = make_agent(tmp_path, fake)
    agent.cycle()
    assert fake.executions()[-1] == ("downloaded", "success")
    assert "install" not in calls(tmp_path)


def test_download_skip_waits_without_downloading(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000), download="skip", update="skip")
    agent = make_agent(tmp_path, fake)
    agent.cycle()
    agent.cycle()
    assert fake.downloads == []
    assert agent.state.action is not None and agent.state.action.phase == "downloading"


def test_version_already_installed_succeeds_without_download(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    hooks = standard_hooks(tmp_path)
    (tmp_path / "version").write_text("2.0\n")
    make_agent(tmp_path, fake, hooks).cycle()
    assert fake.downloads == []
    assert fake.executions() == [("closed", "success")]
    assert "Version 2.0 is already installed." in fake.details()


def test_checksum_mismatch_fails_and_nothing_is_installed(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(5000))
    good = fake.artifact()

    def tampered() -> dict[str, Any]:
        art = dict(good)
        art["hashes"] = {**good["hashes"], "sha1": "0" * 40}
        return art

    fake.artifact = tampered  # type: ignore[method-assign]
    make_agent(tmp_path, fake).cycle()
    assert fake.executions()[-1] == ("closed", "failure")
    assert any("Checksum mismatch (sha1)" in d for d in fake.details())
    assert "install" not in calls(tmp_path)


def test_a_partial_download_left_by_an_earlier_run_is_resumed_with_range(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(50_000))
    agent = make_agent(tmp_path, fake)
    part = tmp_path / "downloads" / "7" / "image-2.0.swu.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(fake.data[:12_345])
    agent.state.action = ActionState("7", f"{HOST}{BASE}/deploymentBase/7", "2.0", "downloading")
    agent.cycle()
    assert fake.downloads == ["bytes=12345-"]
    assert (tmp_path / "installed").read_bytes() == fake.data


def test_cancel_is_accepted_while_the_download_hook_postpones(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000), download="attempt")
    fake.cancel_at_poll = 2
    hooks = standard_hooks(tmp_path)
    hooks["download"] = hook(tmp_path, "download", "echo later\nexit 3\n")
    agent = make_agent(tmp_path, fake, hooks, max_retries=1000, retry_interval=0.15)
    agent.cycle()
    assert [
        (f["status"]["execution"], f["status"]["result"]["finished"]) for f in fake.cancel_feedback
    ] == [("closed", "success")]
    assert fake.executions() and ("closed", "failure") not in fake.executions()
    assert "download: later" in fake.details()
    assert "install" not in calls(tmp_path) and fake.downloads == []
    assert agent.state.action is None and "7" in agent.state.done


def test_cancel_is_accepted_while_waiting_for_the_maintenance_window(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    fake.offer = "cancelAction"
    agent = make_agent(tmp_path, fake)
    agent.state.action = ActionState("7", f"{HOST}{BASE}/deploymentBase/7", "2.0", "downloaded")
    (tmp_path / "downloads" / "7").mkdir(parents=True)
    agent.cycle()
    assert [f["status"]["execution"] for f in fake.cancel_feedback] == ["closed"]
    assert agent.state.action is None and not (tmp_path / "downloads" / "7").exists()


def test_cancel_is_rejected_once_installing(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    fake.offer = "cancelAction"
    agent = make_agent(tmp_path, fake)
    agent.state.action = ActionState("7", f"{HOST}{BASE}/deploymentBase/7", "2.0", "installing")
    agent.resumed = True  # as if this process had started the installation
    agent.cycle()
    assert [f["status"]["execution"] for f in fake.cancel_feedback] == ["rejected"]
    assert agent.state.action is not None and agent.state.action.phase == "installing"


def test_after_a_restart_a_wrong_version_fails_the_action(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    hooks = standard_hooks(tmp_path)  # version file says 1.0: the new image did not boot
    StateStore(tmp_path / "state.json").save(
        State(action=ActionState("7", f"{HOST}{BASE}/deploymentBase/7", "2.0", "restarting"))
    )
    make_agent(tmp_path, fake, hooks).cycle()
    assert fake.feedback[-1]["status"]["result"]["finished"] == "failure"
    assert "Version mismatch: expected 2.0, running 1.0." in fake.details()
    assert "ready" not in calls(tmp_path)


def test_after_a_restart_the_right_version_and_ready_succeed_without_reinstalling(
    tmp_path: Path,
) -> None:
    fake = FakeDdi(os.urandom(1000))
    hooks = standard_hooks(tmp_path)
    (tmp_path / "version").write_text("2.0\n")
    StateStore(tmp_path / "state.json").save(
        State(action=ActionState("7", f"{HOST}{BASE}/deploymentBase/7", "2.0", "installing"))
    )
    make_agent(tmp_path, fake, hooks).cycle()
    assert fake.executions()[-1] == ("closed", "success")
    assert "install" not in calls(tmp_path) and "ready" in calls(tmp_path)


def test_a_final_report_not_delivered_is_sent_at_the_next_cycle(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    fake.fail_next_final = 1
    agent = make_agent(tmp_path, fake)
    agent.cycle()
    assert fake.executions()[-1] != ("closed", "success")
    assert len(StateStore(tmp_path / "state.json").load().pending) == 1
    agent.cycle()
    assert fake.executions()[-1] == ("closed", "success")
    assert agent.state.pending == []
    assert calls(tmp_path).count("install") == 1


def test_a_429_is_waited_out_and_the_poll_sent_again(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    fake.throttle_next_poll = 2
    make_agent(tmp_path, fake).cycle()
    assert fake.polls >= 3
    assert fake.executions()[-1] == ("closed", "success")


def test_without_confirm_hook_the_agent_confirms(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    fake.offer = "confirmationBase"
    agent = make_agent(tmp_path, fake)
    agent.cycle()
    assert [c["confirmation"] for c in fake.confirmations] == ["confirmed"]
    agent.cycle()
    assert fake.executions()[-1] == ("closed", "success")


@pytest.mark.parametrize(
    ("script", "answers"),
    [
        ("echo yes\n", ["confirmed"]),
        ('echo "battery low"\nexit 1\n', ["denied"]),
        ('if [ "$2" -lt 2 ]; then echo wait; exit 3; fi\necho ok\n', ["confirmed"]),
    ],
)
def test_the_confirm_hook_confirms_denies_or_postpones(
    tmp_path: Path, script: str, answers: list[str]
) -> None:
    fake = FakeDdi(os.urandom(1000))
    fake.offer = "confirmationBase"
    hooks = standard_hooks(tmp_path)
    hooks["confirm"] = hook(tmp_path, "confirm", script)
    agent = make_agent(tmp_path, fake, hooks)
    for _ in range(3):
        if fake.confirmations:
            break
        agent.cycle()
    assert [c["confirmation"] for c in fake.confirmations] == answers
    assert calls(tmp_path).count("confirm") == (3 if "exit 3" in script else 1)
    if answers == ["denied"]:
        assert "confirm: battery low" in fake.confirmations[0]["details"]


def test_an_artifact_without_download_link_fails_the_action(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    good = fake.artifact()
    fake.artifact = lambda: {**good, "_links": {}}  # type: ignore[method-assign]
    make_agent(tmp_path, fake).cycle()
    assert fake.executions()[-1] == ("closed", "failure")
    assert "malformed deploymentBase: an artifact has no download link" in fake.details()


def test_an_action_no_longer_offered_is_dropped_but_taken_up_when_offered_again(
    tmp_path: Path,
) -> None:
    fake = FakeDdi(os.urandom(1000), update="skip", maintenanceWindow="unavailable")
    agent = make_agent(tmp_path, fake)
    agent.cycle()
    assert agent.state.action is not None and agent.state.action.phase == "downloaded"
    fake.offer = ""
    agent.cycle()
    assert agent.state.action is None and "7" not in agent.state.done
    assert not (tmp_path / "downloads" / "7").exists()
    fake.offer = "deploymentBase"
    fake.deployment.update(update="forced", maintenanceWindow="available")
    agent.cycle()
    assert fake.executions()[-1] == ("closed", "success")


def test_a_refused_configdata_does_not_hold_up_the_update(tmp_path: Path) -> None:
    fake = FakeDdi(os.urandom(1000))
    inner = fake.__call__

    def refuse_config(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(400, json={"message": "no"})
        return inner(request)

    agent = make_agent(tmp_path, fake, handler=refuse_config)
    agent.cycle()
    assert fake.executions()[-1] == ("closed", "success")
    assert agent.config_due  # sent again at the next cycle
