"""Console wiring: the services' client, sessions, security headers and the pages' routers.

Every page is rendered from the services' APIs, called with the signed-in operator's own key; a
refusal from a service (401, 403, ...) is shown on the page with its status. The pages live in
:mod:`gaggle_console.auth` and :mod:`gaggle_console.pages`; what they share, in
:mod:`gaggle_console.web`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from gaggle_console import auth, oidc
from gaggle_console.pages import access, device, devices, overview, rollouts, software
from gaggle_console.settings import ConsoleSettings
from gaggle_console.upstream import Upstream
from gaggle_console.web import (
    HERE,
    MAX_FORM_BYTES,
    Console,
    FormTooLarge,
    Refused,
    SecurityHeaders,
    SignInFirst,
    refused,
)
from gaggle_contracts.settings import CommonSettings

ROUTERS = (
    auth.router,
    oidc.router,
    overview.router,
    devices.router,
    device.router,
    software.router,
    rollouts.router,
    access.router,
)


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            timeout=settings.request_timeout_s, transport=transport
        ) as client:
            urls = {
                "registry": settings.registry_url,
                "rollouts": settings.rollouts_url,
                "artifacts": settings.artifacts_url,
            }
            app.state.console = Console(settings, Upstream(client, urls), clock, now)
            yield

    app = FastAPI(title="Gaggle console", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(oidc.RenewTokens)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(FormTooLarge)
    async def too_large(request: Request, exc: FormTooLarge) -> HTMLResponse:
        return refused(
            request, 413, f"This form is larger than the console takes ({MAX_FORM_BYTES} bytes)."
        )

    @app.exception_handler(Refused)
    async def refusal(request: Request, exc: Refused) -> HTMLResponse:
        return refused(request, exc.status, exc.message)

    @app.exception_handler(SignInFirst)
    async def sign_in_first(request: Request, exc: SignInFirst) -> Response:
        return RedirectResponse("/sign-in", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    for router in ROUTERS:
        app.include_router(router)
    return app
