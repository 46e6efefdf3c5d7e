"""Access, for admins: API keys (list, issue, revoke) and the audit log.

A new key is in the registry's answer only: the console shows it once, on the answer to the
form's ``POST``, and keeps it nowhere (not in the session, not in a URL).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gaggle_console.sessions import Session
from gaggle_console.upstream import UpstreamError
from gaggle_console.web import (
    Refused,
    fetch,
    need_permission,
    need_session,
    next_page_url,
    page_status,
    page_url,
    parts,
    posted,
    text_filters,
    upstream_status,
)
from gaggle_contracts.access import Permission

router = APIRouter()
ROLES = {
    "viewer": "Viewer: reads devices, software and rollouts",
    "operator": "Operator: also changes them",
    "approver": "Approver: reads, and approves or denies rollouts",
    "admin": "Admin: everything, keys and the audit log included",
}
PERMISSIONS = tuple(p.value for p in Permission)
KEY_ID = re.compile(r"^[a-z0-9]{12}$")
AUDIT_PAGE = 50
AUDIT_FILTERS = {"actor": 256, "resource": 512, "service": 64}
KEY_FIELDS = ("name", "grant", "role", "expires_in_days")


def _need_admin(session: Session) -> None:
    """Refuse (the 403 page) a key without the admin permission."""
    need_permission(session, Permission.ADMIN.value, "open the access pages, which are for admins")


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
    page, error = await fetch(request, "registry", "/api/v1/keys", key)
    if status_code == 200:
        status_code = page_status(error)
    return c.render(
        request,
        "access_keys.html",
        session,
        status_code=status_code,
        page="access",
        items=page.get("items", []),
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
    session, key = need_session(request)
    _need_admin(session)
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
    form, session, key = await posted(request)
    _need_admin(session)
    values = {name: form.get(name, "")[:256] for name in KEY_FIELDS}
    chosen = frozenset(p for p in PERMISSIONS if form.get(f"perm-{p}"))
    try:
        body = key_body(values, chosen)
        issued = await c.upstream.send("POST", "registry", "/api/v1/keys", key, json=body)
    except (ValueError, UpstreamError) as exc:
        return await _keys_page(
            request,
            session,
            key,
            values=values,
            chosen=chosen,
            form_error=str(exc),
            status_code=upstream_status(exc) if isinstance(exc, UpstreamError) else 400,
        )
    return c.render(
        request, "access_key_issued.html", session, status_code=201, page="access", issued=issued
    )


@router.post("/access/keys/{key_id}/revoke", response_class=HTMLResponse)
async def revoke(request: Request, key_id: str) -> Response:
    """Revoke a key; every service refuses it within moments."""
    c = parts(request)
    _, session, key = await posted(request)
    _need_admin(session)
    if not KEY_ID.match(key_id):
        raise Refused(404, f"There is no key {key_id!r}.")
    try:
        await c.upstream.send("DELETE", "registry", f"/api/v1/keys/{key_id}", key)
    except UpstreamError as exc:
        raise Refused(upstream_status(exc), str(exc)) from exc
    return RedirectResponse(f"/access?revoked={key_id}", status_code=303)


@router.get("/access/audit", response_class=HTMLResponse)
async def audit(request: Request) -> Response:
    """One page of the audit log, newest first: filters actor, resource and service."""
    c = parts(request)
    session, key = need_session(request)
    _need_admin(session)
    filters = text_filters(request, AUDIT_FILTERS)
    cursor = (request.query_params.get("cursor") or "")[:256]
    kept = {k: v for k, v in filters.items() if v}
    page, error = await fetch(
        request, "registry", "/api/v1/audit", key, {**kept, "cursor": cursor, "limit": AUDIT_PAGE}
    )
    return c.render(
        request,
        "access_audit.html",
        session,
        status_code=page_status(error),
        page="access",
        filters=filters,
        items=page.get("items", []),
        next_url=next_page_url("/access/audit", kept, page),
        first_url=page_url("/access/audit", kept) if cursor else None,
        error=error,
    )
