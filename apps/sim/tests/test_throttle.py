"""Back-pressure: a 429 is waited out as ``Retry-After`` says and counted apart from errors.

The device is driven one step at a time: the delay a step returns is what the fleet's scheduler
waits before the next one, so "no retry before Retry-After" is read from the simulator's own
schedule, not from the wall clock.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from apps.sim.tests.conftest import FakeDdi, Reply, Seen
from gaggle_sim import Fleet, FleetConfig, FleetStats
from gaggle_sim.__main__ import summary
from gaggle_sim.device import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    Device,
    DeviceContext,
    retry_after_seconds,
)
from gaggle_sim.http import HttpClient

PAYLOAD = os.urandom(100_000)
CID = "sim-000000"


class Throttler:
    """Answers the requests ``match`` picks with ``status`` (and ``headers``) ``times`` times,
    every other request as the fake DDI server does."""

    def __init__(
        self,
        fake: FakeDdi,
        match: Callable[[Seen], bool],
        *,
        times: int = 1,
        status: int = 429,
        headers: dict[str, str] | None = None,
        drop: bool = False,
    ) -> None:
        self.fake = fake
        self.match = match
        self.left = times
        self.status = status
        self.headers = headers if headers is not None else {"Retry-After": "7"}
        self.drop = drop
        self.refused: list[Seen] = []

    def __call__(self, req: Seen) -> Reply:
        if self.left > 0 and self.match(req):
            self.left -= 1
            self.refused.append(req)
            return Reply(self.status, b"{}", dict(self.headers), drop=self.drop)
        return self.fake.handle(req)


def is_poll(req: Seen) -> bool:
    return req.method == "GET" and req.path.split("?")[0].endswith(f"/controller/v1/{CID}")


def is_feedback(execution: str) -> Callable[[Seen], bool]:
    def match(req: Seen) -> bool:
        return req.path.endswith("/feedback") and json.loads(req.body)["status"]["execution"] == (
            execution
        )

    return match


def kind_of(req: Seen) -> str:
    """A request as a short name: poll, configData, deploymentBase, feedback:<exec>, download."""
    path = req.path.split("?")[0]
    if path.endswith("/feedback"):
        return "feedback:" + json.loads(req.body)["status"]["execution"]
    if "/softwaremodules/" in path:
        return "download"
    if "/deploymentBase/" in path:
        return "deploymentBase"
    if path.endswith("/configData"):
        return "configData"
    return "poll"


class Driver:
    """One device and its context, stepped by hand."""

    def __init__(self, fake: FakeDdi, client: HttpClient, **kwargs: object) -> None:
        kwargs.setdefault("poll", 5.0)
        kwargs.setdefault("jitter", 0.0)
        self.config = FleetConfig(fake.base_url, 1, **kwargs)  # type: ignore[arg-type]
        self.stats = FleetStats()
        self.fake = fake
        self.ctx = DeviceContext(
            self.config, client, self.stats, random.Random(0).random, client.loop.time()
        )
        self.device = Device(CID, self.config)

    async def step(self) -> tuple[float | None, list[str]]:
        """One step: its delay and the requests the server saw during it."""
        assert self.fake.server is not None
        before = len(self.fake.server.requests)
        delay = await self.device.step(self.ctx)
        return delay, [kind_of(r) for r in self.fake.server.requests[before:]]


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient(connections=4, timeout=5.0) as http:
        yield http


async def throttled_fake(fake_ddi, **throttle: object) -> tuple[FakeDdi, Throttler]:
    fake = await fake_ddi(artifact=PAYLOAD)
    throttler = Throttler(fake, **throttle)  # type: ignore[arg-type]
    assert fake.server is not None
    fake.server.handler = throttler
    return fake, throttler


# -- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 0.5 ", 0.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("99999", MAX_RETRY_AFTER),
        (None, DEFAULT_RETRY_AFTER),
        ("soon", DEFAULT_RETRY_AFTER),
        ("nan", DEFAULT_RETRY_AFTER),
    ],
)
def test_retry_after_in_seconds_is_read_and_bounded(header: str | None, seconds: float) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    now = float(int(time.time()))  # an HTTP-date has whole seconds
    later = datetime.fromtimestamp(now, UTC) + timedelta(seconds=30)
    assert retry_after_seconds(format_datetime(later, usegmt=True), now=now) == pytest.approx(30)
    earlier = datetime.fromtimestamp(now, UTC) - timedelta(seconds=30)
    assert retry_after_seconds(format_datetime(earlier, usegmt=True), now=now) == 0.0


async def test_a_throttled_poll_waits_for_retry_after_and_is_not_an_error(fake_ddi, client) -> None:
    fake, throttler = await throttled_fake(fake_ddi, match=is_poll)
    driver = Driver(fake, client, poll=1.0)

    delay, seen = await driver.step()
    assert (delay, seen) == (7.0, ["poll"])  # nothing else, and back only after 7 s
    stats = driver.stats
    assert stats.throttled["poll"] == 1
    assert stats.throttle_wait_s == 7.0
    assert (stats.polls, stats.poll_errors, stats.errors) == (0, 0, 0)
    assert stats.other_answers() == 0

    delay, seen = await driver.step()
    assert (delay, seen) == (1.0, ["poll", "configData"])
    assert stats.answers["poll"] == {429: 1, 200: 1}
    assert len(throttler.refused) == 1


async def test_the_wait_after_a_429_is_stretched_by_the_jitter_never_shortened(
    fake_ddi, client
) -> None:
    fake, _ = await throttled_fake(fake_ddi, match=is_poll, times=20)
    driver = Driver(fake, client, jitter=0.5)
    waits = [(await driver.step())[0] for _ in range(20)]
    assert all(w is not None and 7.0 <= w <= 10.5 for w in waits), waits
    assert len(set(waits)) > 1


async def test_a_poll_answered_429_without_retry_after_waits_the_default(fake_ddi, client) -> None:
    fake, _ = await throttled_fake(fake_ddi, match=is_poll, headers={})
    driver = Driver(fake, client)
    delay, _ = await driver.step()
    assert delay == DEFAULT_RETRY_AFTER


async def test_a_throttled_progress_report_is_sent_again_after_retry_after_without_a_poll(
    fake_ddi, client
) -> None:
    fake, _ = await throttled_fake(
        fake_ddi, match=is_feedback("proceeding"), headers={"Retry-After": "3"}
    )
    fake.assign(CID)
    driver = Driver(fake, client)

    delay, seen = await driver.step()
    assert delay == 3.0
    assert seen == ["poll", "configData", "deploymentBase", "feedback:proceeding"]

    delay, seen = await driver.step()
    assert delay == 0.0  # the final report went out: poll again at once
    # Carried on where it stopped: no poll or deploymentBase first, and the accepted configData
    # not sent again.
    assert seen == [
        "feedback:proceeding",
        "download",
        "feedback:proceeding",
        "feedback:closed",
    ]
    stats = driver.stats
    assert stats.throttled == {**dict.fromkeys(stats.throttled, 0), "feedback": 1}
    assert (stats.successes, stats.errors, stats.poll_errors) == (1, 0, 0)
    assert fake.actions[CID].status == "finished"


async def test_a_throttled_final_report_is_sent_first_after_retry_after(fake_ddi, client) -> None:
    fake, _ = await throttled_fake(
        fake_ddi, match=is_feedback("closed"), headers={"Retry-After": "4"}
    )
    fake.assign(CID)
    driver = Driver(fake, client)

    delay, seen = await driver.step()
    assert delay == 4.0
    assert seen[-1] == "feedback:closed"
    assert driver.device.sw_version == "1.0.0"  # not told of its success yet

    delay, seen = await driver.step()
    assert seen[0] == "feedback:closed"
    assert seen.count("feedback:closed") == 1
    assert "download" not in seen
    stats = driver.stats
    assert (stats.successes, stats.errors, stats.final_retries_gone) == (1, 0, 0)
    assert stats.throttled["feedback"] == 1
    assert driver.device.sw_version == "2.0.0"


async def test_a_throttled_download_is_taken_up_again_without_a_second_progress_report(
    fake_ddi, client
) -> None:
    fake, _ = await throttled_fake(
        fake_ddi, match=lambda r: "/softwaremodules/" in r.path, headers={"Retry-After": "2"}
    )
    fake.assign(CID)
    driver = Driver(fake, client)

    delay, seen = await driver.step()
    assert (delay, seen[-1]) == (2.0, "download")
    delay, seen = await driver.step()
    assert seen[:2] == ["download", "feedback:proceeding"]
    assert driver.stats.throttled["download"] == 1
    assert driver.stats.downloads == 1
    assert (driver.stats.successes, driver.stats.errors) == (1, 0)
    proceeding = [f for f in fake.actions[CID].feedback if f["execution"] == "proceeding"]
    assert len(proceeding) == 2  # one before the download, one after the installation


async def test_a_throttled_config_data_is_sent_again_after_retry_after(fake_ddi, client) -> None:
    fake, _ = await throttled_fake(
        fake_ddi, match=lambda r: r.path.endswith("/configData"), headers={"Retry-After": "2"}
    )
    driver = Driver(fake, client)
    assert await driver.step() == (2.0, ["poll", "configData"])
    assert await driver.step() == (5.0, ["configData"])
    stats = driver.stats
    assert (stats.config_sent, stats.throttled["configData"], stats.errors) == (1, 1, 0)
    assert stats.answers["configData"] == {429: 1, 200: 1}


# -- 5xx and dropped connections ------------------------------------------------------------------


async def test_a_5xx_is_counted_as_an_error_and_as_a_server_error_of_its_kind(
    fake_ddi, client
) -> None:
    fake, _ = await throttled_fake(
        fake_ddi, match=is_feedback("proceeding"), status=503, headers={}
    )
    fake.assign(CID)
    driver = Driver(fake, client)
    await driver.step()
    stats = driver.stats
    assert stats.server_errors == {**dict.fromkeys(stats.server_errors, 0), "feedback": 1}
    assert stats.errors == 1
    assert sum(stats.throttled.values()) == 0
    assert stats.other_answers() == 1


async def test_a_poll_answered_500_is_a_poll_error(fake_ddi, client) -> None:
    fake, _ = await throttled_fake(fake_ddi, match=is_poll, status=500, headers={})
    driver = Driver(fake, client)
    delay, seen = await driver.step()
    assert seen == ["poll"]
    assert delay == 5.0  # the device's own retry interval, not a Retry-After
    stats = driver.stats
    assert (stats.poll_errors, stats.server_errors["poll"], stats.throttled["poll"]) == (1, 1, 0)


async def test_a_dropped_connection_is_counted_apart(fake_ddi, client) -> None:
    fake, _ = await throttled_fake(fake_ddi, match=is_poll, drop=True)
    driver = Driver(fake, client)
    await driver.step()
    stats = driver.stats
    assert (stats.dropped["poll"], stats.poll_errors, stats.server_errors["poll"]) == (1, 1, 0)
    assert stats.other_answers() == 1
    snap = stats.snapshot()
    assert snap["dropped"]["poll"] == 1
    assert snap["other_answers"] == 1


def test_summary_shows_throttled_server_errors_and_dropped_per_kind() -> None:
    stats = FleetStats()
    stats.answer("poll", 200)
    stats.answer("poll", 429)
    stats.throttle("poll", 2.0)
    stats.answer("feedback", 502)
    stats.drop("download")
    text = summary(stats)
    assert "throttled    1 (poll 1), waited 2.0 s" in text
    assert "5xx          1 (feedback 1)" in text
    assert "dropped      1 (download 1)" in text
    assert json.loads(json.dumps(stats.snapshot()))["answers"]["poll"] == {"200": 1, "429": 1}


async def test_a_fleet_under_back_pressure_finishes_with_only_200s_and_429s(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    assert fake.server is not None
    answered = {"n": 0}

    def every_third(req: Seen) -> Reply:
        answered["n"] += 1
        if answered["n"] % 3 == 0:
            return Reply(429, b"{}", {"Retry-After": "0"})
        return fake.handle(req)

    fake.server.handler = every_third
    config = FleetConfig(fake.base_url, 6, poll=0.05, jitter=0.0)
    for i in range(6):
        fake.assign(f"sim-{i:06d}")
    fleet = Fleet(config)
    await fleet.start()
    try:
        done = await fleet.wait(
            lambda s: s.successes >= 6 and all(not d.report_version for d in fleet.devices),
            timeout=20,
        )
    finally:
        await fleet.stop()
    stats = fleet.stats
    assert done, stats.snapshot()
    assert all(d.sw_version == "2.0.0" for d in fleet.devices)
    assert all(fake.registered[f"sim-{i:06d}"]["sw_version"] == "2.0.0" for i in range(6))
    assert sum(stats.throttled.values()) > 0
    assert (stats.other_answers(), stats.errors, stats.poll_errors, stats.failures) == (0, 0, 0, 0)
    assert fake.problems == []
