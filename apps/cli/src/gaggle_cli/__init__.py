"""gaggle: the operator command line of Gaggle.

It talks only to the services' REST APIs (registry, artifacts, rollouts) with an operator API
key; see ``gaggle --help`` and ``apps/cli/README.md``.
"""

from gaggle_cli.client import Api, CliError
from gaggle_cli.config import Config, ConfigError, resolve

__all__ = ["Api", "CliError", "Config", "ConfigError", "resolve"]
