"""The agent's loop: poll, report, and take one action through its phases with the hooks.

One cycle polls the base resource and does what it offers: configData, cancelAction,
confirmationBase or deploymentBase. An action goes ``new`` → ``downloading`` → ``downloaded`` →
``installing`` → ``restarting`` → ``verifying`` → closed, each phase saved in the state file
before its work starts. While a hook runs, a download goes on or a retry is waited out, the agent
keeps polling at the server's interval, so a cancel is answered at once: accepted (closed/success)
while nothing is installed, rejected once ``installing`` began.

After a start of the agent (its own restart or the device's reboot) an action found in
``installing``, ``restarting`` or ``verifying`` is finished first: the ``version`` hook must
report the action's version and the ``ready`` hook must succeed, as in Upparat.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from gaggle_agent.config import Config
from gaggle_agent.ddi import (
    Artifact,
    DdiClient,
    DdiError,
    DownloadError,
    feedback_body,
    feedback_url,
    parse_sleep,
)
from gaggle_agent.hooks import HookResult, run_hook
from gaggle_agent.state import ActionState, HookClock, PendingReport, State, StateStore

__all__ = ["Agent", "Stopping"]

log = logging.getLogger(__name__)

MAX_DETAILS = 50
"""hawkBit's quota of detail lines per report."""


class Stopping(Exception):
    """The agent was asked to stop (SIGTERM, Ctrl-C)."""


class ActionFailed(Exception):
    """The action cannot succeed; ``details`` go into the closed/failure report."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("; ".join(details))
        self.details = details


class ActionCanceled(Exception):
    """The server canceled the action and the agent accepted."""


class Agent:
    """One device's agent: a DDI client, its hooks and its state file."""

    def __init__(
        self,
        config: Config,
        client: DdiClient | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client or DdiClient(config)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.store = StateStore(config.state_file)
        self.state: State = self.store.load()
        self.sleep = config.default_sleep
        self.config_due = True  # SWUpdate reports its attributes once after every start
        self.resumed = False
        self.confirm_clocks: dict[str, HookClock] = {}
        self.last_poll = 0.0
        """Monotonic time of the last base poll."""
        self.last_output: dict[str, list[str]] = {}
        """A hook's last output per action, so a hook retried with the same answer is reported
        once, not at every retry."""

    # -- the loop --------------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> None:
        """Poll until stopped (or one cycle with ``once``)."""
        log.info("agent start base=%s state=%s", self.config.base_url, self.config.state_file)
        try:
            while not self.stop.is_set():
                try:
                    wait = self.cycle()
                except DdiError as exc:
                    log.warning("cycle failed error=%s", exc)
                    wait = min(self.sleep, self.config.default_sleep)
                except (OSError, ValueError, TypeError, KeyError):
                    # A daemon outlives a bad answer or a full disk: log it, try again later.
                    log.exception("cycle failed unexpectedly")
                    wait = self.config.default_sleep
                if once:
                    return
                self.stop.wait(wait)
        except Stopping:
            log.info("agent stopping")
        finally:
            self.client.close()

    def cycle(self) -> float:
        """One poll and what it offers; returns the seconds to the next poll."""
        self._flush_pending()
        if not self.resumed:
            self.resumed = True
            self._resume()
        links = self._poll()
        self._maybe_send_config(links)
        try:
            if href := _href(links, "cancelAction"):
                self._answer_cancel(href)
            elif href := _href(links, "confirmationBase"):
                self._answer_confirmation(href)
            elif href := _href(links, "deploymentBase"):
                self._deploy(href)
            elif self.state.action is not None and self.state.action.cancellable:
                # No longer offered (canceled while we were away, or closed by the operator).
                log.info("action withdrawn action=%s", self.state.action.action_id)
                self._drop_action(done=False)
        except ActionCanceled:
            pass
        self._maybe_send_config({})
        return self.sleep

    # -- configData ------------------------------------------------------------------------------

    def attributes(self) -> dict[str, str]:
        """What configData reports: board, revision, software version and the extra attributes."""
        data = dict(self.config.attributes)
        board = self.config.hw_boardname or self._hook_value("board")
        revision = self.config.hw_revision or self._hook_value("revision")
        version = self.current_version()
        if version is None:
            version = self.state.installed_version or self.config.sw_version
        for key, value in (
            ("hw_boardname", board),
            ("hw_revision", revision),
            ("sw_version", version),
        ):
            if value:
                data[key] = value
        return data

    def current_version(self) -> str | None:
        """The ``version`` hook's answer (its last stdout line), None without the hook."""
        if "version" not in self.config.hooks:
            return None
        result = self._run("version", [], None)
        if not result.ok:
            log.warning("version hook failed: %s", result.describe())
            return None
        return result.result.strip() or None

    def _maybe_send_config(self, links: dict[str, Any]) -> None:
        href = _href(links, "configData")
        if href:
            if href != self.state.config_href:
                self.state.config_href = href
                self._save()
            self.config_due = True
        if not self.config_due:
            return
        data = self.attributes()
        if not data:
            return
        try:
            self.client.send_config(self.state.config_href, data)
        except DdiError as exc:
            # Not fatal: the update must not wait for it. Sent again at the next cycle.
            log.warning("configData not accepted error=%s", exc)
            return
        self.config_due = False
        log.info("configData sent data=%s", data)

    # -- cancel and confirmation -----------------------------------------------------------------

    def _answer_cancel(self, href: str) -> None:
        doc = self.client.get_json(href)
        stop_id = str((doc.get("cancelAction") or {}).get("stopId") or doc.get("id") or "")
        action = self.state.action
        url = feedback_url(href)
        if action is not None and action.action_id == stop_id and not action.cancellable:
            log.info("cancel rejected action=%s phase=%s", stop_id, action.phase)
            self.client.post(
                url,
                feedback_body(
                    stop_id,
                    "rejected",
                    "none",
                    [f"Cancellation rejected: installation already started ({action.phase})."],
                ),
            )
            return
        self.client.post(
            url,
            feedback_body(
                stop_id or "0",
                "closed",
                "success",
                ["Cancellation accepted: the update was not installed."],
            ),
        )
        log.info("cancel accepted action=%s", stop_id)
        if action is not None and action.action_id == stop_id:
            self._drop_action(done=True)
            raise ActionCanceled
        self.state.mark_done(stop_id, self.clock())
        self._save()

    def _answer_confirmation(self, href: str) -> None:
        doc = self.client.get_json(href)
        action_id = str(doc.get("id") or "")
        if "confirm" not in self.config.hooks:
            self.client.post(
                feedback_url(href),
                {
                    "confirmation": "confirmed",
                    "code": 200,
                    "details": ["Confirmed by the agent."],
                },
            )
            log.info("action confirmed action=%s", action_id)
            return
        section = doc.get("confirmation") or {}
        meta = _meta(action_id, section)
        clock = self.confirm_clocks.setdefault(action_id, HookClock(self.clock()))
        result = run_hook(
            "confirm",
            self.config.hooks["confirm"],
            [_seconds(self.clock() - clock.first), str(clock.retries), json.dumps(meta)],
            timeout=self.config.hook_timeout,
        )
        if result.retry and clock.retries < self.config.max_retries:
            clock.retries += 1
            log.info("confirmation postponed action=%s retry=%s", action_id, clock.retries)
            return
        answer = "confirmed" if result.ok else "denied"
        details = [f"confirm: {line}" for line in result.lines][-(MAX_DETAILS - 1) :]
        details.append(f"{answer.capitalize()} by the confirm hook ({result.describe()}).")
        self.client.post(
            feedback_url(href),
            {
                "confirmation": answer,
                "code": 200 if result.ok else result.exit_code,
                "details": details,
            },
        )
        self.confirm_clocks.pop(action_id, None)
        log.info("confirmation answered action=%s answer=%s", action_id, answer)

    # -- an action -------------------------------------------------------------------------------

    def _deploy(self, href: str) -> None:
        doc = self.client.get_json(href)
        action_id = str(doc.get("id") or "")
        deployment = doc.get("deployment")
        if not action_id or not isinstance(deployment, dict):
            raise DdiError(f"malformed deploymentBase from {href}")
        if self.state.recently_done(action_id, self.clock()) and (
            self.state.action is None or self.state.action.action_id != action_id
        ):
            log.debug("finished action offered again action=%s", action_id)
            return
        action = self.state.action
        if action is None or action.action_id != action_id:
            if action is not None:
                log.info("replacing action old=%s new=%s", action.action_id, action_id)
                self._drop_action(done=False)
            chunks = deployment.get("chunks") or []
            version = next(
                (
                    c["version"]
                    for c in chunks
                    if isinstance(c, dict) and isinstance(c.get("version"), str)
                ),
                "",
            )
            action = ActionState(action_id, href, version, meta=_meta(action_id, deployment))
            self.state.action = action
            self._save()
            log.info("new action action=%s version=%s", action_id, version)
        else:
            action.href = href
            action.meta = _meta(action_id, deployment)
        self._work(action, deployment)

    def _resume(self) -> None:
        """Finish an action that got past ``installing`` before this start."""
        action = self.state.action
        if action is None or action.cancellable:
            return
        log.info("resuming action=%s phase=%s", action.action_id, action.phase)
        if action.phase == "restarting":
            self._set_phase(action, "verifying")  # the restart happened
        elif action.phase == "installing":
            running = self.current_version()
            if running is not None and running == action.version:
                self._set_phase(action, "verifying")
        with contextlib.suppress(ActionCanceled):
            self._work(action, None)

    def _work(self, action: ActionState, deployment: dict[str, Any] | None) -> None:
        try:
            self._advance(action, deployment)
        except ActionFailed as failed:
            self._finish(action, success=False, details=failed.details)
        except DownloadError as exc:
            self._finish(action, success=False, details=[str(exc)])

    def _advance(self, action: ActionState, deployment: dict[str, Any] | None) -> None:
        if deployment is None and action.cancellable:
            return  # the early phases go on when the server offers the action again
        spec: dict[str, Any] = deployment or {}
        if action.phase == "new":
            running = self.current_version()
            if running is not None and running == action.version:
                self._finish(
                    action, success=True, details=[f"Version {running} is already installed."]
                )
                return
            self._report(action, [f"Update to {action.version} received."])
            self._set_phase(action, "downloading")
        if action.phase == "downloading":
            if spec.get("download") == "skip":
                log.info("download skipped by the server action=%s", action.action_id)
                return
            if spec.get("download") != "forced":
                self._hook("download", action)  # a forced download skips it, as Upparat's force
            self._download(action, spec)
            self._set_phase(action, "downloaded")
        if action.phase == "downloaded":
            if spec.get("update") == "skip":
                if spec.get("maintenanceWindow") == "unavailable":
                    self._note(action, "window", "Downloaded; waiting for the maintenance window.")
                    return
                self._finish(
                    action,
                    success=True,
                    execution="downloaded",
                    details=["Downloaded; the server asked not to install it."],
                )
                return
            action.meta["update"] = spec.get("update")
            self._set_phase(action, "installing")
        if action.phase == "installing":
            self._hook("install", action, action.files)
            self._report(action, [f"Installed {action.version}."])
            self._set_phase(action, "restarting")
            if "restart" in self.config.hooks:
                forced = "true" if action.meta.get("update") == "forced" else "false"
                self._hook("restart", action, [forced])
            self._set_phase(action, "verifying")
        if action.phase in ("restarting", "verifying"):
            self._set_phase(action, "verifying")
            self._verify(action)

    def _verify(self, action: ActionState) -> None:
        details: list[str] = []
        if "version" in self.config.hooks:
            result = self._hook("version", action)
            running = result.result.strip()
            if running != action.version:
                raise ActionFailed(
                    [f"Version mismatch: expected {action.version}, running {running or '?'}."]
                )
            details.append(f"version: {running}")
        if "ready" in self.config.hooks:
            result = self._hook("ready", action)
            details.append(f"ready: {result.result}")
        self._finish(
            action, success=True, details=[f"Update to {action.version} installed.", *details]
        )

    def _download(self, action: ActionState, deployment: dict[str, Any]) -> None:
        try:
            artifacts = [
                Artifact.from_json(a, self.client.prefer_http)
                for chunk in deployment.get("chunks") or []
                if isinstance(chunk, dict)
                for a in chunk.get("artifacts") or []
            ]
        except DdiError as exc:
            raise ActionFailed([str(exc)]) from exc
        if not artifacts:
            raise ActionFailed(["The deployment has no artifact."])
        folder = self.config.download_dir / action.action_id
        files: list[str] = []
        for i, artifact in enumerate(artifacts):
            dest = folder / artifact.filename
            self._report(
                action,
                [f"Downloading {artifact.filename} ({artifact.size} bytes)."],
                (i, len(artifacts)),
            )
            last_tick = time.monotonic()

            def on_bytes(total: int) -> None:
                nonlocal last_tick
                if time.monotonic() - last_tick >= self.sleep:
                    last_tick = time.monotonic()
                    self._tick(action)

            checked = self.client.download(
                artifact,
                dest,
                attempts=self.config.download_attempts,
                between=lambda: self._wait(action, self.config.retry_interval),
                on_bytes=on_bytes,
            )
            files.append(str(dest))
            names = ", ".join(sorted(checked)) or "no hash given"
            self._report(
                action, [f"Downloaded {artifact.filename}: {names} OK."], (i + 1, len(artifacts))
            )
        action.files = files

    def _finish(
        self,
        action: ActionState,
        *,
        success: bool,
        details: list[str],
        execution: str = "closed",
    ) -> None:
        finished = "success" if success else "failure"
        body = feedback_body(action.action_id, execution, finished, details[-MAX_DETAILS:], (1, 1))
        self.state.pending.append(PendingReport(feedback_url(action.href), body))
        if success and execution == "closed":
            self.state.installed_version = action.version
        self.state.mark_done(action.action_id, self.clock())
        self._remove_files(action)
        self.state.action = None
        self._save()
        self.config_due = True
        log.info(
            "action %s action=%s details=%s",
            "succeeded" if success else "failed",
            action.action_id,
            details,
        )
        self._flush_pending()

    def _flush_pending(self) -> None:
        while self.state.pending:
            report = self.state.pending[0]
            try:
                self.client.post(report.url, report.body)
            except DdiError as exc:
                if exc.status not in (400, 404, 405, 409, 410, 422):
                    log.warning("final report not delivered, kept error=%s", exc)
                    return
                log.warning("final report refused, dropped error=%s", exc)
            self.state.pending.pop(0)
            self._save()

    def _drop_action(self, *, done: bool) -> None:
        """Forget the current action and its download; ``done``: never take it up again."""
        action = self.state.action
        if action is None:
            return
        if done:
            self.state.mark_done(action.action_id, self.clock())
        self._remove_files(action)
        self.state.action = None
        self._save()

    def _remove_files(self, action: ActionState) -> None:
        shutil.rmtree(self.config.download_dir / action.action_id, ignore_errors=True)

    # -- hooks -----------------------------------------------------------------------------------

    def _hook(self, name: str, action: ActionState, extra: list[str] | None = None) -> HookResult:
        """Run a hook for ``action`` until it exits other than 3; raise ActionFailed unless 0.

        A missing optional hook counts as success with no output.
        """
        if name not in self.config.hooks:
            return HookResult(name, 0)
        clock = action.clocks.get(name)
        if clock is None:
            clock = action.clocks[name] = HookClock(self.clock())
            self._save()
        while True:
            result = self._run(name, extra or [], action)
            if result.ok:
                return result
            if not result.retry:
                raise ActionFailed(
                    [
                        *(f"{name}: {line}" for line in result.lines[-(MAX_DETAILS - 1) :]),
                        f"{result.describe()}.",
                    ]
                )
            if clock.retries >= self.config.max_retries:
                raise ActionFailed(
                    [
                        f"{name} hook timed out: still asking to retry after "
                        f"{clock.retries} retries.",
                        *(f"{name}: {line}" for line in result.lines[-(MAX_DETAILS - 2) :]),
                    ]
                )
            clock.retries += 1
            self._save()
            log.info(
                "hook retry later name=%s retry=%s in_s=%s",
                name,
                clock.retries,
                self.config.retry_interval,
            )
            self._wait(action, self.config.retry_interval)

    def _run(self, name: str, extra: list[str], action: ActionState | None) -> HookResult:
        """One run of a hook; with an action, its output goes into reports as it comes."""
        path = self.config.hooks[name]
        if action is None:
            return run_hook(name, path, ["0", "0", "{}", *extra], timeout=self.config.hook_timeout)
        clock = action.clocks.get(name) or HookClock(self.clock())
        args = [
            _seconds(self.clock() - clock.first),
            str(clock.retries),
            json.dumps(action.meta),
            *extra,
        ]
        pending: list[str] = []
        lock = threading.Lock()

        def on_line(line: str) -> None:
            with lock:
                pending.append(f"{name}: {line}")

        flushed = False
        key = f"{action.action_id}:{name}"

        def flush(final: bool = False) -> None:
            nonlocal flushed
            with lock:
                lines, pending[:] = list(pending), []
            if final and not flushed:
                if lines == self.last_output.get(key):
                    return  # the same answer as last time
                self.last_output[key] = lines
            flushed = flushed or bool(lines)
            for i in range(0, len(lines), MAX_DETAILS):
                self._report(action, lines[i : i + MAX_DETAILS])

        def meanwhile() -> None:
            flush()
            if time.monotonic() - self.last_poll >= self.sleep:
                self._tick(action)

        result = run_hook(
            name,
            path,
            args,
            timeout=self.config.hook_timeout,
            on_line=on_line,
            every=self.sleep,
            while_running=meanwhile,
        )
        flush(final=True)
        return result

    def _hook_value(self, name: str) -> str | None:
        if name not in self.config.hooks:
            return None
        result = self._run(name, [], None)
        if not result.ok:
            return None
        return result.result.strip() or None

    # -- waiting, meanwhile ----------------------------------------------------------------------

    def _wait(self, action: ActionState, seconds: float) -> None:
        """Wait ``seconds``, polling at the server's interval meanwhile (cancel, configData)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            due = self.last_poll + self.sleep - time.monotonic()
            if self.stop.wait(max(0.0, min(left, due))):
                raise Stopping
            if time.monotonic() - self.last_poll >= self.sleep:
                self._tick(action)

    def _poll(self) -> dict[str, Any]:
        """The base poll; keeps the server's interval; returns the links."""
        self.last_poll = time.monotonic()
        base = self.client.poll()
        polling = (base.get("config") or {}).get("polling") or {}
        self.sleep = parse_sleep(polling.get("sleep"), self.config.default_sleep)
        links = base.get("_links") or {}
        return links if isinstance(links, dict) else {}

    def _tick(self, action: ActionState) -> None:
        """A poll in the middle of an action: answers a cancel, sends configData if asked."""
        if self.stop.is_set():
            raise Stopping
        try:
            links = self._poll()
            if href := _href(links, "cancelAction"):
                self._answer_cancel(href)
            self._maybe_send_config(links)
        except DdiError as exc:
            log.warning("poll during action failed action=%s error=%s", action.action_id, exc)

    # -- reports and state -----------------------------------------------------------------------

    def _report(
        self, action: ActionState, details: list[str], progress: tuple[int, int] = (0, 0)
    ) -> None:
        """A ``proceeding`` report; not delivered is not fatal (the final one is kept)."""
        try:
            self.client.post(
                feedback_url(action.href),
                feedback_body(
                    action.action_id, "proceeding", "none", details[:MAX_DETAILS], progress
                ),
            )
        except DdiError as exc:
            log.warning("progress report not delivered action=%s error=%s", action.action_id, exc)

    def _note(self, action: ActionState, key: str, detail: str) -> None:
        if key not in action.noted:
            self._report(action, [detail])
            action.noted.append(key)
            self._save()

    def _set_phase(self, action: ActionState, phase: str) -> None:
        if action.phase != phase:
            log.info("phase action=%s %s -> %s", action.action_id, action.phase, phase)
            action.phase = phase
            self._save()

    def _save(self) -> None:
        self.store.save(self.state)


def _href(links: dict[str, Any], rel: str) -> str | None:
    link = links.get(rel)
    if isinstance(link, dict) and isinstance(link.get("href"), str):
        return str(link["href"])
    return None


def _meta(action_id: str, section: dict[str, Any]) -> dict[str, Any]:
    """The hooks' ``$3``: the action id and what the server said about the deployment."""
    chunks = [c for c in section.get("chunks") or [] if isinstance(c, dict)]
    return {
        "action_id": action_id,
        "version": next((c.get("version") for c in chunks if c.get("version")), None),
        "download": section.get("download"),
        "update": section.get("update"),
        "maintenanceWindow": section.get("maintenanceWindow"),
        "chunks": [
            {
                "part": c.get("part"),
                "name": c.get("name"),
                "version": c.get("version"),
                "artifacts": [
                    a.get("filename") for a in c.get("artifacts") or [] if isinstance(a, dict)
                ],
            }
            for c in chunks
        ],
    }


def _seconds(value: float) -> str:
    return str(max(0, int(value)))
