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
    """``gaggle_gateway_sleep_factor``: how much the polling sleep is stretched, from refusals.

    The signal is the reports this gateway answered 429 because JetStream did not acknowledge
    them in time, over the last ``window_s``. It costs nothing to keep, it is the gateway's own
    experience of the bus (consumer lag and outbox depth would need queries of NATS or another
    service), and it rises exactly when devices are already being told to come back later. From
    ``threshold`` refusals on, the sleep is stretched by ``1 + refusals / threshold``, at most
    ``max_factor``; once the window holds fewer refusals the sleep is the tenant's again.
    """

    def __init__(self, window_s: float, threshold: int, max_factor: float) -> None:
        self.window_s = window_s
        self.threshold = threshold
        self.max_factor = max_factor
        self.refusals: deque[float] = deque()

    def refused(self, now: float) -> None:
        """Note a report refused at ``now`` (monotonic seconds)."""
        self.refusals.append(now)
        # Bounded: past max_factor, more refusals change nothing.
        limit = int(self.threshold * self.max_factor) + 1
        while len(self.refusals) > limit:
            self.refusals.popleft()

    def factor(self, now: float) -> float:
        """The stretch of a sleep handed out at ``now``: 1.0 unless the window holds enough."""
        refusals = self.refusals
        if not refusals:
            return 1.0
        while refusals and refusals[0] <= now - self.window_s:
            refusals.popleft()
        count = len(refusals)
        return 1.0 if count < self.threshold else min(self.max_factor, 1 + count / self.threshold)

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
            "How much the polling sleep handed to devices is stretched while reports are refused.",
        )
