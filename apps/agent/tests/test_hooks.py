"""Running hooks: arguments, exit codes, stdout lines, timeouts, and stopping a hook early."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gaggle_agent.hooks import run_hook


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_hook_gets_its_arguments_and_its_last_line_is_the_result(tmp_path: Path) -> None:
    hook = script(
        tmp_path, "install", 'echo "elapsed=$1 retry=$2"\necho "meta=$3"\necho "file=$4"\n'
    )
    seen: list[str] = []
    result = run_hook(
        "install", hook, ["7", "2", '{"a": 1}', "/tmp/x.swu"], timeout=10, on_line=seen.append
    )
    assert result.ok and not result.retry
    assert result.lines == ["elapsed=7 retry=2", 'meta={"a": 1}', "file=/tmp/x.swu"]
    assert result.result == "file=/tmp/x.swu"
    assert seen == result.lines


def test_exit_code_3_asks_for_a_retry_and_others_fail(tmp_path: Path) -> None:
    retry = run_hook("ready", script(tmp_path, "r", "echo not yet\nexit 3\n"), [], timeout=10)
    assert retry.retry and not retry.ok and retry.result == "not yet"
    failed = run_hook("ready", script(tmp_path, "f", "echo broken\nexit 1\n"), [], timeout=10)
    assert not failed.ok and not failed.retry
    assert failed.describe() == "ready hook exited with 1"


def test_a_hook_that_cannot_start_fails_like_a_shell_would(tmp_path: Path) -> None:
    result = run_hook("install", tmp_path / "missing", [], timeout=10)
    assert result.exit_code == 127 and not result.ok
    assert "cannot run" in result.result


def test_a_hook_past_its_timeout_is_killed(tmp_path: Path) -> None:
    hook = script(tmp_path, "slow", "echo started\nsleep 30\n")
    result = run_hook("install", hook, [], timeout=0.5)
    assert result.timed_out and not result.ok and not result.retry
    assert result.lines == ["started"]
    assert result.describe() == "install hook timed out"


def test_while_running_is_called_and_its_exception_stops_the_hook(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hook = script(tmp_path, "long", f"echo $$ > {pid_file}\nsleep 30\n")
    calls: list[int] = []

    def meanwhile() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_hook("install", hook, [], timeout=20, every=0.1, while_running=meanwhile)
    assert len(calls) == 2
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_long_output_lines_are_cut_and_stderr_is_not_a_result(tmp_path: Path) -> None:
    hook = script(tmp_path, "noisy", "printf '%05000d\\n' 0\necho oops >&2\n")
    result = run_hook("install", hook, [], timeout=10)
    assert result.ok
    assert len(result.lines) == 1 and len(result.lines[0]) == 4000
