"""What rollouts refuses, and the one place that turns it into an HTTP answer.

RolloutsError            a request rollouts cannot do; ``code`` and ``message`` say why
├── NotKnown             404: the rollout, software or feed named does not exist
├── Refused              409: it exists, but the request does not fit its state
│   └── ActionExistsError    the device already has an open action
└── OwnerUnavailable     503: an id not known here, whose owner did not answer
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gaggle_runtime.http import error_body
from gaggle_runtime.rpc import RpcUnavailableError


class RolloutsError(Exception):
    """A request rollouts cannot do, and why (``parameter``: the part of it at fault)."""

    status = 400

    def __init__(self, code: str, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.parameter = parameter


class NotKnown(RolloutsError):
    """The rollout, software or feed named does not exist."""

    status = 404

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__("not_found", message, parameter)


class Refused(RolloutsError):
    """What is named exists, but the request does not fit its state."""

    status = 409


class ActionExistsError(Refused):
    """The device already has an open action."""

    def __init__(self, controller_id: str) -> None:
        super().__init__("action_open", f"device {controller_id!r} already has an open action")


class OwnerUnavailable(RolloutsError):
    """An id rollouts has not been told of, whose owner did not answer: try again."""

    status = 503

    def __init__(self, what: str, why: RpcUnavailableError) -> None:
        super().__init__("unavailable", f"{what} is not known to rollouts yet and {why}; try again")


def install(app: FastAPI) -> None:
    """Answer every :class:`RolloutsError` with its status and the one JSON error shape."""

    @app.exception_handler(RolloutsError)
    async def _refused(_: Request, exc: RolloutsError) -> JSONResponse:
        info = {"parameter": exc.parameter} if exc.parameter else {}
        return JSONResponse(error_body(exc.code, exc.message, **info), status_code=exc.status)
