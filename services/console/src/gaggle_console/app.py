"""Console wiring and pages: sign-in with an API key, the fleet overview, the device list.

Every page is rendered here from the services' APIs, called with the signed-in operator's own
key; a refusal from a service (401, 403, ...) is shown on the page with its status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from gaggle_console import fleet
from gaggle_console.sessions import COOKIE, Session, Sessions
from gaggle_console.settings import ConsoleSettings
from gaggle_console.upstream import Upstream, UpstreamError
from gaggle_contracts.events import UPDATE_STATES
from gaggle_contracts.settings import CommonSettings

HERE = Path(__file__).parent
SORTS = {
    "controller_id": "Id, A to Z",
    "-controller_id": "Id, Z to A",
    "-last_seen": "Seen most recently",
    "last_seen": "Seen least recently",
    "-created": "Newest",
    "created": "Oldest",
}
LIST_FILTERS = ("state", "hw_model", "hw_revision", "sw_version", "tag", "feed", "q")
PAGE_SIZES = (10, 25, 50, 100, 250)
DEFAULT_PAGE = 50
OVERVIEW_PAGE = 1000
ROLLOUTS_SHOWN = 50
MAX_FORM_BYTES = 16_384
"""Largest form body read; the console's forms are a few hundred bytes."""
MAX_FIELD = 256
"""Longest filter value passed on (the registry takes at most 256 characters of search text)."""
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
        """``template`` with the session's CSRF token and whether someone is signed in."""
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "csrf": session.csrf if session else "",
                "signed_in": bool(session and session.key),
                **context,
            },
            status_code=status_code,
        )


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


def build_app(
    common: CommonSettings,
    settings: ConsoleSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The console app; ``transport`` replaces the network in unit tests."""
    del common  # the console needs neither NATS nor PostgreSQL
    console: Console | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal console
        async with httpx.AsyncClient(
            timeout=settings.request_timeout_s, transport=transport
        ) as client:
            urls = {
                "registry": settings.registry_url,
                "rollouts": settings.rollouts_url,
                "artifacts": settings.artifacts_url,
            }
            console = Console(settings, Upstream(client, urls), clock, now)
            app.state.console = console
            yield

    app = FastAPI(title="Gaggle console", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def parts(request: Request) -> Console:
        found: Console = request.app.state.console
        return found

    async def checked_form(
        request: Request,
    ) -> tuple[dict[str, str], str | None, Session | None]:
        """The POSTed form, the session id and session when its CSRF token is right."""
        c = parts(request)
        form = await read_form(request)
        session_id, session = c.session(request)
        if session is None or not session.csrf_ok(form.get("csrf")):
            return form, None, None
        return form, session_id, session

    def refused(request: Request, status_code: int, message: str) -> HTMLResponse:
        c = parts(request)
        _, session = c.session(request)
        return c.render(
            request,
            "error.html",
            session,
            status_code=status_code,
            title="Refused",
            message=message,
        )

    def forbidden(request: Request) -> HTMLResponse:
        return refused(
            request,
            403,
            "This form was not sent from a page of this console (its CSRF token is "
            "missing or out of date). Reload the page and try again.",
        )

    @app.exception_handler(FormTooLarge)
    async def too_large(request: Request, exc: FormTooLarge) -> HTMLResponse:
        return refused(
            request, 413, f"This form is larger than the console takes ({MAX_FORM_BYTES} bytes)."
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> Response:
        _, session = parts(request).session(request)
        target = "/overview" if session and session.key else "/sign-in"
        return RedirectResponse(target, status_code=303)

    @app.get("/sign-in", response_class=HTMLResponse)
    async def sign_in_form(request: Request) -> Response:
        c = parts(request)
        session_id, session = c.session(request)
        if session and session.key:
            return RedirectResponse("/overview", status_code=303)
        fresh = session is None
        if session is None:
            session_id, session = c.sessions.create()
        response = c.render(request, "sign_in.html", session, error=None)
        if fresh and session_id:
            set_session_cookie(request, response, session_id)
        return response

    @app.post("/sign-in", response_class=HTMLResponse)
    async def sign_in(request: Request) -> Response:
        c = parts(request)
        form, session_id, session = await checked_form(request)
        if session is None:
            return forbidden(request)
        key = form.get("key", "").strip()
        error = None
        if not key:
            error = "Enter an API key."
        elif len(key) > 512 or not key.isascii() or not key.isprintable():
            error = "This is not an API key."
        else:
            try:
                await c.upstream.get("registry", "/api/v1/devices", key, {"limit": 1})
            except UpstreamError as exc:
                if exc.status == 401:
                    error = "This API key was not accepted: it is unknown, revoked or expired."
                elif exc.status != 403:  # 403: a valid key without device:read
                    error = str(exc)
        if error is not None:
            return c.render(request, "sign_in.html", session, status_code=401, error=error)
        # A new session id at sign-in: an id planted before it is worth nothing after.
        c.sessions.drop(session_id)
        new_id, _ = c.sessions.create(key)
        response = RedirectResponse("/overview", status_code=303)
        set_session_cookie(request, response, new_id)
        return response

    @app.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        c = parts(request)
        _, session_id, session = await checked_form(request)
        if session is None:
            return forbidden(request)
        c.sessions.drop(session_id)
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    def signed_in(request: Request) -> Session | None:
        _, session = parts(request).session(request)
        return session if session and session.key else None

    @app.get("/overview", response_class=HTMLResponse)
    async def overview(request: Request) -> Response:
        c = parts(request)
        session = signed_in(request)
        if session is None or session.key is None:
            return RedirectResponse("/sign-in", status_code=303)
        errors: list[UpstreamError] = []
        counted: fleet.Fleet | None = None
        try:
            counted = await count_fleet(c, session.key)
        except UpstreamError as exc:
            errors.append(exc)
        rollouts: list[dict[str, Any]] | None = None
        try:
            page = await c.upstream.get(
                "rollouts", "/api/v1/rollouts", session.key, {"limit": ROLLOUTS_SHOWN}
            )
            rollouts = [
                {**r, "progress": fleet.progress(r.get("counters") or {})}
                for r in page.get("items", [])
                if r.get("state") in ("running", "paused")
            ]
        except UpstreamError as exc:
            errors.append(exc)
        charts = None
        if counted is not None:
            charts = [
                ("state", "Devices by update state", fleet.bars(counted.by_state)),
                ("model", "Devices by model / revision", fleet.bars(counted.by_model)),
                ("version", "Devices by software version", fleet.bars(counted.by_version)),
            ]
        status = min((upstream_status(e) for e in errors), default=200)
        return c.render(
            request,
            "overview.html",
            session,
            status_code=status,
            page="overview",
            fleet=counted,
            charts=charts,
            rollouts=rollouts,
            errors=errors,
            online_minutes=round(c.settings.online_within_s / 60),
        )

    @app.get("/devices", response_class=HTMLResponse)
    async def devices(request: Request) -> Response:
        c = parts(request)
        session = signed_in(request)
        if session is None or session.key is None:
            return RedirectResponse("/sign-in", status_code=303)
        query = request.query_params
        filters = {name: (query.get(name) or "").strip()[:MAX_FIELD] for name in LIST_FILTERS}
        if filters["state"] not in UPDATE_STATES:
            filters["state"] = ""
        sort = query.get("sort") or "controller_id"
        sort = sort if sort in SORTS else "controller_id"
        try:
            limit = int(query.get("limit") or DEFAULT_PAGE)
        except ValueError:
            limit = DEFAULT_PAGE
        limit = limit if limit in PAGE_SIZES else DEFAULT_PAGE
        cursor = (query.get("cursor") or "")[:2048]
        kept = {k: v for k, v in filters.items() if v}
        if sort != "controller_id":
            kept["sort"] = sort
        if limit != DEFAULT_PAGE:
            kept["limit"] = str(limit)
        error: UpstreamError | None = None
        items: list[dict[str, Any]] = []
        next_url = None
        try:
            page = await c.upstream.get(
                "registry",
                "/api/v1/devices",
                session.key,
                {**kept, "sort": sort, "limit": limit, "cursor": cursor},
            )
            items = list(page.get("items", []))
            if page.get("next"):
                next_url = "/devices?" + urlencode({**kept, "cursor": page["next"]})
        except UpstreamError as exc:
            error = exc
        online_within = timedelta(seconds=c.settings.online_within_s)
        current = c.now()
        for item in items:
            seen = fleet.parse_time(item.get("last_seen_at"))
            item["presence"] = (
                "never seen"
                if seen is None
                else "online"
                if current - seen <= online_within
                else "offline"
            )
        return c.render(
            request,
            "devices.html",
            session,
            status_code=upstream_status(error) if error else 200,
            page="devices",
            filters=filters,
            states=UPDATE_STATES,
            sorts=SORTS,
            sort=sort,
            limit=limit,
            page_sizes=PAGE_SIZES,
            items=items,
            next_url=next_url,
            first_url=("/devices?" + urlencode(kept)) if cursor else None,
            error=error,
        )

    return app


async def count_fleet(c: Console, key: str) -> fleet.Fleet:
    """Counts over the tenant's devices, read page by page (at most the overview's cap).

    Raises:
        UpstreamError: the registry refused a page or could not be reached.
    """
    rows: list[dict[str, Any]] = []
    cursor = None
    cap = c.settings.overview_max_devices
    truncated = False
    while True:
        page = await c.upstream.get(
            "registry",
            "/api/v1/devices",
            key,
            {"limit": min(OVERVIEW_PAGE, cap - len(rows)), "cursor": cursor},
        )
        rows.extend(page.get("items", []))
        cursor = page.get("next")
        if not cursor:
            break
        if len(rows) >= cap:
            truncated = True
            break
    counted = fleet.count(rows, c.now(), timedelta(seconds=c.settings.online_within_s))
    counted.truncated = truncated
    return counted
