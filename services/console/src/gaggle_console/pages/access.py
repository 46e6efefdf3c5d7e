"""Access, for admins: API keys (list, issue, revoke) and the audit log.

A new key is in the registry's answer only: the console shows it once, on the answer to the
form's ``POST``, and keeps it nowhere (not in the session, not in a URL).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gaggle_console.sessions import Session
from gaggle_console.upstream import UpstreamError
from gaggle_console.web import (
    checked_form,
    forbidden,
    need_session,
    parts,
    refused,
    upstream_status,
)

router = APIRouter()
ROLES = {
    "viewer": "Viewer: reads devices, software and rollouts",
    "operator": "Operator: also changes them",
    "approver": "Approver: reads, and approves or denies rollouts",
    "admin": "Admin: everything, keys and the audit log included",
}
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
KEY_ID = re.compile(r"^[a-z0-9]{12}$")
AUDIT_PAGE = 50
AUDIT_FILTERS = {"actor": 256, "resource": 512, "service": 64}
KEY_FIELDS = ("name", "grant", "role", "expires_in_days")


def _admin(request: Request) -> tuple[Session, str] | HTMLResponse:
    """The session and key of an admin; else the 403 page."""
    session, key = need_session(request)
    if "admin" in session.permissions:
        return session, key
    return refused(
        request,
        403,
        "The access pages are for admins: your key lacks the admin permission.",
    )


async def _keys_page(
    request: Request,
    session: Session,
    key: str,
    *,
    values: dict[str, str] | None = None,
    chosen: frozenset[str] = frozenset(),
    form_error: str | None = None,
    status_code: int = 200,
    revoked: str | None = None,
) -> HTMLResponse:
    c = parts(request)
    error: UpstreamError | None = None
    items: list[dict[str, Any]] = []
    try:
        page = await c.upstream.get("registry", "/api/v1/keys", key)
        items = list(page.get("items", []))
    except UpstreamError as exc:
        error = exc
    if error is not None and status_code == 200:
        status_code = upstream_status(error)
    return c.render(
        request,
        "access_keys.html",
        session,
        status_code=status_code,
        page="access",
        items=items,
        error=error,
        roles=ROLES,
        permissions=PERMISSIONS,
        values=values or {"grant": "role", "role": "viewer"},
        chosen=chosen,
        form_error=form_error,
        revoked=revoked,
    )


@router.get("/access", response_class=HTMLResponse)
async def keys(request: Request) -> Response:
    """The tenant's API keys and the form to issue one."""
    admin = _admin(request)
    if isinstance(admin, HTMLResponse):
        return admin
    session, key = admin
    revoked = request.query_params.get("revoked") or ""
    return await _keys_page(
        request, session, key, revoked=revoked if KEY_ID.match(revoked) else None
    )


def key_body(values: dict[str, str], chosen: frozenset[str]) -> dict[str, Any]:
    """The registry's body (``NewKey``) of the issue form.

    Raises:
        ValueError: a field cannot be sent as it is (the registry checks the rest).
    """
    name = values.get("name", "").strip()
    if not name:
        raise ValueError("Name: give the key a name (who or what uses it).")
    body: dict[str, Any] = {"name": name}
    if values.get("grant") == "permissions":
        if not chosen:
            raise ValueError("Permissions: choose at least one.")
        body["permissions"] = sorted(chosen)
    else:
        role = values.get("role", "")
        if role not in ROLES:
            raise ValueError("Role: choose one of the roles.")
        body["role"] = role
    days = values.get("expires_in_days", "").strip()
    if days:
        if not days.isdigit() or not 1 <= int(days) <= 3650:
            raise ValueError("Expires in: a whole number of days from 1 to 3650, or empty.")
        body["expires_in_days"] = int(days)
    return body


@router.post("/access/keys", response_class=HTMLResponse)
async def issue(request: Request) -> Response:
    """Issue a key; the answer shows it, once."""
    c = parts(request)
    form, _, checked = await checked_form(request)
    if checked is None:
        return forbidden(request)
    admin = _admin(request)
    if isinstance(admin, HTMLResponse):
        return admin
    session, key = admin
    values = {name: form.get(name, "")[:256] for name in KEY_FIELDS}
    chosen = frozenset(p for p in PERMISSIONS if form.get(f"perm-{p}"))
    try:
        body = key_body(values, chosen)
        issued = await c.upstream.send("POST", "registry", "/api/v1/keys", key, json=body)
    except ValueError as exc:
        return await _keys_page(
            request,
            session,
            key,
            values=values,
            chosen=chosen,
            form_error=str(exc),
            status_code=400,
        )
    except UpstreamError as exc:
        return await _keys_page(
            request,
            session,
            key,
            values=values,
            chosen=chosen,
            form_error=str(exc),
            status_code=upstream_status(exc),
        )
    return c.render(
        request, "access_key_issued.html", session, status_code=201, page="access", issued=issued
    )


@router.post("/access/keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke(request: Request, key_id: str) -> Response:
    """Revoke a key; every service refuses it within moments."""
    c = parts(request)
    _, _, checked = await checked_form(request)
    if checked is None:
        return forbidden(request)
    admin = _admin(request)
    if isinstance(admin, HTMLResponse):
        return admin
    _, key = admin
    if not KEY_ID.match(key_id):
        return refused(request, 404, f"There is no key {key_id!r}.")
    try:
        await c.upstream.send("DELETE", "registry", f"/api/v1/keys/{key_id}", key)
    except UpstreamError as exc:
        return refused(request, upstream_status(exc), str(exc))
    return RedirectResponse(f"/access?revoked={key_id}", status_code=303)


@router.get("/access/audit", response_class=HTMLResponse)
async def audit(request: Request) -> Response:
    """One page of the audit log, newest first: filters actor, resource and service."""
    c = parts(request)
    admin = _admin(request)
    if isinstance(admin, HTMLResponse):
        return admin
    session, key = admin
    query = request.query_params
    filters = {name: (query.get(name) or "").strip()[:most] for name, most in AUDIT_FILTERS.items()}
    cursor = (query.get("cursor") or "")[:256]
    kept = {k: v for k, v in filters.items() if v}
    error: UpstreamError | None = None
    items: list[dict[str, Any]] = []
    next_url = None
    try:
        page = await c.upstream.get(
            "registry", "/api/v1/audit", key, {**kept, "cursor": cursor, "limit": AUDIT_PAGE}
        )
        items = list(page.get("items", []))
        if page.get("next"):
            next_url = "/access/audit?" + urlencode({**kept, "cursor": page["next"]})
    except UpstreamError as exc:
        error = exc
    return c.render(
        request,
        "access_audit.html",
        session,
        status_code=upstream_status(error) if error else 200,
        page="access",
        filters=filters,
        items=items,
        next_url=next_url,
        first_url=("/access/audit?" + urlencode(kept)) if cursor else None,
        error=error,
    )
