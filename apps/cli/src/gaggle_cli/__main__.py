"""Entry point: ``gaggle`` (console script) and ``python -m gaggle_cli``."""

from __future__ import annotations

import os
import sys

import click

from gaggle_cli import access, check, deadletters, devices, rollouts, software, tenants, trust
from gaggle_cli.app import cli
from gaggle_cli.client import EXIT_ERROR, EXIT_INTERRUPTED, CliError

# The command modules register their groups on ``cli`` when imported.
COMMANDS = (access, check, deadletters, devices, rollouts, software, tenants, trust)


def run(argv: list[str] | None = None) -> int:
    """Run ``gaggle`` with ``argv``; the exit code. Errors are one line on stderr."""
    try:
        result = cli.main(args=argv, prog_name="gaggle", standalone_mode=False)
    except CliError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: bad options, missing arguments
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``gaggle devices list | head``): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        click.echo(f"gaggle: unexpected error: {type(exc).__name__}: {exc}", err=True)
        return EXIT_ERROR
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """The console script ``gaggle``."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
