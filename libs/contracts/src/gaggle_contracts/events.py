"""Events: the facts on the ``OTA`` stream, one class per kind, with who publishes and consumes it.

Every event carries an id (also sent as ``Nats-Msg-Id`` so JetStream drops duplicates), the tenant,
a UTC timestamp and a schema version. Events are frozen and ignore unknown fields, so a newer
publisher can add optional fields without breaking older consumers. Every event and KV value is
serialised through :func:`bounded_json`, so none can be larger than the bus accepts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gaggle_contracts import names

ControllerId = Annotated[str, Field(min_length=1, max_length=256)]


MAX_MESSAGE_BYTES = 1_000_000
"""Largest JSON body of an event or KV value.

NATS refuses a message above its ``max_payload`` (1 MiB, 1,048,576 bytes, by default), counting
the headers too (``Nats-Msg-Id``, ``traceparent``, content type: well under 1 KiB); what stays
under this limit fits with about 47 KiB to spare.
"""


class MessageTooLargeError(ValueError):
    """An event or KV value whose JSON is larger than :data:`MAX_MESSAGE_BYTES`."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} is {size} bytes as JSON, over the limit of {limit} bytes: "
            "the bus would refuse it; bound the list or text that grew it"
        )
        self.what = what
        self.size = size
        self.limit = limit


def bounded_json(value: BaseModel, what: str, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """``value`` as JSON bytes, checked against what the bus accepts.

    Args:
        value: an event, or a KV value.
        what: names it in the error (``device.updated event``).
        limit: the largest size accepted.

    Raises:
        MessageTooLargeError: the JSON is larger than ``limit``.
    """
    data = value.model_dump_json().encode()
    if len(data) > limit:
        raise MessageTooLargeError(what, len(data), limit)
    return data


def utcnow() -> datetime:
    """Current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Event(BaseModel):
    """A fact on the OTA stream. Frozen; unknown fields ignored (tolerant reader)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: ClassVar[str]
    """``<entity>.<event>``; the last two subject tokens."""
    publishers: ClassVar[tuple[str, ...]] = ()
    """Services that publish this kind (``gateway``, ``registry``, ``artifacts``, ``rollouts``).

    With ``consumers``, the source of the AsyncAPI publishers and of ``docs/architecture.md``;
    a test checks ``consumers`` against each service's subscriptions.
    """
    consumers: ClassVar[tuple[str, ...]] = ()
    """Services with a durable consumer of this kind."""

    event_id: UUID = Field(default_factory=uuid4)
    tenant: str
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    schema_version: Literal[1] = 1

    @property
    def subject(self) -> str:
        """Subject this event is published on."""
        return names.subject(self.tenant, self.kind)

    @property
    def message_id(self) -> str:
        """Value of ``Nats-Msg-Id``; JetStream drops a second publish inside its window."""
        return str(self.event_id)

    def encode(self) -> bytes:
        """The event as it goes on the bus: its JSON, at most :data:`MAX_MESSAGE_BYTES`.

        Raises:
            MessageTooLargeError: the event is too large for the bus.
        """
        return bounded_json(self, f"{self.kind} event")


# --- from the DDI gateway -------------------------------------------------------------------


class DeviceDiscovered(Event):
    """First poll of an unknown controller id.

    Published by ddi-gateway (if the tenant allows auto-registration); consumed by registry, which
    creates the device. De-duplicated per device by its message id, so many gateways seeing the
    same new device publish one event.
    """

    kind: ClassVar[str] = "device.discovered"
    publishers: ClassVar[tuple[str, ...]] = ("gateway",)
    consumers: ClassVar[tuple[str, ...]] = ("registry",)
    controller_id: ControllerId
    address: str | None = None

    @property
    def message_id(self) -> str:
        """One message id per device, so concurrent gateways are de-duplicated by JetStream."""
        return f"discovered:{self.tenant}:{self.controller_id}"


class Sighting(BaseModel):
    """One device seen at a time from an address."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    controller_id: ControllerId
    seen_at: AwareDatetime
    address: str | None = None


class DeviceSeen(Event):
    """A batch of sightings of known devices, flushed about once a second, never per poll.

    Published by ddi-gateway; consumed by registry (last seen, address) and rollouts (devices
    in a soak after their success are seen back).
    """

    kind: ClassVar[str] = "device.seen"
    publishers: ClassVar[tuple[str, ...]] = ("gateway",)
    consumers: ClassVar[tuple[str, ...]] = ("registry", "rollouts")
    sightings: list[Sighting]


UPDATE_STATES = (
    "unknown",
    "up_to_date",
    "pending",
    "downloading",
    "installing",
    "success",
    "error",
)
"""A device's update state, as the registry keeps it and its operator API filters by it."""


ConfigMode = Literal["merge", "replace", "remove"]


class DeviceConfigReported(Event):
    """A configData PUT: the device's attributes and how to apply them.

    Published by ddi-gateway after validation; consumed by registry.
    """

    kind: ClassVar[str] = "device.config_reported"
    publishers: ClassVar[tuple[str, ...]] = ("gateway",)
    consumers: ClassVar[tuple[str, ...]] = ("registry",)
    controller_id: ControllerId
    mode: ConfigMode = "merge"
    data: dict[str, str]


Execution = Literal[
    "closed", "proceeding", "canceled", "scheduled", "rejected", "resumed", "downloaded", "download"
]
Finished = Literal["success", "failure", "none"]


class FeedbackStatus(BaseModel):
    """The validated ``status`` of a DDI feedback body."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    execution: Execution
    finished: Finished = "none"
    code: int | None = None
    details: list[str] = Field(default_factory=list)
    progress: dict[str, int] | None = None


class ActionFeedback(Event):
    """A deploymentBase feedback POST, validated, with the device's own timestamp if given.

    Published by ddi-gateway (answered 200 only after the JetStream ack); consumed by rollouts
    (action history, closing), whose ``action.updated``/``action.finished`` tell registry.
    """

    kind: ClassVar[str] = "action.feedback"
    publishers: ClassVar[tuple[str, ...]] = ("gateway",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    controller_id: ControllerId
    action_id: str
    status: FeedbackStatus
    device_time: AwareDatetime | None = None


class CancelFeedback(Event):
    """A cancelAction feedback POST. Published by ddi-gateway; consumed by rollouts."""

    kind: ClassVar[str] = "cancel.feedback"
    publishers: ClassVar[tuple[str, ...]] = ("gateway",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    controller_id: ControllerId
    action_id: str
    status: FeedbackStatus
    device_time: AwareDatetime | None = None


class ConfirmationFeedback(Event):
    """A confirmationBase feedback POST (the device confirms or denies an action).

    Published by ddi-gateway; consumed by rollouts.
    """

    kind: ClassVar[str] = "confirmation.feedback"
    publishers: ClassVar[tuple[str, ...]] = ("gateway",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    controller_id: ControllerId
    action_id: str
    confirmation: Literal["confirmed", "denied"]
    code: int | None = None
    details: list[str] = Field(default_factory=list)


class AutoConfirmChanged(Event):
    """The device switched auto-confirmation on or off. Published by ddi-gateway; for rollouts."""

    kind: ClassVar[str] = "device.auto_confirm"
    publishers: ClassVar[tuple[str, ...]] = ("gateway",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    controller_id: ControllerId
    active: bool
    initiator: str | None = None
    remark: str | None = None


# --- from registry ---------------------------------------------------------------------------


class DeviceUpdated(Event):
    """A device's inventory changed (registered, attributes, installed version, deleted).

    Published by registry; consumed by rollouts (re-decide) and anyone watching the fleet.
    """

    kind: ClassVar[str] = "device.updated"
    publishers: ClassVar[tuple[str, ...]] = ("registry",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    controller_id: ControllerId
    change: Literal["registered", "attributes", "installed", "deleted", "other"]
    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    reported_at: AwareDatetime | None = None
    """When the device reported these attributes (the gateway's time; ``attributes`` and
    ``registered`` changes): rollouts compares it with when the device reported its last
    success (rollback detection)."""


# --- from artifacts --------------------------------------------------------------------------


class Compatibility(BaseModel):
    """One ``(hw_model, hw_revision)`` pair a software runs on; revision ``*`` means any."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    hw_model: str
    hw_revision: str


class SoftwareCreated(Event):
    """A software entry appeared. Published by artifacts; consumed by rollouts."""

    kind: ClassVar[str] = "software.created"
    publishers: ClassVar[tuple[str, ...]] = ("artifacts",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    software_id: str
    name: str
    version: str
    filename: str
    size: int
    md5: str
    sha1: str
    sha256: str
    compatibility: list[Compatibility]
    object_key: str | None = None
    """Key in the object store; None for external software."""
    external_url: str | None = None


class SoftwareDeleted(Event):
    """A software entry went away (soft or hard). Published by artifacts; consumed by rollouts."""

    kind: ClassVar[str] = "software.deleted"
    publishers: ClassVar[tuple[str, ...]] = ("artifacts",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    software_id: str
    hard: bool = False


class SoftwareUntrusted(Event):
    """A software's signature no longer verifies: the trust-store entry it relied on is gone.

    Published by artifacts when an operator removes a certificate or key from the tenant's trust
    store; consumed by rollouts, which refuses to start rollouts with it and pauses running ones.
    """

    kind: ClassVar[str] = "software.untrusted"
    publishers: ClassVar[tuple[str, ...]] = ("artifacts",)
    consumers: ClassVar[tuple[str, ...]] = ("rollouts",)
    software_id: str
    reason: str = Field(max_length=512)


# --- from rollouts ---------------------------------------------------------------------------

ActionStatus = Literal[
    "scheduled",
    "wait_for_confirmation",
    "running",
    "retrieved",
    "download",
    "downloaded",
    "warning",
    "canceling",
    "cancel_rejected",
    "canceled",
    "finished",
    "error",
]


class ActionCreated(Event):
    """An action (one deployment of one software to one device) was opened.

    Published by rollouts; consumed by registry (update state: pending).
    """

    kind: ClassVar[str] = "action.created"
    publishers: ClassVar[tuple[str, ...]] = ("rollouts",)
    consumers: ClassVar[tuple[str, ...]] = ("registry", "artifacts")
    controller_id: ControllerId
    action_id: str
    software_id: str
    version: str
    rollout_id: str | None = None


class ActionUpdated(Event):
    """An open action changed status or got device feedback. From rollouts; for registry."""

    kind: ClassVar[str] = "action.updated"
    publishers: ClassVar[tuple[str, ...]] = ("rollouts",)
    consumers: ClassVar[tuple[str, ...]] = ("registry",)
    controller_id: ControllerId
    action_id: str
    status: ActionStatus
    details: list[str] = Field(default_factory=list)


class ActionFinished(Event):
    """An action closed (finished, error, canceled, timed out). From rollouts; registry consumes.

    ``timed_out``: its device went past one of the action's limits (no report for too long, or
    no final state in time), or went silent in its rollout's soak time after its success.
    """

    kind: ClassVar[str] = "action.finished"
    publishers: ClassVar[tuple[str, ...]] = ("rollouts",)
    consumers: ClassVar[tuple[str, ...]] = ("registry",)
    controller_id: ControllerId
    action_id: str
    status: Literal["finished", "error", "canceled", "downloaded", "timed_out"]
    software_id: str
    version: str
    rollout_id: str | None = None


class ActionRolledBack(Event):
    """A device fell back to the version it ran before a successful action (A/B fallback).

    Published by rollouts when the device's report of its running version (configData
    ``sw_version`` or ``PUT installedBase``, through registry's ``device.updated``) names its old
    version again after the action finished. The action is then ``rolled_back``, a failure of its
    rollout, and the software is not offered to the device again until an operator clears it.
    For operators and tools.
    """

    kind: ClassVar[str] = "action.rolled_back"
    publishers: ClassVar[tuple[str, ...]] = ("rollouts",)
    consumers: ClassVar[tuple[str, ...]] = ()
    controller_id: ControllerId
    action_id: str
    software_id: str
    version: str
    """The version the action installed and the device left."""
    reported_version: str | None = None
    """The version the device reports running again."""
    rollout_id: str | None = None


UpdateMode = Literal["rollout", "latest", "assigned", "pinned"]


class DevicePolicyChanged(Event):
    """A device's deployment policy changed (mode, feed, assigned software).

    Published by rollouts, which owns policies; consumed by registry (the feed filter).
    """

    kind: ClassVar[str] = "device.policy_changed"
    publishers: ClassVar[tuple[str, ...]] = ("rollouts",)
    consumers: ClassVar[tuple[str, ...]] = ("registry",)
    controller_id: ControllerId
    mode: UpdateMode
    feed: str
    software_id: str | None = None


class RolloutProgressed(Event):
    """A rollout's counters or phase changed. Published by rollouts; for operators and tools."""

    kind: ClassVar[str] = "rollout.progressed"
    publishers: ClassVar[tuple[str, ...]] = ("rollouts",)
    consumers: ClassVar[tuple[str, ...]] = ()
    rollout_id: str
    state: str
    total: int = 0
    pending: int = 0
    running: int = 0
    success: int = 0
    failure: int = 0
    canceled: int = 0
    wave: int | None = None
    queued: int = 0
    """Of ``pending``, the devices whose wave started and that wait for their action: for a free
    slot under the tenant's cap on updates in flight, or for the rollout to resume."""
    approval: str | None = None
    """Where the rollout's approval stands (``pending``, ``approved``, ``denied``); None where its
    tenant asks for none."""
    timed_out: int = 0
    """Of ``failure``, the devices whose action timed out (or that went silent in the soak)."""
    rolled_back: int = 0
    """Of ``failure``, the devices that fell back to their old version after success."""
    soaking: int = 0
    """Of ``success``, the devices still in the rollout's soak time."""
    reason: str | None = None
    """Why the rollout is where it is (paused or aborted: which threshold, and why)."""


# --- from every service with an operator API -------------------------------------------------


class AuditRecorded(Event):
    """An operator changed something, or tried to: who, what, when and the outcome.

    Published (through its outbox) by the service that served the request; consumed by registry,
    which keeps the audit log.
    """

    kind: ClassVar[str] = "audit.recorded"
    publishers: ClassVar[tuple[str, ...]] = ("registry", "artifacts", "rollouts")
    consumers: ClassVar[tuple[str, ...]] = ("registry",)
    actor: str = Field(max_length=256)
    """``key:<id>`` for an API key, ``oidc:<subject>`` for a JWT."""
    service: str = Field(max_length=64)
    action: str = Field(max_length=128)
    """The route's name, e.g. ``start_rollout``."""
    method: str = Field(max_length=16)
    resource: str = Field(max_length=512)
    """The request path below ``/api/v1/``, with the created id appended for creations."""
    status: int
    outcome: Literal["success", "denied", "rejected", "failed"]


class ApiKeysUsed(Event):
    """When each of a tenant's API keys was last used. Published by every service now and then."""

    kind: ClassVar[str] = "auth.keys_used"
    publishers: ClassVar[tuple[str, ...]] = ("registry", "artifacts", "rollouts")
    consumers: ClassVar[tuple[str, ...]] = ("registry",)
    last_used: dict[str, AwareDatetime]


EVENT_TYPES: tuple[type[Event], ...] = (
    DeviceDiscovered,
    DeviceSeen,
    DeviceConfigReported,
    ActionFeedback,
    CancelFeedback,
    ConfirmationFeedback,
    AutoConfirmChanged,
    DeviceUpdated,
    SoftwareCreated,
    SoftwareDeleted,
    SoftwareUntrusted,
    ActionCreated,
    ActionUpdated,
    ActionFinished,
    ActionRolledBack,
    DevicePolicyChanged,
    RolloutProgressed,
    AuditRecorded,
    ApiKeysUsed,
)
"""Every event class, in the order of DESIGN.md."""

EVENTS_BY_KIND: dict[str, type[Event]] = {cls.kind: cls for cls in EVENT_TYPES}


def event_from_json(kind: str, data: bytes | str | dict[str, Any]) -> Event:
    """Decode an event of a known ``kind`` from JSON bytes, text or a dict."""
    cls = EVENTS_BY_KIND[kind]
    if isinstance(data, dict):
        return cls.model_validate(data)
    return cls.model_validate_json(data)
