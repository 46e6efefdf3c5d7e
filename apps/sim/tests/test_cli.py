"""``gaggle-sim`` as a command: JSON output, summary, progress line, clean stop on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from gaggle_sim.__main__ import build_parser, config_from_args


async def run_cli(*args: str, interrupt_after: float | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gaggle_sim",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    if interrupt_after is not None:
        await asyncio.sleep(interrupt_after)
        proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_once_prints_json_and_a_summary(fake_ddi) -> None:
    fake = await fake_ddi()
    code, out, err = await run_cli(
        "--url", fake.base_url, "--devices", "5", "--poll", "once", "--prefix", "cli-", "--json"
    )  # fmt: skip
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["polls"], stats["config_sent"], stats["devices_done"]) == (5, 5, 5)
    assert "gaggle-sim: 5 devices" in err
    assert (stats["reoffered"], stats["reoffers"], stats["final_retries_gone"]) == (0, 0, 0)
    assert "re-offered   0 finished actions offered again" in err
    assert "polls 5" in err  # the last progress line
    assert sorted(fake.registered) == [f"cli-{i:06d}" for i in range(5)]


async def test_reoffered_finished_actions_are_in_the_json_and_the_summary(fake_ddi) -> None:
    fake = await fake_ddi(artifact=b"x" * 1000, reoffer_polls=2)
    for i in range(2):
        fake.assign(f"cli-{i:06d}")
    code, out, err = await run_cli(
        "--url", fake.base_url, "--devices", "2", "--prefix", "cli-", "--poll", "0.05",
        "--jitter", "0", "--duration", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    stats = json.loads(out)
    assert stats["successes"] == 2, stats
    assert (stats["reoffered"], stats["reoffers"]) == (2, 4)
    assert "re-offered   2 finished actions offered again (4 answers)" in err
    assert "re-offered 2" in err  # the progress line


async def test_ctrl_c_stops_cleanly_with_the_summary(fake_ddi) -> None:
    fake = await fake_ddi(sleep="00:00:01")
    code, out, err = await run_cli(
        "--url", fake.base_url, "--devices", "3", "--json", interrupt_after=2.0
    )  # fmt: skip
    assert code == 0, err
    stats = json.loads(out)
    assert stats["polls"] >= 3
    assert stats["poll_errors"] == 0
    assert "Traceback" not in err
    assert "gaggle-sim: 3 devices" in err


async def test_duration_and_quiet(fake_ddi) -> None:
    fake = await fake_ddi()
    code, out, err = await run_cli(
        "--url", fake.base_url, "--devices", "2", "--poll", "0.1", "--duration", "0.5",
        "--quiet", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert err == ""
    assert 4 <= json.loads(out)["polls"] <= 14


def test_arguments_map_to_the_fleet_config(tmp_path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"sim-000000": "abc"}))
    args = build_parser().parse_args(
        [
            "--url", "http://127.0.0.1:8080/default", "--devices", "2000", "--poll", "fast",
            "--fail", "0.05", "--slow", "0.1", "--offline", "0.05", "--cut", "0.1",
            "--verify", "head", "--connections", "128", "--device-tokens", str(tokens),
        ]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.count, cfg.poll, cfg.verify, cfg.connections) == (2000, "fast", "head", 128)
    assert (cfg.fail_share, cfg.slow_share, cfg.offline_share, cfg.cut_share) == (
        0.05,
        0.1,
        0.05,
        0.1,
    )
    assert cfg.token_for("sim-000000") == ("Authorization", "TargetToken abc")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--url", "http://x/t", "--fail", "2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--url", "http://x/t", "--poll", "often"])
