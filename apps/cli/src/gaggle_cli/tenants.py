"""``gaggle tenants``: create and configure tenants (registry, admin only)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.output import Column, details, print_json, table, when

TENANT_COLUMNS: list[Column] = [
    ("TENANT", lambda t: t.get("tenant")),
    ("POLLING", lambda t: t.get("polling_sleep")),
    ("ANONYMOUS", lambda t: t.get("anonymous")),
    ("AUTO-REGISTER", lambda t: t.get("auto_register")),
    ("GATEWAY TOKEN", lambda t: t.get("has_gateway_token")),
    ("IN FLIGHT", lambda t: t.get("max_updates_in_flight")),
    ("APPROVAL", lambda t: t.get("rollout_approval")),
    ("UPDATED", lambda t: when(t.get("updated_at"))),
]


def _path(name: str) -> str:
    return f"/api/v1/tenants/{quote(name, safe='')}"


def _show(state: State, doc: dict[str, Any]) -> None:
    if state.json:
        print_json(doc)
        return
    details(
        state.out,
        [
            ("tenant", doc.get("tenant")),
            ("polling sleep", doc.get("polling_sleep")),
            ("while an action is open", doc.get("polling_sleep_open_action")),
            ("anonymous polls", doc.get("anonymous")),
            ("auto-registration", doc.get("auto_register")),
            ("target tokens", doc.get("target_token")),
            ("gateway token", doc.get("has_gateway_token")),
            ("max updates in flight", doc.get("max_updates_in_flight")),
            ("rollout approval", doc.get("rollout_approval")),
            ("require signature", doc.get("require_signature")),
            ("require image hashes", doc.get("require_image_hashes")),
            ("monotonic versions", doc.get("monotonic_versions")),
            ("download redirect", doc.get("download_redirect")),
            ("updated", when(doc.get("updated_at"))),
        ],
    )


@cli.group()
def tenants() -> None:
    """Tenants and their settings: polling, access, update cap, approval, image policy (admin)."""


@tenants.command("list")
@json_option
@pass_state
def list_tenants(state: State) -> None:
    """List configured tenants (yours; every one for the bootstrap tenant's admins)."""
    doc = state.api.request("registry", "GET", "/api/v1/tenants")
    if state.json:
        print_json(doc)
        return
    table(state.out, doc.get("items") or [], TENANT_COLUMNS)


@tenants.command("show")
@click.argument("name")
@json_option
@pass_state
def show(state: State, name: str) -> None:
    """Show a tenant's settings."""
    _show(state, state.api.request("registry", "GET", _path(name)))


@tenants.command("set")
@click.argument("name")
@click.option("--polling-sleep", metavar="HH:MM:SS", default="00:01:00", show_default=True)
@click.option("--polling-sleep-open-action", metavar="HH:MM:SS", help="While an action is open.")
@click.option("--anonymous/--no-anonymous", default=True, show_default=True)
@click.option("--auto-register/--no-auto-register", default=True, show_default=True)
@click.option("--target-token/--no-target-token", default=True, show_default=True)
@click.option("--gateway-token", metavar="TOKEN", help="Set the tenant-wide GatewayToken.")
@click.option("--no-gateway-token", is_flag=True, help="Remove the GatewayToken.")
@click.option(
    "--max-updates-in-flight",
    type=click.IntRange(min=1),
    metavar="N",
    help="Devices that may have an open action at once; rollouts queue the others "
    "[default: the registry's, 1000].",
)
@click.option(
    "--rollout-approval/--no-rollout-approval",
    default=False,
    show_default=True,
    help="New rollouts wait for someone with rollout:approve before they can start.",
)
@click.option(
    "--require-signature/--no-require-signature",
    default=False,
    show_default=True,
    help="Refuse images whose signature does not verify against the trust store.",
)
@click.option(
    "--require-image-hashes/--no-require-image-hashes",
    default=False,
    show_default=True,
    help="Refuse images with a file entry lacking sha256, a missing file or an unlisted one.",
)
@click.option(
    "--monotonic-versions/--no-monotonic-versions",
    default=False,
    show_default=True,
    help="Refuse an image not newer than the newest one for one of its boards.",
)
@click.option(
    "--download-redirect/--no-download-redirect",
    default=None,
    help="Send devices to presigned object-store URLs (S3) instead of streaming downloads "
    "[default: the deployment's GAGGLE_STORAGE_PRESIGN].",
)
@json_option
@pass_state
def set_tenant(
    state: State,
    name: str,
    polling_sleep: str,
    polling_sleep_open_action: str | None,
    anonymous: bool,
    auto_register: bool,
    target_token: bool,
    gateway_token: str | None,
    no_gateway_token: bool,
    max_updates_in_flight: int | None,
    rollout_approval: bool,
    require_signature: bool,
    require_image_hashes: bool,
    monotonic_versions: bool,
    download_redirect: bool | None,
) -> None:
    """Create a tenant, or replace its settings (a GatewayToken is kept unless changed)."""
    if gateway_token is not None and no_gateway_token:
        raise click.UsageError("give --gateway-token or --no-gateway-token, not both")
    body: dict[str, Any] = {
        "polling_sleep": polling_sleep,
        "polling_sleep_open_action": polling_sleep_open_action,
        "anonymous": anonymous,
        "auto_register": auto_register,
        "target_token": target_token,
        "rollout_approval": rollout_approval,
        "require_signature": require_signature,
        "require_image_hashes": require_image_hashes,
        "monotonic_versions": monotonic_versions,
        "download_redirect": download_redirect,
    }
    if max_updates_in_flight is not None:
        body["max_updates_in_flight"] = max_updates_in_flight
    if gateway_token is not None or no_gateway_token:
        body["gateway_token"] = gateway_token
    _show(state, state.api.request("registry", "PUT", _path(name), json_body=body))


@tenants.command("issue-key")
@click.argument("name")
@click.option("--key-name", default="admin", show_default=True, help="What the key is for.")
@json_option
@pass_state
def issue_key(state: State, name: str, key_name: str) -> None:
    """Issue an admin key of a tenant (the bootstrap tenant's admins); shown this once only."""
    doc = state.api.request("registry", "POST", f"{_path(name)}/keys", json_body={"name": key_name})
    if state.json:
        print_json(doc)
        return
    state.err.print(f"Admin key of {doc.get('tenant')} (shown only now; keep it somewhere safe):")
    state.out.print(str(doc.get("key")), markup=False, highlight=False, soft_wrap=True)
