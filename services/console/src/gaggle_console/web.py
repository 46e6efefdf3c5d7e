"""What every page shares: the console's parts, sessions and CSRF checks, refusals.

A page module holds an ``APIRouter`` and reaches the console's parts through :func:`parts`; a page
for signed-in operators starts with :func:`need_session`, a form handler with
:func:`checked_form`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

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


async def checked_form(
    request: Request,
) -> tuple[dict[str, str], str | None, Session | None]:
    """The POSTed form, the session id and session when its CSRF token is right."""
    form = await read_form(request)
    session_id, session = parts(request).session(request)
    if session is None or not session.csrf_ok(form.get("csrf")):
        return form, None, None
    return form, session_id, session


def refused(request: Request, status_code: int, message: str) -> HTMLResponse:
    """The error page with ``message``, answered with ``status_code``."""
    c = parts(request)
    _, session = c.session(request)
    return c.render(
        request, "error.html", session, status_code=status_code, title="Refused", message=message
    )


def forbidden(request: Request) -> HTMLResponse:
    """The answer to a POST without the session's CSRF token: 403, nothing changed."""
    return refused(
        request,
        403,
        "This form was not sent from a page of this console (its CSRF token is "
        "missing or out of date). Reload the page and try again.",
    )
