"""``gaggle-agent``: read the configuration, set up logging and signals, run the loop."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from gaggle_agent import __version__
from gaggle_agent.agent import Agent
from gaggle_agent.config import ConfigError, load_config

DEFAULT_CONFIG = Path("/etc/gaggle-agent/agent.toml")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="gaggle-agent",
        description="Update this device from a hawkBit DDI server through hook scripts.",
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the TOML configuration file (default {DEFAULT_CONFIG})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request (DEBUG)")
    parser.add_argument("--once", action="store_true", help="one poll cycle, then exit")
    parser.add_argument("--version", action="version", version=f"gaggle-agent {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gaggle-agent: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Agent(config, stop=stop).run(once=args.once)
    return 0


if __name__ == "__main__":
    sys.exit(main())
