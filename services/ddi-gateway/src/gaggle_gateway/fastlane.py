"""The fast lane: a plain ASGI path in front of FastAPI for a device's hot requests.

The poll is most of a fleet's traffic and costs one dictionary look-up and one JSON render;
FastAPI's routing and dependency handling would cost several times that (measured in
``bench/poll_bench.py``). A device's first contact is a poll and a ``PUT …/configData``; the
latter took half of the gateway's CPU in FastAPI when a fleet registered (bench/fleet_bench.py).
A rollout is a deploymentBase, a download and three deploymentBase feedback reports per
device; they take the fast lane too (feedback unless tracing is on: its HTTP span starts the
feedback's trace). Everything else keeps FastAPI's path. The FastAPI routes stay, for the
OpenAPI document and for apps mounted without the lane.

Every request passes here first, so this is also where a controller id that arrived
percent-encoded is checked: the server decodes the path before routing, and an encoded ``/``
would otherwise move the id's parts into other path segments.
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gaggle_contracts import names
from gaggle_contracts.events import ActionFeedback
from gaggle_gateway.bodies import read_limited
from gaggle_gateway.core import HAL_JSON, Caller, Gateway
from gaggle_gateway.errors import BadRequest, DdiError
from gaggle_gateway.feedback import take_feedback
from gaggle_gateway.origin import Origin, authorization_of
from gaggle_gateway.routes import artifact_response, deployment_page
from gaggle_runtime.http import send_response

_CONTENT_TYPE = (b"content-type", HAL_JSON.encode())


class PollFastLane:
    """ASGI middleware answering polls, configData, deploymentBase, its feedback and downloads.

    Each is answered by the gateway core exactly as its FastAPI route answers it.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway, *, feedback: bool = True) -> None:
        self.app = app
        self.gateway = gateway
        self.feedback = feedback
        """Whether deploymentBase feedback is answered here too."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a device's hot request (see the class); pass anything else on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path")
        if raw_path and b"%" in raw_path:
            refusal = encoded_id_refusal(raw_path)
            if refusal is not None:
                await refusal.response()(scope, receive, send)
                return
        parts = scope["path"].split("/")
        method, count = scope["method"], len(parts)
        if count < 5 or parts[2] != "controller" or parts[3] != "v1" or not parts[4]:
            await self.app(scope, receive, send)
        elif method == "GET" and count == 5:
            await self._poll(scope, receive, send, parts[1], parts[4])
        elif method == "PUT" and count == 6 and parts[5] == "configData":
            await self._config_data(scope, receive, send, parts[1], parts[4])
        elif (
            self.feedback
            and method == "POST"
            and count == 8
            and parts[5] == "deploymentBase"
            and parts[7] == "feedback"
            and parts[6]
        ):
            await self._feedback(scope, receive, send, parts[1], parts[4], parts[6])
        elif method == "GET" and count == 7 and parts[5] == "deploymentBase" and parts[6]:
            await self._deployment_base(scope, receive, send, parts[1], parts[4], parts[6])
        elif (
            method in ("GET", "HEAD")
            and count == 9
            and parts[5] == "softwaremodules"
            and parts[7] == "artifacts"
            and parts[6]
            and parts[8]
        ):
            await self._download(scope, receive, send, parts[1], parts[4], parts[6], parts[8])
        else:
            await self.app(scope, receive, send)

    def _device(self, scope: Scope, tenant: str, controller_id: str) -> Caller:
        """The authorised device of a request, its sighting noted (the routes' ``device``)."""
        gw = self.gateway
        origin = Origin.of(scope)
        caller = gw.authorize(origin, tenant, controller_id, authorization_of(scope))
        return gw.sighted(caller, origin.address)

    async def _deployment_base(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        tenant: str,
        controller_id: str,
        action_id: str,
    ) -> None:
        """``GET …/deploymentBase/{action_id}``, as the FastAPI route answers it."""
        try:
            caller = self._device(scope, tenant, controller_id)
            query = QueryParams(scope["query_string"])
            body = deployment_page(caller, self.gateway, action_id, query)
        except DdiError as exc:
            await exc.response()(scope, receive, send)
            return
        await send_response(send, 200, orjson.dumps(body), [_CONTENT_TYPE])

    async def _download(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        tenant: str,
        controller_id: str,
        module_id: str,
        filename: str,
    ) -> None:
        """``GET``/``HEAD …/softwaremodules/{id}/artifacts/{name}``, as the FastAPI route does."""
        try:
            caller = self._device(scope, tenant, controller_id)
            request = Request(scope, receive)
            response = await artifact_response(caller, self.gateway, module_id, filename, request)
        except DdiError as exc:
            response = exc.response()
        await response(scope, receive, send)

    async def _poll(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, controller_id: str
    ) -> None:
        """``GET /{tenant}/controller/v1/{id}``, as the FastAPI route answers it."""
        try:
            authorization = authorization_of(scope)
            body = self.gateway.poll(Origin.of(scope), tenant, controller_id, authorization)
        except DdiError as exc:
            await exc.response()(scope, receive, send)
            return
        await send_response(send, 200, body, [_CONTENT_TYPE])

    async def _config_data(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, controller_id: str
    ) -> None:
        """``PUT …/configData``, as the FastAPI route answers it: 200 once JetStream has it."""
        gw = self.gateway
        try:
            # A device may PUT its attributes before the registry has caught up with its first
            # poll, so this request may register too.
            origin = Origin.of(scope)
            caller = gw.authorize(
                origin, tenant, controller_id, authorization_of(scope), may_register=True
            )
            gw.sighted(caller, origin.address)
            data = await read_limited(scope, receive, gw.settings.max_body_bytes)
            await gw.report_config_data(caller, data)
        except DdiError as exc:
            await exc.response()(scope, receive, send)
            return
        await send_response(send, 200, b"", [])

    async def _feedback(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        tenant: str,
        controller_id: str,
        action_id: str,
    ) -> None:
        """``POST …/deploymentBase/{action_id}/feedback``, as the FastAPI route answers it."""
        gw = self.gateway
        try:
            origin = Origin.of(scope)
            caller = gw.authorize(origin, tenant, controller_id, authorization_of(scope))
            gw.sighted(caller, origin.address)
            await take_feedback(gw, caller, action_id, ActionFeedback, scope, receive)
        except DdiError as exc:
            await exc.response()(scope, receive, send)
            return
        await send_response(send, 200, b"", [])


def encoded_id_refusal(raw_path: bytes) -> BadRequest | None:
    """A 400 for a DDI path whose controller id is not what the client meant to send.

    ``/{tenant}/controller/v1/{id}/…`` with the id percent-encoded: the id as the client wrote
    it must decode to an id Gaggle accepts (``dev%2F1`` decodes to ``dev/1``, ``%2E%2E`` to
    ``..``). None for any other path, or an id that decodes to an acceptable one.
    """
    parts = raw_path.split(b"/", 5)
    if len(parts) < 5 or parts[2] != b"controller" or parts[3] != b"v1" or b"%" not in parts[4]:
        return None
    controller_id = unquote(parts[4].decode("latin-1"), errors="replace")
    try:
        names.check_controller_id(controller_id)
    except names.InvalidNameError as exc:
        return BadRequest(f"{exc} (the path gave {parts[4].decode('latin-1')!r})")
    return None
