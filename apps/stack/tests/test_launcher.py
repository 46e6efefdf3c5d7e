"""A service's warm spare: imported ahead, serving only once started, gone with its supervisor."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

from gaggle_stack.launcher import Launcher

SERVICE = """
    import sys
    from pathlib import Path

    from gaggle_runtime.serve import await_activation

    out = Path(sys.argv[0]).parent / "served"
    await_activation()
    out.write_text("served")
"""


def make_launcher(tmp_path: Path) -> Launcher:
    """A launcher of a tiny service that writes ``served`` once it runs."""
    package = tmp_path / "pkg" / "fake_service"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(SERVICE))
    env = {"PYTHONPATH": str(tmp_path / "pkg"), "PATH": "/usr/bin:/bin"}
    return Launcher("fake_service", env, log_file=tmp_path / "log")


def served(tmp_path: Path) -> bool:
    return (tmp_path / "pkg" / "fake_service" / "served").exists()


def test_a_spare_waits_warm_and_serves_once_started(tmp_path: Path) -> None:
    launcher = make_launcher(tmp_path)
    launcher.prepare_spare()
    try:
        assert launcher.spare_warm(timeout=30), (tmp_path / "log").read_text()
        time.sleep(0.2)
        assert not served(tmp_path)
        proc = launcher.start()
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()
        assert served(tmp_path)
        assert not launcher.has_spare
    finally:
        launcher.discard_spare()


def test_a_spare_exits_when_its_supervisor_lets_go_and_a_start_without_one_is_cold(
    tmp_path: Path,
) -> None:
    launcher = make_launcher(tmp_path)
    launcher.prepare_spare()
    assert launcher.spare_warm(timeout=30), (tmp_path / "log").read_text()
    spare, sock = launcher._spare, launcher._sock
    assert spare is not None and sock is not None
    sock.close()  # as when the supervisor dies: the spare sees the end and exits unserved
    assert spare.wait(10) == 0
    assert not served(tmp_path)
    launcher.discard_spare()

    cold = launcher.start()
    try:
        assert cold.wait(30) == 0, (tmp_path / "log").read_text()
    except subprocess.TimeoutExpired:
        cold.kill()
        raise
    assert served(tmp_path)


def test_a_spare_started_before_it_is_warm_still_serves(tmp_path: Path) -> None:
    launcher = make_launcher(tmp_path)
    launcher.prepare_spare()
    proc = launcher.start()  # at once: the spare is still importing
    try:
        assert proc.wait(30) == 0, (tmp_path / "log").read_text()
    finally:
        launcher.discard_spare()
    assert served(tmp_path)
