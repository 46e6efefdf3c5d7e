"""Request bodies from devices: read within a limit, decode JSON, validate; DDI errors otherwise.

Text is made storable by the DDI models (``gaggle_contracts.ddi``); this module makes sure it
reaches them: JSON that orjson refuses only for its text (an unpaired surrogate escape, bytes
that are not UTF-8) is decoded again by the standard library, which keeps such text for the
models to replace, rather than refused.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope

from gaggle_contracts.ddi import QUOTA_ERROR
from gaggle_gateway.errors import BadRequest, PayloadTooLarge, QuotaExceeded

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


def load_json(data: bytes) -> Any:
    r"""Decoded JSON; empty means ``{}``.

    orjson refuses ``"\ud800"`` (valid JSON, but no UTF-8 text) and bytes that are not UTF-8.
    Such a body is decoded again with every undecodable byte kept as a surrogate, which the DDI
    models then replace, so a device's odd text never costs its report.

    Raises:
        BadRequest: not JSON.
    """
    if not data.strip():
        return {}
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(data.decode("utf-8", "surrogateescape"))
        except ValueError:
            raise BadRequest(f"malformed JSON: {exc}") from exc


def parse_body(data: bytes, model: type[M]) -> M:
    """JSON ``data`` validated as ``model``; unknown fields are ignored; empty means ``{}``.

    Raises:
        BadRequest: not JSON, or not the expected shape (the message names the field).
        QuotaExceeded: past one of hawkBit's quotas (attributes, messages per status).
    """
    raw = load_json(data)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == QUOTA_ERROR:
            raise QuotaExceeded(f"{loc}: {first['msg']}") from exc
        raise BadRequest(f"invalid {loc}: {first['msg']}") from exc
