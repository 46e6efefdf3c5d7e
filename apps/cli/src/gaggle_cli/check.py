"""``gaggle check``: what an attended upgrade check of a device would answer, and why (rollouts)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.output import details, print_json, size, table

ANSWERS = {200: "200 update available", 204: "204 up to date", 422: "422 unprocessable"}


def _policy(doc: dict[str, Any]) -> str:
    policy = doc.get("policy") or {}
    line = f"mode {policy.get('mode')}, feed {policy.get('feed')}"
    if doc.get("rollout_id"):
        line += f", rollout {doc['rollout_id']}"
    return line


@cli.command("check")
@click.argument("controller_id", metavar="DEVICE")
@click.option(
    "--version",
    "version",
    metavar="VERSION",
    help="The version the device runs (default: the one it reported).",
)
@click.option("--board", metavar="MODEL", help="Hardware model, if the device reported none.")
@click.option("--revision", metavar="REV", help="Hardware revision, if the device reported none.")
@json_option
@pass_state
def check(
    state: State,
    controller_id: str,
    version: str | None,
    board: str | None,
    revision: str | None,
) -> None:
    """What the gateway's upgrade check would answer DEVICE, and why.

    Shows the answer (200, 204 or 422), the reason, the policy and rollout it came from, the
    hardware it was matched against, and what the check made of every software of the catalogue
    (newer and fitting, not newer, does not fit, untrusted, deleted).
    """
    path = f"/api/v1/devices/{quote(controller_id, safe='')}/check"
    params = {"version": version, "board": board, "revision": revision}
    doc = state.api.request("rollouts", "GET", path, params=params)
    if state.json:
        print_json(doc)
        return
    status = doc.get("status")
    rows: list[tuple[str, Any]] = [
        ("device", controller_id),
        ("runs", doc.get("version") or "-"),
        ("answer", ANSWERS.get(status, str(status))),
        ("reason", doc.get("reason")),
    ]
    if doc.get("policy"):
        rows.append(("policy", _policy(doc)))
        hardware = f"{doc.get('hw_model') or '-'} / {doc.get('hw_revision') or '-'}"
        rows.append(("hardware", hardware))
    offer = doc.get("offer")
    if offer:
        where = offer.get("external_url") or "the gateway (once requested)"
        rows.append(
            ("offer", f"software {offer['software_id']}: {offer['name']} {offer['version']}")
        )
        rows.append(("download", f"{size(offer.get('size'))} from {where}"))
    details(state.out, rows)
    considered = doc.get("considered") or []
    if considered:
        state.out.print()
        table(
            state.out,
            considered,
            [
                ("SOFTWARE", lambda c: c.get("software_id")),
                ("VERSION", lambda c: c.get("version")),
                ("VERDICT", lambda c: c.get("verdict")),
            ],
        )
