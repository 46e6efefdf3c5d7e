"""Request bodies from devices: read within a limit, decode JSON, validate; DDI errors otherwise."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope

from gaggle_gateway.errors import BadRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


def declared_too_large(headers: list[tuple[bytes, bytes]], limit: int) -> bool:
    """Whether the request's ``Content-Length`` already says it is over ``limit``."""
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) > limit
    return False


async def read_limited(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body of an ASGI request, refused once it passes ``limit`` bytes.

    Raises:
        PayloadTooLarge: declared or found larger than ``limit``.
        BadRequest: the client went away before the end of its body.
    """
    if declared_too_large(scope["headers"], limit):
        raise PayloadTooLarge(f"body larger than {limit} bytes")
    data = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the body was cut before its end")
        data += message.get("body", b"")
        if len(data) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        if not message.get("more_body", False):
            return bytes(data)


def parse_body(data: bytes, model: type[M]) -> M:
    """JSON ``data`` validated as ``model``; unknown fields are ignored; empty means ``{}``.

    Raises:
        BadRequest: not JSON, or not the expected shape (the message names the field).
    """
    try:
        raw: Any = orjson.loads(data) if data.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"invalid {loc}: {first['msg']}") from exc
