"""The device listing's fast lane: a plain ASGI path in front of FastAPI for a valid query.

FastAPI's routing and parameter handling cost about as much CPU as rendering a page
(bench/registry_bench.py). Whatever this lane cannot answer as it is goes on to the FastAPI
route, which shares ``ListParams`` and ``list_body`` and answers it, errors included.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from gaggle_contracts.access import Permission
from gaggle_registry.listing import DeviceListing
from gaggle_registry.routes import ListParams, list_body
from gaggle_runtime.auth import PRINCIPAL, Principal
from gaggle_runtime.http import send_response

log = logging.getLogger(__name__)

PATH = "/api/v1/devices"
_CONTENT_TYPE = (b"content-type", b"application/json")


class ListFastLane:
    """ASGI middleware answering ``GET /api/v1/devices`` directly when it can."""

    def __init__(self, app: ASGIApp, listing: DeviceListing) -> None:
        self.app = app
        self.listing = listing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a valid listing; pass anything else on."""
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == PATH:
            body = await self._page(scope)
            if body is not None:
                await send_response(send, 200, body, [_CONTENT_TYPE])
                return
        await self.app(scope, receive, send)

    async def _page(self, scope: Scope) -> bytes | None:
        # Parsed as Starlette parses it, so both paths see the same values.
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            return None
        # Only a caller the gate let in, who may read devices, in its own tenant; the route
        # answers everyone else (403, 404).
        principal = scope.get("state", {}).get(PRINCIPAL)
        if not isinstance(principal, Principal):
            return None
        if Permission.DEVICE_READ not in principal.permissions:
            return None
        if query.pop("tenant", principal.tenant).lower() != principal.tenant:
            return None
        try:
            return await list_body(self.listing, principal.tenant, ListParams.model_validate(query))
        except Exception:  # the FastAPI route answers it the usual way, errors included
            log.debug("listing left to the FastAPI route", exc_info=True)
            return None
