"""The gateway's own counters: plain integers on the request path, read when scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

POLL_FAILURES = {400: "bad_request", 401: "unauthorized", 404: "not_found"}


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
    ``unauthorized``, ``not_found``, ``bad_request`` and ``error`` (any other refusal).
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
