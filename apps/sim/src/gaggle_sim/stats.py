"""Live counters of a running fleet."""

from __future__ import annotations

import random
import time
from typing import Any

MAX_LATENCY_SAMPLES = 100_000
"""Base-poll latencies kept; beyond this a uniform sample of all polls is kept (reservoir)."""

MAX_ERROR_SAMPLES = 20

KINDS = ("poll", "deploymentBase", "feedback", "configData", "download", "cancelAction")
"""The kinds of request counted apart: base polls, deploymentBase reads, feedback of every sort
(progress, final, cancel, confirmation), configData, artifact downloads, cancelAction reads."""


def _per_kind() -> dict[str, int]:
    return dict.fromkeys(KINDS, 0)


class FleetStats:
    """Counters the devices update as they go; read them at any time.

    Attributes:
        polls: base polls answered 200.
        poll_errors: base polls that failed (network error, timeout, status other than 200
            and 429).
        config_sent: configData reports accepted.
        deployments_seen: actions a device started on (each action counted once per device).
        downloads: artifacts downloaded to the end (or to 64 KiB with ``verify="head"``).
        download_bytes: artifact bytes received, resumed parts included.
        resumed: cut downloads continued with a ``Range`` request.
        successes: final closed/success feedbacks accepted.
        failures: final closed/failure feedbacks accepted (simulated failures and checksum
            mismatches).
        verify_failures: artifacts whose checksum or size did not match.
        cancels: cancel requests acknowledged.
        confirmations: actions confirmed (confirmationBase).
        went_offline: devices that went offline.
        went_silent: devices that reported success and then went silent (``silent_share``).
        fell_back: devices that reported success and then their old version
            (``fallback_share``).
        reoffered: finished actions offered again: a device's final report (closed
            success or failure, or its cancel) was answered 200, and a later poll still
            offered that action (``deploymentBase``, ``cancelAction`` or ``confirmationBase``).
            Each action counts once per device, however often it came back.
        reoffers: poll answers that offered a device one of its finished actions.
        final_retries_gone: final reports sent again (the attempt before got no answer, a 5xx
            or a 429) and answered 410 Gone: the server had taken an earlier attempt, or
            closed the action for another reason.
        errors: other failed requests (deploymentBase, feedback, downloads, configData) and
            unexpected answers; a 429 is not an error (see ``throttled``).
        answers: per kind of request (``KINDS``), how many answers had each HTTP status.
        throttled: per kind, requests answered 429; the device waited ``Retry-After`` before
            sending that request again.
        server_errors: per kind, requests answered with a 5xx status (also counted in
            ``poll_errors`` or ``errors``).
        dropped: per kind, requests that got no complete answer: connection refused or
            closed, timeout, unreadable answer (also counted in ``poll_errors`` or ``errors``).
        throttle_wait_s: seconds of ``Retry-After`` waits, summed over every 429.
        latencies_ms: base-poll latencies in milliseconds (at most ``MAX_LATENCY_SAMPLES``,
            a uniform sample once there were more polls).
        error_samples: the last few error descriptions, for diagnostics.
    """

    def __init__(self, max_latency_samples: int = MAX_LATENCY_SAMPLES) -> None:
        self.polls = 0
        self.poll_errors = 0
        self.config_sent = 0
        self.deployments_seen = 0
        self.downloads = 0
        self.download_bytes = 0
        self.resumed = 0
        self.successes = 0
        self.failures = 0
        self.verify_failures = 0
        self.cancels = 0
        self.confirmations = 0
        self.went_offline = 0
        self.went_silent = 0
        self.fell_back = 0
        self.reoffered = 0
        self.reoffers = 0
        self.final_retries_gone = 0
        self.errors = 0
        self.answers: dict[str, dict[int, int]] = {kind: {} for kind in KINDS}
        self.throttled = _per_kind()
        self.server_errors = _per_kind()
        self.dropped = _per_kind()
        self.throttle_wait_s = 0.0
        self.latencies_ms: list[float] = []
        self.error_samples: list[str] = []
        self.devices = 0
        self.devices_done = 0
        self._max_samples = max(1, max_latency_samples)
        self._samples_seen = 0
        self._rng = random.Random(0)
        self._started: float | None = None
        self._stopped: float | None = None

    # -- recording --------------------------------------------------------------------------

    def started(self) -> None:
        """Mark the start of the run (rates count from here)."""
        self._started = time.monotonic()
        self._stopped = None

    def stopped(self) -> None:
        """Mark the end of the run (rates stop counting)."""
        if self._started is not None and self._stopped is None:
            self._stopped = time.monotonic()

    def latency(self, ms: float) -> None:
        """Record one base-poll latency."""
        self._samples_seen += 1
        samples = self.latencies_ms
        if len(samples) < self._max_samples:
            samples.append(ms)
            return
        slot = self._rng.randrange(self._samples_seen)
        if slot < self._max_samples:
            samples[slot] = ms

    def answer(self, kind: str, status: int) -> None:
        """Count one HTTP answer to a request of ``kind`` (5xx also in ``server_errors``)."""
        statuses = self.answers.setdefault(kind, {})
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors[kind] = self.server_errors.get(kind, 0) + 1

    def throttle(self, kind: str, wait: float) -> None:
        """Count a 429 to a request of ``kind``, after which the device waits ``wait`` s."""
        self.throttled[kind] = self.throttled.get(kind, 0) + 1
        self.throttle_wait_s += wait

    def drop(self, kind: str) -> None:
        """Count a request of ``kind`` that got no complete answer."""
        self.dropped[kind] = self.dropped.get(kind, 0) + 1

    def other_answers(self) -> int:
        """Requests answered neither 2xx nor 429, or not answered at all (dropped)."""
        odd = sum(
            n
            for statuses in self.answers.values()
            for status, n in statuses.items()
            if not (200 <= status < 300 or status == 429)
        )
        return odd + sum(self.dropped.values())

    def error(self, message: str, *, poll: bool = False) -> None:
        """Count a failed request and keep its description."""
        if poll:
            self.poll_errors += 1
        else:
            self.errors += 1
        self.error_samples.append(message)
        if len(self.error_samples) > MAX_ERROR_SAMPLES:
            del self.error_samples[0]

    # -- reading ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since the start (until the stop, once stopped)."""
        if self._started is None:
            return 0.0
        end = self._stopped if self._stopped is not None else time.monotonic()
        return end - self._started

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the base-poll latencies in ms; 0 without any."""
        samples = sorted(self.latencies_ms)
        if not samples:
            return 0.0
        rank = min(len(samples) - 1, max(0, round(q / 100 * (len(samples) - 1))))
        return samples[rank]

    def p50(self) -> float:
        """Median base-poll latency, ms."""
        return self.percentile(50)

    def p99(self) -> float:
        """99th percentile of base-poll latency, ms."""
        return self.percentile(99)

    def poll_rate(self) -> float:
        """Base polls per second over the whole run."""
        elapsed = self.elapsed()
        return self.polls / elapsed if elapsed > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """Every counter plus elapsed time, poll rate and latency percentiles, as plain data."""
        samples = sorted(self.latencies_ms)

        def pick(q: float) -> float:
            if not samples:
                return 0.0
            return round(samples[min(len(samples) - 1, round(q / 100 * (len(samples) - 1)))], 3)

        return {
            "devices": self.devices,
            "devices_done": self.devices_done,
            "elapsed_s": round(self.elapsed(), 3),
            "polls": self.polls,
            "poll_errors": self.poll_errors,
            "poll_rate": round(self.poll_rate(), 1),
            "p50_ms": pick(50),
            "p90_ms": pick(90),
            "p99_ms": pick(99),
            "max_ms": round(samples[-1], 3) if samples else 0.0,
            "config_sent": self.config_sent,
            "deployments_seen": self.deployments_seen,
            "downloads": self.downloads,
            "download_bytes": self.download_bytes,
            "resumed": self.resumed,
            "successes": self.successes,
            "failures": self.failures,
            "verify_failures": self.verify_failures,
            "cancels": self.cancels,
            "confirmations": self.confirmations,
            "went_offline": self.went_offline,
            "went_silent": self.went_silent,
            "fell_back": self.fell_back,
            "reoffered": self.reoffered,
            "reoffers": self.reoffers,
            "final_retries_gone": self.final_retries_gone,
            "errors": self.errors,
            "throttled": dict(self.throttled),
            "server_errors": dict(self.server_errors),
            "dropped": dict(self.dropped),
            "throttle_wait_s": round(self.throttle_wait_s, 3),
            "other_answers": self.other_answers(),
            "answers": {
                kind: {str(status): n for status, n in sorted(statuses.items())}
                for kind, statuses in self.answers.items()
            },
            "error_samples": list(self.error_samples),
        }
