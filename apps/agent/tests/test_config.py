"""Reading the TOML configuration: defaults, resolved paths, and clear refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gaggle_agent.config import ConfigError, load_config, parse_config

MINIMAL = """
[server]
url = "http://ota.example:8080/"
controller_id = "dev-1"
target_token = "secret"

[agent]
download_dir = "dl"
state_file = "/var/lib/gaggle-agent/state.json"

[hooks]
install = "hooks/install"
"""


def test_minimal_file_gets_defaults_and_paths_relative_to_it(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(MINIMAL)
    config = load_config(path)
    assert config.url == "http://ota.example:8080"
    assert config.tenant == "DEFAULT"
    assert config.base_url == "http://ota.example:8080/DEFAULT/controller/v1/dev-1"
    assert config.authorization == "TargetToken secret"
    assert config.download_dir == tmp_path / "dl"
    assert config.state_file == Path("/var/lib/gaggle-agent/state.json")
    assert config.hooks == {"install": tmp_path / "hooks" / "install"}
    assert (config.retry_interval, config.max_retries) == (60.0, 60)


def test_every_setting_is_read(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "server": {
            "url": "https://h",
            "tenant": "t1",
            "controller_id": "c",
            "gateway_token": "g",
            "timeout": 5,
        },
        "device": {
            "hw_boardname": "b",
            "hw_revision": "2",
            "sw_version": "0.1",
            "attributes": {"serial": "42"},
        },
        "agent": {
            "download_dir": "/d",
            "state_file": "s.json",
            "retry_interval": 1.5,
            "max_retries": 2,
            "hook_timeout": 9,
            "default_sleep": 3,
            "download_attempts": 4,
        },
        "hooks": {
            n: f"/h/{n}" for n in ("version", "download", "install", "restart", "ready", "confirm")
        },
    }
    config = parse_config(raw, tmp_path)
    assert config.authorization == "GatewayToken g"
    assert (config.hw_boardname, config.hw_revision, config.sw_version) == ("b", "2", "0.1")
    assert config.attributes == {"serial": "42"}
    assert config.state_file == tmp_path / "s.json"
    assert (config.retry_interval, config.max_retries, config.download_attempts) == (1.5, 2, 4)
    assert set(config.hooks) == {"version", "download", "install", "restart", "ready", "confirm"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["server"].pop("url"), "[server] url is required"),
        (lambda r: r["server"].update(url="ftp://h"), "url must be http(s)"),
        (lambda r: r["server"].update(gateway_token="x"), "not both"),
        (lambda r: r["server"].update(controller_id="a/b"), "controller_id must not contain"),
        (lambda r: r["hooks"].pop("install"), "[hooks] install is required"),
        (lambda r: r["hooks"].update(reboot="/x"), "unknown key(s) reboot"),
        (lambda r: r.update(extra={}), "unknown section [extra]"),
        (lambda r: r["agent"].update(max_retries=1.5), "max_retries must be a whole number"),
        (lambda r: r["agent"].update(retry_interval=-1), "retry_interval must be at least"),
        (lambda r: r["agent"].update(retry_interval="soon"), "retry_interval must be a number"),
        (lambda r: r.update(device={"attributes": {"a": 1}}), "attributes must be a table"),
    ],
)
def test_wrong_settings_are_refused_with_a_clear_message(change: Any, message: str) -> None:
    raw: dict[str, Any] = {
        "server": {"url": "http://h", "controller_id": "c", "target_token": "t"},
        "agent": {"download_dir": "/d", "state_file": "/s"},
        "hooks": {"install": "/i"},
    }
    change(raw)
    with pytest.raises(ConfigError) as err:
        parse_config(raw, Path("/"))
    assert message in str(err.value)


def test_unreadable_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
