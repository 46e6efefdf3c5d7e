"""``gaggle keys`` (issue, list, revoke API keys) and ``gaggle audit`` (registry, admin only)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.devices import since_value
from gaggle_cli.output import Column, details, print_json, table, when

PERMISSIONS = (
    "device:read",
    "device:write",
    "software:read",
    "software:write",
    "rollout:read",
    "rollout:write",
    "rollout:approve",
    "trust:write",
    "admin",
)

KEY_COLUMNS: list[Column] = [
    ("ID", lambda k: k.get("id")),
    ("NAME", lambda k: k.get("name")),
    ("PERMISSIONS", lambda k: k.get("permissions")),
    ("CREATED", lambda k: when(k.get("created_at"))),
    ("EXPIRES", lambda k: when(k.get("expires_at"))),
    ("LAST USED", lambda k: when(k.get("last_used_at"))),
    ("REVOKED", lambda k: when(k.get("revoked_at"))),
]

AUDIT_COLUMNS: list[Column] = [
    ("AT", lambda a: when(a.get("at"))),
    ("ACTOR", lambda a: a.get("actor")),
    ("SERVICE", lambda a: a.get("service")),
    ("ACTION", lambda a: a.get("action")),
    ("REQUEST", lambda a: f"{a.get('method')} {a.get('resource')}"),
    ("STATUS", lambda a: a.get("status")),
    ("OUTCOME", lambda a: a.get("outcome")),
]


@cli.group()
def keys() -> None:
    """Operator API keys of your tenant (needs an admin key)."""


@keys.command("issue")
@click.option("--name", required=True, help="What the key is for.")
@click.option(
    "--role", type=click.Choice(["viewer", "operator", "approver", "admin"]), help="A role."
)
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    type=click.Choice(PERMISSIONS),
    help="A permission (repeat), instead of a role.",
)
@click.option("--expires-in-days", type=click.IntRange(1, 3650), help="Expire after N days.")
@click.option("--expires-at", metavar="TIME", help="Expire at this ISO time (with zone).")
@json_option
@pass_state
def issue(
    state: State,
    name: str,
    role: str | None,
    permissions: tuple[str, ...],
    expires_in_days: int | None,
    expires_at: str | None,
) -> None:
    """Issue a key; the key itself is shown this once only."""
    if (role is None) == (not permissions):
        raise click.UsageError("give either --role or --permission (one or more)")
    body: dict[str, Any] = {"name": name}
    if role:
        body["role"] = role
    else:
        body["permissions"] = list(permissions)
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    if expires_at is not None:
        body["expires_at"] = expires_at
    doc = state.api.request("registry", "POST", "/api/v1/keys", json_body=body)
    if state.json:
        print_json(doc)
        return
    details(
        state.out,
        [
            ("id", doc.get("id")),
            ("name", doc.get("name")),
            ("permissions", doc.get("permissions")),
            ("expires", when(doc.get("expires_at"))),
        ],
    )
    state.err.print("The key (shown only now; keep it somewhere safe):")
    state.out.print(str(doc.get("key")), markup=False, highlight=False, soft_wrap=True)


@keys.command("list")
@click.option("--include-revoked", is_flag=True, help="Also revoked keys.")
@json_option
@pass_state
def list_keys(state: State, include_revoked: bool) -> None:
    """List keys (never the keys themselves)."""
    doc = state.api.request(
        "registry",
        "GET",
        "/api/v1/keys",
        params={"include_revoked": "true" if include_revoked else None},
    )
    if state.json:
        print_json(doc)
        return
    table(state.out, doc.get("items") or [], KEY_COLUMNS)


@keys.command("revoke")
@click.argument("key_id", metavar="ID")
@json_option
@pass_state
def revoke(state: State, key_id: str) -> None:
    """Revoke a key, on every service within moments."""
    doc = state.api.request("registry", "DELETE", f"/api/v1/keys/{quote(key_id, safe='')}")
    if state.json:
        print_json(doc)
        return
    state.out.print(f"Key {doc.get('id')} ({doc.get('name')}) revoked.")


@cli.command("audit")
@click.option("--actor", help="Who, e.g. key:<id> or oidc:<subject>.")
@click.option("--resource", help="Resource path prefix, e.g. rollouts/3.")
@click.option("--service", help="registry, artifacts or rollouts.")
@click.option("--since", metavar="TIME", help="ISO time with zone, or 30m/2h/7d ago.")
@click.option("--until", metavar="TIME", help="ISO time with zone, or 30m/2h/7d ago.")
@click.option("--limit", type=click.IntRange(1, 1000), help="Entries per page (default 100).")
@click.option("--all", "all_", is_flag=True, help="Every page.")
@json_option
@pass_state
def audit(
    state: State,
    actor: str | None,
    resource: str | None,
    service: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    all_: bool,
) -> None:
    """Show the audit log of operator changes, newest first (needs an admin key)."""
    params = {
        "actor": actor,
        "resource": resource,
        "service": service,
        "since": since_value(since),
        "until": since_value(until),
        "limit": limit or (1000 if all_ else None),
    }
    items, cursor = state.api.pages("registry", "/api/v1/audit", params, all_)
    if state.json:
        print_json({"items": items, "next": cursor})
        return
    table(state.out, items, AUDIT_COLUMNS)
    if cursor:
        state.err.print("More entries: --all for every page.")
