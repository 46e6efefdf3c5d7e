"""What every page shares: the console's parts, sessions and CSRF checks, refusals.

A page module holds an ``APIRouter`` and reaches the console's parts through :func:`parts`; a page
for signed-in operators starts with :func:`need_session`, a form handler with :func:`posted`, and
:func:`need_permission` checks what the key may do. A refusal is raised (:class:`Refused`,
:class:`SignInFirst`) and the app answers it with the error page or the sign-in redirect. A list
page reads its query with :func:`text_filters`, :func:`choice` and :func:`page_size`, asks for its
page with :func:`fetch` and links the next one with :func:`next_page_url`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from gaggle_console.sessions import COOKIE, Session, Sessions
from gaggle_console.settings import ConsoleSettings
from gaggle_console.upstream import Upstream, UpstreamError

HERE = Path(__file__).parent
MAX_FORM_BYTES = 16_384
"""Largest form body read; the console's forms are a few hundred bytes."""
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class SecurityHeaders(BaseHTTPMiddleware):
    """Adds :data:`SECURITY_HEADERS` to every answer."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Answer, with the headers added."""
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


class Console:
    """The console's parts: sessions, the services' client, templates and clocks."""

    def __init__(
        self,
        settings: ConsoleSettings,
        upstream: Upstream,
        clock: Callable[[], float],
        now: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.sessions = Sessions(clock, settings.session_idle_s, settings.max_sessions)
        self.now = now
        self.templates = Jinja2Templates(directory=HERE / "templates")

    def session(self, request: Request) -> tuple[str | None, Session | None]:
        """The request's session id and live session (None, None without one)."""
        session_id = request.cookies.get(COOKIE)
        session = self.sessions.get(session_id)
        return (session_id, session) if session else (None, None)

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        """``template`` with the session's CSRF token, who is signed in and what they may do.

        ``can`` is the set of the operator's permissions.
        """
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "csrf": session.csrf if session else "",
                "signed_in": bool(session and session.key),
                "can": session.permissions if session else frozenset(),
                **context,
            },
            status_code=status_code,
        )


def parts(request: Request) -> Console:
    """The console's parts, set up by the app's lifespan."""
    found: Console = request.app.state.console
    return found


class SignInFirst(Exception):
    """A page for signed-in operators was asked for without a signed-in session."""


def need_session(request: Request) -> tuple[Session, str]:
    """The request's signed-in session and the operator's own API key.

    Every service is called with that key.

    Raises:
        SignInFirst: there is none (the app answers with a redirect to the sign-in form).
    """
    _, session = parts(request).session(request)
    if session is None or session.key is None:
        raise SignInFirst
    return session, session.key


def set_session_cookie(request: Request, response: Response, session_id: str) -> None:
    """The session cookie: ``HttpOnly``, ``SameSite=Lax``, ``Secure`` on https."""
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def upstream_status(error: UpstreamError) -> int:
    """The status a page shows for ``error``: the service's 4xx as is, else 502."""
    return error.status if 400 <= error.status < 500 else 502


def page_status(error: UpstreamError | None) -> int:
    """The status of a page that shows ``error`` in place of its content (200 without one)."""
    return upstream_status(error) if error else 200


class Refused(Exception):
    """A request the console refuses: the app answers the error page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CsrfRefused(Refused):
    """A POST without the session's CSRF token: 403, nothing changed."""

    def __init__(self) -> None:
        super().__init__(
            403,
            "This form was not sent from a page of this console (its CSRF token is "
            "missing or out of date). Reload the page and try again.",
        )


def need_permission(session: Session, permission: str, doing: str) -> None:
    """Refuse (403) unless the key had ``permission`` at sign-in; ``doing`` says what it may not.

    Raises:
        Refused: the key lacks the permission.
    """
    if permission not in session.permissions:
        raise Refused(403, f"Your key may not {doing}: it lacks the {permission} permission.")


def text_filters(request: Request, longest: Mapping[str, int]) -> dict[str, str]:
    """The query's text fields named in ``longest``, stripped and cut to their length."""
    query = request.query_params
    return {name: (query.get(name) or "").strip()[:most] for name, most in longest.items()}


def choice(request: Request, name: str, allowed: Collection[str], default: str = "") -> str:
    """The query's ``name`` when it is one of ``allowed``, else ``default``."""
    value = request.query_params.get(name) or default
    return value if value in allowed else default


def page_size(request: Request, sizes: Collection[int], default: int) -> int:
    """The query's ``limit`` when it is one of ``sizes``, else ``default``."""
    try:
        limit = int(request.query_params.get("limit") or default)
    except ValueError:
        return default
    return limit if limit in sizes else default


def page_url(path: str, params: Mapping[str, Any]) -> str:
    """``path`` with ``params`` as its query (``path`` alone without any)."""
    return f"{path}?{urlencode(params)}" if params else path


def next_page_url(
    path: str, params: Mapping[str, Any], page: Mapping[str, Any], field: str = "cursor"
) -> str | None:
    """The next page's URL: ``params`` and the page's ``next`` as ``field``; None on the last."""
    return page_url(path, {**params, field: page["next"]}) if page.get("next") else None


async def fetch(
    request: Request,
    service: str,
    path: str,
    key: str,
    params: Mapping[str, Any] | None = None,
    *,
    missing: str | None = None,
) -> tuple[dict[str, Any], UpstreamError | None]:
    """A service's JSON object (a list's page, one resource); else ``{}`` and the refusal.

    The page shows the refusal in place of what it would show.

    Raises:
        Refused: the service answered 404 and ``missing`` says what the error page says then.
    """
    try:
        found: dict[str, Any] = await parts(request).upstream.get(
            service, path, key, dict(params) if params else None
        )
    except UpstreamError as exc:
        if missing is not None and exc.status == 404:
            raise Refused(404, missing) from exc
        return {}, exc
    return found, None


class FormTooLarge(Exception):
    """A form body over :data:`MAX_FORM_BYTES`."""


async def read_form(request: Request) -> dict[str, str]:
    """The URL-encoded form of a POST (the first value of each field), read up to a limit.

    Raises:
        FormTooLarge: the body is over :data:`MAX_FORM_BYTES`.
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormTooLarge
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def checked_form(request: Request) -> tuple[dict[str, str], str, Session]:
    """The POSTed form, the session id and the session, signed in or not (the sign-in form's).

    Raises:
        FormTooLarge: the body is over :data:`MAX_FORM_BYTES`.
        CsrfRefused: no session, or the form lacks its CSRF token.
    """
    form = await read_form(request)
    session_id, session = parts(request).session(request)
    if session_id is None or session is None or not session.csrf_ok(form.get("csrf")):
        raise CsrfRefused
    return form, session_id, session


async def posted(request: Request) -> tuple[dict[str, str], Session, str]:
    """The POSTed form of a signed-in operator, the session and the operator's key.

    Raises:
        FormTooLarge: the body is over :data:`MAX_FORM_BYTES`.
        CsrfRefused: no session, or the form lacks its CSRF token.
        SignInFirst: the session is not signed in.
    """
    form, _, _ = await checked_form(request)
    session, key = need_session(request)
    return form, session, key


def refused(request: Request, status_code: int, message: str) -> HTMLResponse:
    """The error page with ``message``, answered with ``status_code``."""
    c = parts(request)
    _, session = c.session(request)
    return c.render(
        request, "error.html", session, status_code=status_code, title="Refused", message=message
    )
