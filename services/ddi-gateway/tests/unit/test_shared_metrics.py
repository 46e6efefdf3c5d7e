"""The folder a multi-worker gateway's workers share their metrics in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gaggle_gateway.__main__ import shared_metrics
from gaggle_runtime.metrics import MULTIPROC_ENV


def test_without_a_folder_given_a_temporary_one_is_made_and_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with shared_metrics() as folder:
        assert folder.is_dir()
        assert os.environ[MULTIPROC_ENV] == str(folder)
    assert not folder.exists()
    assert MULTIPROC_ENV not in os.environ


def test_a_given_folder_is_emptied_of_earlier_counts_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"old")
    (given / "notes.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    with shared_metrics() as folder:
        assert folder == given
        assert not (given / "counter_123.db").exists()
    assert (given / "notes.txt").read_text() == "not ours"
