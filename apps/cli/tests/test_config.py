"""Where ``gaggle`` takes its settings from: flag > environment > config file > default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gaggle_cli.config import DEFAULT_TIMEOUT, DEFAULT_URLS, URL_ENV, ConfigError, resolve


def _resolve(
    tmp_path: Path,
    *,
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Any:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    work = cwd or tmp_path / "work"
    work.mkdir(exist_ok=True)
    return resolve(flags=flags or {}, env=env or {}, cwd=work, home=home)


def _user_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "home" / ".config" / "gaggle" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_anything(tmp_path: Path) -> None:
    config = _resolve(tmp_path)
    assert config.urls == DEFAULT_URLS
    assert config.sources == dict.fromkeys(DEFAULT_URLS, "default")
    assert config.key is None and config.key_source is None
    assert config.timeout == DEFAULT_TIMEOUT
    assert config.config_file is None


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    _user_config(
        tmp_path,
        'registry = "http://file-registry:1"\n'
        'artifacts = "http://file-artifacts:2"\n'
        'rollouts = "http://file-rollouts:3/"\n'
        'key = "file-key"\n'
        "timeout = 7\n",
    )
    env = {
        "GAGGLE_REGISTRY_URL": "http://env-registry:1",
        "GAGGLE_ARTIFACTS_URL": "http://env-artifacts:2",
        "GAGGLE_API_KEY": "env-key",
    }
    flags = {"registry": "http://flag-registry:1", "key": None}
    config = _resolve(tmp_path, flags=flags, env=env)
    assert config.urls == {
        "registry": "http://flag-registry:1",
        "artifacts": "http://env-artifacts:2",
        "rollouts": "http://file-rollouts:3",  # trailing slash dropped
    }
    assert config.sources == {"registry": "flag", "artifacts": "env", "rollouts": "file"}
    assert (config.key, config.key_source) == ("env-key", "GAGGLE_API_KEY")
    assert config.timeout == 7

    config = _resolve(tmp_path, flags={"key": "flag-key", "timeout": 2.5}, env=env)
    assert (config.key, config.key_source) == ("flag-key", "--key")
    assert config.timeout == 2.5

    config = _resolve(tmp_path)
    assert config.key == "file-key" and "config file" in (config.key_source or "")
    assert config.urls["registry"] == "http://file-registry:1"


def test_admin_key_of_make_run_is_the_last_resort(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / ".gaggle").mkdir(parents=True)
    (work / ".gaggle" / "admin.key").write_text("ggl_local_key\n")
    config = _resolve(tmp_path, cwd=work)
    assert config.key == "ggl_local_key"
    assert config.key_source == str(work / ".gaggle" / "admin.key")
    # Anything else wins over it.
    assert _resolve(tmp_path, cwd=work, env={"GAGGLE_API_KEY": "k"}).key == "k"
    _user_config(tmp_path, 'key = "from-file"\n')
    assert _resolve(tmp_path, cwd=work).key == "from-file"


def test_admin_key_follows_gaggle_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.key").write_text("ggl_data_dir_key")
    config = _resolve(tmp_path, env={"GAGGLE_DATA_DIR": str(data)})
    assert config.key == "ggl_data_dir_key"


def test_config_file_from_flag_or_env_and_key_file_next_to_it(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "key.txt").write_text("ggl_from_key_file\n")
    path = folder / "gaggle.toml"
    path.write_text('rollouts = "http://r:9"\nkey_file = "key.txt"\n')
    _user_config(tmp_path, 'rollouts = "http://user:9"\n')

    by_env = _resolve(tmp_path, env={"GAGGLE_CONFIG": str(path)})
    assert by_env.config_file == path
    assert by_env.urls["rollouts"] == "http://r:9"
    assert by_env.key == "ggl_from_key_file"

    other = tmp_path / "other.toml"
    other.write_text('rollouts = "http://flag-file:9"\n')
    by_flag = _resolve(tmp_path, flags={"config": str(other)}, env={"GAGGLE_CONFIG": str(path)})
    assert by_flag.urls["rollouts"] == "http://flag-file:9"

    default = _resolve(tmp_path)
    assert default.urls["rollouts"] == "http://user:9"


def test_xdg_config_home_moves_the_default_file(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "gaggle").mkdir(parents=True)
    (xdg / "gaggle" / "config.toml").write_text('registry = "http://xdg:1"\n')
    config = _resolve(tmp_path, env={"XDG_CONFIG_HOME": str(xdg)})
    assert config.urls["registry"] == "http://xdg:1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("registry = ", "not valid TOML"),
        ('regsitry = "http://x"\n', "unknown key 'regsitry'"),
        ("registry = 5\n", "registry has the wrong type"),
        ('timeout = "soon"\n', "timeout has the wrong type"),
        ("timeout = -1\n", "timeout must be positive"),
        ('key_file = "missing.key"\n', "cannot read the API key file"),
    ],
)
def test_a_bad_config_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        _resolve(tmp_path, flags={"config": str(path)})


def test_an_explicit_config_file_must_exist_the_default_need_not(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        _resolve(tmp_path, env={"GAGGLE_CONFIG": str(tmp_path / "nope.toml")})
    assert _resolve(tmp_path).config_file is None


def test_bad_timeout_from_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GAGGLE_TIMEOUT"):
        _resolve(tmp_path, env={"GAGGLE_TIMEOUT": "x"})
    assert _resolve(tmp_path, env={"GAGGLE_TIMEOUT": "4"}).timeout == 4


def _stack_urls(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "urls.toml").write_text(text)


STACK_URLS = (
    'gateway = "http://127.0.0.1:9180"\n'
    'registry = "http://127.0.0.1:9181"\n'
    'artifacts = "http://127.0.0.1:9182"\n'
    'rollouts = "http://127.0.0.1:9183"\n'
    'nats = "nats://127.0.0.1:9250"\n'
)


def test_urls_of_make_run_come_after_flag_env_and_config_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _stack_urls(work / ".gaggle", STACK_URLS)
    config = _resolve(tmp_path, cwd=work)
    assert config.urls == {
        "registry": "http://127.0.0.1:9181",
        "artifacts": "http://127.0.0.1:9182",
        "rollouts": "http://127.0.0.1:9183",
    }
    assert config.sources == dict.fromkeys(DEFAULT_URLS, "stack")

    _user_config(tmp_path, 'rollouts = "http://file-rollouts:3"\n')
    config = _resolve(
        tmp_path,
        cwd=work,
        flags={"registry": "http://flag-registry:1"},
        env={"GAGGLE_ARTIFACTS_URL": "http://env-artifacts:2"},
    )
    assert config.urls == {
        "registry": "http://flag-registry:1",
        "artifacts": "http://env-artifacts:2",
        "rollouts": "http://file-rollouts:3",
    }
    assert config.sources == {"registry": "flag", "artifacts": "env", "rollouts": "file"}


def test_urls_of_make_run_follow_gaggle_data_dir_and_may_be_partial(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _stack_urls(data, 'registry = "http://127.0.0.1:9181"\n')
    config = _resolve(tmp_path, env={"GAGGLE_DATA_DIR": str(data)})
    assert config.urls["registry"] == "http://127.0.0.1:9181"
    assert config.sources == {"registry": "stack", "artifacts": "default", "rollouts": "default"}
    # Another folder's data folder is not read.
    assert _resolve(tmp_path).urls == DEFAULT_URLS


def test_urls_file_is_not_read_when_every_url_is_given(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _stack_urls(work / ".gaggle", "not toml at all = = =")
    env = {name: f"http://{service}:1" for service, name in URL_ENV.items()}
    assert _resolve(tmp_path, cwd=work, env=env).sources == dict.fromkeys(DEFAULT_URLS, "env")


@pytest.mark.parametrize(
    ("text", "message"),
    [("registry = ", "is not valid TOML"), ("registry = 9181\n", "registry has the wrong type")],
)
def test_a_broken_urls_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    work = tmp_path / "work"
    _stack_urls(work / ".gaggle", text)
    with pytest.raises(ConfigError, match=message):
        _resolve(tmp_path, cwd=work)
