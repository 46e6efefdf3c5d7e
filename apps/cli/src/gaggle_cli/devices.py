"""``gaggle devices`` (registry and rollouts) and ``gaggle policy`` (rollouts)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import click

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.client import CliError
from gaggle_cli.output import Column, details, print_json, table, text, when

STATES = ("unknown", "up_to_date", "pending", "downloading", "installing", "success", "error")
MODES = ("rollout", "latest", "assigned", "pinned")
SORTS = ("controller_id", "-controller_id", "last_seen", "-last_seen", "created", "-created")
_AGO = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def since_value(value: str | None) -> str | None:
    """A time for the APIs: ``30m``, ``2h``, ``7d`` ago (UTC), or an ISO time as given."""
    if value is None:
        return None
    found = _AGO.match(value.strip())
    if not found:
        return value
    ago = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    return (datetime.now(UTC) - ago).isoformat().replace("+00:00", "Z")


def _device_path(controller_id: str, rest: str = "") -> str:
    return f"/api/v1/devices/{quote(controller_id, safe='')}{rest}"


DEVICE_COLUMNS: list[Column] = [
    ("DEVICE", lambda d: d.get("controller_id")),
    ("NAME", lambda d: d.get("name")),
    ("STATE", lambda d: d.get("update_state")),
    ("MODEL", lambda d: d.get("hw_model")),
    ("REVISION", lambda d: d.get("hw_revision")),
    ("VERSION", lambda d: d.get("sw_version")),
    ("FEED", lambda d: d.get("feed")),
    ("TAGS", lambda d: d.get("tags")),
    ("LAST SEEN", lambda d: when(d.get("last_seen_at"))),
]

ACTION_COLUMNS: list[Column] = [
    ("ACTION", lambda a: a.get("id")),
    ("SOFTWARE", lambda a: a.get("software_id")),
    ("VERSION", lambda a: a.get("version")),
    ("TYPE", lambda a: a.get("type")),
    ("STATUS", lambda a: a.get("status")),
    ("CREATED", lambda a: when(a.get("created_at"))),
    ("CLOSED", lambda a: when(a.get("closed_at"))),
]


@cli.group()
def devices() -> None:
    """Devices: the registry's inventory, their actions and live logs."""


@devices.command("list")
@click.option("--state", "update_state", type=click.Choice(STATES), help="Update state.")
@click.option("--hw-model", help="Hardware model (hw_boardname).")
@click.option("--hw-revision", help="Hardware revision.")
@click.option("--sw-version", help="Running software version.")
@click.option("--tag", help="Has this tag.")
@click.option("--feed", help="In this feed.")
@click.option("--q", "q", metavar="TEXT", help="Text in the id or the name.")
@click.option("--seen-after", metavar="TIME", help="Seen after: ISO time with zone, or 30m/2h/7d.")
@click.option("--seen-before", metavar="TIME", help="Seen before: ISO time with zone, or 2h/7d.")
@click.option("--sort", type=click.Choice(SORTS), help="Order ('-' for descending).")
@click.option("--limit", type=click.IntRange(1, 1000), help="Devices per page (default 100).")
@click.option("--cursor", help="Continue from a `next` cursor.")
@click.option("--all", "all_", is_flag=True, help="Follow `next` to the end.")
@json_option
@pass_state
def list_devices(
    state: State,
    update_state: str | None,
    hw_model: str | None,
    hw_revision: str | None,
    sw_version: str | None,
    tag: str | None,
    feed: str | None,
    q: str | None,
    seen_after: str | None,
    seen_before: str | None,
    sort: str | None,
    limit: int | None,
    cursor: str | None,
    all_: bool,
) -> None:
    """List devices as a table (filters as in the registry API)."""
    params: dict[str, Any] = {
        "state": update_state,
        "hw_model": hw_model,
        "hw_revision": hw_revision,
        "sw_version": sw_version,
        "tag": tag,
        "feed": feed,
        "q": q,
        "seen_after": since_value(seen_after),
        "seen_before": since_value(seen_before),
        "sort": sort,
        "limit": limit or (1000 if all_ else None),
    }
    items, cursor = state.api.pages(
        "registry", "/api/v1/devices", {**params, "cursor": cursor}, all_
    )
    if state.json:
        print_json({"items": items, "next": cursor})
        return
    table(state.out, items, DEVICE_COLUMNS)
    if cursor:
        state.err.print(f"More devices: --cursor {cursor}, or --all for every page.")


@devices.command("show")
@click.argument("controller_id", metavar="ID")
@click.option(
    "--actions",
    "action_limit",
    type=click.IntRange(1, 500),
    default=5,
    show_default=True,
    help="How many recent actions to show.",
)
@json_option
@pass_state
def show_device(state: State, controller_id: str, action_limit: int) -> None:
    """Show a device, its deployment policy and its recent actions."""
    device = state.api.request("registry", "GET", _device_path(controller_id))
    policy = state.api.request("rollouts", "GET", _device_path(controller_id, "/policy"))
    actions = state.api.request(
        "rollouts", "GET", _device_path(controller_id, "/actions"), params={"limit": action_limit}
    )
    items = actions.get("items") or []
    if state.json:
        print_json({"device": device, "policy": policy, "actions": items})
        return
    details(
        state.out,
        [
            ("device", device.get("controller_id")),
            ("name", device.get("name")),
            ("state", device.get("update_state")),
            ("hardware", f"{text(device.get('hw_model'))} {text(device.get('hw_revision'))}"),
            ("software", device.get("sw_version")),
            ("installed", device.get("installed_version")),
            ("last action", device.get("action_id")),
            ("feed", device.get("feed")),
            ("tags", device.get("tags")),
            ("attributes", device.get("attributes")),
            ("token", "set" if device.get("has_token") else "none"),
            (
                "last seen",
                f"{when(device.get('last_seen_at'))} from {text(device.get('last_address'))}",
            ),
            (
                "registered",
                f"{when(device.get('created_at'))} via {text(device.get('registered_via'))}",
            ),
            ("policy", _policy_text(policy)),
        ],
    )
    if items:
        state.out.print()
        table(state.out, items, ACTION_COLUMNS)
    else:
        state.out.print("No actions.")


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` of a Server-Sent Events stream; comments as ``(":", text)``."""
    event, data = "message", list[str]()
    for line in lines:
        if line.startswith(":"):
            yield ":", line[1:].strip()
            continue
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


def feedback_line(kind: str, doc: Mapping[str, Any]) -> str:
    """One feedback event for people: time, device, action, execution, progress, details."""
    status = doc.get("status") or {}
    what = "cancel" if kind.startswith("cancel") else "action"
    parts = [
        when(doc.get("occurred_at") or doc.get("device_time")),
        str(doc.get("controller_id", "?")),
        f"{what} {doc.get('action_id', '?')}",
        str(status.get("execution", "?")),
    ]
    finished = status.get("finished")
    if finished and finished != "none":
        parts.append(str(finished))
    progress = status.get("progress") or {}
    if progress.get("of"):
        parts.append(f"{progress.get('cnt', 0)}/{progress['of']}")
    line = "  ".join(parts)
    notes = [str(d) for d in status.get("details") or []]
    if notes:
        line += "  " + " | ".join(notes)
    return line


@devices.command("logs")
@click.argument("controller_id", metavar="ID")
@click.option("--count", type=click.IntRange(1), help="Stop after this many events.")
@json_option
@pass_state
def logs(state: State, controller_id: str, count: int | None) -> None:
    """Tail a device's feedback live (Ctrl-C ends).

    With --json, each event is one line: {"event": "action.feedback", "data": {...}}.
    """
    seen = 0
    try:
        with state.api.stream("registry", _device_path(controller_id, "/logs/stream")) as lines:
            for kind, data in _sse(lines):
                if kind == ":":
                    if data == "connected":
                        state.err.print(f"Following the feedback of {controller_id} (Ctrl-C ends).")
                    continue
                try:
                    doc = json.loads(data)
                except ValueError:
                    doc = {"raw": data}
                if state.json:
                    print_json({"event": kind, "data": doc}, compact=True)
                else:
                    state.out.print(feedback_line(kind, doc), markup=False, highlight=False)
                seen += 1
                if count is not None and seen >= count:
                    return
    except KeyboardInterrupt:
        return
    raise CliError("the registry ended the log stream")


def _policy_text(policy: Mapping[str, Any]) -> str:
    line = f"mode {policy.get('mode')}, feed {policy.get('feed')}"
    if policy.get("software_id"):
        line += f", software {policy['software_id']}"
    return line


@devices.command("blocked")
@click.argument("controller_id", metavar="ID")
@json_option
@pass_state
def blocked(state: State, controller_id: str) -> None:
    """Software the device is not offered again: it rolled back from it (A/B fallback)."""
    doc = state.api.request("rollouts", "GET", _device_path(controller_id, "/blocked"))
    if state.json:
        print_json(doc)
        return
    items = doc.get("items") or []
    if not items:
        state.out.print(f"{controller_id}: nothing blocked.")
        return
    table(
        state.out,
        items,
        [
            ("SOFTWARE", lambda b: b.get("software_id")),
            ("VERSION", lambda b: b.get("version")),
            ("ACTION", lambda b: b.get("action_id")),
            ("SINCE", lambda b: when(b.get("blocked_at"))),
            ("REASON", lambda b: b.get("reason")),
        ],
    )


@devices.command("unblock")
@click.argument("controller_id", metavar="ID")
@click.argument("software_id", metavar="SOFTWARE")
@pass_state
def unblock(state: State, controller_id: str, software_id: str) -> None:
    """Clear a block: the device may be offered that software again (chosen for at once)."""
    state.api.request(
        "rollouts",
        "DELETE",
        _device_path(controller_id, f"/blocked/{quote(software_id, safe='')}"),
    )
    state.out.print(f"{controller_id}: software {software_id} may be offered again.")


@cli.group()
def policy() -> None:
    """How devices get their software: mode rollout, latest, assigned or pinned, and feed."""


@policy.command("show")
@click.argument("controller_id", metavar="DEVICE")
@json_option
@pass_state
def show_policy(state: State, controller_id: str) -> None:
    """Show a device's policy."""
    doc = state.api.request("rollouts", "GET", _device_path(controller_id, "/policy"))
    if state.json:
        print_json(doc)
        return
    state.out.print(f"{controller_id}: {_policy_text(doc)}")


@policy.command("set")
@click.argument("controller_id", metavar="DEVICE")
@click.option("--mode", type=click.Choice(MODES), help="rollout, latest, assigned or pinned.")
@click.option("--feed", help="The device's feed.")
@click.option("--software", "software_id", metavar="ID", help="The software of mode assigned.")
@json_option
@pass_state
def set_policy(
    state: State,
    controller_id: str,
    mode: str | None,
    feed: str | None,
    software_id: str | None,
) -> None:
    """Set one device's policy; what is not given stays as it is.

    --software alone means --mode assigned. Prints the decision taken.
    """
    if mode is None and feed is None and software_id is None:
        raise click.UsageError("give at least one of --mode, --feed, --software")
    if software_id is not None and mode is None:
        mode = "assigned"
    current = state.api.request("rollouts", "GET", _device_path(controller_id, "/policy"))
    mode = mode or current.get("mode") or "rollout"
    body = {
        "mode": mode,
        "feed": feed or current.get("feed") or "default",
        "software_id": software_id
        if software_id is not None
        else (current.get("software_id") if mode == "assigned" else None),
    }
    doc = state.api.request(
        "rollouts", "PUT", _device_path(controller_id, "/policy"), json_body=body
    )
    if state.json:
        print_json(doc)
        return
    decision = doc.get("decision") or {}
    chosen = decision.get("software_id")
    outcome = f"software {chosen}" if chosen else "nothing to install"
    reason = f" ({decision['reason']})" if decision.get("reason") else ""
    state.out.print(f"{controller_id}: {_policy_text(doc)}; decision: {outcome}{reason}")


@policy.command("set-many")
@click.option("--hw-model", help="Select devices of this hardware model.")
@click.option("--hw-revision", help="Select devices of this hardware revision.")
@click.option("--sw-version", help="Select devices running this version.")
@click.option("--in-feed", help="Select devices now in this feed.")
@click.option("--in-mode", type=click.Choice(MODES), help="Select devices now in this mode.")
@click.option(
    "--device", "devices_", multiple=True, metavar="ID", help="Select this device (repeat)."
)
@click.option("--mode", type=click.Choice(MODES), required=True, help="The new mode.")
@click.option("--feed", default="default", show_default=True, help="The new feed.")
@click.option("--software", "software_id", metavar="ID", help="The software of mode assigned.")
@json_option
@pass_state
def set_many(
    state: State,
    hw_model: str | None,
    hw_revision: str | None,
    sw_version: str | None,
    in_feed: str | None,
    in_mode: str | None,
    devices_: tuple[str, ...],
    mode: str,
    feed: str,
    software_id: str | None,
) -> None:
    """Set one policy for every known device the selection matches (decisions follow shortly)."""
    selection: dict[str, Any] = {
        "hw_model": hw_model,
        "hw_revision": hw_revision,
        "sw_version": sw_version,
        "feed": in_feed,
        "mode": in_mode,
        "controller_ids": list(devices_) or None,
    }
    selection = {k: v for k, v in selection.items() if v is not None}
    if not selection:
        raise click.UsageError(
            "select devices with at least one of --hw-model, --hw-revision, --sw-version, "
            "--in-feed, --in-mode, --device"
        )
    body = {"filter": selection, "policy": {"mode": mode, "feed": feed, "software_id": software_id}}
    doc = state.api.request("rollouts", "PUT", "/api/v1/policies", json_body=body)
    if state.json:
        print_json(doc)
        return
    state.out.print(f"{doc.get('matched')} devices set to {_policy_text(doc)}.")
