"""Tests never hold a wall-clock date that the calendar can overtake.

A test that stamps data with a fixed date and compares it with what a service stamps "now"
passes until that date comes, then fails on every run. Integration and end-to-end tests take
their times relative to now or from an injected clock; a date kept on purpose (a parser's
input, a zone-less timestamp that must be refused) carries the marker `# fixed-date-ok`.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "# fixed-date-ok"
DATED = re.compile(r"datetime\(20\d{2}, *\d+|date\(20\d{2}, *\d+|[\"']20\d{2}-[01]\d-[0-3]\dT")


def dated_lines(paths: list[Path]) -> list[str]:
    return [
        f"{path}:{number}: {line.strip()}"
        for path in paths
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DATED.search(line) and MARKER not in line
    ]


def server_tests() -> list[Path]:
    tops = [ROOT / "tests", *(ROOT / "services").glob("*/tests"), *(ROOT / "libs").glob("*/tests")]
    return sorted(
        path
        for top in tops
        for kind in ("integration", "e2e")
        for path in top.glob(f"{kind}/**/*.py")
    )


def test_no_integration_or_e2e_test_holds_a_wall_clock_date() -> None:
    paths = server_tests()
    assert len(paths) > 20  # the glob found the suites
    assert dated_lines(paths) == []


def test_the_check_sees_each_form_of_a_fixed_date(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)\n"
        "D = date(2031, 1, 2)\n"
        'S = "2026-05-01T12:02:00Z"\n'
        'K = "2026-05-01T12:02:00Z"  # fixed-date-ok\n'
        "NOW = datetime.now(UTC)\n"
    )
    assert [line.split(": ", 1)[1] for line in dated_lines([probe])] == [
        "T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)",
        "D = date(2031, 1, 2)",
        'S = "2026-05-01T12:02:00Z"',
    ]
