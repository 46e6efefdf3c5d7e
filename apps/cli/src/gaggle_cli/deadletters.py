"""``gaggle dead-letters``: what registry, artifacts and rollouts could not process (admin only)."""

from __future__ import annotations

from typing import Any

import click

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.output import Column, details, dump_json, print_json, table, when

SERVICES = ("registry", "artifacts", "rollouts")
PATH = "/api/v1/dead-letters"


def _short(value: Any, limit: int = 80) -> str:
    one = " ".join(str(value or "").split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


COLUMNS: list[Column] = [
    ("SERVICE", lambda d: d.get("service")),
    ("ID", lambda d: d.get("id")),
    ("KIND", lambda d: d.get("kind")),
    ("CONSUMER", lambda d: d.get("consumer")),
    ("REASON", lambda d: d.get("reason")),
    ("ATTEMPTS", lambda d: d.get("attempts")),
    ("LAST FAILED", lambda d: when(d.get("last_failed_at"))),
    ("REPLAYED", lambda d: when(d.get("replayed_at"))),
    ("ERROR", lambda d: _short(d.get("error"))),
]


@cli.group("dead-letters")
def dead_letters() -> None:
    """Events a service could not process, and messages the bus refused (needs an admin key).

    Nothing is dropped: an event a consumer cannot process (invalid, rejected, or failing every
    retry) and an outbox row the bus refuses for good are parked in their service, to be replayed
    once the cause is fixed. Ids are per service.
    """


@dead_letters.command("list")
@click.option("--service", type=click.Choice(SERVICES), help="One service (default: all three).")
@click.option(
    "--state",
    "letter_state",
    type=click.Choice(["open", "replayed", "all"]),
    default="open",
    show_default=True,
    help="open: not replayed since they were parked.",
)
@click.option("--kind", help="Event kind, e.g. device.config_reported.")
@click.option("--consumer", help="Durable consumer, e.g. registry_device_config_reported.")
@click.option("--limit", type=click.IntRange(1, 1000), help="Per service and page (default 100).")
@click.option("--all", "all_", is_flag=True, help="Every page.")
@json_option
@pass_state
def list_dead_letters(
    state: State,
    service: str | None,
    letter_state: str,
    kind: str | None,
    consumer: str | None,
    limit: int | None,
    all_: bool,
) -> None:
    """List dead letters, newest first, of one service or all three."""
    params = {
        "state": letter_state,
        "kind": kind,
        "consumer": consumer,
        "limit": limit or (1000 if all_ else None),
    }
    rows: list[dict[str, Any]] = []
    more: list[str] = []
    for name in (service,) if service else SERVICES:
        items, cursor = state.api.pages(name, PATH, params, all_)
        rows += [{"service": name, **item} for item in items]
        if cursor:
            more.append(name)
    if state.json:
        print_json({"items": rows})
        return
    table(state.out, rows, COLUMNS)
    if more:
        state.err.print(f"More dead letters in {', '.join(more)}: --all for every page.")


@dead_letters.command("show")
@click.argument("service", type=click.Choice(SERVICES))
@click.argument("letter_id", metavar="ID", type=click.IntRange(1))
@json_option
@pass_state
def show_dead_letter(state: State, service: str, letter_id: int) -> None:
    """One dead letter: why, how often, and what it carried."""
    doc = state.api.request(service, "GET", f"{PATH}/{letter_id}")
    if state.json:
        print_json(doc)
        return
    details(
        state.out,
        [
            ("id", f"{service} {doc.get('id')}"),
            ("kind", doc.get("kind")),
            ("source", doc.get("source")),
            ("consumer", doc.get("consumer")),
            ("subject", doc.get("subject")),
            ("key", doc.get("key")),
            ("message id", doc.get("msg_id")),
            ("reason", doc.get("reason")),
            ("attempts", doc.get("attempts")),
            ("first failed", when(doc.get("first_failed_at"))),
            ("last failed", when(doc.get("last_failed_at"))),
            ("replays", doc.get("replays")),
            ("replayed", when(doc.get("replayed_at"))),
            ("replayable", doc.get("replayable")),
            ("size", f"{doc.get('size')} bytes"),
            ("error", doc.get("error")),
        ],
    )
    state.out.print("payload:", style="bold")
    payload = doc.get("payload")
    shown = dump_json(payload) if doc.get("payload_encoding") == "json" else str(payload)
    state.out.print(shown, markup=False, highlight=False, soft_wrap=True)


@dead_letters.command("replay")
@click.argument("service", type=click.Choice(SERVICES))
@click.argument("letter_id", metavar="ID", type=click.IntRange(1))
@json_option
@pass_state
def replay_dead_letter(state: State, service: str, letter_id: int) -> None:
    """Send a dead letter again, once its cause is fixed (the consumer that parked it only).

    If it fails again it is parked again: the same dead letter, open, with its attempts added.
    """
    doc = state.api.request(service, "POST", f"{PATH}/{letter_id}/replay")
    if state.json:
        print_json(doc)
        return
    target = "the outbox" if doc.get("source") == "outbox" else doc.get("consumer")
    state.out.print(
        f"Replayed {service} dead letter {doc.get('id')} ({doc.get('kind')}) to {target}; "
        f"replays: {doc.get('replays')}."
    )
