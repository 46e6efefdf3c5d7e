"""DDI (hawkBit device API) JSON bodies, as real clients send and expect them.

Requests are read leniently: unknown fields are ignored, legacy fields (``time``, numeric ``id``)
are accepted, ``mode: null`` means merge, and ``progress`` may be ``{}``, ``{"percentage": n}`` or
``{"cnt": n, "of": m}``. See ``shared/reference/ddi-api.md`` and ``client-traffic.md``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gaggle_contracts.events import ConfigMode, Execution, FeedbackStatus, Finished

MAX_ATTRIBUTES = 100
"""hawkBit's quota of controller attributes per device."""
MAX_ATTRIBUTE_KEY = 128
MAX_ATTRIBUTE_VALUE = 128
MAX_DETAILS = 50
"""hawkBit's quota of messages per status."""
MAX_DETAIL_LENGTH = 4096

SLEEP_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$")
"""``HH:MM:SS`` below 24 h: every client parses the polling sleep this way."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ConfigDataBody(_Lenient):
    """``PUT …/configData``."""

    mode: ConfigMode | None = None
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
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes per device")
        return value

    @property
    def effective_mode(self) -> ConfigMode:
        """``merge`` when absent or null (hawkbit-rs sends ``null``)."""
        return self.mode or "merge"


class FeedbackResult(_Lenient):
    """``status.result``: ``finished`` plus free-form progress."""

    finished: Finished
    progress: dict[str, Any] | None = None


class FeedbackStatusBody(_Lenient):
    """``status`` of a feedback POST."""

    execution: Execution
    result: FeedbackResult
    code: int | None = None
    details: list[Annotated[str, Field(max_length=MAX_DETAIL_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_DETAILS
    )

    @field_validator("details", mode="before")
    @classmethod
    def _null_details(cls, value: Any) -> Any:
        return [] if value is None else value


class FeedbackBody(_Lenient):
    """``POST …/deploymentBase/{id}/feedback`` and ``…/cancelAction/{id}/feedback``."""

    id: str | int | None = None
    """Legacy: SWUpdate sends an int, others a string; ignored."""
    time: str | None = None
    """Legacy ``YYYYMMDDTHHMMSS``; used as the device time when ``timestamp`` is absent."""
    timestamp: int | None = None
    """Epoch milliseconds (hawkBit since 2024)."""
    status: FeedbackStatusBody

    def to_status(self) -> FeedbackStatus:
        """The event form of the status, with progress reduced to integers."""
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
            details=self.status.details,
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


class ConfirmationFeedbackBody(_Lenient):
    """``POST …/confirmationBase/{id}/feedback``."""

    confirmation: Literal["confirmed", "denied"]
    code: int | None = None
    details: list[str] = Field(default_factory=list, max_length=MAX_DETAILS)


class AutoConfirmBody(_Lenient):
    """``POST …/confirmationBase/activateAutoConfirm`` (body optional)."""

    initiator: str | None = Field(None, max_length=256)
    remark: str | None = Field(None, max_length=1024)


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
