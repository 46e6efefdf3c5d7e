"""Where ``gaggle`` finds the services and its API key: flag > environment > config file > stack.

The config file is TOML with the same keys as the flags (``registry``, ``artifacts``,
``rollouts``, ``key``; also ``key_file`` and ``timeout``). It is ``--config PATH``, else
``$GAGGLE_CONFIG``, else ``$XDG_CONFIG_HOME/gaggle/config.toml`` (``~/.config/...``). Without a
URL or key from anywhere else, they come from what ``make run`` writes in its data folder,
``.gaggle/`` under the current folder (``$GAGGLE_DATA_DIR`` when that is set): the URLs from
``urls.toml`` and the key from ``admin.key``. Without those, the URLs are the default ports.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICES = ("registry", "artifacts", "rollouts")
DEFAULT_URLS = {
    "registry": "http://127.0.0.1:8081",
    "artifacts": "http://127.0.0.1:8082",
    "rollouts": "http://127.0.0.1:8083",
}
URL_ENV = {
    "registry": "GAGGLE_REGISTRY_URL",
    "artifacts": "GAGGLE_ARTIFACTS_URL",
    "rollouts": "GAGGLE_ROLLOUTS_URL",
}
KEY_ENV = "GAGGLE_API_KEY"
DATA_DIR_ENV = "GAGGLE_DATA_DIR"
STACK_URLS_FILE = "urls.toml"
ADMIN_KEY_FILE = "admin.key"
CONFIG_ENV = "GAGGLE_CONFIG"
TIMEOUT_ENV = "GAGGLE_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
FILE_KEYS = frozenset({*SERVICES, "key", "key_file", "timeout"})


class ConfigError(Exception):
    """The configuration cannot be used (a bad file, a missing key)."""


@dataclass(frozen=True)
class Config:
    """The resolved targets and credentials.

    Attributes:
        urls: base URL of each service (``registry``, ``artifacts``, ``rollouts``), no trailing
            slash.
        key: the operator API key, or None when none was found anywhere.
        key_source: where the key came from (for messages), e.g. ``--key`` or a file path.
        timeout: seconds a request may wait for an answer.
        config_file: the config file read, if any.
        sources: where each URL came from (``flag``, ``env``, ``file``, ``stack``: the URLs
            file of ``make run``, ``default``).
    """

    urls: dict[str, str]
    key: str | None
    key_source: str | None
    timeout: float
    config_file: Path | None
    sources: dict[str, str]

    def url(self, service: str) -> str:
        """The base URL of ``service``."""
        return self.urls[service]


def config_path(flag: str | None, env: Mapping[str, str], home: Path) -> tuple[Path | None, bool]:
    """The config file to read and whether it was asked for explicitly.

    Args:
        flag: ``--config`` if given.
        env: the environment.
        home: the user's home folder.

    Returns:
        ``(path, explicit)``; ``explicit`` files must exist, the default one may be missing.
    """
    if flag:
        return Path(flag).expanduser(), True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser(), True
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return base / "gaggle" / "config.toml", False


def read_file(path: Path) -> dict[str, Any]:
    """The settings of a config file.

    Raises:
        ConfigError: unreadable, not TOML, an unknown key, or a value of the wrong type.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key {unknown[0]!r} "
            f"(known: {', '.join(sorted(FILE_KEYS))})"
        )
    for name, value in data.items():
        wanted: type | tuple[type, ...] = (int, float) if name == "timeout" else str
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise ConfigError(f"config file {path}: {name} has the wrong type")
    return data


def data_dir(env: Mapping[str, str], cwd: Path) -> Path:
    """The data folder of ``make run``: ``$GAGGLE_DATA_DIR``, else ``.gaggle`` (under ``cwd``)."""
    folder = Path(env[DATA_DIR_ENV]) if env.get(DATA_DIR_ENV) else Path(".gaggle")
    return folder if folder.is_absolute() else cwd / folder


def read_stack_urls(path: Path) -> dict[str, str]:
    """The services' URLs from the URLs file of ``make run``; empty when there is none.

    Raises:
        ConfigError: the file is unreadable, not TOML, or has a URL that is not a string.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; remove it or run make run") from exc
    urls: dict[str, str] = {}
    for service in SERVICES:
        value = data.get(service)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {service} has the wrong type")
        urls[service] = value
    return urls


def _read_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the API key file {path}: {exc.strerror or exc}") from exc
    if not key:
        raise ConfigError(f"the API key file {path} is empty")
    return key


def resolve(
    *,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    cwd: Path,
    home: Path,
) -> Config:
    """Resolve every setting: flag > environment > config file > default.

    Args:
        flags: command-line values (``registry``, ``artifacts``, ``rollouts``, ``key``,
            ``config``, ``timeout``); None where not given.
        env: the environment.
        cwd: the current folder (for ``.gaggle/``, the data folder of ``make run``).
        home: the user's home folder (for the default config file).

    Returns:
        The resolved configuration.

    Raises:
        ConfigError: an explicit config file that is missing or malformed, an unreadable key
            file, a malformed URLs file of ``make run``, or a malformed timeout.
    """
    path, explicit = config_path(flags.get("config"), env, home)
    file: dict[str, Any] = {}
    used_file: Path | None = None
    if path is not None and (explicit or path.is_file()):
        if explicit and not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        file = read_file(path)
        used_file = path

    stack: dict[str, str] | None = None
    urls: dict[str, str] = {}
    sources: dict[str, str] = {}
    for service in SERVICES:
        given = flags.get(service) or env.get(URL_ENV[service]) or file.get(service)
        if not given and stack is None:
            stack = read_stack_urls(data_dir(env, cwd) / STACK_URLS_FILE)
        for source, value in (
            ("flag", flags.get(service)),
            ("env", env.get(URL_ENV[service])),
            ("file", file.get(service)),
            ("stack", (stack or {}).get(service)),
            ("default", DEFAULT_URLS[service]),
        ):
            if value:
                urls[service] = str(value).rstrip("/")
                sources[service] = source
                break

    key, key_source = _resolve_key(flags, env, file, used_file, cwd)

    timeout: float = DEFAULT_TIMEOUT
    for source, raw in (
        ("--timeout", flags.get("timeout")),
        (TIMEOUT_ENV, env.get(TIMEOUT_ENV)),
        ("the config file", file.get("timeout")),
    ):
        if raw is None or raw == "":
            continue
        try:
            timeout = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: timeout must be a number of seconds") from exc
        if timeout <= 0:
            raise ConfigError(f"{source}: timeout must be positive")
        break
    return Config(urls, key, key_source, timeout, used_file, sources)


def _resolve_key(
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file: Mapping[str, Any],
    used_file: Path | None,
    cwd: Path,
) -> tuple[str | None, str | None]:
    if flags.get("key"):
        return str(flags["key"]).strip(), "--key"
    if env.get(KEY_ENV):
        return env[KEY_ENV].strip(), KEY_ENV
    if file.get("key"):
        return str(file["key"]).strip(), f"config file {used_file}"
    if file.get("key_file"):
        key_path = Path(str(file["key_file"])).expanduser()
        if not key_path.is_absolute() and used_file is not None:
            key_path = used_file.parent / key_path
        return _read_key(key_path), str(key_path)
    fallback = data_dir(env, cwd) / ADMIN_KEY_FILE
    if fallback.is_file():
        return _read_key(fallback), str(fallback)
    return None, None
