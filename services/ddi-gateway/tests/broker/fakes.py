"""The gateway on a fake broker, as the broker tests' fixture hands it out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from faststream.nats import PubAck

from gaggle_contracts import names
from gaggle_gateway.core import Gateway


@dataclass
class Bus:
    """The gateway, its two entry points, and the events it published by kind."""

    gateway: Gateway
    lane: Any
    """The fast lane in front of the FastAPI app, as ``app.py`` serves it."""
    routes: FastAPI
    """The FastAPI routes alone (as with tracing on, or mounted without the lane)."""
    sinks: dict[str, Any]

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The ``kind`` events published so far, decoded, oldest first."""
        return [call.args[0] for call in self.sinks[kind].mock.call_args_list]

    def client(self, entry: str) -> httpx.AsyncClient:
        """An HTTP client of ``entry`` ("lane" or "routes")."""
        app = self.lane if entry == "lane" else self.routes
        return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw")


def acked(publish: Callable[..., Any]) -> Callable[..., Any]:
    """The test broker's ``publish``, answering as JetStream does: with an ack."""

    async def publish_acked(*args: Any, **kwargs: Any) -> PubAck:
        await publish(*args, **kwargs)
        return PubAck(stream=names.STREAM, seq=1)

    return publish_acked
