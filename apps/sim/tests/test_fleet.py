"""Devices and fleets against fake DDI servers in the style of hawkBit and of gooseBit."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from apps.sim.tests.conftest import FakeDdi
from gaggle_sim import Fleet, FleetConfig, FleetStats, assign_behaviours, run_fleet
from gaggle_sim.device import action_id_of, feedback_url, parse_sleep, version_from_filename

PAYLOAD = os.urandom(300_000)


def config(fake: FakeDdi, count: int, **kwargs: object) -> FleetConfig:
    kwargs.setdefault("poll", 0.05)
    kwargs.setdefault("jitter", 0.0)
    return FleetConfig(fake.base_url, count, **kwargs)  # type: ignore[arg-type]


def updates_done(n: int):
    return lambda s: s.successes + s.failures >= n


# -- behaviour shares -----------------------------------------------------------------------------


def test_shares_are_exact_and_depend_only_on_the_seed() -> None:
    cfg = FleetConfig(
        "http://x/t", 200, fail_share=0.1, slow_share=0.25, offline_share=0.05, cut_share=0.5
    )
    first = assign_behaviours(cfg)
    assert sum(b.fails for b in first) == 20
    assert sum(b.slow for b in first) == 50
    assert sum(b.offline for b in first) == 10
    assert sum(b.cut for b in first) == 100
    assert all(0 <= b.offline_at < cfg.offline_within for b in first if b.offline)
    assert assign_behaviours(cfg) == first
    cfg.seed = 1
    other = assign_behaviours(cfg)
    assert other != first
    assert sum(b.fails for b in other) == 20
    assert [b.fails for b in assign_behaviours(FleetConfig("http://x/t", 10))] == [False] * 10


def test_config_checks_its_values() -> None:
    with pytest.raises(ValueError, match="poll"):
        FleetConfig("http://x/t", 1, poll="sometimes")
    with pytest.raises(ValueError, match="fail_share"):
        FleetConfig("http://x/t", 1, fail_share=1.5)
    with pytest.raises(ValueError, match="verify"):
        FleetConfig("http://x/t", 1, verify="md5")
    assert FleetConfig("http://x/t", 1, poll="2.5").poll_mode == "fixed"
    assert FleetConfig("http://x/t", 3, id_prefix="d-", first_index=7).controller_ids() == [
        "d-000007",
        "d-000008",
        "d-000009",
    ]


def test_link_helpers() -> None:
    href = "http://h/T/controller/v1/d/deploymentBase/42?c=-1"
    assert action_id_of(href, "deploymentBase") == "42"
    assert feedback_url(href) == "http://h/T/controller/v1/d/deploymentBase/42/feedback"
    assert action_id_of("http://h/T/controller/v1/d/cancelAction/7", "cancelAction") == "7"
    assert parse_sleep("00:01:30") == 90
    assert parse_sleep("garbage") == 60
    assert version_from_filename("update-1.2.3.swu") == "1.2.3"
    assert version_from_filename("fw_2.0.1-rc1.swu") == "2.0.1-rc1"
    assert version_from_filename("image.swu") is None


# -- against a fake server ------------------------------------------------------------------------


async def test_first_contact_registers_every_device_once(fake_ddi) -> None:
    fake = await fake_ddi()
    stats = await run_fleet(config(fake, 50, poll="once", hw_model="b", sw_version="0.9"))
    assert stats.polls == 50
    assert stats.config_sent == 50
    assert stats.devices_done == 50
    assert stats.poll_errors == stats.errors == 0
    assert len(fake.registered) == 50
    assert fake.registered["sim-000049"] == {
        "hw_boardname": "b",
        "hw_revision": "1.0",
        "sw_version": "0.9",
    }
    put = fake.config_puts["sim-000000"][0]
    assert put["mode"] == "merge"
    assert put["status"] == {
        "result": {"finished": "success"},
        "execution": "closed",
        "details": [""],
    }
    assert len(stats.latencies_ms) == 50
    assert 0 < stats.p50() <= stats.p99()
    assert not fake.problems


async def test_update_with_cut_and_failing_devices_hawkbit_style(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    cfg = config(fake, 20, fail_share=0.25, cut_share=0.5, seed=3)
    fleet = Fleet(cfg)
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(20), timeout=10), fleet.stats.snapshot()
        # The devices that succeeded report their new version right away.
        assert await fleet.wait(lambda s: s.config_sent >= 20 + 15, timeout=5)
    finally:
        await fleet.stop()
    stats = fleet.stats
    assert (stats.successes, stats.failures) == (15, 5)
    assert stats.resumed == 10
    assert stats.downloads == 20
    assert stats.deployments_seen == 20
    assert stats.errors == 0, stats.error_samples
    assert not fake.problems
    for device in fleet.devices:
        action = fake.actions[device.controller_id]
        assert action.status == ("error" if device.behaviour.fails else "finished")
        assert [f["execution"] for f in action.feedback] == ["proceeding", "proceeding", "closed"]
        assert action.feedback[0]["result"]["progress"] == {"cnt": 0, "of": 1}
        ranges = [r.headers.get("range") for r in fake.requests_of(device.controller_id)]
        ranged = [r for r in ranges if r]
        assert ranged == ([f"bytes={len(PAYLOAD) // 2}-"] if device.behaviour.cut else [])
        if device.behaviour.fails:
            assert device.sw_version == "1.0.0"
            assert action.feedback[-1]["result"]["finished"] == "failure"
        else:
            assert device.sw_version == "2.0.0"
            reported = fake.config_puts[device.controller_id][-1]["data"]
            assert reported["sw_version"] == "2.0.0"
    # Each device fetched deploymentBase once: no re-runs of a closed action.
    for device in fleet.devices:
        gets = [
            r
            for r in fake.requests_of(device.controller_id)
            if "/deploymentBase/" in r.path and r.method == "GET"
        ]
        assert len(gets) == 1


async def test_update_against_a_goosebit_style_server(fake_ddi) -> None:
    fake = await fake_ddi(
        style="goosebit", artifact=PAYLOAD, chunk_version=False, filename="fw-3.1.4.swu"
    )
    fleet = Fleet(config(fake, 5, cut_share=0.4))
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(5), timeout=10), fleet.stats.snapshot()
    finally:
        await fleet.stop()
    assert fleet.stats.successes == 5
    assert fleet.stats.resumed == 2
    assert not fake.problems
    assert {d.sw_version for d in fleet.devices} == {"3.1.4"}  # from the artifact name
    first = fake.requests_of("sim-000000")
    assert any(r.path.endswith("/sim-000000/download") for r in first)
    feedback = [r.json() for r in first if r.path.endswith("/feedback")]
    assert {f["id"] for f in feedback} == {7}


async def test_checksum_mismatch_is_reported_as_failure(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    fake.served = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])
    fleet = Fleet(config(fake, 3))
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(3), timeout=10), fleet.stats.snapshot()
    finally:
        await fleet.stop()
    assert fleet.stats.failures == 3
    assert fleet.stats.verify_failures == 3
    for device in fleet.devices:
        action = fake.actions[device.controller_id]
        assert action.status == "error"
        detail = action.feedback[-1]["details"][0]
        assert "Checksum mismatch (sha256)" in detail
        assert hashlib.sha256(PAYLOAD).hexdigest() in detail
        assert device.sw_version == "1.0.0"


async def test_sha1_only_server_is_checked_against_sha1(fake_ddi) -> None:
    fake = await fake_ddi(style="goosebit", artifact=PAYLOAD)
    fake.served = bytes(len(PAYLOAD))
    fleet = Fleet(config(fake, 1))
    fake.assign("sim-000000")
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(1), timeout=10)
    finally:
        await fleet.stop()
    assert fleet.stats.verify_failures == 1
    assert "(sha1)" in fake.actions["sim-000000"].feedback[-1]["details"][0]


async def test_head_verification_reads_only_the_first_64_kib(fake_ddi) -> None:
    big = os.urandom(2_000_000)
    fake = await fake_ddi(artifact=big)
    fake.served = big[:100_000] + bytes(len(big) - 100_000)  # wrong, but past 64 KiB
    fleet = Fleet(config(fake, 2, verify="head"))
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(2), timeout=10)
    finally:
        await fleet.stop()
    assert fleet.stats.successes == 2
    assert fleet.stats.download_bytes == 2 * 64 * 1024


async def test_cancel_is_acknowledged_like_swupdate_does(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    fleet = Fleet(config(fake, 2))
    for device in fleet.devices:
        fake.assign(device.controller_id).status = "canceling"
    await fleet.start()
    try:
        assert await fleet.wait(lambda s: s.cancels >= 2, timeout=5)
        await asyncio.sleep(0.2)
    finally:
        await fleet.stop()
    assert fleet.stats.cancels == 2
    for device in fleet.devices:
        action = fake.actions[device.controller_id]
        assert action.status == "canceled"
        assert action.feedback == [
            {
                "result": {"finished": "success"},
                "execution": "closed",
                "details": ["Update canceled."],
            }
        ]
    assert fleet.stats.downloads == 0
    assert not fake.problems


# -- finished actions offered again ---------------------------------------------------------------


async def test_after_its_final_report_a_device_polls_at_once_then_reports_its_version(
    fake_ddi,
) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    fleet = Fleet(config(fake, 1, poll=30.0))  # the next poll is not due for 30 s
    fake.assign("sim-000000")
    await fleet.start()
    try:
        assert await fleet.wait(lambda s: s.config_sent >= 2, timeout=5), fleet.stats.snapshot()
    finally:
        await fleet.stop()
    seen = [
        (r.method, r.path.rsplit("/", 1)[-1].split("?")[0])
        for r in fake.requests_of("sim-000000")
        if "/softwaremodules/" not in r.path
    ]
    # As SWUpdate starting again after the update: closed/success, base poll, configData.
    assert seen[-3:] == [("POST", "feedback"), ("GET", "sim-000000"), ("PUT", "configData")]
    assert fleet.devices[0].sw_version == "2.0.0"


async def test_the_poll_after_a_final_report_does_not_queue_behind_the_fleet(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    # One connection, and 40 other devices always due: a device queued again would wait for
    # every one of them to poll first.
    fleet = Fleet(config(fake, 41, poll=0.001, connections=1))
    fake.assign("sim-000000")
    await fleet.start()
    try:
        assert await fleet.wait(lambda s: s.config_sent >= 42, timeout=10), fleet.stats.snapshot()
    finally:
        await fleet.stop()
    assert fake.server is not None
    order = [
        (r.path.split("/")[4], r.method, r.path.rsplit("/", 1)[-1].split("?")[0])
        for r in fake.server.requests
        if "/softwaremodules/" not in r.path
    ]
    final = max(
        i for i, seen in enumerate(order) if seen[0] == "sim-000000" and seen[2] == "feedback"
    )
    assert order[final + 1 : final + 3] == [
        ("sim-000000", "GET", "sim-000000"),
        ("sim-000000", "PUT", "configData"),
    ]


def deployment_gets(fake: FakeDdi, cid: str) -> int:
    return sum(
        1 for r in fake.requests_of(cid) if "/deploymentBase/" in r.path and r.method == "GET"
    )


async def test_a_finished_action_offered_again_is_counted_once_per_device(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD, reoffer_polls=3)
    fleet = Fleet(config(fake, 4, fail_share=0.25))
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(4), timeout=10), fleet.stats.snapshot()
        assert await fleet.wait(lambda s: s.reoffers >= 4 * 3, timeout=5), fleet.stats.snapshot()
        polls = fleet.stats.polls
        assert await fleet.wait(lambda s: s.polls >= polls + 4 * 2, timeout=5)
    finally:
        await fleet.stop()
    stats = fleet.stats
    assert (stats.successes, stats.failures) == (3, 1)
    assert stats.reoffered == 4  # failures are finished actions too
    assert stats.reoffers == 4 * 3
    assert stats.final_retries_gone == 0
    for device in fleet.devices:
        # Offered again, but not run again.
        assert deployment_gets(fake, device.controller_id) == 1
        assert len(fake.actions[device.controller_id].feedback) == 3
    assert stats.errors == 0, stats.error_samples
    assert not fake.problems


async def test_no_reoffer_is_counted_when_a_finished_action_is_not_offered_again(
    fake_ddi,
) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    fleet = Fleet(config(fake, 4))
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(4), timeout=10), fleet.stats.snapshot()
        polls = fleet.stats.polls
        assert await fleet.wait(lambda s: s.polls >= polls + 4 * 5, timeout=5)
    finally:
        await fleet.stop()
    stats = fleet.stats
    assert stats.successes == 4
    assert (stats.reoffered, stats.reoffers, stats.final_retries_gone) == (0, 0, 0)
    snapshot = stats.snapshot()
    assert (snapshot["reoffered"], snapshot["reoffers"], snapshot["final_retries_gone"]) == (
        0,
        0,
        0,
    )


async def test_a_canceled_action_offered_again_is_counted(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD, reoffer_polls=2)
    fleet = Fleet(config(fake, 1))
    fake.assign("sim-000000").status = "canceling"
    await fleet.start()
    try:
        assert await fleet.wait(lambda s: s.reoffers >= 2, timeout=5), fleet.stats.snapshot()
    finally:
        await fleet.stop()
    assert (fleet.stats.cancels, fleet.stats.reoffered, fleet.stats.reoffers) == (1, 1, 2)
    requests = fake.requests_of("sim-000000")
    assert sum(1 for r in requests if r.method == "GET" and "/cancelAction/" in r.path) == 1


async def test_a_retried_final_report_answered_410_is_counted_apart(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD, lose_final_answers=1)
    fleet = Fleet(config(fake, 1, record_reports=True))
    fake.assign("sim-000000")
    await fleet.start()
    try:
        assert await fleet.wait(lambda s: s.final_retries_gone >= 1, timeout=10), (
            fleet.stats.snapshot()
        )
        # The device installed: it runs the new version and says so, 410 or not.
        assert await fleet.wait(lambda s: s.config_sent >= 2, timeout=5)
    finally:
        await fleet.stop()
    stats = fleet.stats
    assert (stats.final_retries_gone, stats.successes, stats.reoffered) == (1, 0, 0)
    assert stats.errors == 1  # the 503
    device = fleet.devices[0]
    assert device.sw_version == "2.0.0"
    assert fake.registered["sim-000000"]["sw_version"] == "2.0.0"
    finals = [
        r.json()
        for r in fake.requests_of("sim-000000")
        if r.path.endswith("/feedback") and r.json()["status"]["execution"] == "closed"
    ]
    assert len(finals) == 2
    # Neither answer was a 200, so the closing report is not among the acknowledged ones.
    assert [(r.kind, r.body["status"]["execution"]) for r in device.acknowledged] == [
        ("configData", "closed"),
        ("feedback", "proceeding"),
        ("feedback", "proceeding"),
        ("configData", "closed"),
    ]


async def test_acknowledged_reports_are_recorded_as_sent(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    recorded = Fleet(config(fake, 2, record_reports=True))
    unrecorded = Fleet(config(fake, 1, id_prefix="quiet-"))
    for device in [*recorded.devices, *unrecorded.devices]:
        fake.assign(device.controller_id)
    for fleet in (recorded, unrecorded):
        await fleet.start()
    try:
        for fleet, n in ((recorded, 2), (unrecorded, 1)):
            assert await fleet.wait(lambda s, n=n: s.config_sent >= 2 * n, timeout=10)
    finally:
        for fleet in (recorded, unrecorded):
            await fleet.stop()
    assert unrecorded.devices[0].acknowledged == []
    for device in recorded.devices:
        cid = device.controller_id
        action_id = fake.actions[cid].action_id
        acknowledged = device.acknowledged
        assert [(r.kind, r.action_id) for r in acknowledged] == [
            ("configData", None),
            ("feedback", action_id),
            ("feedback", action_id),
            ("feedback", action_id),
            ("configData", None),
        ]
        assert [r.body for r in acknowledged if r.kind == "configData"] == fake.config_puts[cid]
        assert [r.body["status"] for r in acknowledged if r.kind == "feedback"] == (
            fake.actions[cid].feedback
        )


async def test_slow_devices_download_and_install_slowly(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    cfg = config(fake, 2, slow_share=0.5, slow_rate=1_000_000, slow_install_seconds=0.4, seed=1)
    fleet = Fleet(cfg)
    for device in fleet.devices:
        fake.assign(device.controller_id)
    slow = next(d for d in fleet.devices if d.behaviour.slow)
    fast = next(d for d in fleet.devices if not d.behaviour.slow)
    started = time.monotonic()
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(2), timeout=10)
    finally:
        await fleet.stop()

    def finished_at(cid: str) -> float:
        closed = [r for r in fake.requests_of(cid) if r.path.endswith("/feedback")]
        return closed[-1].at - started

    # 300 kB at 1 MB/s is >= 0.3 s of downloading (less the first read), then 0.4 s installing.
    assert finished_at(slow.controller_id) >= 0.6
    assert finished_at(fast.controller_id) < 0.5
    assert fleet.stats.successes == 2


async def test_offline_devices_stay_silent_for_a_while(fake_ddi) -> None:
    fake = await fake_ddi()
    cfg = config(fake, 4, offline_share=0.5, offline_within=0.0, offline_seconds=0.5)
    started = time.monotonic()
    stats = await run_fleet(cfg, duration=0.8)
    assert stats.went_offline == 2
    fleet_devices = Fleet(cfg).devices
    for device in fleet_devices:
        times = [r.at - started for r in fake.requests_of(device.controller_id)]
        if device.behaviour.offline:
            assert times, device
            assert min(times) >= 0.45
        else:
            assert min(times) < 0.2


async def test_server_mode_obeys_the_polling_sleep(fake_ddi) -> None:
    fake = await fake_ddi(sleep="00:00:01")
    stats = await run_fleet(config(fake, 3, poll="server"), duration=1.5)
    # A poll at once, then one after the 1 s sleep.
    assert stats.polls == 6


async def test_fast_mode_polls_as_fast_as_the_connections_allow(fake_ddi) -> None:
    fake = await fake_ddi(sleep="00:01:00")
    stats = await run_fleet(config(fake, 10, poll="fast", connections=4), duration=0.5)
    assert stats.polls > 200
    assert fake.server is not None
    assert fake.server.connections <= 4
    assert stats.poll_rate() > 400


async def test_tokens_go_on_every_request_including_downloads(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    cfg = config(fake, 2, device_token="dt", device_tokens={"sim-000001": "own"})
    fleet = Fleet(cfg)
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(2), timeout=10)
    finally:
        await fleet.stop()
    for cid, token in (("sim-000000", "TargetToken dt"), ("sim-000001", "TargetToken own")):
        assert {r.headers.get("authorization") for r in fake.requests_of(cid)} == {token}
    gw = FleetConfig("http://x/t", 1, gateway_token="g")
    assert gw.token_for("sim-000000") == ("Authorization", "GatewayToken g")


async def test_stats_snapshot_and_wait_timeout() -> None:
    stats = FleetStats(max_latency_samples=10)
    for i in range(1000):
        stats.latency(float(i))
    assert len(stats.latencies_ms) == 10
    snap = stats.snapshot()
    assert snap["polls"] == 0
    assert set(snap) >= {"p50_ms", "p99_ms", "poll_rate", "successes", "errors"}
    fleet = Fleet(FleetConfig("http://127.0.0.1:9/t", 1))
    assert await fleet.wait(lambda s: False, timeout=0.05) is False


async def test_unreachable_server_counts_poll_errors_without_spinning() -> None:
    cfg = FleetConfig("http://127.0.0.1:9/t", 5, poll="fast", timeout=1)
    stats = await run_fleet(cfg, duration=0.5)
    assert stats.polls == 0
    assert 5 <= stats.poll_errors <= 5 * 6  # a 0.1 s back-off per failed poll
    assert "poll" in stats.error_samples[-1]


async def test_ramp_up_spreads_the_first_polls(fake_ddi) -> None:
    fake = await fake_ddi(sleep="00:01:00")
    started = time.monotonic()
    stats = await run_fleet(config(fake, 20, poll="server", ramp_up=0.6), duration=0.8)
    assert stats.polls == 20
    assert fake.server is not None
    times = sorted(r.at - started for r in fake.server.requests if r.method == "GET")
    assert times[0] < 0.3
    assert times[-1] > 0.3
    assert times[-1] < 0.75


def test_silent_and_fallback_shares_are_exact_seed_stable_and_apart() -> None:
    cfg = FleetConfig("http://x/t", 1000, silent_share=0.05, fallback_share=0.1, seed=7)
    first = assign_behaviours(cfg)
    silent = {i for i, b in enumerate(first) if b.silent}
    back = {i for i, b in enumerate(first) if b.falls_back}
    assert len(silent) == 50
    assert not silent & back  # a device that falls back comes back to say so
    assert len(back) == 100
    assert assign_behaviours(cfg) == first
    only_back = assign_behaviours(FleetConfig("http://x/t", 1000, fallback_share=0.1, seed=7))
    assert sum(b.falls_back for b in only_back) == 100
    with pytest.raises(ValueError, match="fallback_share"):
        FleetConfig("http://x/t", 1, fallback_share=2)


async def test_devices_that_go_silent_or_fall_back_after_their_install(fake_ddi) -> None:
    fake = await fake_ddi(artifact=PAYLOAD)
    cfg = config(fake, 20, silent_share=0.25, fallback_share=0.25, sw_version="1.0.0", seed=5)
    fleet = Fleet(cfg)
    for device in fleet.devices:
        fake.assign(device.controller_id)
    await fleet.start()
    try:
        assert await fleet.wait(updates_done(20), timeout=10), fleet.stats.snapshot()
        # The 15 that came back report their version; the 5 silent ones say nothing more.
        assert await fleet.wait(lambda s: s.config_sent >= 20 + 15, timeout=5)
        polls = {d.controller_id: len(fake.requests_of(d.controller_id)) for d in fleet.devices}
        await asyncio.sleep(0.3)
    finally:
        await fleet.stop()
    stats = fleet.stats
    assert (stats.successes, stats.went_silent, stats.fell_back) == (20, 5, 5)
    for device in fleet.devices:
        reported = [p["data"]["sw_version"] for p in fake.config_puts[device.controller_id]]
        if device.behaviour.silent:
            assert device.state == "done"
            assert reported == ["1.0.0"]  # only its first contact
            assert len(fake.requests_of(device.controller_id)) == polls[device.controller_id]
        elif device.behaviour.falls_back:
            assert device.sw_version == "1.0.0"
            assert reported[-1] == "1.0.0" and len(reported) >= 2
        else:
            assert reported[-1] == device.sw_version != "1.0.0"
