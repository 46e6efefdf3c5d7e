"""The README's commands as a new user runs them: `./gaggle` works without uv on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "gaggle"
# A PATH without uv, as on a machine where only Python and make are installed.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"
# What a clean clone has besides the tracked files: nothing of these.
NOT_IN_A_CLONE = (
    ".venv",
    ".tools",
    ".gaggle",
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".schemathesis",
    "results",
)
READMES = sorted(
    str(path.relative_to(ROOT))
    for pattern in ("README.md", "*/README.md", "*/*/README.md")
    for path in ROOT.glob(pattern)
    if not path.relative_to(ROOT).parts[0].startswith(".")
)


def bare_env(**extra: str) -> dict[str, str]:
    """A minimal environment whose PATH has no uv."""
    if shutil.which("uv", path=BARE_PATH):
        pytest.skip(f"uv is installed system-wide ({shutil.which('uv', path=BARE_PATH)})")
    env = {"PATH": BARE_PATH, "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return {**env, **extra}


def project_uv() -> str | None:
    """The uv `make` would use here: from PATH, else the copy `make` installed into .tools/."""
    found = shutil.which("uv")
    if found:
        return found
    private = ROOT / ".tools" / "bin" / "uv"
    if private.exists():
        return str(private)
    # A worktree of a checkout that has the private copy.
    common = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        capture_output=True,
        text=True,
        check=False,
    )
    if common.returncode == 0:
        private = Path(common.stdout.strip()).parent / ".tools" / "bin" / "uv"
        if private.exists():
            return str(private)
    return None


def test_wrapper_runs_the_cli_without_uv_on_path(tmp_path: Path) -> None:
    # From another folder too: the wrapper finds its checkout's environment.
    out = subprocess.run(
        [str(WRAPPER), "--help"], cwd=tmp_path, env=bare_env(), capture_output=True, timeout=60
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().startswith("Usage: gaggle [OPTIONS] COMMAND")
    # Nothing to set up: nothing on stderr, so `--json` output is all the CLI's.
    assert out.stderr == b""
    out = subprocess.run(
        [str(WRAPPER), "--json", "config"],
        cwd=tmp_path,
        env=bare_env(),
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().lstrip().startswith("{")


def test_wrapper_called_through_a_symlink_uses_its_checkout(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gaggle").symlink_to(WRAPPER)
    out = subprocess.run(
        ["gaggle", "--help"],
        cwd=tmp_path,
        env=bare_env(PATH=f"{tmp_path / 'bin'}:{BARE_PATH}"),
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().startswith("Usage: gaggle [OPTIONS] COMMAND")
    assert out.stderr == b""
    assert not (tmp_path / "bin" / ".venv").exists()


def test_wrapper_sets_up_a_fresh_clone_and_again_after_the_lock_changed(tmp_path: Path) -> None:
    uv = project_uv()
    if uv is None:
        pytest.skip("no uv to set up a fresh environment with (make would install it with pip)")
    clone = tmp_path / "clone"
    shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE), symlinks=True)
    # uv is not on PATH; make is told where the one it would install lives (no network here).
    env = bare_env(UV=uv, UV_OFFLINE="1")
    first = subprocess.run(
        ["./gaggle", "--help"], cwd=clone, env=env, capture_output=True, timeout=300
    )
    assert first.returncode == 0, first.stderr.decode()[-3000:]
    assert first.stdout.decode().startswith("Usage: gaggle [OPTIONS] COMMAND")
    assert (clone / ".venv" / "bin" / "gaggle").exists()
    stamp = clone / ".venv" / ".synced"
    synced_at = stamp.stat().st_mtime_ns

    again = subprocess.run(["./gaggle", "--help"], cwd=clone, env=env, capture_output=True)
    assert again.returncode == 0 and again.stderr == b""
    assert stamp.stat().st_mtime_ns == synced_at  # not set up twice

    later = time.time() + 2
    os.utime(clone / "uv.lock", (later, later))
    third = subprocess.run(
        ["./gaggle", "--help"], cwd=clone, env=env, capture_output=True, timeout=300
    )
    assert third.returncode == 0, third.stderr.decode()[-3000:]
    assert stamp.stat().st_mtime_ns > synced_at


def test_readme_commands_use_no_uv_from_path() -> None:
    assert {"README.md", "apps/cli/README.md", "bench/README.md", "deploy/README.md"} <= set(
        READMES
    )
    for name in READMES:
        text = (ROOT / name).read_text()
        blocks = re.findall(r"^```(?:sh|bash)?\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
        for block in blocks:
            for line in block.splitlines():
                command = line.split("#", 1)[0]
                assert not re.search(r"(^|[\s;&|(])uv\s", command), f"{name}: {line}"
                # The CLI is ./gaggle (the wrapper) or .venv/bin/gaggle: never a bare `gaggle`.
                assert not re.search(r"(^|[;&|]\s*)gaggle\s", command), f"{name}: {line}"
