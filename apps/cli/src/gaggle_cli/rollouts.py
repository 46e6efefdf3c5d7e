"""``gaggle rollouts``: create, list, show, start, pause, resume, abort and watch rollouts."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.client import EXIT_INTERRUPTED, EXIT_TIMEOUT, CliError
from gaggle_cli.output import Column, counters_line, details, print_json, table, text, when

BASE = "/api/v1/rollouts"
STATES = ("created", "running", "paused", "finished", "aborted")
OPERATOR_PAUSE = "by an operator"
_AHEAD = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_waves(value: str | None) -> list[dict[str, int]] | None:
    """``10%,30%,60%`` as percentages, ``5,20,100`` as device counts.

    Raises:
        click.BadParameter: anything else, or percentages mixed with counts.
    """
    if value is None:
        return None
    waves: list[dict[str, int]] = []
    for raw in value.split(","):
        part = raw.strip()
        unit = "percent" if part.endswith("%") else "count"
        number = part.removesuffix("%").strip()
        if not number.isdigit() or int(number) < 1:
            raise click.BadParameter(
                f"{part!r} is neither a percentage (10%) nor a device count (50)",
                param_hint="--waves",
            )
        waves.append({unit: int(number)})
    if len({next(iter(w)) for w in waves}) > 1:
        raise click.BadParameter(
            "give every wave as a percentage or every wave as a count", param_hint="--waves"
        )
    return waves


def parse_window(value: str | None) -> dict[str, str] | None:
    """``02:00-04:00`` as ``{"start": "02:00", "end": "04:00"}``.

    Raises:
        click.BadParameter: not ``HH:MM-HH:MM``.
    """
    if value is None:
        return None
    start, sep, end = value.partition("-")
    if not sep or len(start.strip()) != 5 or len(end.strip()) != 5:
        raise click.BadParameter("expected HH:MM-HH:MM", param_hint="--window")
    return {"start": start.strip(), "end": end.strip()}


def window_body(
    windows: tuple[str, ...],
    days: str | None,
    timezone: str | None,
    schedule: str | None,
    duration: str | None,
) -> dict[str, Any] | None:
    """The maintenance window of the create options; None when none is given.

    ``--window`` (repeated) with ``--days``, or ``--schedule`` with ``--duration``, each with an
    optional ``--timezone``. The service checks the values.

    Raises:
        click.UsageError: options that do not go together.
    """
    body: dict[str, Any] = {}
    if timezone is not None:
        body["timezone"] = timezone
    if schedule is not None or duration is not None:
        if windows or days:
            raise click.UsageError("give --window (and --days) or --schedule, not both")
        if schedule is None or duration is None:
            raise click.UsageError("--schedule and --duration go together")
        return {**body, "schedule": schedule, "duration": duration}
    if not windows:
        if days is not None or timezone is not None:
            raise click.UsageError("--days and --timezone need --window or --schedule")
        return None
    day_list = [d.strip().lower() for d in days.split(",")] if days is not None else None
    parts = [parse_window(w) or {} for w in windows]
    for part in parts:
        if day_list is not None:
            part["days"] = day_list  # type: ignore[assignment]
    if len(parts) == 1:
        return {**body, **parts[0]}
    return {**body, "windows": parts}


def window_text(window: Mapping[str, Any] | None) -> str:
    """A maintenance window in a few words: ``02:00-04:00 (sat,sun) Europe/Berlin``."""
    if not window:
        return ""
    zone = window.get("timezone") or "UTC"
    if window.get("schedule"):
        return f"cron {window['schedule']!r} for {window.get('duration')} {zone}"

    def daily(w: Mapping[str, Any]) -> str:
        days = f" ({','.join(w['days'])})" if w.get("days") else ""
        return f"{w.get('start')}-{w.get('end')}{days}"

    parts = window.get("windows") or [window]
    return f"{', '.join(daily(w) for w in parts)} {zone}"


def parse_forcetime(value: str | None) -> str | None:
    """A force time: an ISO 8601 time with its zone, or ``30m``, ``2h``, ``1d`` from now.

    Raises:
        click.BadParameter: neither.
    """
    if value is None:
        return None
    found = _AHEAD.match(value.strip())
    if found:
        ahead = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
        return (datetime.now(UTC) + ahead).isoformat().replace("+00:00", "Z")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise click.BadParameter(
            "expected an ISO 8601 time with its zone (2026-12-24T18:00:00+01:00) or 30m, 2h, 1d",
            param_hint="--timeforced",
        )
    return value.strip()


def _path(rollout_id: str, rest: str = "") -> str:
    return f"{BASE}/{quote(rollout_id, safe='')}{rest}"


def _state_text(doc: Mapping[str, Any]) -> str:
    line = str(doc.get("state"))
    if doc.get("reason"):
        line += f" ({doc['reason']})"
    elif doc.get("approval") == "pending":
        line += " (waits for approval)"
    return line


def _wave_text(doc: Mapping[str, Any]) -> str:
    waves = doc.get("waves") or []
    current = doc.get("current_wave") or 0
    return f"{current}/{len(waves)}" if current else f"-/{len(waves)}"


ROLLOUT_COLUMNS: list[Column] = [
    ("ID", lambda r: r.get("id")),
    ("NAME", lambda r: r.get("name")),
    ("FEED", lambda r: r.get("feed")),
    ("SOFTWARE", lambda r: f"{r.get('software_id')} ({text(r.get('version'))})"),
    ("STATE", lambda r: r.get("state")),
    ("WAVE", _wave_text),
    ("TOTAL", lambda r: (r.get("counters") or {}).get("total")),
    ("SUCCESS", lambda r: (r.get("counters") or {}).get("success")),
    ("FAILURE", lambda r: (r.get("counters") or {}).get("failure")),
    ("CREATED", lambda r: when(r.get("created_at"))),
]

WAVE_COLUMNS: list[Column] = [
    ("WAVE", lambda w: w.get("wave")),
    ("SIZE", lambda w: w.get("size")),
    ("STARTED", lambda w: when(w.get("started_at"))),
    ("SUCCESS", lambda w: (w.get("counters") or {}).get("success")),
    ("FAILURE", lambda w: (w.get("counters") or {}).get("failure")),
    ("RUNNING", lambda w: (w.get("counters") or {}).get("running")),
    ("QUEUED", lambda w: (w.get("counters") or {}).get("queued", 0)),
    ("PENDING", lambda w: (w.get("counters") or {}).get("pending")),
    ("CANCELED", lambda w: (w.get("counters") or {}).get("canceled")),
    ("TIMEOUT", lambda w: (w.get("counters") or {}).get("timed_out", 0)),
    ("ROLLBACK", lambda w: (w.get("counters") or {}).get("rolled_back", 0)),
    ("SOAKING", lambda w: (w.get("counters") or {}).get("soaking", 0)),
]
MEMBER_STATES = (
    "waiting",
    "pending",
    "running",
    "success",
    "failure",
    "canceled",
    "timed_out",
    "rolled_back",
)


def _by(actor: str | None) -> str:
    return f" by {actor}" if actor else ""


def show_rollout(state: State, doc: Mapping[str, Any]) -> None:
    """Print a rollout: its settings, overall counters and a table of its waves."""
    window = window_text(doc.get("maintenance_window"))
    forced = f", forced from {when(doc.get('forcetime'))}" if doc.get("forcetime") else ""
    approval = doc.get("approval")
    if approval and doc.get("approval_by"):
        approval += f" by {doc['approval_by']} {when(doc.get('approval_at'))}"
        if doc.get("approval_remark"):
            approval += f": {doc['approval_remark']}"
    details(
        state.out,
        [
            ("rollout", f"{doc.get('id')} {doc.get('name')!r}"),
            ("state", _state_text(doc)),
            ("software", f"{doc.get('software_id')} (version {text(doc.get('version'))})"),
            ("feed", doc.get("feed")),
            ("filter", doc.get("filter")),
            ("wave", _wave_text(doc)),
            ("devices", counters_line(doc.get("counters") or {})),
            (
                "thresholds",
                f"next wave at {doc.get('success_threshold')} % success; "
                f"{doc.get('error_action')} above {doc.get('error_threshold')} % failure",
            ),
            (
                "actions",
                f"{doc.get('action_type')}{forced}"
                + (", confirmation required" if doc.get("confirmation_required") else "")
                + (f", window {window}" if window else ""),
            ),
            ("approval", approval),
            (
                "health",
                f"report timeout {text(doc.get('report_timeout'))}, "
                f"action timeout {text(doc.get('action_timeout'))}, "
                + (f"soak {doc['soak']}" if doc.get("soak") else "no soak"),
            ),
            ("created", when(doc.get("created_at")) + _by(doc.get("created_by"))),
            ("started", when(doc.get("started_at"))),
            ("finished", when(doc.get("finished_at"))),
        ],
    )
    if doc.get("waves"):
        state.out.print()
        table(state.out, doc["waves"], WAVE_COLUMNS)


@cli.group()
def rollouts() -> None:
    """Rollouts: one software to the devices of a feed, wave after wave.

    A started wave's devices get their actions as the tenant's cap on updates in flight allows
    (gaggle tenants set --max-updates-in-flight); the others are counted as queued (a part of
    pending) and get theirs as earlier actions end.
    """


@rollouts.command("create")
@click.option("--name", required=True, help="A name for people.")
@click.option("--software", "software_id", required=True, metavar="ID", help="The software.")
@click.option("--feed", default="default", show_default=True, help="The devices' feed.")
@click.option("--waves", metavar="LIST", help="10%,30%,60% or device counts 5,50,500 [100%].")
@click.option(
    "--success-threshold",
    type=click.IntRange(1, 100),
    help="% of a wave that must succeed before the next starts [80].",
)
@click.option(
    "--error-threshold",
    type=click.IntRange(0, 100),
    help="% of failed devices (of started waves) tolerated [20].",
)
@click.option(
    "--error-action",
    type=click.Choice(["pause", "abort"]),
    help="What passing the error threshold does [pause].",
)
@click.option(
    "--type",
    "action_type",
    type=click.Choice(["forced", "soft", "timeforced", "downloadonly"]),
    help="Action type [forced; timeforced with --timeforced].",
)
@click.option(
    "--timeforced",
    metavar="TIME",
    help="Soft until TIME, forced after (ISO 8601 with zone, or 30m, 2h, 1d from now).",
)
@click.option("--confirm", is_flag=True, help="Devices must confirm before installing.")
@click.option(
    "--window",
    "windows",
    multiple=True,
    metavar="HH:MM-HH:MM",
    help="Daily maintenance window (repeat for several); end before start spans midnight.",
)
@click.option("--days", metavar="LIST", help="The windows' days: mon,tue,...,sun [every day].")
@click.option(
    "--timezone", metavar="ZONE", help="Of the window: Europe/Berlin, +02:00 or UTC [UTC]."
)
@click.option("--schedule", metavar="CRON", help="Window starts, a 5-field cron expression.")
@click.option("--duration", metavar="HH:MM:SS", help="How long each scheduled window lasts.")
@click.option("--hw-model", help="Only devices of this hardware model.")
@click.option("--hw-revision", help="Only devices of this hardware revision.")
@click.option("--sw-version", help="Only devices running this version.")
@click.option(
    "--device", "devices_", multiple=True, metavar="ID", help="Only this device (repeat)."
)
@click.option(
    "--report-timeout",
    metavar="DURATION",
    help="How long an action may go without a report (30m, 1h, 90s) [1h].",
)
@click.option(
    "--action-timeout",
    metavar="DURATION",
    help="How long an action may take to a final state [1d].",
)
@click.option(
    "--soak",
    metavar="DURATION",
    help="How long a device must stay healthy after its success before it counts.",
)
@click.option("--start", is_flag=True, help="Start it at once.")
@json_option
@pass_state
def create(
    state: State,
    name: str,
    software_id: str,
    feed: str,
    waves: str | None,
    success_threshold: int | None,
    error_threshold: int | None,
    error_action: str | None,
    action_type: str | None,
    timeforced: str | None,
    confirm: bool,
    windows: tuple[str, ...],
    days: str | None,
    timezone: str | None,
    schedule: str | None,
    duration: str | None,
    hw_model: str | None,
    hw_revision: str | None,
    sw_version: str | None,
    devices_: tuple[str, ...],
    report_timeout: str | None,
    action_timeout: str | None,
    soak: str | None,
    start: bool,
) -> None:
    """Create a rollout (and start it with --start, or once approved where that is asked).

    Durations are like 30m, 1h30m, 90s or 2d. An action past --report-timeout or
    --action-timeout is timed out (a failure); with --soak, a device's success counts towards
    the next wave only once it stayed healthy that long (kept polling, still on the new
    version after its reboot).
    """
    if timeforced is not None and action_type not in (None, "timeforced"):
        raise click.UsageError("--timeforced makes the actions timeforced: drop --type")
    if timeforced is not None:
        action_type = "timeforced"
    selection = {
        "hw_model": hw_model,
        "hw_revision": hw_revision,
        "sw_version": sw_version,
        "controller_ids": list(devices_) or None,
    }
    body: dict[str, Any] = {
        "name": name,
        "software_id": software_id,
        "feed": feed,
        "filter": {k: v for k, v in selection.items() if v is not None},
        "waves": parse_waves(waves),
        "success_threshold": success_threshold,
        "error_threshold": error_threshold,
        "error_action": error_action,
        "action_type": action_type,
        "forcetime": parse_forcetime(timeforced),
        "confirmation_required": confirm or None,
        "maintenance_window": window_body(windows, days, timezone, schedule, duration),
        "report_timeout": report_timeout,
        "action_timeout": action_timeout,
        "soak": soak,
        "start": start,
    }
    doc = state.api.request(
        "rollouts", "POST", BASE, json_body={k: v for k, v in body.items() if v is not None}
    )
    if state.json:
        print_json(doc)
        return
    state.out.print(f"Created rollout {doc.get('id')}: {_state_text(doc)}.")
    show_rollout(state, doc)


@rollouts.command("list")
@click.option("--feed", help="Only this feed.")
@click.option("--state", "state_", type=click.Choice(STATES), help="Only this state.")
@click.option("--limit", type=click.IntRange(1, 500), help="Rollouts per page (default 50).")
@click.option("--all", "all_", is_flag=True, help="Every page.")
@json_option
@pass_state
def list_rollouts(
    state: State, feed: str | None, state_: str | None, limit: int | None, all_: bool
) -> None:
    """List rollouts, newest first."""
    params = {"feed": feed, "state": state_, "limit": limit or (500 if all_ else None)}
    items: list[Any] = []
    before = None
    while True:
        page = state.api.request("rollouts", "GET", BASE, params={**params, "before": before})
        items.extend(page.get("items") or [])
        before = page.get("next")
        if not (all_ and before):
            break
    if state.json:
        print_json({"items": items, "next": before})
        return
    table(state.out, items, ROLLOUT_COLUMNS)


@rollouts.command("show")
@click.argument("rollout_id", metavar="ID")
@json_option
@pass_state
def show(state: State, rollout_id: str) -> None:
    """Show a rollout with its waves and counters."""
    doc = state.api.request("rollouts", "GET", _path(rollout_id))
    if state.json:
        print_json(doc)
        return
    show_rollout(state, doc)


@rollouts.command("devices")
@click.argument("rollout_id", metavar="ID")
@click.option(
    "--state",
    "state_",
    type=click.Choice(MEMBER_STATES),
    help="Only devices in this state.",
)
@click.option("--all", "all_", is_flag=True, help="Every page (1000 devices a page).")
@json_option
@pass_state
def rollout_devices(state: State, rollout_id: str, state_: str | None, all_: bool) -> None:
    """List a rollout's devices: wave, state, action."""
    items: list[Any] = []
    after = None
    while True:
        page = state.api.request(
            "rollouts",
            "GET",
            _path(rollout_id, "/devices"),
            params={"state": state_, "after": after},
        )
        items.extend(page.get("items") or [])
        after = page.get("next")
        if not (all_ and after):
            break
    if state.json:
        print_json({"items": items, "next": after})
        return
    table(
        state.out,
        items,
        [
            ("DEVICE", lambda d: d.get("controller_id")),
            ("WAVE", lambda d: d.get("wave")),
            ("STATE", lambda d: d.get("state")),
            ("ACTION", lambda d: d.get("action_id")),
        ],
    )


def _command(name: str) -> None:
    @rollouts.command(name)
    @click.argument("rollout_id", metavar="ID")
    @json_option
    @pass_state
    def run(state: State, rollout_id: str) -> None:
        doc = state.api.request("rollouts", "POST", _path(rollout_id, f"/{name}"))
        if state.json:
            print_json(doc)
            return
        state.out.print(
            f"Rollout {doc.get('id')}: {_state_text(doc)}, wave {_wave_text(doc)}, "
            f"{counters_line(doc.get('counters') or {})}."
        )

    run.__doc__ = {
        "start": "Start a created rollout (its first wave).",
        "pause": "Pause a running rollout: no new actions.",
        "resume": "Resume a paused rollout (failures so far no longer count).",
        "abort": "Abort a rollout: its open actions are canceled.",
    }[name]


for _name in ("start", "pause", "resume", "abort"):
    _command(_name)


def _decision(name: str) -> None:
    @rollouts.command(name)
    @click.argument("rollout_id", metavar="ID")
    @click.option("--remark", metavar="TEXT", help="Why, for the record.")
    @json_option
    @pass_state
    def run(state: State, rollout_id: str, remark: str | None) -> None:
        body = {"remark": remark} if remark is not None else None
        doc = state.api.request("rollouts", "POST", _path(rollout_id, f"/{name}"), json_body=body)
        if state.json:
            print_json(doc)
            return
        state.out.print(
            f"Rollout {doc.get('id')}: approval {doc.get('approval')}, {_state_text(doc)}."
        )

    run.__doc__ = {
        "approve": "Approve a rollout that waits for approval (needs rollout:approve).",
        "deny": "Deny a rollout that waits for approval: it is aborted (needs rollout:approve).",
    }[name]


for _name in ("approve", "deny"):
    _decision(_name)


def watch_render(doc: Mapping[str, Any]) -> RenderableType:
    """The live view: a headline, then a bar for the whole rollout and for each wave."""
    head = Text.assemble(
        (f"Rollout {doc.get('id')} ", "bold"),
        f"{doc.get('name')!r}: software {doc.get('software_id')} "
        f"({text(doc.get('version'))}) to feed {doc.get('feed')}  ",
        (str(doc.get("state")).upper(), _state_style(str(doc.get("state")))),
        f"  wave {_wave_text(doc)}",
    )
    if doc.get("reason"):
        head.append(f"\n{doc['reason']}", style="dim")
    elif doc.get("approval") == "pending":
        head.append("\nwaits for approval (rollouts approve)", style="dim")
    grid = Table(box=None, pad_edge=False, header_style="bold")
    headers = (
        "",
        "",
        "DONE",
        "SUCCESS",
        "FAILURE",
        "RUNNING",
        "QUEUED",
        "PENDING",
        "CANCELED",
        "TIMEOUT",
        "ROLLBACK",
        "SOAKING",
    )
    for header in headers:
        grid.add_column(header, justify="right" if header else "left")
    rows: list[tuple[str, Mapping[str, Any]]] = [("all", doc.get("counters") or {})]
    rows += [(f"wave {w.get('wave')}", w.get("counters") or {}) for w in doc.get("waves") or []]
    for label, counters in rows:
        total = int(counters.get("total") or 0)
        done = sum(int(counters.get(k) or 0) for k in ("success", "failure", "canceled"))
        grid.add_row(
            label,
            ProgressBar(
                total=max(total, 1),
                completed=done if total else 0,
                width=30,
                complete_style="cyan",
                finished_style="green",
            ),
            f"{done}/{total}",
            str(counters.get("success", 0)),
            str(counters.get("failure", 0)),
            str(counters.get("running", 0)),
            str(counters.get("queued", 0)),
            str(counters.get("pending", 0)),
            str(counters.get("canceled", 0)),
            str(counters.get("timed_out", 0)),
            str(counters.get("rolled_back", 0)),
            str(counters.get("soaking", 0)),
        )
    return Group(head, grid)


def _state_style(name: str) -> str:
    return {"finished": "green", "aborted": "red", "paused": "yellow", "running": "cyan"}.get(
        name, ""
    )


def outcome(doc: Mapping[str, Any]) -> CliError | None:
    """None while a rollout may still get somewhere; else how ``watch`` ends.

    Finished: an error with exit code 0 (not shown). Aborted, or paused by its error threshold
    rather than by an operator: exit 1.
    """
    name = doc.get("state")
    rid = doc.get("id")
    if name == "finished":
        return CliError(f"rollout {rid} finished: {counters_line(doc.get('counters') or {})}", 0)
    if name == "aborted":
        return CliError(f"rollout {rid} aborted: {doc.get('reason') or 'no reason given'}")
    reason = str(doc.get("reason") or "")
    if name == "paused" and reason and OPERATOR_PAUSE not in reason:
        return CliError(f"rollout {rid} paused: {reason}")
    return None


@rollouts.command("watch")
@click.argument("rollout_id", metavar="ID")
@click.option(
    "--interval",
    type=click.FloatRange(0.1),
    default=0.5,
    show_default=True,
    help="Seconds between two looks.",
)
@click.option(
    "--timeout",
    "limit",
    type=click.FloatRange(0, min_open=True),
    metavar="SECONDS",
    help="Give up after this long (exit 3).",
)
@json_option
@pass_state
def watch(state: State, rollout_id: str, interval: float, limit: float | None) -> None:
    """Follow a rollout live until it finishes (exit 0) or is aborted (exit 1).

    A rollout paused by its error threshold also ends the watch with exit 1; one paused by an
    operator is watched on. On a terminal the view redraws in place; otherwise (and with
    --json, one JSON document a line) a line is printed whenever something changed.
    """
    deadline = None if limit is None else time.monotonic() + limit
    path = _path(rollout_id)
    last: Any = None
    live: Live | None = None
    if not state.json and state.out.is_terminal:
        live = Live(console=state.out, refresh_per_second=8, transient=False)
    end: CliError | None = None
    try:
        if live is not None:
            live.start()
        while True:
            doc = state.api.request("rollouts", "GET", path)
            if doc != last:
                last = doc
                if state.json:
                    print_json(doc, compact=True)
                elif live is not None:
                    live.update(watch_render(doc))
                else:
                    stamp = datetime.now(UTC).strftime("%H:%M:%S")
                    state.out.print(
                        f"{stamp} rollout {doc.get('id')} {_state_text(doc)}, wave "
                        f"{_wave_text(doc)}: {counters_line(doc.get('counters') or {})}",
                        markup=False,
                    )
            end = outcome(doc)
            if end is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                end = CliError(
                    f"rollout {rollout_id} still {doc.get('state')} after {limit:g} s", EXIT_TIMEOUT
                )
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        end = CliError("stopped watching", EXIT_INTERRUPTED)
    finally:
        if live is not None:
            live.stop()
    if end is None:  # pragma: no cover - the loop only ends with an outcome
        return
    if end.exit_code == 0:
        if not state.json:
            state.err.print(end.message[:1].upper() + end.message[1:] + ".", markup=False)
        return
    raise end
