"""Jitter and stretch of the polling sleep, and the busy signal behind the stretch."""

from __future__ import annotations

import heapq
import statistics
from collections import Counter

import pytest

from gaggle_contracts import kv
from gaggle_gateway.counters import Strain
from gaggle_gateway.domain import (
    dither_at,
    format_sleep,
    jitter_share,
    paced,
    poll_body,
    sleep_seconds,
)

BASE = "http://gw/default/controller/v1/dev-1"


def seconds_of(body: dict[str, object]) -> int:
    config = body["config"]
    assert isinstance(config, dict)
    return sleep_seconds(config["polling"]["sleep"])


def test_a_device_always_gets_the_same_share() -> None:
    assert jitter_share("default", "dev-1") == jitter_share("default", "dev-1")
    assert jitter_share("default", "dev-1") != jitter_share("default", "dev-2")
    assert jitter_share("acme", "dev-1") != jitter_share("default", "dev-1")


def test_a_fleet_spreads_within_a_tenth_of_the_interval() -> None:
    found = [
        sleep_seconds(paced("00:10:00", jitter_share("default", f"dev-{n}") * 0.1))
        for n in range(1000)
    ]
    assert all(540 <= s <= 660 for s in found)
    assert len(set(found)) > 100
    # Both sides of the interval, about evenly.
    assert 400 < sum(s < 600 for s in found) < 600


def test_shares_lie_between_minus_one_and_one() -> None:
    shares = [jitter_share("t", f"d{n}") for n in range(1000)]
    assert all(-1 <= s <= 1 for s in shares)
    assert min(shares) < -0.9 and max(shares) > 0.9


@pytest.mark.parametrize(
    ("sleep", "share", "factor", "expected"),
    [
        ("00:01:00", 0.0, 1.0, "00:01:00"),
        ("00:01:00", 0.1, 1.0, "00:01:06"),
        ("00:01:00", -0.1, 1.0, "00:00:54"),
        ("00:01:00", 0.0, 4.0, "00:04:00"),
        ("00:10:00", -0.05, 2.0, "00:19:00"),
        ("00:00:01", -0.1, 1.0, "00:00:01"),  # never below a second
        ("00:00:00", 0.0, 3.0, "00:00:00"),
        ("23:00:00", 0.1, 4.0, "23:59:59"),  # DDI clients parse below 24 h
    ],
)
def test_the_sleep_is_stretched_then_moved_by_the_share(
    sleep: str, share: float, factor: float, expected: str
) -> None:
    assert paced(sleep, share, factor) == expected


def test_sleeps_are_formatted_as_ddi_clients_parse_them() -> None:
    assert format_sleep(3723) == "01:02:03"
    assert format_sleep(-5) == "00:00:00"
    assert sleep_seconds("01:02:03") == 3723


def test_the_open_action_interval_is_paced_like_the_tenant_interval() -> None:
    tenant = kv.TenantConfig(polling_sleep="00:16:40", polling_sleep_open_action="00:01:40")
    entry = kv.DeploymentEntry(
        open=kv.OpenAction.model_validate(
            {"action_id": "5", "state": "deployment", "deployment": kv.DeploymentDoc(chunks=[])}
        )
    )
    assert seconds_of(poll_body(BASE, tenant, None, None, -0.08, 2.0)) == 1840
    assert seconds_of(poll_body(BASE, tenant, None, entry, -0.08, 2.0)) == 184


def test_the_sleep_is_stretched_from_the_threshold_on_and_bounded() -> None:
    strain = Strain(window_s=10.0, threshold=5, max_factor=4.0)
    assert strain.factor(0.0) == 1.0
    for _ in range(4):
        strain.refused(1.0)
    assert strain.factor(1.0) == 1.0
    strain.refused(2.0)
    assert strain.factor(2.0) == 2.0
    for _ in range(100):
        strain.refused(3.0)
    assert strain.factor(3.0) == 4.0
    assert len(strain.refusals) <= 21  # bounded: what is past the largest factor is not kept


def test_the_stretch_clears_as_refusals_age_out_of_the_window() -> None:
    strain = Strain(window_s=10.0, threshold=2, max_factor=4.0)
    for at in (0.0, 5.0, 6.0):
        strain.refused(at)
    assert strain.factor(9.0) == 2.5
    assert strain.factor(10.0) == 2.0  # the refusal at 0 s is out
    assert strain.factor(15.5) == 1.0
    assert strain.factor(16.0) == 1.0


@pytest.mark.parametrize(
    ("acks", "now", "expected"),
    [
        ([], 0.0, 1.0),  # nothing acknowledged: no stretch
        ([(1.0, 0.005)] * 50, 1.0, 1.0),  # a quiet stack: milliseconds
        ([(1.0, 0.25)], 1.0, 1.0),  # at the threshold: not yet
        ([(1.0, 0.5), (2.0, 0.5)], 2.0, 2.0),  # twice the threshold: twice the sleep
        ([(1.0, 0.1), (2.0, 0.65)], 2.0, 1.5),  # the mean of the window
        ([(1.0, 5.0)], 2.0, 4.0),  # bounded by max_factor
        ([(1.0, 0.75), (9.0, 0.5)], 11.0, 2.0),  # the ack at 1 s is out of the window
        ([(1.0, 0.75), (9.0, 0.5)], 19.5, 1.0),  # both out: normal again
    ],
)
def test_the_idle_sleep_is_stretched_by_the_mean_ack_time_over_its_threshold(
    acks: list[tuple[float, float]], now: float, expected: float
) -> None:
    strain = Strain(window_s=10.0, threshold=5, max_factor=4.0, latency_s=0.25)
    for at, seconds in acks:
        strain.acknowledged(at, seconds)
    assert strain.factor(now) == pytest.approx(expected)


def test_slow_acks_stretch_devices_that_just_finished_and_refusals_every_idle_one() -> None:
    strain = Strain(window_s=10.0, threshold=2, max_factor=4.0, latency_s=0.25)
    strain.acknowledged(1.0, 0.75)  # 3x
    assert strain.factor(1.0, finished=True) == 3.0
    assert strain.factor(1.0, finished=False) == 1.0
    for _ in range(3):
        strain.refused(1.0)  # 2.5x
    assert strain.factor(1.0, finished=False) == 2.5
    assert strain.factor(1.0, finished=True) == 3.0


def test_the_larger_of_the_two_stretches_wins() -> None:
    strain = Strain(window_s=10.0, threshold=2, max_factor=4.0, latency_s=0.25)
    strain.acknowledged(1.0, 0.5)  # 2x
    for _ in range(5):
        strain.refused(1.0)  # 3.5x
    assert strain.factor(1.0) == 3.5
    strain = Strain(window_s=10.0, threshold=2, max_factor=4.0, latency_s=0.25)
    strain.acknowledged(1.0, 0.75)  # 3x
    strain.refused(1.0)  # below the threshold
    assert strain.factor(1.0) == 3.0


def test_ack_times_kept_are_bounded() -> None:
    strain = Strain(window_s=10.0, threshold=5, max_factor=4.0, latency_s=0.25)
    for n in range(Strain.LATENCY_SAMPLES + 100):
        strain.acknowledged(1.0, 1.0 if n < 100 else 0.01)
    assert len(strain.acks) == Strain.LATENCY_SAMPLES
    assert strain.ack_latency(1.0) == pytest.approx(0.01)  # the oldest, slow ones are gone


def fleet_polls(
    devices: int, polls: int, sleep: str, dithered: bool
) -> tuple[list[int], list[int]]:
    """A fleet that polls for the first time together; every sleep handed out, and when each
    device polls last (seconds since the start). The gateway counts polls in the order they
    arrive, as ``Gateway.poll`` does.
    """
    shares = [jitter_share("default", f"dev-{n:04d}") * 0.1 for n in range(devices)]
    due = [(0, n) for n in range(devices)]
    heapq.heapify(due)
    handed: list[int] = []
    last = [0] * devices
    for sequence in range(1, devices * polls + 1):
        at, n = heapq.heappop(due)
        point = dither_at(sequence, shares[n]) if dithered else 0.5
        slept = sleep_seconds(paced(sleep, shares[n], 1.0, point))
        handed.append(slept)
        last[n] = at
        heapq.heappush(due, (at + slept, n))
    return handed, last


def test_a_fleet_started_together_spreads_over_a_five_second_interval_at_its_rate() -> None:
    handed, last = fleet_polls(1000, 30, "00:00:05", dithered=True)
    assert set(handed) == {4, 5, 6}
    assert abs(statistics.fmean(handed) - 5) < 0.02  # the configured rate, for the fleet
    # After 30 polls the fleet is spread over the five seconds of the interval, not in step.
    slots = Counter(at % 5 for at in last)
    assert len(slots) == 5
    assert max(slots.values()) < 300

    # Rounded alone, the ten percent either way is lost: every device sleeps five seconds and
    # the whole fleet polls in the same second, poll after poll.
    handed, last = fleet_polls(1000, 30, "00:00:05", dithered=False)
    assert set(handed) == {5}
    assert len(Counter(at % 5 for at in last)) == 1


def test_each_device_sleeps_its_own_target_on_average() -> None:
    share = 0.06  # 5.3 s: 5 s seven polls in ten, 6 s three in ten
    handed = [
        sleep_seconds(paced("00:00:05", share, 1.0, dither_at(n, share))) for n in range(1000)
    ]
    assert set(handed) == {5, 6}
    assert abs(statistics.fmean(handed) - 5.3) < 0.01


def test_dither_points_spread_evenly_over_the_unit_interval() -> None:
    points = [dither_at(n, 0.03) for n in range(1000)]
    assert all(0 <= p < 1 for p in points)
    assert all(90 <= c <= 110 for c in Counter(int(p * 10) for p in points).values())


def test_a_sleep_is_at_least_what_it_is_asked_to_be() -> None:
    assert paced("00:00:02", 0.0, 1.0, 0.5, at_least=5) == "00:00:05"
    assert paced("00:01:00", 0.0, 1.0, 0.5, at_least=5) == "00:01:00"
