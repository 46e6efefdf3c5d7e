"""The CLI's parsing and formatting, and its error lines, without any service."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import httpx
import pytest
from rich.console import Console

from gaggle_cli.__main__ import run
from gaggle_cli.client import refusal
from gaggle_cli.devices import _sse, feedback_line, since_value
from gaggle_cli.output import counters_line, size, when
from gaggle_cli.rollouts import (
    outcome,
    parse_forcetime,
    parse_waves,
    parse_window,
    watch_render,
    window_body,
    window_text,
)


def test_waves_are_percentages_or_counts() -> None:
    assert parse_waves("10%,30%,60%") == [{"percent": 10}, {"percent": 30}, {"percent": 60}]
    assert parse_waves(" 5, 50 ") == [{"count": 5}, {"count": 50}]
    assert parse_waves(None) is None
    for bad in ("10%,20", "ten%", "0%", "5,-1", ""):
        with pytest.raises(click.BadParameter):
            parse_waves(bad)


def test_window() -> None:
    assert parse_window("02:00-04:00") == {"start": "02:00", "end": "04:00"}
    with pytest.raises(click.BadParameter):
        parse_window("2-4")


def test_window_options_make_one_window_several_or_a_schedule() -> None:
    assert window_body((), None, None, None, None) is None
    assert window_body(("02:00-04:00",), None, None, None, None) == {
        "start": "02:00",
        "end": "04:00",
    }
    assert window_body(("02:00-04:00",), "Sat, sun", "Europe/Berlin", None, None) == {
        "timezone": "Europe/Berlin",
        "start": "02:00",
        "end": "04:00",
        "days": ["sat", "sun"],
    }
    assert window_body(("01:00-02:00", "13:00-14:00"), None, None, None, None) == {
        "windows": [{"start": "01:00", "end": "02:00"}, {"start": "13:00", "end": "14:00"}]
    }
    assert window_body((), None, "+02:00", "0 2 * * 1-5", "02:00:00") == {
        "timezone": "+02:00",
        "schedule": "0 2 * * 1-5",
        "duration": "02:00:00",
    }
    for bad in [
        (("02:00-04:00",), None, None, "0 2 * * *", "01:00:00"),
        ((), None, None, "0 2 * * *", None),
        ((), "mon", None, None, None),
        ((), None, "UTC", None, None),
    ]:
        with pytest.raises(click.UsageError):
            window_body(*bad)


def test_window_text() -> None:
    assert window_text(None) == ""
    assert window_text({"start": "02:00", "end": "04:00"}) == "02:00-04:00 UTC"
    assert (
        window_text(
            {
                "timezone": "Europe/Berlin",
                "windows": [{"start": "1:00", "end": "2:00", "days": ["sat"]}],
            }
        )
        == "1:00-2:00 (sat) Europe/Berlin"
    )
    assert window_text({"schedule": "0 2 * * *", "duration": "01:00:00"}) == (
        "cron '0 2 * * *' for 01:00:00 UTC"
    )


def test_forcetime_takes_iso_with_zone_or_time_from_now() -> None:
    assert parse_forcetime(None) is None
    assert parse_forcetime("2026-12-24T18:00:00+01:00") == "2026-12-24T18:00:00+01:00"
    value = parse_forcetime("2h")
    assert value is not None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) + timedelta(hours=2) - parsed) < timedelta(seconds=5)
    for bad in ("2026-12-24T18:00:00", "tomorrow", "-2h"):
        with pytest.raises(click.BadParameter):
            parse_forcetime(bad)


def test_since_takes_ago_or_iso() -> None:
    value = since_value("2h")
    assert value is not None and value.endswith("Z")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - timedelta(hours=2) - parsed) < timedelta(seconds=5)
    assert since_value("2026-11-01T00:00:00Z") == "2026-11-01T00:00:00Z"
    assert since_value(None) is None


def _response(status: int, body: object) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, content=content)


def test_a_refusal_is_one_line_with_the_service_error() -> None:
    error = refusal(
        "artifacts",
        _response(
            409,
            {
                "error": "duplicate",
                "message": "this image is already in the catalogue",
                "software_id": "3",
            },
        ),
        "GAGGLE_API_KEY",
    )
    assert error.message == (
        "artifacts answered 409 duplicate: this image is already in the catalogue (software_id 3)"
    )
    assert error.exit_code == 1
    # Lists (validation problems) are left out; the message already names the first one.
    error = refusal(
        "rollouts",
        _response(
            400,
            {
                "error": "invalid_request",
                "message": "invalid name: too short",
                "problems": [{"field": "name"}],
            },
        ),
        None,
    )
    assert error.message == "rollouts answered 400 invalid_request: invalid name: too short"


def test_401_points_at_the_key_and_where_it_came_from() -> None:
    error = refusal(
        "registry",
        _response(401, {"error": "unauthenticated", "message": "invalid token"}),
        "--key",
    )
    assert error.message == (
        "registry answered 401 unauthenticated: invalid token; check the key from --key"
    )


def test_an_answer_that_is_not_json() -> None:
    error = refusal("rollouts", _response(502, b"<html>\n Bad   gateway </html>"), None)
    assert error.message == "rollouts answered 502: <html> Bad gateway </html>"
    assert "\n" not in error.message


def test_sse_events_and_comments() -> None:
    lines = [
        ": connected",
        "",
        "event: action.feedback",
        'data: {"a": 1}',
        "",
        ": keep-alive",
        "",
        "data: x",
        "data: y",
        "",
    ]
    assert list(_sse(iter(lines))) == [
        (":", "connected"),
        ("action.feedback", '{"a": 1}'),
        (":", "keep-alive"),
        ("message", "x\ny"),
    ]


def test_feedback_line() -> None:
    doc = {
        "controller_id": "dev-1",
        "action_id": "7",
        "occurred_at": "2026-11-24T01:02:03.456Z",
        "status": {
            "execution": "proceeding",
            "finished": "none",
            "progress": {"cnt": 2, "of": 5},
            "details": ["Downloading", "50 %"],
        },
    }
    assert feedback_line("action.feedback", doc) == (
        "2026-11-24 01:02:03  dev-1  action 7  proceeding  2/5  Downloading | 50 %"
    )
    closed = {
        "controller_id": "d",
        "action_id": "8",
        "status": {"execution": "closed", "finished": "success"},
    }
    assert feedback_line("cancel.feedback", closed) == "-  d  cancel 8  closed  success"


def test_watch_outcomes() -> None:
    counters = {"total": 4, "success": 4, "failure": 0, "running": 0, "pending": 0}
    done = outcome({"id": "3", "state": "finished", "counters": counters})
    assert done is not None and done.exit_code == 0
    aborted = outcome({"id": "3", "state": "aborted", "reason": "aborted by an operator"})
    assert aborted is not None and aborted.exit_code == 1
    assert aborted.message == "rollout 3 aborted: aborted by an operator"
    tripped = outcome({"id": "3", "state": "paused", "reason": "error threshold exceeded: …"})
    assert tripped is not None and tripped.exit_code == 1
    assert outcome({"id": "3", "state": "paused", "reason": "paused by an operator"}) is None
    assert outcome({"id": "3", "state": "running"}) is None
    assert outcome({"id": "3", "state": "created"}) is None


def test_watch_shows_the_queued_devices_of_each_wave() -> None:
    doc = {
        "id": "4",
        "name": "capped",
        "state": "running",
        "current_wave": 1,
        "counters": {"total": 10, "success": 2, "running": 3, "pending": 5, "queued": 5},
        "waves": [
            {
                "wave": 1,
                "counters": {"total": 10, "success": 2, "running": 3, "pending": 5, "queued": 5},
            }
        ],
    }
    console = Console(record=True, width=140)
    console.print(watch_render(doc))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "QUEUED" in line)
    row = next(line for line in lines if line.startswith("wave 1"))
    names = header.split()
    assert names == [
        "DONE",
        "SUCCESS",
        "FAILURE",
        "RUNNING",
        "QUEUED",
        "PENDING",
        "CANCELED",
        "TIMEOUT",
        "ROLLBACK",
        "SOAKING",
    ]
    assert row.split()[-len(names) :] == ["2/10", "2", "0", "3", "5", "5", "0", "0", "0", "0"]


def test_watch_says_why_a_rollout_stopped_and_counts_each_kind_of_failure() -> None:
    reason = (
        "error threshold exceeded: 12 of 100 devices failed (12.0 % > 10 %); "
        "so far 2 failed, 10 rolled back"
    )
    counters = {
        "total": 100,
        "success": 80,
        "failure": 12,
        "rolled_back": 10,
        "running": 8,
        "soaking": 3,
    }
    doc = {
        "id": "5",
        "name": "ab",
        "state": "aborted",
        "reason": reason,
        "current_wave": 1,
        "counters": counters,
        "waves": [{"wave": 1, "counters": counters}],
    }
    console = Console(record=True, width=160)
    console.print(watch_render(doc))
    out = console.export_text()
    assert reason in out
    row = next(line for line in out.splitlines() if line.startswith("wave 1"))
    assert row.split()[-10:] == ["92/100", "80", "12", "8", "0", "0", "0", "0", "10", "3"]
    stopped = outcome(doc)
    assert stopped is not None and stopped.exit_code == 1 and "10 rolled back" in stopped.message
    assert counters_line(counters) == (
        "80/100 success (3 soaking), 12 failure (10 rolled back), 8 running, 0 pending"
    )


def test_watch_says_a_rollout_waits_for_approval() -> None:
    doc = {"id": "5", "name": "gated", "state": "created", "approval": "pending", "waves": []}
    console = Console(record=True, width=140)
    console.print(watch_render(doc))
    assert "waits for approval" in console.export_text()
    assert outcome(doc) is None  # watched on until it is approved (or denied)


def test_formatting() -> None:
    assert when("2026-11-24T01:02:03.456789Z") == "2026-11-24 01:02:03"
    assert when(None) == "-"
    assert size(999) == "999 B"
    assert size(100_788) == "100.8 kB"
    assert counters_line({"total": 3, "success": 1, "canceled": 1}) == (
        "1/3 success, 0 failure, 0 running, 0 pending, 1 canceled"
    )
    capped = {"total": 10, "running": 3, "pending": 7, "queued": 7}
    assert counters_line(capped) == "0/10 success, 0 failure, 3 running, 7 pending (7 queued)"


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GAGGLE_* settings, no user config, an empty current folder."""
    for name in list(os.environ):
        if name.startswith("GAGGLE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_without_a_key_commands_say_where_to_put_one(
    bare: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["devices", "list"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("gaggle: no API key: pass --key, set GAGGLE_API_KEY")
    assert len(captured.err.strip().splitlines()) == 1


def test_config_shows_settings_and_sources(
    bare: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GAGGLE_ROLLOUTS_URL", "http://env-rollouts:1")
    assert (
        run(["--registry", "http://flag:1", "--key", "ggl_abcdefghijkl_secret", "config", "--json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["sources"] == {"registry": "flag", "artifacts": "default", "rollouts": "env"}
    assert doc["rollouts"] == "http://env-rollouts:1"
    assert doc["key"] == "ggl_abcdefghijkl…" and doc["key_source"] == "--key"


def test_a_bad_config_file_is_one_line(bare: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bare / "bad.toml").write_text("nonsense")
    assert run(["--config", str(bare / "bad.toml"), "rollouts", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gaggle: config file ") and len(err.strip().splitlines()) == 1


def test_a_bad_url_is_one_line(bare: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--key", "k", "--rollouts", "ftp://x", "rollouts", "list"]) == 1
    assert capsys.readouterr().err == "gaggle: rollouts URL 'ftp://x' is not an http(s) URL\n"


def test_signature_state_and_lines() -> None:
    from gaggle_cli.software import signature_lines, signature_state

    verified = {
        "trust": "verified",
        "signature": {
            "state": "verified",
            "method": "cms",
            "signer": {"subject": "CN=release", "fingerprint": "ab" * 32},
            "verified_at": "2026-01-02T03:04:05+00:00",
        },
        "image_check": {"checked": ["a"], "missing": [], "unhashed": ["b"], "unreferenced": []},
    }
    assert signature_state(verified) == "verified (cms)"
    lines = dict(signature_lines(verified))
    assert lines["signer"].startswith("CN=release (sha256 abababab")
    assert lines["verified"] == "2026-01-02 03:04:05"
    assert lines["image hashes"] == "1 checked"
    assert lines["  unhashed"] == ["b"]
    assert "why" not in lines
    untrusted = {"trust": "untrusted", "signature": {"reason": "entry removed"}}
    assert signature_state(untrusted) == "untrusted"
    assert dict(signature_lines(untrusted))["why"] == "entry removed"
    assert signature_state({}) == "unchecked"
