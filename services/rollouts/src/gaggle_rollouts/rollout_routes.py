"""Rollouts operator API: create a rollout, follow it, start, pause, resume, abort."""

# Routes carry their documentation in summary= and description=: a docstring would become
# the OpenAPI description of the operation.
# ruff: noqa: D103

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from gaggle_contracts import names
from gaggle_rollouts.deps import (
    Actor,
    ApprovalsDep,
    Approver,
    EngineDep,
    KnownDep,
    Reader,
    ReadsDep,
    StoreDep,
    Writer,
)
from gaggle_rollouts.health import (
    DEFAULT_ACTION_TIMEOUT_S,
    DEFAULT_REPORT_TIMEOUT_S,
    format_duration,
    parse_duration,
)
from gaggle_rollouts.plan import MemberState, WaveSpec
from gaggle_rollouts.rollout_filter import DeviceFilter, NewRollout
from gaggle_rollouts.schedule import MAX_WINDOWS, Window
from gaggle_runtime.http import ApiError, NotFoundError

RolloutIdParam = Annotated[str, Path(max_length=64, description="Rollout id")]
FEED_PATTERN = r"^[A-Za-z0-9._-]+$"


class FilterBody(BaseModel):
    """Narrows a rollout to some devices of its feed."""

    model_config = ConfigDict(extra="forbid")

    hw_model: str | None = Field(None, min_length=1, max_length=256)
    hw_revision: str | None = Field(None, min_length=1, max_length=256)
    sw_version: str | None = Field(None, min_length=1, max_length=256)
    controller_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, min_length=1, max_length=100_000
    )


class WaveBody(BaseModel):
    """One wave: ``{"percent": 10}`` or ``{"count": 50}``."""

    model_config = ConfigDict(extra="forbid")

    percent: int | None = Field(None, ge=1, le=100)
    count: int | None = Field(None, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _one_of(self) -> WaveBody:
        if (self.percent is None) == (self.count is None):
            raise ValueError("a wave is either a percent or a count")
        return self


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class DailyBody(BaseModel):
    """A daily window on the wall clock of the window's time zone."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(max_length=5, description="HH:MM")
    end: str = Field(max_length=5, description="HH:MM; before start: spans midnight")
    days: list[Day] | None = Field(
        None, min_length=1, max_length=7, description="Days it starts on; none: every day"
    )


class WindowBody(BaseModel):
    """A maintenance window: outside it a device may download but not install.

    Exactly one of: ``start``/``end`` (one daily window, optionally on some ``days``), ``windows``
    (several), or ``schedule`` with ``duration`` (a cron expression, as hawkBit's). Times are in
    ``timezone``. ``{"start": "02:00", "end": "04:00"}`` alone is a daily window in UTC.
    """

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(
        "UTC",
        min_length=1,
        max_length=64,
        description="An IANA time zone (Europe/Berlin), an offset (+02:00), or UTC",
    )
    start: str | None = Field(None, max_length=5, description="HH:MM")
    end: str | None = Field(None, max_length=5, description="HH:MM; before start: spans midnight")
    days: list[Day] | None = Field(None, min_length=1, max_length=7)
    windows: list[DailyBody] | None = Field(None, min_length=1, max_length=MAX_WINDOWS)
    schedule: str | None = Field(
        None,
        max_length=128,
        description="Cron expression, 5 fields (minute hour day-of-month month day-of-week)",
    )
    duration: str | None = Field(
        None, max_length=12, description="HH:MM:SS each scheduled window lasts"
    )

    @model_validator(mode="after")
    def _valid(self) -> WindowBody:
        Window.parse(self.stored())  # ScheduleError is a ValueError: a 4xx naming the part
        return self

    def stored(self) -> dict[str, Any]:
        """As stored with the rollout and its actions, and shown."""
        return self.model_dump(exclude_none=True)


Duration = Annotated[
    str,
    Field(
        min_length=2,
        max_length=32,
        description="A duration: 30m, 1h30m, 90s, 2d (ms, s, m, h, d)",
        examples=["30m"],
    ),
]


def duration_s(value: str | None) -> float | None:
    """Seconds of a duration field (validated already), None for None."""
    return None if value is None else parse_duration(value)


def check_duration(value: str | None) -> str | None:
    """A duration field's validator: ``ValueError`` (a 4xx) when it is not one."""
    if value is not None:
        parse_duration(value)
    return value


class LimitsBody(BaseModel):
    """An action's two time limits (see the rollouts README: action timeouts)."""

    model_config = ConfigDict(extra="forbid")

    report_timeout: Duration | None = Field(
        None,
        description="How long an action may go without a report from its device "
        f"(default {format_duration(DEFAULT_REPORT_TIMEOUT_S)})",
    )
    action_timeout: Duration | None = Field(
        None,
        description="How long an action may take to reach a final state "
        f"(default {format_duration(DEFAULT_ACTION_TIMEOUT_S)})",
    )

    @field_validator("report_timeout", "action_timeout")
    @classmethod
    def _durations(cls, value: str | None) -> str | None:
        return check_duration(value)


class RolloutBody(LimitsBody):
    """A new rollout."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    software_id: str = Field(min_length=1, max_length=64)
    feed: str = Field("default", min_length=1, max_length=64, pattern=FEED_PATTERN)
    filter: FilterBody = Field(default_factory=FilterBody)
    waves: list[WaveBody] = Field(
        default_factory=lambda: [WaveBody(percent=100)], min_length=1, max_length=100
    )
    success_threshold: int = Field(
        80, ge=1, le=100, description="% of a wave that must succeed before the next starts"
    )
    error_threshold: int = Field(
        20, ge=0, le=100, description="% of failed devices (of started waves) tolerated"
    )
    error_action: Literal["pause", "abort"] = "pause"
    action_type: Literal["forced", "soft", "timeforced", "downloadonly"] = "forced"
    forcetime: AwareDatetime | None = Field(
        None, description="For timeforced: soft until this time, forced after it"
    )
    confirmation_required: bool = False
    maintenance_window: WindowBody | None = None
    start: bool = Field(False, description="Start at once (with approval on: once it is approved)")
    soak: Duration | None = Field(
        None,
        description="How long a device must stay healthy after its success (keep polling, "
        "report the new version after its reboot) before it counts towards the next wave",
    )

    @field_validator("soak")
    @classmethod
    def _soak(cls, value: str | None) -> str | None:
        return check_duration(value)

    @model_validator(mode="after")
    def _forcetime(self) -> RolloutBody:
        check_forcetime(self.action_type, self.forcetime)
        return self

    @model_validator(mode="after")
    def _waves(self) -> RolloutBody:
        units = {"percent" if w.percent is not None else "count" for w in self.waves}
        if len(units) > 1:
            raise ValueError("waves: give every wave as a percent, or every wave as a count")
        if units == {"percent"} and sum(w.percent or 0 for w in self.waves) > 100:
            raise ValueError("waves: the percentages add up to more than 100")
        return self


def check_forcetime(action_type: str, forcetime: datetime | None) -> None:
    """A ``timeforced`` action needs its force time, and only it has one.

    Raises:
        ValueError: one without the other.
    """
    if action_type == "timeforced" and forcetime is None:
        raise ValueError("forcetime: a timeforced action needs a forcetime (ISO 8601, with zone)")
    if action_type != "timeforced" and forcetime is not None:
        raise ValueError("forcetime: only a timeforced action has a forcetime")


def parse_id(raw: str) -> int:
    """A rollout id from the path; unknown (404) when it cannot be one."""
    rollout_id = names.parse_row_id(raw)
    if rollout_id is None:
        raise NotFoundError("rollout", raw)
    return rollout_id


T = TypeVar("T")


def _found(value: T | None, rollout_id: str) -> T:
    """What was read of the rollout; unknown (404) when there is no such rollout."""
    if value is None:
        raise NotFoundError("rollout", rollout_id)
    return value


api = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


def _new_rollout(body: RolloutBody, actor: str, approval_required: bool) -> NewRollout:
    f = body.filter
    return NewRollout(
        name=body.name,
        software_id=body.software_id,
        feed=body.feed,
        device_filter=DeviceFilter(
            f.hw_model,
            f.hw_revision,
            f.sw_version,
            None if f.controller_ids is None else frozenset(f.controller_ids),
        ),
        waves=[WaveSpec(w.percent, w.count) for w in body.waves],
        success_threshold=body.success_threshold,
        error_threshold=body.error_threshold,
        error_action=body.error_action,
        action_type=body.action_type,
        confirmation_required=body.confirmation_required,
        maintenance_window=(body.maintenance_window.stored() if body.maintenance_window else None),
        start=body.start,
        forcetime=body.forcetime,
        created_by=actor,
        approval_required=approval_required,
        report_timeout_s=duration_s(body.report_timeout),
        action_timeout_s=duration_s(body.action_timeout),
        soak_s=duration_s(body.soak) or 0.0,
    )


@api.post(
    "",
    status_code=201,
    summary="Create a rollout (and start it with start=true)",
    description="Where the tenant asks for approval (`rollout_approval`), the rollout waits for "
    "an approver (`approval: pending`) and starts only once approved: at once if it was created "
    "with start=true, else with `start`.",
)
async def create_rollout(
    tenant: Writer,
    body: RolloutBody,
    store: StoreDep,
    engine: EngineDep,
    known: KnownDep,
    approvals: ApprovalsDep,
    actor: Actor,
) -> dict[str, Any]:
    # A software or device id rollouts has not been told of yet is read through ``known``
    # first, so an id that was just uploaded or registered works at once.
    tenant = tenant.lower()
    required = approvals.required(tenant)
    if required is None:
        raise ApiError(503, "unavailable", "tenant settings are not loaded yet; retry")
    await known.software(tenant, body.software_id)
    if body.filter.controller_ids is not None:
        await known.devices(tenant, body.filter.controller_ids)
    doc = await store.create(tenant, _new_rollout(body, actor, required))
    engine.poke(int(doc["id"]))
    return doc


@api.get("", summary="Rollouts, newest first")
async def list_rollouts(
    tenant: Reader,
    reads: ReadsDep,
    feed: Annotated[str | None, Query(max_length=64, pattern=FEED_PATTERN)] = None,
    state: Literal["created", "running", "paused", "finished", "aborted"] | None = None,
    before: Annotated[str | None, Query(max_length=18, pattern=r"^\d+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    items = await reads.find(
        tenant.lower(), feed, state, None if before is None else int(before), limit
    )
    nxt = items[-1]["id"] if len(items) == limit else None
    return {"items": items, "next": nxt}


@api.get("/{rollout_id}", summary="One rollout with its waves and counters")
async def get_rollout(
    tenant: Reader, rollout_id: RolloutIdParam, reads: ReadsDep
) -> dict[str, Any]:
    return _found(await reads.get(tenant.lower(), parse_id(rollout_id)), rollout_id)


@api.get("/{rollout_id}/devices", summary="A rollout's devices, their wave and state")
async def rollout_devices(
    tenant: Reader,
    rollout_id: RolloutIdParam,
    reads: ReadsDep,
    state: MemberState | None = None,
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    found = await reads.members(tenant.lower(), parse_id(rollout_id), state, after, limit)
    items = _found(found, rollout_id)
    nxt = items[-1]["controller_id"] if len(items) == limit else None
    return {"items": items, "next": nxt}


COMMANDS = {
    "start": "Start a created rollout (its first wave)",
    "pause": "Pause a running rollout (no new actions)",
    "resume": "Resume a paused rollout (failures so far no longer count against its threshold)",
    "abort": "Abort a rollout: its open actions are canceled",
}


def _command_route(name: str, summary: str) -> None:
    async def command(
        tenant: Writer, rollout_id: RolloutIdParam, store: StoreDep, engine: EngineDep
    ) -> dict[str, Any]:
        ident = parse_id(rollout_id)
        doc = await store.command(tenant.lower(), ident, name)
        engine.poke(ident)
        return doc

    command.__name__ = f"{name}_rollout"
    api.post(f"/{{rollout_id}}/{name}", summary=summary)(command)


for _name, _summary in COMMANDS.items():
    _command_route(_name, _summary)


class DecisionBody(BaseModel):
    """An approver's decision on a rollout."""

    model_config = ConfigDict(extra="forbid")

    remark: str | None = Field(None, max_length=1024, description="Why, for the record")


def _decision_route(name: str, summary: str) -> None:
    async def decide(
        tenant: Approver,
        rollout_id: RolloutIdParam,
        store: StoreDep,
        engine: EngineDep,
        actor: Actor,
        body: DecisionBody | None = None,
    ) -> dict[str, Any]:
        ident = parse_id(rollout_id)
        remark = body.remark if body is not None else None
        doc = await store.command(tenant.lower(), ident, name, actor, remark)
        engine.poke(ident)
        return doc

    decide.__name__ = f"{name}_rollout"
    api.post(f"/{{rollout_id}}/{name}", summary=summary)(decide)


_decision_route(
    "approve",
    "Approve a rollout that waits for approval (it starts at once if created with start=true)",
)
_decision_route("deny", "Deny a rollout that waits for approval: it is aborted")
