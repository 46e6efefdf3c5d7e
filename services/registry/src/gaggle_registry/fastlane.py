"""The device listing's fast lane: a plain ASGI path in front of FastAPI for a valid query.

FastAPI's routing and parameter handling cost about as much CPU as rendering a page
(bench/registry_bench.py). Whatever this lane cannot answer as it is goes on to the FastAPI
route, which shares ``ListParams`` and ``list_body`` and answers it, errors included.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from gaggle_registry.repository import Repo
from gaggle_registry.routes import ListParams, list_body

log = logging.getLogger(__name__)

PATH = "/api/v1/devices"
_CONTENT_TYPE = (b"content-type", b"application/json")


class ListFastLane:
    """ASGI middleware answering ``GET /api/v1/devices`` directly when it can."""

    def __init__(self, app: ASGIApp, repo: Repo) -> None:
        self.app = app
        self.repo = repo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a valid listing; pass anything else on."""
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == PATH:
            body = await self._page(scope)
            if body is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [_CONTENT_TYPE, (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _page(self, scope: Scope) -> bytes | None:
        # Parsed as Starlette parses it, so both paths see the same values.
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            return None
        try:
            return await list_body(self.repo, ListParams.model_validate(query))
        except Exception:  # the FastAPI route answers it the usual way, errors included
            log.debug("listing left to the FastAPI route", exc_info=True)
            return None
