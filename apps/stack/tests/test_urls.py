"""The stack's URLs, written next to the admin key for the command line to find."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gaggle_stack.__main__ import URLS_FILE, console_env, stack_urls, write_urls


def test_urls_follow_the_port_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAGGLE_REGISTRY_PORT", "9181")
    monkeypatch.delenv("GAGGLE_GATEWAY_PORT", raising=False)
    monkeypatch.delenv("GAGGLE_CONSOLE_PORT", raising=False)
    urls = stack_urls("nats://127.0.0.1:4250")
    assert urls == {
        "gateway": "http://127.0.0.1:8080",
        "registry": "http://127.0.0.1:9181",
        "artifacts": urls["artifacts"],
        "rollouts": urls["rollouts"],
        "console": "http://127.0.0.1:8084",
        "nats": "nats://127.0.0.1:4250",
    }


def test_written_whole_as_toml_for_the_owner_only(tmp_path: Path) -> None:
    (tmp_path / URLS_FILE).write_text('registry = "http://old:1"\nstale = "x"\n')
    urls = {
        "registry": "http://127.0.0.1:9181",
        "nats": 'nats://user:p"w\\d@nats.example:4222',  # quotes and backslashes survive
    }
    path = write_urls(tmp_path, urls)
    assert path == tmp_path / URLS_FILE
    assert tomllib.loads(path.read_text()) == urls  # replaced, not merged
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [URLS_FILE]  # no partial file left


def test_the_console_is_given_the_stacks_service_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAGGLE_ROLLOUTS_PORT", "9183")
    monkeypatch.delenv("GAGGLE_REGISTRY_PORT", raising=False)
    monkeypatch.delenv("GAGGLE_ARTIFACTS_PORT", raising=False)
    given = {"GAGGLE_CONSOLE_ARTIFACTS_URL": "http://files.example:80"}
    assert console_env(given) == {
        "GAGGLE_CONSOLE_REGISTRY_URL": "http://127.0.0.1:8081",
        "GAGGLE_CONSOLE_ROLLOUTS_URL": "http://127.0.0.1:9183",
        "GAGGLE_CONSOLE_ARTIFACTS_URL": "http://files.example:80",
    }
