r"""``gaggle-sim``: run a virtual fleet against a DDI server from the command line.

    gaggle-sim --url http://127.0.0.1:8080/default --devices 2000 --poll server --duration 60 \\
        --fail 0.05 --slow 0.1 --offline 0.05 --cut 0.1 --verify sha256

A progress line on stderr shows polls (and their rate), downloads and outcomes while it runs; a
summary follows at the end, and ``--json`` prints the final counters on stdout. Ctrl-C (or
SIGTERM) stops the fleet cleanly and still prints the summary; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gaggle_sim.config import FleetConfig
from gaggle_sim.fleet import run_fleet
from gaggle_sim.stats import FleetStats


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("a share is a number between 0 and 1")
    return value


def _poll(text: str) -> str:
    if text in ("server", "fast", "once"):
        return text
    try:
        if float(text) < 0:
            raise ValueError(text)
    except ValueError:
        raise argparse.ArgumentTypeError("server, fast, once or a number of seconds") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="gaggle-sim",
        description="Run N virtual hawkBit DDI devices against Gaggle, gooseBit or hawkBit.",
    )
    p.add_argument(
        "--url",
        required=True,
        help="DDI root including the tenant, e.g. http://127.0.0.1:8080/default",
    )
    p.add_argument("--devices", type=int, default=100, help="number of devices (100)")
    p.add_argument("--prefix", default="sim-", help="controller id prefix (sim-)")
    p.add_argument("--first-index", type=int, default=0, help="index of the first device (0)")
    p.add_argument("--hw-model", default="sim-board", help="hw_boardname reported (sim-board)")
    p.add_argument("--hw-revision", default="1.0", help="hw_revision reported (1.0)")
    p.add_argument("--sw-version", default="1.0.0", help="starting sw_version (1.0.0)")
    p.add_argument(
        "--poll",
        type=_poll,
        default="server",
        help="server (obey the answer's sleep), fast (load test), once, or seconds (server)",
    )
    p.add_argument("--jitter", type=float, default=0.1, help="+- share of each interval (0.1)")
    p.add_argument(
        "--ramp-up",
        type=float,
        default=0.0,
        help="spread the first polls over this many seconds (0: all at once)",
    )
    p.add_argument(
        "--connections", type=int, default=64, help="concurrent requests/connections (64)"
    )
    p.add_argument(
        "--verify",
        choices=("sha256", "head", "none"),
        default="sha256",
        help="check the whole artifact, read only its first 64 KiB, or read unchecked",
    )
    p.add_argument("--fail", type=_share, default=0.0, help="share whose install fails")
    p.add_argument("--slow", type=_share, default=0.0, help="share that download/install slowly")
    p.add_argument("--offline", type=_share, default=0.0, help="share that go offline once")
    p.add_argument(
        "--offline-seconds", type=float, default=30.0, help="how long offline devices stay away"
    )
    p.add_argument(
        "--offline-within",
        type=float,
        default=60.0,
        help="offline devices leave at a random moment within this many seconds (60)",
    )
    p.add_argument("--cut", type=_share, default=0.0, help="share that cut and resume downloads")
    p.add_argument(
        "--silent",
        type=_share,
        default=0.0,
        help="share that go silent after a successful install (never poll again)",
    )
    p.add_argument(
        "--fallback",
        type=_share,
        default=0.0,
        help="share that fall back to their old version after a successful install (A/B)",
    )
    p.add_argument("--install-seconds", type=float, default=0.0, help="install time (0)")
    p.add_argument(
        "--slow-install-seconds", type=float, default=5.0, help="install time of slow devices (5)"
    )
    p.add_argument(
        "--slow-rate",
        type=float,
        default=256 * 1024,
        help="download speed of slow devices, bytes/s (262144)",
    )
    p.add_argument("--gateway-token", help="send Authorization: GatewayToken <token>")
    p.add_argument("--device-token", help="send Authorization: TargetToken <token> (all devices)")
    p.add_argument(
        "--device-tokens",
        type=Path,
        help="JSON file {controller_id: token}: one TargetToken per device",
    )
    p.add_argument("--seed", type=int, default=0, help="picks the misbehaving devices (0)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s (30)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument(
        "--until-updates",
        type=int,
        help="stop once this many updates ended (successes + failures)",
    )
    p.add_argument("--json", action="store_true", help="print the final counters as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress line and no summary")
    return p


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    """The fleet the command line describes.

    Raises:
        ValueError: inconsistent settings.
    """
    tokens: dict[str, str] | None = None
    if args.device_tokens is not None:
        loaded = json.loads(args.device_tokens.read_text())
        if not isinstance(loaded, dict):
            raise ValueError("--device-tokens must hold a JSON object {controller_id: token}")
        tokens = {str(k): str(v) for k, v in loaded.items()}
    return FleetConfig(
        base_url=args.url,
        count=args.devices,
        id_prefix=args.prefix,
        first_index=args.first_index,
        hw_model=args.hw_model,
        hw_revision=args.hw_revision,
        sw_version=args.sw_version,
        poll=args.poll,
        jitter=args.jitter,
        ramp_up=args.ramp_up,
        connections=args.connections,
        verify=args.verify,
        fail_share=args.fail,
        slow_share=args.slow,
        offline_share=args.offline,
        offline_seconds=args.offline_seconds,
        offline_within=args.offline_within,
        cut_share=args.cut,
        silent_share=args.silent,
        fallback_share=args.fallback,
        install_seconds=args.install_seconds,
        slow_install_seconds=args.slow_install_seconds,
        slow_rate=args.slow_rate,
        gateway_token=args.gateway_token,
        device_token=args.device_token,
        device_tokens=tokens,
        seed=args.seed,
        timeout=args.timeout,
    )


def _per_kind(counts: dict[str, int]) -> str:
    """``12 (poll 10, feedback 2)``: a total and its kinds (only those that happened)."""
    parts = ", ".join(f"{kind} {n:,}" for kind, n in counts.items() if n)
    total = sum(counts.values())
    return f"{total:,} ({parts})" if parts else f"{total:,}"


def summary(stats: FleetStats) -> str:
    """The end-of-run report."""
    s = stats.snapshot()
    lines = [
        f"gaggle-sim: {s['devices']} devices, {s['elapsed_s']:.1f} s",
        f"  polls        {s['polls']:,} ({s['poll_rate']:,.0f}/s), p50 {s['p50_ms']:.2f} ms, "
        f"p99 {s['p99_ms']:.2f} ms, max {s['max_ms']:.1f} ms, {s['poll_errors']} failed",
        f"  answers      {s['other_answers']:,} other than 2xx and 429 (dropped included)",
        f"  configData   {s['config_sent']:,} sent",
        f"  deployments  {s['deployments_seen']:,} seen, {s['downloads']:,} downloads "
        f"({s['download_bytes'] / 1e6:,.1f} MB, {s['resumed']} resumed)",
        f"  results      {s['successes']:,} success, {s['failures']:,} failure "
        f"({s['verify_failures']} checksum), {s['cancels']} canceled, "
        f"{s['went_offline']} went offline, {s['went_silent']} went silent, "
        f"{s['fell_back']} fell back",
        f"  re-offered   {s['reoffered']:,} finished actions offered again "
        f"({s['reoffers']:,} answers), {s['final_retries_gone']:,} retried final reports "
        "answered 410",
        f"  throttled    {_per_kind(s['throttled'])}, waited {s['throttle_wait_s']:,.1f} s",
        f"  5xx          {_per_kind(s['server_errors'])}",
        f"  dropped      {_per_kind(s['dropped'])}",
        f"  errors       {s['errors']:,}",
    ]
    lines.extend(f"    {message}" for message in s["error_samples"][-5:])
    return "\n".join(lines)


async def _run(args: argparse.Namespace, config: FleetConfig) -> FleetStats:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()

    def interrupted() -> None:
        if stop.is_set() and main is not None:
            main.cancel()  # second Ctrl-C: give up at once
        stop.set()

    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, interrupted)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
            pass
    updates = args.until_updates

    def until(stats: FleetStats) -> bool:
        if stop.is_set():
            return True
        return updates is not None and stats.successes + stats.failures >= updates

    try:
        return await run_fleet(config, duration=args.duration, until=until, progress=not args.quiet)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _runner(coro: Callable[[], Coroutine[Any, Any, FleetStats]]) -> FleetStats:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - no uvloop on Windows
        return asyncio.run(coro())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro())


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``gaggle-sim``."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"gaggle-sim: {exc}") from None
    try:
        stats = _runner(lambda: _run(args, config))
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise SystemExit(130) from None
    if not args.quiet:
        print(summary(stats), file=sys.stderr)  # noqa: T201 - the command's report
    if args.json:
        print(json.dumps(stats.snapshot()))  # noqa: T201 - the command's output


if __name__ == "__main__":
    main()
