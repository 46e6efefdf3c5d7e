"""The API documentation pages, served whole by the service itself: no CDN, no internet.

``/docs`` (Swagger UI) and ``/redoc`` take their scripts and styles from the ``fastapi-offline``
package, ``/asyncapi`` its viewer (a web component) from ``asyncapi-viewer``; both packages ship
the built files, which are served under ``/docs-assets/``. Air-gapped sites see the same pages as
everyone else.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import fastapi_offline
from asyncapi_viewer import assets as asyncapi_assets  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
"""Where the pages' files are served; under ``/docs`` for the operator gate (open or guarded
with the pages, by ``GAGGLE_OPEN_DOCS``)."""
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""The pages' Content-Security-Policy: nothing from another host, not even a logo (Redoc's
footer asks a CDN for one)."""
SWAGGER_FILES = Path(str(files(fastapi_offline) / "static"))
ASYNCAPI_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="{assets}/asyncapi/{theme}" integrity="{theme_sri}">
  <script defer src="{assets}/asyncapi/{script}" integrity="{script_sri}"></script>
</head>
<body>
  <main>
    <asyncapi-viewer src="{spec}" sidebar></asyncapi-viewer>
    <noscript>The viewer needs JavaScript; the document itself is at
      <a href="{spec}">{spec}</a>.</noscript>
  </main>
</body>
</html>
"""


def install_docs(app: FastAPI, asyncapi_url: str = "/asyncapi.json") -> None:
    """Serve ``/docs``, ``/redoc`` and ``/asyncapi`` from packaged files.

    ``app`` must be made with ``docs_url=None, redoc_url=None``; its OpenAPI document stays at
    ``app.openapi_url``, and the AsyncAPI document at ``asyncapi_url``.
    """
    # The AsyncAPI viewer first: the Swagger files' mount would take its paths.
    app.mount(
        f"{ASSETS}/asyncapi",
        StaticFiles(directory=asyncapi_assets.STATIC_DIR),
        name="docs-assets-asyncapi",
    )
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_FILES), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = "/docs/oauth2-redirect"
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{title}: API",
                oauth2_redirect_url=f"{root}{redirect_url}",
                swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            )
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{title}: API",
                redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )

    page = ASYNCAPI_PAGE.format(
        title=f"{title}: events",
        assets="{root}" + ASSETS,
        theme=asyncapi_assets.VIEWER_THEME,
        theme_sri=asyncapi_assets.integrity(asyncapi_assets.VIEWER_THEME),
        script=asyncapi_assets.VIEWER_IIFE,
        script_sri=asyncapi_assets.integrity(asyncapi_assets.VIEWER_IIFE),
        spec="{root}" + asyncapi_url,
    )

    @app.get("/asyncapi", include_in_schema=False)
    async def asyncapi_page(request: Request) -> HTMLResponse:
        return _local(HTMLResponse(page.replace("{root}", request.scope.get("root_path", ""))))


def _local(page: HTMLResponse) -> HTMLResponse:
    """``page`` with :data:`DOCS_POLICY`."""
    page.headers["Content-Security-Policy"] = DOCS_POLICY
    return page
