"""One virtual DDI device: a small state machine driven by the fleet's scheduler.

A device acts in *steps*. :meth:`Device.step` does what the device would do now (a base poll
and whatever the answer asks for: configData, deploymentBase with download, feedback,
cancelAction, confirmationBase) and returns how long to wait before the next step, or ``None``
when it is done (``poll="once"``). Waiting is the scheduler's business, so a device costs no
task and no future while it sleeps.

It follows the links the server returns and never builds a URL itself, except for the feedback
URLs that hawkBit's spec defines relative to them: ``{deploymentBase href without query}/feedback``
and ``{cancelAction href}/feedback``, as SWUpdate and hawkbit-rs do. The requests mirror what
SWUpdate 2022.12 sends (client-traffic.md):

* configData: ``PUT`` with ``{"id": "", "time", "status": closed/success, "data": {hw_boardname,
  hw_revision, sw_version}, "mode": "merge"}``, whenever the poll offers the ``configData`` link,
  and once after a successful update (after the poll that follows the final report) to the
  configData URL the server gave this device before (as SWUpdate reports its new version after
  the reboot);
* feedback: ``proceeding`` with ``progress {cnt: 0, of: n}`` before the download, ``proceeding``
  ``{cnt: n, of: n}`` "All Chunks Installed." after the installation, then ``closed`` with
  ``success`` or ``failure``; ``id`` is a number when the action id is one (gooseBit insists);
* cancel: ``closed``/``success`` to ``{cancelAction href}/feedback`` (SWUpdate accepts every
  cancel).

Once its final report is answered the device polls again at once and then sends configData, as
SWUpdate does when it starts again after an update. After a successful installation its
``sw_version`` is the chunk's ``version`` (or, without one, the version in the artifact's file
name), whatever the server answered to its final report: it runs what it installed. A final
report that got no answer, a 5xx or a 429 is sent again at the next step.

A 429 is back-pressure, not an error: the device waits as long as its ``Retry-After`` says (1 s
without one) and then sends that request again; the step ends there, so the wait costs a timer
and no connection. A poll answer's work interrupted by a 429 (configData, deploymentBase,
feedback, download) is taken up again where it stopped, without polling (or reading an
deploymentBase already read) again first, as
SWUpdate and rauc-hawkbit-updater retry a request answered 429 (other-clients.md).

A device remembers the actions whose final report or cancel the server answered 200; a later poll
that still offers one of them is counted (``FleetStats.reoffered``), and not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

from gaggle_sim.config import HEAD_BYTES
from gaggle_sim.http import HttpClient, HttpError, Request, Response

if TYPE_CHECKING:
    from gaggle_sim.config import FleetConfig
    from gaggle_sim.stats import FleetStats

__all__ = ["Behaviour", "Device", "DeviceContext", "Report", "version_from_filename"]

_VERSION_IN_NAME = re.compile(r"(\d+(?:\.\d+)+(?:[-+~][0-9A-Za-z.\-+~]*)?)")
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+\Z")
_SLEEP_CACHE: dict[str, float] = {}
_JSON = ("Content-Type", "application/json")

DEFAULT_RETRY_AFTER = 1.0
"""Seconds a device waits after a 429 without a usable ``Retry-After``."""
MAX_RETRY_AFTER = 600.0
"""The longest ``Retry-After`` a device obeys (a longer one is cut to this)."""


@dataclass(frozen=True)
class Behaviour:
    """How one device departs from the well-behaved norm."""

    fails: bool = False
    slow: bool = False
    offline: bool = False
    cut: bool = False
    offline_at: float = 0.0
    """Seconds after the start at which an offline device leaves."""
    silent: bool = False
    """Goes silent after a successful install: reports success, then never polls again (it did
    not come back from its reboot)."""
    falls_back: bool = False
    """Falls back to its old version after the reboot (A/B): reports success, then reports the
    version it ran before in its next configData, and keeps running it."""


NORMAL = Behaviour()


@dataclass(frozen=True, slots=True)
class Report:
    """A report the server answered 200, as the device sent it.

    Attributes:
        kind: ``configData``, ``feedback`` (deploymentBase feedback, the final one included),
            ``cancel`` (cancelAction feedback) or ``confirmation``.
        action_id: the action it is about; None for configData.
        body: the JSON body sent.
    """

    kind: str
    action_id: str | None
    body: dict[str, Any]


class DeviceContext:
    """What every device of a fleet shares: the HTTP client, the counters, the settings."""

    def __init__(
        self,
        config: FleetConfig,
        client: HttpClient,
        stats: FleetStats,
        rng_random: Callable[[], float],
        started_at: float,
    ) -> None:
        self.config = config
        self.client = client
        self.stats = stats
        self.random = rng_random
        """``random.random`` of the fleet's seeded generator."""
        self.started_at = started_at
        """Loop time of the start."""
        self.loop = asyncio.get_running_loop()
        self.mode = config.poll_mode
        self.fixed = config.poll_interval if self.mode == "fixed" else 0.0
        self.jitter = config.jitter
        self.prefer_http = config.base_url.startswith("http://")

    def spread(self, seconds: float) -> float:
        """``seconds`` with the configured jitter applied."""
        if self.jitter and seconds > 0:
            return seconds * (1.0 + self.jitter * (2.0 * self.random() - 1.0))
        return seconds

    def interval(self, server_sleep: float) -> float:
        """Time to the next poll after a successful one."""
        if self.mode == "fast":
            return 0.0
        if self.mode == "fixed":
            return self.spread(self.fixed)
        return self.spread(server_sleep)

    def stretch(self, seconds: float) -> float:
        """``seconds`` lengthened by up to the configured jitter, never shortened.

        Devices told to come back after the same ``Retry-After`` spread out a little instead
        of returning in one burst, and none of them comes back early.
        """
        if self.jitter and seconds > 0:
            return seconds * (1.0 + self.jitter * self.random())
        return seconds

    def retry_after(self, last_sleep: float) -> float:
        """Time to the next attempt after a failed poll (bounded, never a busy loop)."""
        if self.mode == "fast":
            return 0.1
        if self.mode == "once":
            return self.spread(0.5)
        base = self.fixed if self.mode == "fixed" else last_sleep
        return self.spread(min(max(base, 0.1), 10.0))


def parse_sleep(value: Any) -> float:
    """``HH:MM:SS`` in seconds (60 when absent or malformed)."""
    if not isinstance(value, str):
        return 60.0
    cached = _SLEEP_CACHE.get(value)
    if cached is not None:
        return cached
    try:
        hours, minutes, seconds = (int(p) for p in value.split(":"))
        result = float(hours * 3600 + minutes * 60 + seconds)
    except ValueError:
        result = 60.0
    if len(_SLEEP_CACHE) < 1000:
        _SLEEP_CACHE[value] = result
    return result


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date.

    Args:
        value: the header, if the answer had one.
        now: the current POSIX time for an HTTP-date (``time.time()`` when None).

    Returns:
        ``DEFAULT_RETRY_AFTER`` when absent or unreadable, else the wait, between 0 and
        ``MAX_RETRY_AFTER``.
    """
    if value is None:
        return DEFAULT_RETRY_AFTER
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            return DEFAULT_RETRY_AFTER
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def version_from_filename(name: str) -> str | None:
    """The version in an artifact name such as ``update-1.2.3.swu`` (``1.2.3``)."""
    stem = name.rsplit(".", 1)[0] if name.lower().endswith((".swu", ".raucb", ".bin")) else name
    found = _VERSION_IN_NAME.findall(stem)
    return found[-1] if found else None


def action_id_of(href: str, rel: str) -> str:
    """The action id in ``…/{rel}/{id}?…`` (the href's last path segment otherwise)."""
    path = href.split("?", 1)[0].rstrip("/")
    marker = f"/{rel}/"
    at = path.rfind(marker)
    tail = path[at + len(marker) :] if at >= 0 else path.rsplit("/", 1)[-1]
    return tail.split("/", 1)[0]


def feedback_url(href: str) -> str:
    """``{href without query}/feedback`` (hawkBit's feedback resource for an action link)."""
    return href.split("?", 1)[0].rstrip("/") + "/feedback"


def _now_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def _wire_id(action_id: str) -> int | str:
    return int(action_id) if action_id.isdigit() and len(action_id) < 18 else action_id


def _hrefs(body: Any, base: str) -> dict[str, str]:
    links = body.get("_links") if isinstance(body, dict) else None
    if not isinstance(links, dict):
        return {}
    out: dict[str, str] = {}
    for rel, link in links.items():
        if isinstance(link, dict) and isinstance(href := link.get("href"), str):
            out[rel] = href if href.startswith(("http://", "https://")) else urljoin(base, href)
    return out


class _GoOffline(Exception):
    """The device's moment to go offline came in the middle of something."""


class _Abandon(Exception):
    """The action went away (404/410) while the device worked on it."""


class _Throttled(Exception):
    """A request was answered 429: the step ends, the device comes back after ``wait`` s."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


@dataclass
class _Final:
    url: str
    body: dict[str, Any]
    action_id: str
    success: bool
    version: str | None
    sent: int = 0
    """Attempts so far (an attempt without an answer, or answered 5xx or 429, is sent again)."""


@dataclass
class _Install:
    action_id: str
    feedback: str
    version: str | None
    count: int
    ready_at: float


class Device:
    """One virtual device.

    Attributes:
        controller_id: the device's id.
        sw_version: the version it runs (changes after a successful update).
        state: ``new``, ``idle``, ``downloading``, ``installing``, ``offline`` or ``done``
            (also a device gone silent after its install).
        behaviour: how it misbehaves, if at all.
        acknowledged: every report the server answered 200, in that order (configData,
            feedback, cancel and confirmation feedback); kept only with
            ``FleetConfig.record_reports``, else empty.
    """

    __slots__ = (
        "_announced",
        "_attempts",
        "_closed",
        "_deployment",
        "_downloaded",
        "_finished",
        "_last_body",
        "_last_parsed",
        "_pending_final",
        "_poll_failures",
        "_poll_now",
        "_record",
        "_resume",
        "_silent",
        "_went_offline",
        "acknowledged",
        "action_id",
        "auth",
        "behaviour",
        "config_href",
        "controller_id",
        "hw_model",
        "hw_revision",
        "install",
        "last_sleep",
        "poll_request",
        "report_version",
        "state",
        "sw_version",
        "timer",
    )

    def __init__(
        self, controller_id: str, config: FleetConfig, behaviour: Behaviour = NORMAL
    ) -> None:
        self.controller_id = controller_id
        self.hw_model = config.hw_model
        self.hw_revision = config.hw_revision
        self.sw_version = config.sw_version
        self.state = "new"
        self.behaviour = behaviour
        token = config.token_for(controller_id)
        self.auth: list[tuple[str, str]] = [("User-Agent", config.user_agent)]
        if token is not None:
            self.auth.append(token)
        path_id = controller_id if _URL_SAFE.match(controller_id) else quote(controller_id, safe="")
        url = f"{config.base_url.rstrip('/')}/controller/v1/{path_id}"
        self.poll_request = Request("GET", url, [("Accept", "application/json"), *self.auth])
        self.config_href: str | None = None
        self.report_version = False
        self.last_sleep = 60.0
        self.action_id: str | None = None
        self.install: _Install | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._last_body = b""
        self._last_parsed: tuple[float, dict[str, str]] = (60.0, {})
        self._closed: set[str] | None = None
        self._downloaded = False
        self._announced = False
        self._attempts = 0
        self._deployment: dict[str, Any] | None = None
        """The ``deployment`` of the current action, while a 429 interrupted its work."""
        self._resume: dict[str, str] | None = None
        """The links of a poll answer whose work a 429 interrupted: done next, without a poll."""
        self._pending_final: _Final | None = None
        self._poll_failures = 0
        self._went_offline = False
        self._silent = False
        self._poll_now = False
        self._finished: dict[str, int] | None = None
        """Actions whose final report (or cancel) was answered 200: times offered since."""
        self._record = config.record_reports
        self.acknowledged: list[Report] = []

    def __repr__(self) -> str:
        return f"Device({self.controller_id!r}, {self.sw_version!r}, {self.state!r})"

    # -- the step ---------------------------------------------------------------------------

    async def step(self, ctx: DeviceContext) -> float | None:
        """Act once; the delay until the next step, or None when the device is done."""
        behaviour = self.behaviour
        if self._silent:
            return None
        if (
            behaviour.offline
            and not self._went_offline
            and ctx.loop.time() >= ctx.started_at + behaviour.offline_at
        ):
            return self._go_offline(ctx)
        try:
            if self._pending_final is not None:
                await self._send_final(ctx, self._pending_final)
            if self.install is not None:
                wait = self.install.ready_at - ctx.loop.time()
                if wait > 0:
                    return wait
                await self._finish_install(ctx, self.install)
            if self._silent:
                return None
            if self._resume is not None:
                delay = await self._act(ctx, self._resume)
            else:
                delay = await self._poll(ctx)
        except _Throttled as throttled:
            return throttled.wait
        except _GoOffline:
            self._resume = None
            return self._go_offline(ctx)
        except _Abandon:
            self._resume = None
            self._reset_action()
            delay = ctx.interval(self.last_sleep)
        except Exception:
            self._resume = None  # an unexpected answer: start again from a poll
            raise
        if self._silent:
            return None
        if self.install is not None:
            return max(0.0, self.install.ready_at - ctx.loop.time())
        if self._poll_now and delay is not None:
            return 0.0  # the final report went out during this poll: poll again at once
        return delay

    def _go_offline(self, ctx: DeviceContext) -> float:
        self._went_offline = True
        self.state = "offline"
        ctx.stats.went_offline += 1
        return ctx.config.offline_seconds

    def _check_offline(self, ctx: DeviceContext) -> None:
        behaviour = self.behaviour
        if (
            behaviour.offline
            and not self._went_offline
            and ctx.loop.time() >= ctx.started_at + behaviour.offline_at
        ):
            raise _GoOffline

    # -- base poll --------------------------------------------------------------------------

    async def _poll(self, ctx: DeviceContext) -> float | None:
        stats = ctx.stats
        self._poll_now = False
        began = time.perf_counter()
        try:
            response = await ctx.client.send(self.poll_request)
        except HttpError as exc:
            stats.drop("poll")
            stats.error(f"{self.controller_id} poll: {exc}", poll=True)
            return self._poll_failed(ctx)
        stats.latency((time.perf_counter() - began) * 1000.0)
        stats.answer("poll", response.status)
        if response.status == 429:
            raise self._throttled(ctx, "poll", response)
        if response.status != 200:
            stats.error(f"{self.controller_id} poll: HTTP {response.status}", poll=True)
            return self._poll_failed(ctx)
        stats.polls += 1
        self._poll_failures = 0
        body = response.content
        if body == self._last_body:
            sleep, links = self._last_parsed
        else:
            try:
                parsed = json.loads(body)
            except ValueError:
                stats.error(f"{self.controller_id} poll: answer is not JSON", poll=True)
                return self._poll_failed(ctx)
            config = parsed.get("config") if isinstance(parsed, dict) else None
            polling = config.get("polling") if isinstance(config, dict) else None
            sleep = parse_sleep(polling.get("sleep") if isinstance(polling, dict) else None)
            links = _hrefs(parsed, self.poll_request.url)
            self._last_body = body
            self._last_parsed = (sleep, links)
        self.last_sleep = sleep
        if self.state in ("new", "offline"):
            self.state = "idle"

        config_href = links.get("configData")
        if config_href is not None:
            self.config_href = config_href
        if self._finished:
            _count_reoffers(ctx, self._finished, links)
        if self._closed:
            self._closed = _still_offered(self._closed, links)
        self._deployment = None  # read afresh after each poll (a maintenance window may open)
        return await self._act(ctx, dict(links))

    async def _act(self, ctx: DeviceContext, links: dict[str, str]) -> float | None:
        """Do what a poll answer asks for; the delay until the next step.

        ``links`` is kept until the work is done: when a request is answered 429 the step ends
        there, and the next one carries on from it (a configData already accepted is not sent
        again) instead of polling first.
        """
        self._resume = links
        if "configData" in links or self.report_version:
            await self._put_config(ctx)
            links.pop("configData", None)
        if ctx.mode == "once":
            self._resume = None
            self.state = "done"
            return None
        cancel = links.get("cancelAction")
        deployment = links.get("deploymentBase")
        confirmation = links.get("confirmationBase")
        if cancel is not None:
            await self._cancel(ctx, cancel)
        elif deployment is not None:
            await self._deploy(ctx, deployment)
        elif confirmation is not None:
            await self._confirm(ctx, confirmation)
        self._resume = None
        return ctx.interval(self.last_sleep)

    def _throttled(self, ctx: DeviceContext, kind: str, response: Response) -> _Throttled:
        """Count a 429 to a request of ``kind``; the wait its ``Retry-After`` asks for."""
        wait = ctx.stretch(retry_after_seconds(response.headers.get("retry-after")))
        ctx.stats.throttle(kind, wait)
        return _Throttled(wait)

    def _poll_failed(self, ctx: DeviceContext) -> float | None:
        self._poll_failures += 1
        if ctx.mode == "once" and self._poll_failures >= 3:
            self.state = "done"
            return None
        return ctx.retry_after(self.last_sleep)

    def _mark_closed(self, key: str) -> None:
        if self._closed is None:
            self._closed = set()
        self._closed.add(key)

    def _is_closed(self, key: str) -> bool:
        return self._closed is not None and key in self._closed

    def _mark_finished(self, *action_ids: str) -> None:
        if self._finished is None:
            self._finished = {}
        for action_id in action_ids:
            self._finished.setdefault(action_id, 0)

    def _acknowledged(self, kind: str, action_id: str | None, body: dict[str, Any]) -> None:
        if self._record:
            self.acknowledged.append(Report(kind, action_id, body))

    def _reset_action(self) -> None:
        self.action_id = None
        self.install = None
        self._downloaded = False
        self._announced = False
        self._deployment = None
        self._attempts = 0
        self.state = "idle"

    # -- configData -------------------------------------------------------------------------

    async def _put_config(self, ctx: DeviceContext) -> None:
        href = self.config_href
        if href is None:
            return
        self._check_offline(ctx)
        body = {
            "id": "",
            "time": _now_stamp(),
            "status": {
                "result": {"finished": "success"},
                "execution": "closed",
                "details": [""],
            },
            "data": {
                "hw_boardname": self.hw_model,
                "hw_revision": self.hw_revision,
                "sw_version": self.sw_version,
            },
            "mode": "merge",
        }
        response = await self._request(ctx, "PUT", href, body, kind="configData")
        if response is not None and response.status == 200:
            ctx.stats.config_sent += 1
            self.report_version = False
            self._acknowledged("configData", None, body)
        elif response is not None:
            ctx.stats.error(f"{self.controller_id} configData: HTTP {response.status}")

    # -- deployment -------------------------------------------------------------------------

    async def _deploy(self, ctx: DeviceContext, href: str) -> None:
        action_id = action_id_of(href, "deploymentBase")
        if self._is_closed("d" + action_id):
            return
        stats = ctx.stats
        if self.action_id != action_id:
            self._reset_action()
            self.action_id = action_id
            stats.deployments_seen += 1
        if self.install is not None or self._pending_final is not None:
            return
        deployment = self._deployment
        if deployment is None:
            deployment = await self._fetch_deployment(ctx, href)
            if deployment is None:
                return
            self._deployment = deployment
        chunks = deployment.get("chunks") or []
        if deployment.get("download") == "skip":
            return
        artifacts = [
            artifact
            for chunk in chunks
            if isinstance(chunk, dict)
            for artifact in chunk.get("artifacts") or []
            if isinstance(artifact, dict)
        ]
        version = _version_of(chunks, artifacts)
        feedback = feedback_url(href)
        count = len(artifacts)

        if not self._downloaded:
            if not self._announced:  # sent again only after a failed download
                await self._feedback(
                    ctx, feedback, action_id, "proceeding", "none", (0, count),
                    "Installing Update Chunk Artifacts.",
                )  # fmt: skip
                self._announced = True
            self.state = "downloading"
            for artifact in artifacts:
                outcome = await self._download(ctx, artifact)
                if outcome is None:
                    continue
                if outcome.startswith("retry:"):
                    self._attempts += 1
                    if self._attempts < ctx.config.download_attempts:
                        self.state = "idle"
                        self._announced = False
                        return
                    outcome = f"Download failed: {outcome[6:]}"
                else:
                    stats.verify_failures += 1
                await self._final(ctx, feedback, action_id, False, None, outcome)
                return
            self._downloaded = True
        if deployment.get("update") == "skip":
            self.state = "idle"
            if not self._is_closed("s" + action_id):
                await self._feedback(
                    ctx, feedback, action_id, "downloaded", "none", (count, count),
                    "Downloaded; waiting for the update window.",
                )  # fmt: skip
                self._mark_closed("s" + action_id)
            return
        seconds = (
            ctx.config.slow_install_seconds if self.behaviour.slow else ctx.config.install_seconds
        )
        self.state = "installing"
        self.install = _Install(action_id, feedback, version, count, ctx.loop.time() + seconds)
        if seconds <= 0:
            await self._finish_install(ctx, self.install)

    async def _fetch_deployment(self, ctx: DeviceContext, href: str) -> dict[str, Any] | None:
        """GET deploymentBase: its ``deployment``, or None (counted as an error) if unusable."""
        self._check_offline(ctx)
        stats = ctx.stats
        response = await self._request(ctx, "GET", href, None, kind="deploymentBase")
        if response is None:
            return None
        if response.status in (404, 410):
            raise _Abandon
        if response.status != 200:
            stats.error(f"{self.controller_id} deploymentBase: HTTP {response.status}")
            return None
        try:
            deployment = response.json()["deployment"]
        except (ValueError, KeyError, TypeError):
            deployment = None
        if not isinstance(deployment, dict):
            stats.error(f"{self.controller_id} deploymentBase: unexpected answer")
            return None
        return deployment

    async def _finish_install(self, ctx: DeviceContext, install: _Install) -> None:
        await self._feedback(
            ctx, install.feedback, install.action_id, "proceeding", "none",
            (install.count, install.count), "All Chunks Installed.",
        )  # fmt: skip
        if self.behaviour.fails:
            await self._final(
                ctx, install.feedback, install.action_id, False, None,
                "Installation failed (simulated).",
            )  # fmt: skip
        else:
            await self._final(
                ctx, install.feedback, install.action_id, True, install.version,
                "Update Installed.",
            )  # fmt: skip

    async def _final(
        self,
        ctx: DeviceContext,
        url: str,
        action_id: str,
        success: bool,
        version: str | None,
        detail: str,
    ) -> None:
        body = self._feedback_body(
            action_id, "closed", "success" if success else "failure", (0, 0), detail
        )
        final = _Final(url, body, action_id, success, version)
        self._pending_final = final
        self.install = None
        await self._send_final(ctx, final)

    async def _send_final(self, ctx: DeviceContext, final: _Final) -> None:
        self._check_offline(ctx)
        final.sent += 1
        response = await self._request(
            ctx, "POST", final.url, final.body, kind="feedback", what="final feedback"
        )
        if response is None:
            return  # sent again at the next step
        status = response.status
        if status >= 500:
            ctx.stats.error(f"{self.controller_id} final feedback: HTTP {status}")
            return  # sent again at the next step
        self._pending_final = None
        self._mark_closed("d" + final.action_id)
        self._reset_action()
        if status == 200:
            self._mark_finished(final.action_id)
            self._acknowledged("feedback", final.action_id, final.body)
            if final.success:
                ctx.stats.successes += 1
            else:
                ctx.stats.failures += 1
        elif status == 410 and final.sent > 1:
            # An earlier attempt may have been taken although its answer never arrived.
            ctx.stats.final_retries_gone += 1
        elif status != 410:  # 410 at once: the server had closed the action already
            ctx.stats.error(f"{self.controller_id} final feedback: HTTP {status}")
        # SWUpdate polls again at once after its final report, and then reports its version.
        self._poll_now = True
        if final.success and self.behaviour.silent:
            # It never comes back from its reboot.
            self._silent = True
            ctx.stats.went_silent += 1
            return
        if final.success and self.behaviour.falls_back:
            # The new slot did not boot: back on the old one, which it reports.
            ctx.stats.fell_back += 1
            self.report_version = True
            return
        if final.success:
            # Installed is installed: the device runs the new version whatever the answer
            # (SWUpdate reboots into it) and says so in its next configData.
            if final.version:
                self.sw_version = final.version
            self.report_version = True

    async def _download(self, ctx: DeviceContext, artifact: dict[str, Any]) -> str | None:
        """Fetch and check one artifact.

        Returns:
            None when fine, ``"retry:<why>"`` for a failed transfer, else the checksum/size
            mismatch to report.
        """
        config = ctx.config
        stats = ctx.stats
        links = artifact.get("_links") or {}
        order = ("download-http", "download") if ctx.prefer_http else ("download", "download-http")
        url = next(
            (
                links[rel]["href"]
                for rel in order
                if isinstance(links.get(rel), dict) and isinstance(links[rel].get("href"), str)
            ),
            None,
        )
        if url is None:
            return "retry:no download link"
        size = artifact.get("size") if isinstance(artifact.get("size"), int) else None
        hashes = artifact.get("hashes") or {}
        algorithm = expected = None
        if config.verify == "sha256":
            for name in ("sha256", "sha1", "md5"):
                if isinstance(hashes.get(name), str):
                    algorithm, expected = name, hashes[name].lower()
                    break
        hasher = hashlib.new(algorithm) if algorithm else None
        head_only = config.verify == "head"
        cut_at: int | None = None
        if self.behaviour.cut and size is not None and size >= 2:
            cut_at = size // 2 if not head_only else min(size, HEAD_BYTES) // 2
        throttle = config.slow_rate if self.behaviour.slow else None
        headers = [("Accept", "application/octet-stream"), *self.auth]

        received = 0
        etag: str | None = None
        resumed = False
        while True:
            self._check_offline(ctx)
            request_headers = headers
            if received:
                request_headers = [*headers, ("Range", f"bytes={received}-")]
                if etag:
                    request_headers.append(("If-Range", etag))
            try:
                response = await ctx.client.send(Request("GET", url, request_headers), stream=True)
            except (HttpError, ValueError) as exc:
                if isinstance(exc, HttpError):
                    stats.drop("download")
                stats.error(f"{self.controller_id} download: {exc}")
                return f"retry:{exc}"
            stats.answer("download", response.status)
            try:
                if response.status == 429:
                    raise self._throttled(ctx, "download", response)
                if received and response.status == 206:
                    start = _range_start(response.headers.get("content-range"))
                    if start != received:
                        stats.error(f"{self.controller_id} resume: bad Content-Range")
                        return "retry:bad Content-Range"
                    resumed = True
                elif response.status == 200:
                    if received:  # the server ignored Range: start over
                        received = 0
                        hasher = hashlib.new(algorithm) if algorithm else None
                    etag = response.headers.get("etag")
                else:
                    stats.error(f"{self.controller_id} download: HTTP {response.status}")
                    return f"retry:HTTP {response.status}"
                stop = cut_at if cut_at is not None and received < cut_at else None
                if head_only:
                    stop = HEAD_BYTES if stop is None else min(stop, HEAD_BYTES)
                while True:
                    chunk = await response.read_chunk()
                    if not chunk:
                        break
                    if stop is not None and received + len(chunk) >= stop:
                        chunk = chunk[: stop - received]
                    if hasher is not None:
                        hasher.update(chunk)
                    received += len(chunk)
                    stats.download_bytes += len(chunk)
                    if stop is not None and received >= stop:
                        break
                    if throttle is not None:
                        await asyncio.sleep(len(chunk) / throttle)
            except HttpError as exc:
                stats.drop("download")
                stats.error(f"{self.controller_id} download: {exc}")
                return f"retry:{exc}"
            finally:
                response.close()
            if cut_at is not None and received == cut_at and not resumed:
                cut_at = None  # cut: resume with Range
                continue
            break
        if resumed:
            stats.resumed += 1
        stats.downloads += 1
        if head_only or config.verify == "none":
            return None
        if size is not None and received != size:
            return f"Size mismatch: expected {size} bytes, got {received}."
        if hasher is not None and expected is not None:
            digest = hasher.hexdigest()
            if digest != expected:
                return f"Checksum mismatch ({algorithm}): expected {expected}, got {digest}."
        return None

    # -- cancel and confirmation ------------------------------------------------------------

    async def _cancel(self, ctx: DeviceContext, href: str) -> None:
        action_id = action_id_of(href, "cancelAction")
        if self._is_closed("c" + action_id):
            return
        self._check_offline(ctx)
        response = await self._request(ctx, "GET", href, None, kind="cancelAction")
        if response is None:
            return
        if response.status != 200:
            ctx.stats.error(f"{self.controller_id} cancelAction: HTTP {response.status}")
            return
        stop_id = action_id
        with contextlib.suppress(ValueError, KeyError, TypeError):
            stop_id = str(response.json()["cancelAction"]["stopId"])
        body = self._feedback_body(stop_id, "closed", "success", None, "Update canceled.")
        answer = await self._request(
            ctx, "POST", feedback_url(href), body, kind="feedback", what="cancel feedback"
        )
        if answer is None:
            return
        if answer.status != 200:
            ctx.stats.error(f"{self.controller_id} cancel feedback: HTTP {answer.status}")
            return
        ctx.stats.cancels += 1
        self._mark_closed("c" + action_id)
        self._mark_finished(action_id, stop_id)
        self._acknowledged("cancel", stop_id, body)
        if self.action_id in (stop_id, action_id):
            self._pending_final = None
            self._reset_action()

    async def _confirm(self, ctx: DeviceContext, href: str) -> None:
        action_id = action_id_of(href, "confirmationBase")
        if self._is_closed("k" + action_id):
            return
        self._check_offline(ctx)
        body = {"confirmation": "confirmed", "code": 200, "details": ["Confirmed by gaggle-sim."]}
        response = await self._request(
            ctx, "POST", feedback_url(href), body, kind="feedback", what="confirmation feedback"
        )
        if response is None:
            return
        if response.status != 200:
            ctx.stats.error(f"{self.controller_id} confirmation: HTTP {response.status}")
            return
        ctx.stats.confirmations += 1
        self._mark_closed("k" + action_id)
        self._acknowledged("confirmation", action_id, body)

    # -- plumbing ---------------------------------------------------------------------------

    def _feedback_body(
        self,
        action_id: str,
        execution: str,
        finished: str,
        progress: tuple[int, int] | None,
        detail: str,
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"finished": finished}
        if progress is not None:
            result["progress"] = {"cnt": progress[0], "of": progress[1]}
        return {
            "id": _wire_id(action_id),
            "time": _now_stamp(),
            "status": {"result": result, "execution": execution, "details": [detail]},
        }

    async def _feedback(
        self,
        ctx: DeviceContext,
        url: str,
        action_id: str,
        execution: str,
        finished: str,
        progress: tuple[int, int],
        detail: str,
    ) -> None:
        """An informational feedback; a 404 or 410 means the action went away."""
        self._check_offline(ctx)
        body = self._feedback_body(action_id, execution, finished, progress, detail)
        response = await self._request(ctx, "POST", url, body, kind="feedback")
        if response is None:
            return
        if response.status in (404, 410):
            raise _Abandon
        if response.status != 200:
            ctx.stats.error(f"{self.controller_id} feedback: HTTP {response.status}")
        else:
            self._acknowledged("feedback", action_id, body)

    async def _request(
        self,
        ctx: DeviceContext,
        method: str,
        url: str,
        body: bytes | dict[str, Any] | None,
        *,
        kind: str,
        what: str | None = None,
    ) -> Response | None:
        """Send a JSON request of ``kind``; None (counted as an error) when no answer came.

        Raises:
            _Throttled: the answer was 429 (counted apart, not as an error).
        """
        what = what or kind
        headers = [("Accept", "application/json"), *self.auth]
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.append(_JSON)
        try:
            response = await ctx.client.send(Request(method, url, headers, data))
        except HttpError as exc:
            ctx.stats.drop(kind)
            ctx.stats.error(f"{self.controller_id} {what}: {exc}")
            return None
        except ValueError as exc:
            ctx.stats.error(f"{self.controller_id} {what}: bad link {url!r}: {exc}")
            return None
        ctx.stats.answer(kind, response.status)
        if response.status == 429:
            raise self._throttled(ctx, kind, response)
        return response


def _count_reoffers(ctx: DeviceContext, finished: dict[str, int], links: dict[str, str]) -> None:
    """Count the finished actions this answer offers again (once per answer and action)."""
    offered = {
        action_id_of(href, rel)
        for rel in ("deploymentBase", "cancelAction", "confirmationBase")
        if (href := links.get(rel)) is not None
    }
    for action_id in offered:
        seen = finished.get(action_id)
        if seen is None:
            continue
        if seen == 0:
            ctx.stats.reoffered += 1
        finished[action_id] = seen + 1
        ctx.stats.reoffers += 1


def _still_offered(closed: set[str], links: dict[str, str]) -> set[str]:
    """The closed action keys the server still offers (its view lags behind the device's)."""
    offered: set[str] = set()
    for rel, kinds in (
        ("deploymentBase", "ds"),
        ("cancelAction", "c"),
        ("confirmationBase", "k"),
    ):
        href = links.get(rel)
        if href is not None:
            action_id = action_id_of(href, rel)
            offered.update(kind + action_id for kind in kinds)
    return closed & offered


def _version_of(chunks: list[Any], artifacts: list[dict[str, Any]]) -> str | None:
    for chunk in chunks:
        if isinstance(chunk, dict) and isinstance(chunk.get("version"), str) and chunk["version"]:
            return str(chunk["version"])
    for artifact in artifacts:
        name = artifact.get("filename")
        if isinstance(name, str) and (found := version_from_filename(name)):
            return found
    return None


def _range_start(content_range: str | None) -> int | None:
    """First byte of ``Content-Range: bytes a-b/len``."""
    if not content_range:
        return None
    unit, _, spec = content_range.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    first = spec.split("-", 1)[0]
    return int(first) if first.isdigit() else None
