"""DDI (hawkBit device API) JSON bodies, as real clients send and expect them.

Requests are read leniently: unknown fields are ignored, legacy fields (``time``, numeric ``id``)
are accepted, ``mode: null`` means merge, and ``progress`` may be ``{}``, ``{"percentage": n}`` or
``{"cnt": n, "of": m}``. See ``shared/reference/ddi-api.md`` and ``client-traffic.md``.

Every body is made storable as it is read: text PostgreSQL cannot keep (NUL, and the unpaired
surrogates JSON escapes allow but UTF-8 cannot encode) is replaced with U+FFFD, and the body
counts what it replaced (:attr:`DeviceBody.replaced`), so a device's odd text never costs its
report and every consumer sees clean events. Quotas (hawkBit's: 100 attributes per device, 50
messages per status) fail with the error type :data:`QUOTA_ERROR`, which the gateway answers 429.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gaggle_contracts.events import ConfigMode, Execution, FeedbackStatus, Finished

MAX_ATTRIBUTES = 100
"""hawkBit's quota of controller attributes per device."""
MAX_ATTRIBUTE_KEY = 128
MAX_ATTRIBUTE_VALUE = 128
MAX_DETAILS = 50
"""hawkBit's quota of messages per status."""
MAX_DETAIL_LENGTH = 4096
MAX_STATUSES = 1000
"""hawkBit's quota of statuses per action."""

QUOTA_ERROR = "quota_exceeded"
"""Validation error type of a body past one of hawkBit's quotas (DDI answers 429)."""

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""NUL (PostgreSQL text and jsonb refuse it) and surrogates (no UTF-8 form)."""

SLEEP_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$")
"""``HH:MM:SS`` below 24 h: every client parses the polling sleep this way."""


def storable(value: Any) -> tuple[Any, int]:
    """``value`` (decoded JSON) with every string, keys included, made storable.

    Returns:
        The value with NUL and surrogates replaced by U+FFFD, and how many were replaced. An
        unchanged value is returned as it is.
    """
    if isinstance(value, str):
        return _UNSTORABLE.subn(REPLACEMENT, value)
    if isinstance(value, dict):
        replaced = 0
        items: list[tuple[Any, Any]] = []
        for k, v in value.items():
            k2, n = storable(k)
            v2, m = storable(v)
            replaced += n + m
            items.append((k2, v2))
        return (dict(items), replaced) if replaced else (value, 0)
    if isinstance(value, list):
        replaced = 0
        out = []
        for v in value:
            v2, n = storable(v)
            replaced += n
            out.append(v2)
        return (out, replaced) if replaced else (value, 0)
    return value, 0


def replaced_note(replaced: int) -> str:
    """The line a report's details get when some of its text had to be replaced."""
    return (
        f"gaggle: replaced {replaced} character(s) the store cannot keep "
        "(NUL, unpaired surrogates, invalid UTF-8) with U+FFFD"
    )


def _quota(what: str, limit: int) -> PydanticCustomError:
    return PydanticCustomError(
        QUOTA_ERROR, "at most {limit} {what}", {"limit": limit, "what": what}
    )


class DeviceBody(BaseModel):
    """Base of every body a device sends: unknown fields ignored, text made storable."""

    model_config = ConfigDict(extra="ignore")
    _replaced: int = PrivateAttr(default=0)

    @model_validator(mode="wrap")
    @classmethod
    def _storable_text(cls, value: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        cleaned, replaced = storable(value)
        body = handler(cleaned)
        if replaced:
            body._replaced = replaced
        return body

    @property
    def replaced(self) -> int:
        """How many characters of the body were replaced to make it storable."""
        return self._replaced

    def noted(self, details: list[str]) -> list[str]:
        """``details``, with a line saying what was replaced if anything was."""
        return [*details, replaced_note(self._replaced)] if self._replaced else details


def _within_details_quota(value: list[str]) -> list[str]:
    if len(value) > MAX_DETAILS:
        raise _quota("messages per status", MAX_DETAILS)
    return value


class ConfigDataBody(DeviceBody):
    """``PUT …/configData``."""

    mode: ConfigMode | None = None
    time: JsonValue = None
    """The device's time of the report (SWUpdate and rauc-hawkbit send ``YYYYMMDDTHHMMSS``),
    in whatever form: it only tells two reports of the same attributes apart (their event ids)."""
    timestamp: JsonValue = None
    """As ``time``, in hawkBit's newer form (epoch milliseconds)."""
    data: dict[
        Annotated[str, Field(min_length=1, max_length=MAX_ATTRIBUTE_KEY)],
        Annotated[str, Field(max_length=MAX_ATTRIBUTE_VALUE)],
    ] = Field(min_length=1)

    @field_validator("data", mode="before")
    @classmethod
    def _scalars_as_strings(cls, value: Any) -> Any:
        # Our tolerance (ddi-api.md §11): numbers and booleans become strings.
        if isinstance(value, dict):
            return {
                k: (str(v).lower() if isinstance(v, bool) else str(v))
                if isinstance(v, int | float | bool)
                else v
                for k, v in value.items()
            }
        return value

    @field_validator("data")
    @classmethod
    def _not_too_many(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ATTRIBUTES:
            raise _quota("attributes per device", MAX_ATTRIBUTES)
        return value

    @property
    def effective_mode(self) -> ConfigMode:
        """``merge`` when absent or null (hawkbit-rs sends ``null``)."""
        return self.mode or "merge"


class FeedbackResult(DeviceBody):
    """``status.result``: ``finished`` plus free-form progress."""

    finished: Finished
    progress: dict[str, Any] | None = None


class FeedbackStatusBody(DeviceBody):
    """``status`` of a feedback POST."""

    execution: Execution
    result: FeedbackResult
    code: int | None = None
    details: list[Annotated[str, Field(max_length=MAX_DETAIL_LENGTH)]] = Field(default_factory=list)

    @field_validator("details", mode="before")
    @classmethod
    def _null_details(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("details")
    @classmethod
    def _not_too_many(cls, value: list[str]) -> list[str]:
        return _within_details_quota(value)


class FeedbackBody(DeviceBody):
    """``POST …/deploymentBase/{id}/feedback`` and ``…/cancelAction/{id}/feedback``."""

    id: str | int | None = None
    """Legacy: SWUpdate sends an int, others a string; ignored."""
    time: str | None = None
    """Legacy ``YYYYMMDDTHHMMSS``; used as the device time when ``timestamp`` is absent."""
    timestamp: int | None = None
    """Epoch milliseconds (hawkBit since 2024)."""
    status: FeedbackStatusBody

    def to_status(self) -> FeedbackStatus:
        """The event form of the status, with progress reduced to integers.

        If text had to be replaced, the details end with a line that says so: the action's
        history then shows it.
        """
        progress = None
        raw = self.status.result.progress
        if raw:
            progress = {
                k: v for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)
            }
        return FeedbackStatus(
            execution=self.status.execution,
            finished=self.status.result.finished,
            code=self.status.code,
            details=self.noted(self.status.details),
            progress=progress or None,
        )

    def device_time(self) -> datetime | None:
        """When the device says this happened, if it says so in a form we can read."""
        if self.timestamp is not None:
            try:
                return datetime.fromtimestamp(self.timestamp / 1000, UTC)
            except (OverflowError, OSError, ValueError):
                return None
        if self.time:
            try:
                return datetime.strptime(self.time, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
            except ValueError:
                return None
        return None


class ConfirmationFeedbackBody(DeviceBody):
    """``POST …/confirmationBase/{id}/feedback``."""

    confirmation: Literal["confirmed", "denied"]
    code: int | None = None
    details: list[Annotated[str, Field(max_length=MAX_DETAIL_LENGTH)]] = Field(default_factory=list)

    @field_validator("details")
    @classmethod
    def _not_too_many(cls, value: list[str]) -> list[str]:
        return _within_details_quota(value)


class AutoConfirmBody(DeviceBody):
    """``POST …/confirmationBase/activateAutoConfirm`` (body optional)."""

    initiator: str | None = Field(None, max_length=256)
    remark: str | None = Field(None, max_length=1024)


class InstalledBaseBody(DeviceBody):
    """``PUT …/installedBase``: the software the device already runs."""

    name: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_VALUE)
    version: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_VALUE)


class Link(BaseModel):
    """A HAL link."""

    href: str


class Polling(BaseModel):
    """``config.polling``."""

    sleep: str


class PollConfig(BaseModel):
    """``config``."""

    polling: Polling


class PollResponse(BaseModel):
    """Answer to the base poll ``GET /{tenant}/controller/v1/{controllerId}``."""

    config: PollConfig
    links: dict[str, Link] = Field(default_factory=dict, alias="_links")

    model_config = ConfigDict(populate_by_name=True)


def sleep_seconds(sleep: str) -> int:
    """Seconds of an ``HH:MM:SS`` polling interval.

    Raises:
        ValueError: not ``HH:MM:SS`` below 24 h.
    """
    if not SLEEP_RE.match(sleep):
        raise ValueError(f"polling sleep must be HH:MM:SS below 24:00:00, not {sleep!r}")
    h, m, s = (int(p) for p in sleep.split(":"))
    return h * 3600 + m * 60 + s
