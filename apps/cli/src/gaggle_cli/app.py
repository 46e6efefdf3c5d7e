"""The ``gaggle`` command group, its global options and the state every command shares."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from gaggle_cli.client import Api, CliError
from gaggle_cli.config import DEFAULT_URLS, Config, ConfigError, resolve
from gaggle_cli.output import details, make_console, print_json

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    """Global options, and the configuration, API client and consoles made from them."""

    flags: dict[str, Any] = field(default_factory=dict)
    json: bool = False
    _config: Config | None = field(default=None, repr=False)
    _api: Api | None = field(default=None, repr=False)
    _out: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        """The resolved configuration (resolved at first use, so ``--help`` needs none).

        Raises:
            CliError: the configuration cannot be used.
        """
        if self._config is None:
            try:
                self._config = resolve(
                    flags=self.flags, env=os.environ, cwd=Path.cwd(), home=Path.home()
                )
            except ConfigError as exc:
                raise CliError(str(exc)) from None
        return self._config

    @property
    def api(self) -> Api:
        """The services' APIs."""
        if self._api is None:
            self._api = Api(self.config)
        return self._api

    @property
    def out(self) -> Console:
        """Console on stdout."""
        if self._out is None:
            self._out = make_console()
        return self._out

    @property
    def err(self) -> Console:
        """Console on stderr (progress, notes)."""
        if self._err is None:
            self._err = make_console(stderr=True)
        return self._err

    def close(self) -> None:
        """Release the HTTP client."""
        if self._api is not None:
            self._api.close()


pass_state = click.make_pass_decorator(State)


def _set_json(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


def json_option(fn: F) -> F:
    """``--json`` on a command too (``gaggle devices list --json``), same as the global one."""
    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print the raw JSON answer and nothing else.",
    )(fn)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.option(
    "--registry",
    metavar="URL",
    help=f"Registry URL [env GAGGLE_REGISTRY_URL; default {DEFAULT_URLS['registry']}].",
)
@click.option(
    "--artifacts",
    metavar="URL",
    help=f"Artifacts URL [env GAGGLE_ARTIFACTS_URL; default {DEFAULT_URLS['artifacts']}].",
)
@click.option(
    "--rollouts",
    metavar="URL",
    help=f"Rollouts URL [env GAGGLE_ROLLOUTS_URL; default {DEFAULT_URLS['rollouts']}].",
)
@click.option(
    "--key",
    metavar="KEY",
    help="Operator API key [env GAGGLE_API_KEY; else the config file; else .gaggle/admin.key].",
)
@click.option(
    "--config",
    "config_file",
    metavar="PATH",
    help="Config file [env GAGGLE_CONFIG; default ~/.config/gaggle/config.toml].",
)
@click.option(
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="How long a request may wait [env GAGGLE_TIMEOUT; default 30].",
)
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON answers and nothing else.")
@click.version_option(package_name="gaggle-cli", prog_name="gaggle")
@click.pass_context
def cli(
    ctx: click.Context,
    registry: str | None,
    artifacts: str | None,
    rollouts: str | None,
    key: str | None,
    config_file: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Operate Gaggle: software, devices, policies, rollouts, keys, audit log and dead letters.

    Talks to the registry, artifacts and rollouts services over their REST APIs with an operator
    API key. Settings come from flags, then the environment, then the config file (TOML with the
    keys registry, artifacts, rollouts, key, key_file, timeout), then the defaults.
    """
    state = ctx.ensure_object(State)
    state.flags = {
        "registry": registry,
        "artifacts": artifacts,
        "rollouts": rollouts,
        "key": key,
        "config": config_file,
        "timeout": timeout,
    }
    state.json = state.json or as_json
    ctx.call_on_close(state.close)


@cli.command("config")
@json_option
@pass_state
def show_config(state: State) -> None:
    """Show the settings in use and where each came from (the key is shortened)."""
    config = state.config
    key = config.key
    shown = None if key is None else (key[:16] + "…" if len(key) > 16 else key)
    doc = {
        "registry": config.urls["registry"],
        "artifacts": config.urls["artifacts"],
        "rollouts": config.urls["rollouts"],
        "sources": config.sources,
        "key": shown,
        "key_source": config.key_source,
        "timeout": config.timeout,
        "config_file": None if config.config_file is None else str(config.config_file),
    }
    if state.json:
        print_json(doc)
        return
    details(
        state.out,
        [
            *((s, f"{config.urls[s]} ({config.sources[s]})") for s in config.urls),
            ("key", f"{shown} ({config.key_source})" if shown else "none found"),
            ("timeout", f"{config.timeout:g} s"),
            ("config file", config.config_file or "none"),
        ],
    )
