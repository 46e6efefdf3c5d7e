"""Request-reply on core NATS: a service's read-through endpoints, and the way to ask them.

Endpoints run as a NATS micro service named ``gaggle-<service>`` (``nats micro ls`` lists it,
``nats micro stats`` counts requests, errors and time). A service's replicas share one queue
group, so each request is answered once. Nothing crosses the ``OTA`` stream: a request whose
asker gave up is simply gone, and the asker says so instead of guessing. With tracing on, the
request and its answer are spans of the asker's trace (``traceparent`` in the headers).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from nats import micro
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service as MicroService
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from gaggle_contracts.rpc import RpcMessage, RpcRequest
from gaggle_runtime.telemetry import Tracing, continued, current_traceparent

log = logging.getLogger(__name__)

R = TypeVar("R", bound=RpcRequest)
M = TypeVar("M", bound=RpcMessage)

ERROR_HEADER = "Nats-Service-Error"
"""Header of a micro service's error reply (with ``Nats-Service-Error-Code``)."""


class RpcUnavailableError(Exception):
    """No usable answer: nobody is listening, no answer in time, or the responder failed."""


def _span(tracing: Tracing | None, name: str, kind: SpanKind) -> AbstractContextManager[Any]:
    if tracing is None:
        return contextlib.nullcontext()
    return tracing.tracer.start_as_current_span(
        name, kind=kind, attributes={"messaging.system": "nats"}
    )


async def ask(
    nc: NatsClient,
    request: RpcRequest,
    reply: type[M],
    timeout: float,
    tracing: Tracing | None = None,
) -> M:
    """Send ``request`` to the service that answers it and return its reply.

    With ``tracing``, the request is a client span of the current trace, and its
    ``traceparent`` goes along so that the answer joins the trace.

    Raises:
        RpcUnavailableError: no responder, no answer within ``timeout`` seconds, an error
            reply, or one that does not parse; the message says which.
    """
    subject = request.subject()
    with _span(tracing, f"{subject} request", SpanKind.CLIENT):
        return await _ask(nc, request, subject, reply, timeout)


async def _ask(
    nc: NatsClient, request: RpcRequest, subject: str, reply: type[M], timeout: float
) -> M:
    traceparent = current_traceparent()
    try:
        msg = await nc.request(
            subject,
            request.model_dump_json().encode(),
            timeout=timeout,
            headers={"traceparent": traceparent} if traceparent else None,
        )
    except NoRespondersError as exc:
        raise RpcUnavailableError(f"the {request.service} service is not answering") from exc
    except TimeoutError as exc:
        raise RpcUnavailableError(
            f"the {request.service} service did not answer within {timeout:g} s"
        ) from exc
    except NatsError as exc:
        raise RpcUnavailableError(f"asking the {request.service} service failed: {exc}") from exc
    if msg.headers and ERROR_HEADER in msg.headers:
        raise RpcUnavailableError(
            f"the {request.service} service could not answer: {msg.headers[ERROR_HEADER]}"
        )
    try:
        return reply.model_validate_json(msg.data)
    except ValidationError as exc:
        raise RpcUnavailableError(
            f"the {request.service} service gave an unreadable answer"
        ) from exc


Handler = Callable[[Any], Awaitable[RpcMessage]]


class Responder:
    """The request-reply endpoints of one service, started once NATS is connected."""

    def __init__(
        self, service: str, version: str = "0.1.0", tracing: Tracing | None = None
    ) -> None:
        self.service = service
        self.version = version
        self.tracing = tracing
        """With it, each request is a server span in the asker's trace (its SQL below it)."""
        self._endpoints: list[tuple[type[RpcRequest], Handler]] = []
        self._micro: MicroService | None = None

    def endpoint(self, request: type[R], handler: Callable[[R], Awaitable[RpcMessage]]) -> None:
        """Answer requests of type ``request`` with ``handler`` (registered before start).

        Raises:
            ValueError: ``request`` is answered by another service.
        """
        if request.service != self.service:
            raise ValueError(f"{request.__name__} is answered by {request.service}")
        self._endpoints.append((request, handler))

    async def start(self, nc: NatsClient) -> None:
        """Subscribe every endpoint (queue group: the service's name)."""
        self._micro = await micro.add_service(
            nc,
            name=f"gaggle-{self.service}",
            version=self.version,
            queue_group=self.service,
        )
        for request, handler in self._endpoints:
            await self._micro.add_endpoint(
                name=request.verb, subject=request.subject(), handler=self._handle(request, handler)
            )

    async def stop(self) -> None:
        """Unsubscribe (nothing to do when the connection is already closed)."""
        if self._micro is not None:
            with contextlib.suppress(Exception):
                await self._micro.stop()
            self._micro = None

    def _handle(
        self, request_type: type[RpcRequest], handler: Handler
    ) -> Callable[[MicroRequest], Awaitable[None]]:
        name = f"{request_type.subject()} process"

        async def handle(req: MicroRequest) -> None:
            try:
                request = request_type.model_validate_json(req.data)
            except ValidationError as exc:
                await req.respond_error(
                    "400", f"invalid {request_type.__name__}: {exc.errors()[:1]}"
                )
                return
            headers = req.headers or {}
            try:
                with (
                    continued(headers.get("traceparent")),
                    _span(self.tracing, name, SpanKind.SERVER),
                ):
                    reply = await handler(request)
            except Exception as exc:
                # The asker answers its operator 503: a database that is away, say.
                log.warning("request failed subject=%s", req.subject, exc_info=True)
                await req.respond_error("503", type(exc).__name__)
                return
            await req.respond(reply.model_dump_json().encode())

        return handle
