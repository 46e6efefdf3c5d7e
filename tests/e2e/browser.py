"""Debian's Chromium driven by Playwright, for the browser tests; and where their pictures go.

``needs_chromium`` skips a test, saying why, when ``/usr/bin/chromium`` is missing (``.ci/run``
installs it). The ``browser`` and ``shots`` fixtures are offered to every e2e test by
``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser tests need Debian's Chromium at /usr/bin/chromium "
    "(apt-get install chromium; .ci/run installs it)",
)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where a test's pictures go: ``GAGGLE_CONSOLE_SCREENSHOTS`` (as ``docs/console``), else the
    test's temporary folder."""
    where = os.environ.get("GAGGLE_CONSOLE_SCREENSHOTS")
    folder = Path(where) if where else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium, closed after the test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()
