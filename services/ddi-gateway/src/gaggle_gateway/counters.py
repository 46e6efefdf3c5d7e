"""The gateway's own counters: plain integers on the request path, read when scraped."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

POLL_FAILURES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 429: "busy"}


class ReplacedCounts:
    """``gaggle_ddi_text_replaced_total{kind}``: device reports whose text had to be made storable.

    Kinds: the event kind the report became (``device.config_reported``, ``action.feedback``…).
    """

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}

    def add(self, kind: str) -> None:
        """Count one report of ``kind``."""
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def describe(self) -> Iterator[Metric]:
        """The family, for registration."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """The counts so far."""
        family = self._family()
        for kind, count in sorted(self.by_kind.items()):
            family.add_metric([kind], count)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "gaggle_ddi_text_replaced",
            "Device reports whose text (NUL, unpaired surrogates, invalid UTF-8) was replaced.",
            labels=["kind"],
        )


class PollCounts:
    """``gaggle_ddi_polls_total{outcome}``: plain integers on the poll path, read when scraped.

    Outcomes: ``idle`` (nothing to do), ``action`` (the device has an open action),
    ``unauthorized``, ``not_found``, ``bad_request``, ``busy`` (429: the mirror is reloading) and
    ``error`` (any other refusal).
    """

    __slots__ = ("action", "failed", "idle")

    def __init__(self) -> None:
        self.idle = 0
        self.action = 0
        self.failed: dict[int, int] = {}

    def fail(self, status: int) -> None:
        """Count a poll refused with ``status``."""
        self.failed[status] = self.failed.get(status, 0) + 1

    def describe(self) -> Iterator[Metric]:
        """The family, for registration."""
        yield CounterMetricFamily(
            "gaggle_ddi_polls", "DDI base polls, by outcome.", labels=["outcome"]
        )

    def collect(self) -> Iterator[Metric]:
        """The counts so far."""
        family = CounterMetricFamily(
            "gaggle_ddi_polls", "DDI base polls, by outcome.", labels=["outcome"]
        )
        by_outcome = {"idle": self.idle, "action": self.action}
        for label in (*POLL_FAILURES.values(), "error"):
            by_outcome[label] = 0
        for status, count in self.failed.items():
            by_outcome[POLL_FAILURES.get(status, "error")] += count
        for outcome, count in by_outcome.items():
            family.add_metric([outcome], count)
        yield family


class Strain:
    """``gaggle_gateway_sleep_factor``: how much the idle polling sleep is stretched while busy.

    Two signals, both the gateway's own experience of publishing device reports, which it waits
    for anyway: it costs nothing to keep them, and they need no query of NATS or another service.
    The metric shows the stretch of a device that has just finished its update (both signals).

    * *Ack latency.* The mean time JetStream took to acknowledge this gateway's reports over the
      last ``window_s``, from the publish to the ack seen on the gateway's event loop. A quiet
      stack acknowledges in a few milliseconds. When a rollout saturates the machine, the
      gateway's loop, NATS and the consumers all wait for CPU and the mean climbs to tenths of
      a second and more, long before anything is refused: it measures the whole path a report
      takes, where consumer lag or outbox depth would each see one part of it, and would need
      queries of NATS or PostgreSQL to read. From ``latency_s`` on, the sleep of a device
      whose update just finished is stretched by ``mean / latency_s``: the rollout keeping the
      stack busy has nothing more for it, while a device without an action may be queued for
      one of its slots.
    * *Refusals.* Reports answered 429 because JetStream did not acknowledge them in time: from
      ``threshold`` of them within the window on, the sleep of every device with nothing to do
      is stretched by ``1 + refusals / threshold``.

    The larger stretch wins, at most ``max_factor``; once the window is quiet again the sleep is
    the tenant's.
    """

    LATENCY_SAMPLES = 4096
    """Most ack times kept (the newest); enough for thousands of reports a second."""

    def __init__(
        self, window_s: float, threshold: int, max_factor: float, latency_s: float = 0.25
    ) -> None:
        self.window_s = window_s
        self.threshold = threshold
        self.max_factor = max_factor
        self.latency_s = latency_s
        self.refusals: deque[float] = deque()
        self.acks: deque[tuple[float, float]] = deque()
        """(when, seconds) of the reports acknowledged within the window."""
        self.ack_sum = 0.0

    def refused(self, now: float) -> None:
        """Note a report refused at ``now`` (monotonic seconds)."""
        self.refusals.append(now)
        # Bounded: past max_factor, more refusals change nothing.
        limit = int(self.threshold * self.max_factor) + 1
        while len(self.refusals) > limit:
            self.refusals.popleft()

    def acknowledged(self, now: float, seconds: float) -> None:
        """Note a report JetStream acknowledged at ``now``, ``seconds`` after it was sent."""
        acks = self.acks
        acks.append((now, seconds))
        self.ack_sum += seconds
        if len(acks) > self.LATENCY_SAMPLES:
            self.ack_sum -= acks.popleft()[1]

    def ack_latency(self, now: float) -> float:
        """The mean ack time of the reports within the window (0 without any)."""
        acks = self.acks
        since = now - self.window_s
        while acks and acks[0][0] <= since:
            self.ack_sum -= acks.popleft()[1]
        if not acks:
            self.ack_sum = 0.0  # no float drift carried into the next busy spell
            return 0.0
        return max(0.0, self.ack_sum / len(acks))

    def factor(self, now: float, *, finished: bool = True) -> float:
        """The stretch of an idle sleep handed out at ``now``: 1.0 unless the window is busy.

        Slow acks stretch only the sleep of a device that has just ``finished`` its update: a
        device without an action may be waiting for a rollout's free slot, and learns of its
        action only at its next poll. Refusals stretch every idle device's.
        """
        stretch = 1.0
        if finished and self.acks:
            latency = self.ack_latency(now)
            if latency > self.latency_s:
                stretch = latency / self.latency_s
        refusals = self.refusals
        if refusals:
            while refusals and refusals[0] <= now - self.window_s:
                refusals.popleft()
            count = len(refusals)
            if count >= self.threshold:
                stretch = max(stretch, 1 + count / self.threshold)
        return min(self.max_factor, stretch)

    def describe(self) -> Iterator[Metric]:
        """The family, for registration."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """The current factor (a scrape also lets refusals age out of the window)."""
        family = self._family()
        family.add_metric([], self.factor(time.monotonic()))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "gaggle_gateway_sleep_factor",
            "How much the idle polling sleep handed to devices is stretched while the gateway is"
            " busy (slow or refused report acknowledgements).",
        )
