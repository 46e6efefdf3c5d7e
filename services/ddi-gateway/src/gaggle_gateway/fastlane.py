"""The base poll's fast lane: a plain ASGI path in front of FastAPI for ``GET …/v1/{id}``.

The poll is most of a fleet's traffic and costs one dictionary look-up and one JSON render;
FastAPI's routing and dependency handling would cost several times that (measured in
``bench/poll_bench.py``). Everything else, errors of the poll included, keeps FastAPI's path.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gaggle_gateway.errors import DdiError
from gaggle_gateway.routes import HAL_JSON, Gateway, Origin, authorization_of

_CONTENT_TYPE = (b"content-type", HAL_JSON.encode())


class PollFastLane:
    """ASGI middleware answering base polls directly."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer ``GET /{tenant}/controller/v1/{id}``; pass anything else on."""
        if scope["type"] == "http" and scope["method"] == "GET":
            parts = scope["path"].split("/")
            if len(parts) == 5 and parts[2] == "controller" and parts[3] == "v1" and parts[4]:
                try:
                    body = self.gateway.poll(
                        Origin.of(scope), parts[1], parts[4], authorization_of(scope)
                    )
                except DdiError as exc:
                    await exc.response()(scope, receive, send)
                    return
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
