"""HTTP conventions shared by the services' operator APIs: JSON errors, never a traceback."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from gaggle_runtime.failures import describe, is_transient

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
"""``Retry-After`` of a 503 while a dependency is away: PostgreSQL and NATS restart in 2 to 4 s."""

_AWAY = (
    ConnectionError,  # refused or reset while connecting to the database
    TimeoutError,  # no connection from the pool in time
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed, pool closing
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
)


class ApiError(Exception):
    """An error an operator caused, answered with ``status`` and a JSON body saying why."""

    def __init__(self, status: int, code: str, message: str, **info: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.info = info


class NotFoundError(ApiError):
    """The resource does not exist (or is not this tenant's)."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(404, "not_found", f"{what} {ident!r} not found")


T = TypeVar("T")


def found(value: T | None, what: str, ident: str) -> T:
    """``value``, which a store answered for the ``what`` named ``ident``; 404 if there was none."""
    if value is None:
        raise NotFoundError(what, ident)
    return value


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """A whole answer as two ASGI messages, with its ``Content-Length`` (for plain ASGI paths)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_body(code: str, message: str, **info: Any) -> dict[str, Any]:
    """The one JSON error shape: ``{"error": code, "message": text, ...info}``."""
    return {"error": code, "message": message, **info}


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        problems.append({"field": loc or "body", "problem": err.get("msg", "invalid")})
    first = problems[0] if problems else {"field": "body", "problem": "invalid"}
    return f"invalid {first['field']}: {first['problem']}", problems


def api_error_response(exc: ApiError) -> JSONResponse:
    """The answer to an ``ApiError``: its status and the JSON error body."""
    return JSONResponse(error_body(exc.code, exc.message, **exc.info), status_code=exc.status)


def _database_in(exc: BaseException) -> bool:
    """Whether ``exc`` or its causes came from asyncpg (a refused connect is a plain OSError)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, asyncpg.PostgresError | asyncpg.InterfaceError):
            return True
        frame = seen.__traceback__
        while frame is not None:
            if str(frame.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg."):
                return True
            frame = frame.tb_next
        seen = seen.__cause__
    return False


def unavailable_response(request: Request, exc: BaseException) -> JSONResponse:
    """503 with ``Retry-After`` for a request that failed because a dependency is away.

    Logged at WARNING without a traceback: the cause is outside this service, and an outage
    would otherwise fill the log with one traceback per request.
    """
    what = "database" if _database_in(exc) else "a service this API depends on is"
    log.warning(
        "%s unavailable; answered 503 method=%s path=%s error=%s",
        what,
        request.method,
        request.url.path,
        describe(exc, 300),
    )
    return JSONResponse(
        error_body("unavailable", f"{what} unavailable; retry later"),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Validation errors: 400; ``ApiError``: its status; a dependency away: 503; else 500."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, problems = _validation_message(exc)
        return JSONResponse(error_body("invalid_request", message, problems=problems), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def _bad_text(_: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL text cannot hold NUL (or characters its encoding lacks).
        message = "text contains a character that cannot be stored (e.g. NUL)"
        return JSONResponse(error_body("invalid_request", message), 400)

    async def _away(request: Request, exc: Exception) -> JSONResponse:
        if not is_transient(exc):
            raise exc  # a value PostgreSQL refused, say: the 500 below
        return unavailable_response(request, exc)

    # Handlers for these exact kinds run before Starlette's outermost middleware, which would
    # re-raise to the server (and so log a traceback) even after its handler answered.
    for kind in _AWAY:
        app.add_exception_handler(kind, _away)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_transient(exc):  # raised from a connection error, say
            return unavailable_response(request, exc)
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error; see the service log"), 500)
