"""The overload scenario of the fleet benchmark: one rollout to a whole fleet at once.

One rollout, one wave of 100 %, to ``n`` devices that poll every few seconds; the devices are the
simulator on the same machine doing what SWUpdate does (poll, deploymentBase, proceeding
feedback, download, closed/success, configData with the new version) and obeying 429 with
``Retry-After``. Measured: the time from the rollout request until every device was told of its
success (final feedback answered 200) and has reported its new version (configData answered
200), every answer other than 2xx and 429 (5xx, dropped connections, other statuses), and a
timeline sampled each second: answers per kind, errors, the rollout's counters as
``GET /api/v1/rollouts/{id}`` returns them, and the gateway's ``gaggle_gateway_sleep_factor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gaggle_sim import Fleet, FleetStats

GOAL_CONFIRMED_S = 60.0
GOAL_OTHER_ANSWERS = 0
TIMELINE_KINDS = ("poll", "feedback", "configData", "deploymentBase", "download")

RolloutState = Callable[[], Awaitable[Any]]
MetricsText = Callable[[], Awaitable[str]]


def since(now: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """The answer counters of a snapshot ``now`` minus those of an earlier one."""
    out: dict[str, Any] = {
        "other_answers": now["other_answers"] - then["other_answers"],
        "throttle_wait_s": round(now["throttle_wait_s"] - then["throttle_wait_s"], 3),
    }
    for key in ("throttled", "server_errors", "dropped"):
        out[key] = {k: v - then[key].get(k, 0) for k, v in now[key].items()}
    out["answers"] = {
        kind: {s: n - then["answers"].get(kind, {}).get(s, 0) for s, n in statuses.items()}
        for kind, statuses in now["answers"].items()
    }
    return out


def confirmed(fleet: Fleet, version: str) -> int:
    """Devices that run ``version`` and whose configData saying so was answered 200."""
    return sum(1 for d in fleet.devices if d.sw_version == version and not d.report_version)


def sleep_factor(metrics: str) -> float | None:
    """``gaggle_gateway_sleep_factor`` from a Prometheus text page, None when absent."""
    for line in metrics.splitlines():
        if line.startswith("gaggle_gateway_sleep_factor"):
            with contextlib.suppress(ValueError, IndexError):
                return float(line.split()[-1])
    return None


def _counts(stats: FleetStats) -> dict[str, int]:
    """The running totals one timeline point is the difference of."""
    out: dict[str, int] = {}
    for kind in TIMELINE_KINDS:
        statuses = stats.answers.get(kind, {})
        out[f"{kind}_2xx"] = sum(n for s, n in statuses.items() if 200 <= s < 300)
        out[f"{kind}_429"] = statuses.get(429, 0)
    out["errors"] = stats.other_answers()
    return out


class Timeline:
    """Samples the fleet and the server once a second, from the rollout request on."""

    def __init__(
        self,
        fleet: Fleet,
        version: str,
        rollout_state: RolloutState | None,
        metrics: MetricsText | None,
        every_s: float = 1.0,
    ) -> None:
        self.fleet = fleet
        self.version = version
        self.rollout_state = rollout_state
        self.metrics = metrics
        self.every_s = every_s
        self.points: list[dict[str, Any]] = []
        self._t0 = 0.0
        self._base: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Count from now."""
        self._t0 = time.perf_counter()
        self._base = _counts(self.fleet.stats)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Take a last point and stop (server reads still on their way are dropped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sample()
        for task in list(self._fetches):
            task.cancel()
        await asyncio.gather(*self._fetches, return_exceptions=True)

    async def _run(self) -> None:
        next_at = self._t0
        while True:
            self._sample()
            next_at += self.every_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    def _sample(self) -> None:
        stats = self.fleet.stats
        point: dict[str, Any] = {
            "t": round(time.perf_counter() - self._t0, 2),
            **_counts(stats),
            "successes": stats.successes,
            "confirmed": confirmed(self.fleet, self.version),
        }
        self.points.append(point)
        # The server is read on the side: a slow answer must not hold up the sampling.
        task = asyncio.create_task(self._fetch(point))
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch(self, point: dict[str, Any]) -> None:
        if self.rollout_state is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    view = await self.rollout_state()
                counters = view.get("counters") if isinstance(view, dict) else None
                if isinstance(counters, dict):
                    point["rollout"] = {
                        k: v for k, v in counters.items() if isinstance(v, int | float)
                    }
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    point["sleep_factor"] = sleep_factor(await self.metrics())

    def rates(self) -> list[dict[str, Any]]:
        """The points with answers and errors per second since the point before."""
        out = []
        prev: dict[str, Any] = {"t": 0.0, **self._base}
        for point in self.points:
            row = dict(point)
            dt = point["t"] - prev["t"]
            for key in self._base:
                delta = point[key] - prev[key]
                row[key] = round(delta / dt, 1) if dt > 0 else 0.0
            out.append(row)
            prev = point
        return out


async def run_overload(
    fleet: Fleet,
    *,
    version: str,
    start_rollout: Callable[[], Awaitable[Any]],
    rollout_state: Callable[[Any], Awaitable[Any]] | None,
    metrics: MetricsText | None,
    check_alive: Callable[[], None],
    timeout: float,
) -> dict[str, Any]:
    """Start the rollout on a running, registered fleet; wait until every device confirmed.

    Returns:
        Times, counts and the timeline (the fleet is left running).
    """
    n = len(fleet.devices)
    holder: dict[str, Any] = {}
    base = fleet.stats.snapshot()  # what registration cost is not the rollout's

    async def state() -> Any:
        return None if "rollout" not in holder else await rollout_state(holder["rollout"])  # type: ignore[misc]

    timeline = Timeline(fleet, version, state if rollout_state else None, metrics)
    timeline.start()
    t0 = time.perf_counter()
    holder["rollout"] = await start_rollout()
    request_s = time.perf_counter() - t0
    marks: dict[str, float] = {}
    deadline = t0 + timeout
    done = False
    while time.perf_counter() < deadline:
        check_alive()
        stats = fleet.stats
        now = round(time.perf_counter() - t0, 3)
        if stats.successes and "first_success_s" not in marks:
            marks["first_success_s"] = now
        if stats.successes >= n:
            marks.setdefault("all_told_s", now)
            if confirmed(fleet, version) >= n:
                marks["all_confirmed_s"] = now
                done = True
                break
        await asyncio.sleep(0.25)
    elapsed = time.perf_counter() - t0
    await timeline.stop()
    stats = fleet.stats
    snap = since(stats.snapshot(), base)
    return {
        "devices": n,
        "rollout_request_s": round(request_s, 3),
        "timed_out": not done,
        "elapsed_s": round(elapsed, 3),
        **marks,
        "successes": stats.successes,
        "failures": stats.failures,
        "confirmed": confirmed(fleet, version),
        "other_answers": snap["other_answers"],
        "throttled": snap["throttled"],
        "server_errors": snap["server_errors"],
        "dropped": snap["dropped"],
        "answers": snap["answers"],
        "throttle_wait_s": snap["throttle_wait_s"],
        "error_samples": list(stats.error_samples),
        "peak_sleep_factor": max(
            (p["sleep_factor"] for p in timeline.points if p.get("sleep_factor") is not None),
            default=None,
        ),
        "timeline": timeline.rates(),
    }


# --------------------------------------------------------------------------------------------
# Report


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def goal_lines(res: dict[str, Any]) -> list[str]:
    """The two goal lines of one run, as printed."""
    at = res.get("all_confirmed_s")
    if at is None:
        first = (
            f"all confirmed: not within {res['elapsed_s']:.0f} s ({res['confirmed']:,} of "
            f"{res['devices']:,} confirmed, {res['successes']:,} told of success) "
            f"(goal <= {GOAL_CONFIRMED_S:g} s: not met)"
        )
    else:
        first = (
            f"all confirmed in {at:.1f} s "
            f"(goal <= {GOAL_CONFIRMED_S:g} s: {_met(at <= GOAL_CONFIRMED_S)})"
        )
    other = res["other_answers"]
    second = (
        f"answers other than 200/429: {other:,} "
        f"(goal {GOAL_OTHER_ANSWERS}: {_met(other <= GOAL_OTHER_ANSWERS)})"
    )
    return [first, second]


def verdict(res: dict[str, Any]) -> dict[str, Any]:
    """Both goals, met or not."""
    at = res.get("all_confirmed_s")
    return {
        "all_confirmed_s": {
            "value": at,
            "goal": GOAL_CONFIRMED_S,
            "met": at is not None and at <= GOAL_CONFIRMED_S,
        },
        "other_answers": {
            "value": res["other_answers"],
            "goal": GOAL_OTHER_ANSWERS,
            "met": res["other_answers"] <= GOAL_OTHER_ANSWERS,
        },
    }


def _total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def _kinds(counts: dict[str, int]) -> str:
    parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if v)
    return f"{_total(counts):,}" + (f" ({parts})" if parts else "")


def _before(res: dict[str, Any]) -> str:
    """Answers other than 200/429 while the fleet registered: total, 5xx and dropped kinds."""
    before = res.get("before_rollout") or {}
    if "other_answers" not in before:
        return "-"
    text = f"{before['other_answers']:,}"
    for label in ("server_errors", "dropped"):
        counts = before.get(label) or {}
        if _total(counts):
            text += f"; {'5xx' if label == 'server_errors' else 'dropped'} {_kinds(counts)}"
    return text


def table(runs: list[dict[str, Any]], poll_s: float) -> list[str]:
    """A Markdown table, one column per fleet size, and the goal lines of each run."""
    heads = [f"{r['devices']:,} devices" for r in runs]
    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, cells: list[str], goal: str = "") -> None:
        rows.append((label, cells, goal))

    def num(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    row(
        "all confirmed after, s",
        [
            num(r.get("all_confirmed_s"))
            if r.get("all_confirmed_s") is not None
            else f"> {r['elapsed_s']:.0f} ({r['confirmed']:,}/{r['devices']:,})"
            for r in runs
        ],
        f"<= {GOAL_CONFIRMED_S:g}",
    )
    row("all told of success after, s", [num(r.get("all_told_s")) for r in runs])
    row("first success after, s", [num(r.get("first_success_s")) for r in runs])
    row("answers other than 200/429", [f"{r['other_answers']:,}" for r in runs], "0")
    row("  of which 5xx", [_kinds(r["server_errors"]) for r in runs])
    row("  of which dropped", [_kinds(r["dropped"]) for r in runs])
    row("cap on updates in flight", [num(r.get("cap"), 0) for r in runs])
    row("429 answers", [_kinds(r["throttled"]) for r in runs])
    row("Retry-After waited, device-s", [num(r["throttle_wait_s"]) for r in runs])
    row("before the rollout (registration): other than 200/429", [_before(r) for r in runs])
    row("peak gateway sleep factor", [num(r.get("peak_sleep_factor"), 2) for r in runs])
    row("server CPU s", [num((r.get("usage") or {}).get("server_cpu_s")) for r in runs])
    row("peak memory MiB (RSS)", [num((r.get("usage") or {}).get("peak_rss_mib"), 0) for r in runs])
    lines = [
        f"Overload: one rollout, one wave of 100 %, devices polling every {poll_s:g} s",
        "",
        f"| figure | {' | '.join(heads)} | goal |",
        f"| --- | {' | '.join('---:' for _ in runs)} | --- |",
    ]
    lines += [f"| {label} | {' | '.join(cells)} | {goal} |" for label, cells, goal in rows]
    lines.append("")
    for r in runs:
        lines += [f"{r['devices']:,} devices: {line}" for line in goal_lines(r)]
    for r in runs:
        samples = r.get("error_samples") or []
        if samples:
            lines.append(f"- {r['devices']:,} devices, the last errors the devices saw:")
            lines += [f"    {text}" for text in samples[-3:]]
    return lines


def chart(res: dict[str, Any], title: str, out: Path) -> None:
    """The timeline of one run: answers, errors, rollout counters and sleep factor per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = res["timeline"]
    t = [p["t"] for p in points]
    fig, axes = plt.subplots(5, 1, figsize=(12, 15), sharex=True)
    panels = [
        ("polls / s", "poll"),
        ("feedback / s", "feedback"),
        ("configData / s", "configData"),
    ]
    for ax, (label, kind) in zip(axes, panels, strict=False):
        ax.plot(t, [p[f"{kind}_2xx"] for p in points], label="200", color="#2b7bb9")
        ax.plot(t, [p[f"{kind}_429"] for p in points], label="429", color="#d9822b")
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    ax.plot(
        t, [p["errors"] for p in points], label="other answers (5xx, dropped, ...)", color="red"
    )
    ax.plot(t, [p["deploymentBase_429"] for p in points], label="deploymentBase 429", ls="--")
    ax.plot(t, [p["download_429"] for p in points], label="download 429", ls=":")
    ax.set_ylabel("per s")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[4]
    ax.plot(t, [p["confirmed"] for p in points], label="confirmed (devices)", color="black", lw=2)
    ax.plot(t, [p["successes"] for p in points], label="told of success (devices)", color="green")
    keys = sorted({k for p in points for k in (p.get("rollout") or {}) if k != "total"})
    for key in keys:
        ax.plot(
            t,
            [(p.get("rollout") or {}).get(key) for p in points],
            label=f"rollout {key}",
            ls="--",
        )
    ax.set_ylabel("devices")
    ax.set_xlabel("s after the rollout request")
    factors = [p.get("sleep_factor") for p in points]
    if any(f is not None for f in factors):
        twin = ax.twinx()
        twin.plot(t, factors, color="purple", ls=":", label="gateway sleep factor")
        twin.set_ylabel("sleep factor")
        twin.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title + "\n" + " | ".join(goal_lines(res)), fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
