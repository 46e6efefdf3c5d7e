"""Gateway errors, answered in hawkBit's error shape; a device never sees a 500 for its input.

DdiError
├── Unauthorized        401, empty body (hawkBit sends none)
├── BadRequest          400 malformed JSON, unknown enum values, odd ids
├── NotFound            404 unknown device, action or module
├── NotAllowed          405 cancel feedback for an action not being canceled
├── Conflict            409 auto-confirmation already active
├── Gone                410 feedback for a closed action
├── PreconditionFailed  412 If-Match names another artifact version
├── PayloadTooLarge     413 body over the gateway's limit
├── QuotaExceeded       429 past one of hawkBit's quotas (attributes, statuses, messages)
└── Busy                429 + Retry-After: the bus did not acknowledge in time; retry later
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException


class DdiError(Exception):
    """Base: an HTTP status, a hawkBit error code and a message for the device's log.

    Each kind names its status and code where it is declared: ``class X(DdiError, status=…,
    code=…)``. The base's own are those of a stray HTTP error, whose status is set per case.
    """

    status = 400
    code = "hawkbit.server.error.rest.param.invalid"

    def __init_subclass__(cls, *, status: int, code: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status
        cls.code = code

    def __init__(self, message: str, **info: Any) -> None:
        super().__init__(message)
        self.message = message
        self.info = info

    def headers(self) -> dict[str, str] | None:
        """Headers the answer carries besides its content type."""
        return None

    def response(self) -> Response:
        """The JSON answer."""
        body: dict[str, Any] = {
            "exceptionClass": type(self).__name__,
            "errorCode": self.code,
            "message": self.message,
        }
        if self.info:
            body["info"] = self.info
        return Response(
            orjson.dumps(body),
            status_code=self.status,
            headers=self.headers(),
            media_type="application/json",
        )


class Unauthorized(DdiError, status=401, code="hawkbit.server.error.unauthorized"):
    """Missing or wrong credentials; says nothing about whether the device exists."""

    def __init__(self) -> None:
        super().__init__("authentication required")

    def response(self) -> Response:
        """HawkBit answers 401 with an empty body."""
        return Response(status_code=401)


class BadRequest(DdiError, status=400, code=DdiError.code):
    """The request is malformed."""


class NotFound(DdiError, status=404, code="hawkbit.server.error.repo.entityNotFound"):
    """No such device, action, module or artifact."""


class Gone(DdiError, status=410, code="hawkbit.server.error.action.closed"):
    """The action is closed; feedback for it is no longer taken."""


class NotAllowed(DdiError, status=405, code="hawkbit.server.error.action.notCanceling"):
    """The action is not in a state that takes this request (cancel feedback while running)."""


class Conflict(DdiError, status=409, code="hawkbit.server.error.autoConfirmAlreadyActive"):
    """Auto-confirmation is already active."""


class PreconditionFailed(DdiError, status=412, code="hawkbit.server.error.precondition"):
    """``If-Match`` names another version of the artifact."""


class PayloadTooLarge(DdiError, status=413, code="hawkbit.server.error.quota.payloadTooLarge"):
    """The body is larger than the gateway takes for this request."""


class QuotaExceeded(DdiError, status=429, code="hawkbit.server.error.quota.tooManyEntries"):
    """The report would take the device or its action past one of hawkBit's quotas.

    Answered 429 as hawkBit does, without ``Retry-After``: the same report will not fit later.
    """


class Busy(DdiError, status=429, code="hawkbit.server.error.tooManyRequests"):
    """The event bus did not acknowledge the report in time; the device should come back later.

    Answered 429 with ``Retry-After``, never 503: SWUpdate takes a 503 as an access error and
    gives up the report, while SWUpdate and rauc-hawkbit-updater both retry a 429.
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds."""
        return {"Retry-After": str(self.retry_after_s)}


def install_handlers(app: FastAPI) -> None:
    """Map gateway errors, validation errors and stray HTTP errors to hawkBit-shaped JSON."""

    @app.exception_handler(DdiError)
    async def _ddi(_: Request, exc: DdiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return BadRequest(f"invalid {loc}: {first.get('msg', 'invalid')}").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        err = NotFound(str(exc.detail)) if exc.status_code == 404 else DdiError(str(exc.detail))
        err.status = exc.status_code
        return err.response()
