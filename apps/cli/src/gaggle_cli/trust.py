"""``gaggle trust``: the certificates and keys image signatures are checked against (artifacts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.client import CliError
from gaggle_cli.output import Column, details, print_json, table, when

BASE = "/api/v1/trust"

TRUST_COLUMNS: list[Column] = [
    ("ID", lambda e: e.get("id")),
    ("NAME", lambda e: e.get("name")),
    ("KIND", lambda e: e.get("kind")),
    ("SUBJECT", lambda e: e.get("subject")),
    ("KEY", lambda e: e.get("key")),
    ("NOT AFTER", lambda e: when(e.get("not_after"))),
    ("SHA256", lambda e: str(e.get("fingerprint"))[:16]),
]


def _show(state: State, entry: dict[str, Any]) -> None:
    details(
        state.out,
        [
            ("id", entry.get("id")),
            ("name", entry.get("name")),
            ("kind", entry.get("kind")),
            ("subject", entry.get("subject")),
            ("issuer", entry.get("issuer")),
            ("key", entry.get("key")),
            ("valid", f"{when(entry.get('not_before'))} to {when(entry.get('not_after'))}"),
            ("sha256", entry.get("fingerprint")),
        ],
    )


@cli.group()
def trust() -> None:
    """The tenant's trust store: who may sign images (changing it needs trust:write)."""


@trust.command("list")
@json_option
@pass_state
def list_trust(state: State) -> None:
    """List trusted certificates and keys, and the tenant's image policy."""
    doc = state.api.request("artifacts", "GET", BASE)
    if state.json:
        print_json(doc)
        return
    table(state.out, doc.get("items") or [], TRUST_COLUMNS)
    policy = doc.get("policy") or {}
    rules = [name for name, on in policy.items() if on]
    state.out.print(f"image policy: {', '.join(rules) if rules else 'nothing required'}")


@trust.command("add")
@click.argument("pem_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="A name for it (default: the file's name).")
@json_option
@pass_state
def add(state: State, pem_file: Path, name: str | None) -> None:
    """Trust a PEM certificate (CMS signatures) or public key (raw RSA signatures)."""
    try:
        pem = pem_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {pem_file}: {exc}") from None
    doc = state.api.request(
        "artifacts", "POST", BASE, json_body={"name": name or pem_file.name, "pem": pem}
    )
    if state.json:
        print_json(doc)
        return
    state.out.print(f"Trusted {doc.get('kind')} {doc.get('id')}.")
    _show(state, doc)


@trust.command("remove")
@click.argument("entry_id", metavar="ID")
@json_option
@pass_state
def remove(state: State, entry_id: str) -> None:
    """Stop trusting a certificate or key; the software it verified becomes untrusted."""
    doc = state.api.request("artifacts", "DELETE", f"{BASE}/{quote(entry_id, safe='')}")
    if state.json:
        print_json(doc)
        return
    untrusted = doc.get("untrusted") or []
    state.out.print(f"Removed {doc.get('removed', {}).get('name')!r} from the trust store.")
    if untrusted:
        state.out.print(
            f"Now untrusted (rollouts will not use them): software {', '.join(untrusted)}"
        )
