"""``gaggle software``: upload, list, show and delete images (artifacts service)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gaggle_cli.app import State, cli, json_option, pass_state
from gaggle_cli.client import CliError
from gaggle_cli.output import Column, details, print_json, size, table, when

CHUNK = 256 * 1024
BASE = "/api/v1/software"


def _fits(doc: Mapping[str, Any]) -> str:
    pairs = doc.get("compatibility") or []
    if not pairs:
        return "any device"
    return ", ".join(f"{p.get('hw_model')} {p.get('hw_revision')}" for p in pairs)


def signature_state(doc: Mapping[str, Any]) -> str:
    """The signature in a word or two: ``verified (cms)``, ``unverified``, ``untrusted``."""
    trust = doc.get("trust") or "unchecked"
    method = (doc.get("signature") or {}).get("method")
    return f"{trust} ({method})" if trust == "verified" and method else str(trust)


def signature_lines(doc: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """What ``software show`` says of the signature and the inner hashes."""
    sig = doc.get("signature") or {}
    signer = sig.get("signer") or {}
    lines: list[tuple[str, Any]] = [("signature", signature_state(doc))]
    if signer:
        who = signer.get("subject") or "public key"
        lines.append(("signer", f"{who} (sha256 {str(signer.get('fingerprint'))[:16]}…)"))
    if sig.get("verified_at"):
        lines.append(("verified", when(sig.get("verified_at"))))
    if sig.get("reason") and doc.get("trust") != "verified":
        lines.append(("why", sig.get("reason")))
    check = doc.get("image_check")
    if check:
        lines.append(("image hashes", f"{len(check.get('checked') or [])} checked"))
        for key in ("missing", "unhashed", "unreferenced"):
            if check.get(key):
                lines.append((f"  {key}", check[key]))
    return lines


SOFTWARE_COLUMNS: list[Column] = [
    ("ID", lambda s: s.get("id")),
    ("NAME", lambda s: s.get("name")),
    ("VERSION", lambda s: s.get("version")),
    ("FILENAME", lambda s: s.get("filename")),
    ("SIZE", lambda s: size(s.get("size"))),
    ("FITS", _fits),
    ("SIGNATURE", signature_state),
    ("USED", lambda s: s.get("used")),
    ("CREATED", lambda s: when(s.get("created_at"))),
]


def show_software(state: State, doc: Mapping[str, Any]) -> None:
    """Print one software's details."""
    hashes = doc.get("hashes") or {}
    details(
        state.out,
        [
            ("id", doc.get("id")),
            ("name", doc.get("name")),
            ("version", doc.get("version")),
            ("description", doc.get("description")),
            ("filename", doc.get("filename")),
            ("size", f"{size(doc.get('size'))} ({doc.get('size')} bytes)"),
            ("sha256", hashes.get("sha256")),
            ("fits", _fits(doc)),
            ("signed", doc.get("signed")),
            *signature_lines(doc),
            ("external url", doc.get("external_url")),
            ("used", doc.get("used")),
            ("created", when(doc.get("created_at"))),
        ],
    )


@cli.group()
def software() -> None:
    """Software images (.swu) in the catalogue of the artifacts service."""


@software.command("upload")
@click.argument("source", metavar="FILE|URL")
@click.option("--filename", help="Name to store it under (default: the file's name).")
@json_option
@pass_state
def upload(state: State, source: str, filename: str | None) -> None:
    """Upload a .swu image with a progress bar, or register one hosted at an http(s) URL.

    Gaggle hashes the image, reads its sw-description, checks the sha256 it gives for each
    file and the signature against the tenant's trust store (``gaggle trust``); the same image
    twice is refused, and so is one the tenant's policy refuses.
    """
    if source.startswith(("http://", "https://")) and not Path(source).exists():
        doc = state.api.request(
            "artifacts", "POST", BASE, json_body={"url": source, "filename": filename}
        )
    else:
        doc = _upload_file(state, Path(source), filename)
    if state.json:
        print_json(doc)
        return
    state.out.print(f"Uploaded software {doc.get('id')}: {doc.get('name')} {doc.get('version')}")
    show_software(state, doc)


def _upload_file(state: State, path: Path, filename: str | None) -> Any:
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    try:
        total = path.stat().st_size
        handle = path.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    name = filename or path.name
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=state.err,
        transient=True,
        # Only where it can redraw in place: no bar frozen into logs and pipes.
        disable=state.json or not state.err.is_terminal,
    )
    task = progress.add_task(f"Uploading {name}", total=total)

    def chunks() -> Iterator[bytes]:
        while chunk := handle.read(CHUNK):
            progress.advance(task, len(chunk))
            yield chunk

    with handle, progress:
        return state.api.request(
            "artifacts",
            "POST",
            BASE,
            params={"filename": name},
            content=chunks(),
            headers={"Content-Length": str(total), "Content-Type": "application/octet-stream"},
        )


@software.command("list")
@click.option("--name", help="Only this name.")
@click.option("--version", "version_", metavar="VERSION", help="Only this version.")
@click.option("--hw-model", help="Only software that fits this hardware model.")
@click.option("--hw-revision", help="Only software that fits this hardware revision.")
@click.option(
    "--sort",
    type=click.Choice(["created", "-created", "name", "-name", "version", "-version"]),
    default="created",
    show_default=True,
    help="Order; '-' for descending (version: swupdate/SemVer order).",
)
@click.option("--limit", type=click.IntRange(1, 1000), help="At most this many (a page).")
@click.option("--all", "all_", is_flag=True, help="Every page.")
@json_option
@pass_state
def list_software(
    state: State,
    name: str | None,
    version_: str | None,
    hw_model: str | None,
    hw_revision: str | None,
    sort: str,
    limit: int | None,
    all_: bool,
) -> None:
    """List the catalogue."""
    params: dict[str, Any] = {
        "name": name,
        "version": version_,
        "hw_model": hw_model,
        "hw_revision": hw_revision,
        "sort": sort,
        "limit": limit or (1000 if all_ else None),
    }
    items: list[Any] = []
    offset: int | None = 0
    page: dict[str, Any] = {}
    while offset is not None:
        page = state.api.request("artifacts", "GET", BASE, params={**params, "offset": offset})
        items.extend(page.get("items") or [])
        offset = page.get("next_offset") if all_ else None
    if state.json:
        print_json({**page, "items": items} if all_ else page)
        return
    table(state.out, items, SOFTWARE_COLUMNS)
    if not all_ and page.get("next_offset") is not None:
        state.err.print(f"{len(items)} of {page.get('total')} shown; --all for every one")


@software.command("show")
@click.argument("software_id", metavar="ID")
@json_option
@pass_state
def show(state: State, software_id: str) -> None:
    """Show one software."""
    doc = state.api.request("artifacts", "GET", f"{BASE}/{quote(software_id, safe='')}")
    if state.json:
        print_json(doc)
        return
    show_software(state, doc)


@software.command("delete")
@click.argument("software_id", metavar="ID")
@json_option
@pass_state
def delete(state: State, software_id: str) -> None:
    """Delete a software (soft when a device ever had an action for it)."""
    doc = state.api.request("artifacts", "DELETE", f"{BASE}/{quote(software_id, safe='')}")
    if state.json:
        print_json(doc)
        return
    how = "soft-deleted: metadata kept" if doc.get("deleted") == "soft" else "removed"
    state.out.print(f"Software {doc.get('id')} {how}.")
