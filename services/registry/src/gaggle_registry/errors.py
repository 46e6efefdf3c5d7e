"""The registry's HTTP errors: raised by the routes only; the stores answer None instead.

::

    ApiError (gaggle_runtime.http)      status, code and message, answered as JSON
    ├── NotFoundError (gaggle_runtime)  404 not_found: no such device, key or tenant here
    ├── InvalidRequestError             400 invalid_request: a value that cannot be used
    │   └── InvalidCursorError          400 invalid_request: a cursor that is not one of ours
    └── DeviceExistsError               409 exists: a device of that id is there already
"""

from __future__ import annotations

from typing import Any

from gaggle_runtime.http import ApiError, NotFoundError, found

__all__ = [
    "ApiError",
    "DeviceExistsError",
    "InvalidCursorError",
    "InvalidRequestError",
    "NotFoundError",
    "found",
]


class InvalidRequestError(ApiError):
    """A request whose values pass their checks one by one but cannot be used."""

    def __init__(self, message: str, **info: Any) -> None:
        super().__init__(400, "invalid_request", message, **info)


class InvalidCursorError(InvalidRequestError):
    """A listing's ``cursor`` that is not a ``next`` we gave."""

    def __init__(self) -> None:
        super().__init__("invalid cursor: pass `next` as given", parameter="cursor")


class DeviceExistsError(ApiError):
    """A device created with the id of one that exists."""

    def __init__(self, controller_id: str) -> None:
        super().__init__(409, "exists", f"device {controller_id!r} already exists")
