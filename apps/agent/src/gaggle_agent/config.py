"""The agent's one TOML configuration file: read, checked, paths resolved.

Relative paths (hooks, download directory, state file, CA file) are taken relative to the
folder of the configuration file, so a test or a package can ship one folder.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HOOK_NAMES", "Config", "ConfigError", "load_config", "parse_config"]

HOOK_NAMES = ("version", "download", "install", "restart", "ready", "confirm", "board", "revision")
"""Hooks the ``[hooks]`` table may name; only ``install`` is required."""

_SECTIONS = {
    "server": {
        "url",
        "tenant",
        "controller_id",
        "target_token",
        "gateway_token",
        "ca_file",
        "verify_tls",
        "timeout",
    },
    "device": {"hw_boardname", "hw_revision", "sw_version", "attributes"},
    "agent": {
        "download_dir",
        "state_file",
        "retry_interval",
        "max_retries",
        "hook_timeout",
        "default_sleep",
        "download_attempts",
    },
    "hooks": set(HOOK_NAMES),
}


class ConfigError(Exception):
    """The configuration file is missing, unreadable or wrong (the message says why)."""


@dataclass(frozen=True)
class Config:
    """Everything the agent needs, checked."""

    url: str
    """``scheme://host[:port]`` of the DDI server (a path prefix before the tenant is allowed)."""
    tenant: str
    controller_id: str
    download_dir: Path
    state_file: Path
    hooks: dict[str, Path]
    """Hook name to executable; ``install`` always present."""
    target_token: str | None = None
    gateway_token: str | None = None
    ca_file: Path | None = None
    verify_tls: bool = True
    timeout: float = 30.0
    """Seconds for connecting and between two reads of one request."""
    hw_boardname: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    """Reported before the first update when there is no ``version`` hook."""
    attributes: dict[str, str] = field(default_factory=dict)
    """Further configData attributes."""
    retry_interval: float = 60.0
    """Seconds before a hook that exited 3 is run again (also between download attempts)."""
    max_retries: int = 60
    """Retries of a hook that keeps exiting 3 before the action fails."""
    hook_timeout: float = 3600.0
    """A hook still running after this many seconds is killed and counts as failed."""
    default_sleep: float = 60.0
    """Seconds between polls while the server has not said (or could not be reached)."""
    download_attempts: int = 5
    """Tries per artifact; each after the first resumes with ``Range``."""

    @property
    def base_url(self) -> str:
        """``{url}/{tenant}/controller/v1/{controller_id}``: the base poll resource."""
        return f"{self.url}/{self.tenant}/controller/v1/{self.controller_id}"

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header value, if a token is configured."""
        if self.target_token is not None:
            return f"TargetToken {self.target_token}"
        if self.gateway_token is not None:
            return f"GatewayToken {self.gateway_token}"
        return None


def load_config(path: Path) -> Config:
    """Read and check the TOML file at ``path``.

    Raises:
        ConfigError: the file cannot be read or parsed, or a value is wrong.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, path.resolve().parent)


def parse_config(raw: dict[str, Any], folder: Path) -> Config:
    """Check a parsed TOML document; relative paths are resolved against ``folder``."""
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        unknown = set(value) - _SECTIONS[name]
        if unknown:
            raise ConfigError(f"[{name}]: unknown key(s) {', '.join(sorted(unknown))}")
    server = raw.get("server", {})
    device = raw.get("device", {})
    agent = raw.get("agent", {})
    hooks_raw = raw.get("hooks", {})

    url = _string(server, "server", "url", required=True).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"[server] url must be http(s)://host[:port], not {url!r}")
    tenant = _string(server, "server", "tenant") or "DEFAULT"
    controller_id = _string(server, "server", "controller_id", required=True)
    for what, value in (("tenant", tenant), ("controller_id", controller_id)):
        if "/" in value or "?" in value or "#" in value or not value.isprintable() or " " in value:
            raise ConfigError(f"[server] {what} must not contain '/', '?', '#' or spaces")
    target_token = _string(server, "server", "target_token")
    gateway_token = _string(server, "server", "gateway_token")
    if target_token is not None and gateway_token is not None:
        raise ConfigError("[server]: set target_token or gateway_token, not both")

    hooks: dict[str, Path] = {}
    for name in HOOK_NAMES:
        value = _string(hooks_raw, "hooks", name)
        if value is not None:
            hooks[name] = _path(folder, value)
    if "install" not in hooks:
        raise ConfigError("[hooks] install is required")

    attributes = device.get("attributes", {})
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise ConfigError("[device] attributes must be a table of strings")

    ca_file = _string(server, "server", "ca_file")
    verify_tls = server.get("verify_tls", True)
    if not isinstance(verify_tls, bool):
        raise ConfigError("[server] verify_tls must be true or false")
    return Config(
        url=url,
        tenant=tenant,
        controller_id=controller_id,
        target_token=target_token,
        gateway_token=gateway_token,
        ca_file=_path(folder, ca_file) if ca_file else None,
        verify_tls=verify_tls,
        timeout=_number(server, "server", "timeout", 30.0, minimum=0.1),
        hw_boardname=_string(device, "device", "hw_boardname"),
        hw_revision=_string(device, "device", "hw_revision"),
        sw_version=_string(device, "device", "sw_version"),
        attributes=dict(attributes),
        download_dir=_path(folder, _string(agent, "agent", "download_dir", required=True)),
        state_file=_path(folder, _string(agent, "agent", "state_file", required=True)),
        hooks=hooks,
        retry_interval=_number(agent, "agent", "retry_interval", 60.0, minimum=0.0),
        max_retries=int(_number(agent, "agent", "max_retries", 60, minimum=0, integer=True)),
        hook_timeout=_number(agent, "agent", "hook_timeout", 3600.0, minimum=0.1),
        default_sleep=_number(agent, "agent", "default_sleep", 60.0, minimum=0.1),
        download_attempts=int(
            _number(agent, "agent", "download_attempts", 5, minimum=1, integer=True)
        ),
    )


def _string(table: dict[str, Any], section: str, key: str, *, required: bool = False) -> Any:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"[{section}] {key} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"[{section}] {key} must be a non-empty string")
    return value


def _number(
    table: dict[str, Any],
    section: str,
    key: str,
    default: float,
    *,
    minimum: float,
    integer: bool = False,
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"[{section}] {key} must be a number")
    if integer and not isinstance(value, int):
        raise ConfigError(f"[{section}] {key} must be a whole number")
    if value < minimum:
        raise ConfigError(f"[{section}] {key} must be at least {minimum}")
    return float(value) if not integer else value


def _path(folder: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path
