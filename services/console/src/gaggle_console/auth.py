"""Signing in with an API key, and out; the OpenID Connect sign-in is in :mod:`.oidc`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from gaggle_console import oidc
from gaggle_console.sessions import COOKIE, Session
from gaggle_console.upstream import UpstreamError
from gaggle_console.web import checked_form, parts, set_session_cookie

router = APIRouter()


@router.get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    """The overview when signed in, else the sign-in form."""
    _, session = parts(request).session(request)
    target = "/overview" if session and session.key else "/sign-in"
    return RedirectResponse(target, status_code=303)


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request) -> Response:
    """The sign-in form, with a fresh session for its CSRF token."""
    c = parts(request)
    session_id, session = c.session(request)
    if session and session.key:
        return RedirectResponse("/overview", status_code=303)
    fresh = session is None
    if session is None:
        session_id, session = c.sessions.create()
    response = _form(request, session, error=None)
    if fresh and session_id:
        set_session_cookie(request, response, session_id)
    return response


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request) -> Response:
    """Ask the registry who the key is; on success, a new signed-in session."""
    c = parts(request)
    form, session_id, session = await checked_form(request)
    key = form.get("key", "").strip()
    error = None
    if not key:
        error = "Enter an API key."
    elif len(key) > 512 or not key.isascii() or not key.isprintable():
        error = "This is not an API key."
    else:
        try:
            me = await c.upstream.get("registry", "/api/v1/me", key)
            permissions = frozenset(str(p) for p in me.get("permissions", []))
        except UpstreamError as exc:
            if exc.status == 401:
                error = "This API key was not accepted: it is unknown, revoked or expired."
            else:
                error = str(exc)
    if error is not None:
        return _form(request, session, status_code=401, error=error)
    # A new session id at sign-in: an id planted before it is worth nothing after.
    c.sessions.drop(session_id)
    new_id, _ = c.sessions.create(key, permissions)
    response = RedirectResponse("/overview", status_code=303)
    set_session_cookie(request, response, new_id)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    """End the session."""
    c = parts(request)
    _, session_id, session = await checked_form(request)
    c.sessions.drop(session_id)
    response = RedirectResponse("/sign-in", status_code=303)
    provider_logout = await oidc.signed_out(request, session) if session.oidc else None
    if provider_logout is None:
        response.delete_cookie(COOKIE, path="/")
        return response
    # Signed out here; a fresh anonymous session offers signing out at the provider too.
    new_id, anonymous = c.sessions.create()
    anonymous.provider_logout = provider_logout
    set_session_cookie(request, response, new_id)
    return response


def _form(
    request: Request, session: Session, *, error: str | None, status_code: int = 200
) -> Response:
    """The sign-in form; with the provider's button when OIDC is configured.

    A notice left in the session (why it ended) is shown once.
    """
    notice, session.notice = session.notice, None
    return parts(request).render(
        request,
        "sign_in.html",
        session,
        status_code=status_code,
        error=error,
        notice=notice,
        oidc_name=oidc.provider_name(request),
        provider_logout=bool(session.provider_logout),
    )
