"""Request-reply between services: read-throughs on core NATS, outside the ``OTA`` stream.

An operator who just got an id back (an uploaded software, a device created through the
registry) may pass it to another service before that service consumed the event announcing it.
That service then asks the owner directly, on ``ota.rpc.<service>.<verb>``, and records the
answer exactly as the event would have, so the event, when it comes, changes nothing.

Nothing here is stored or replayed: a request nobody answers in time is the caller's error to
report (503), never a reason to guess. Requests and replies are frozen and ignore unknown
fields, like events; a test bounds the largest of each well below the bus's max payload.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gaggle_contracts import ddi, names
from gaggle_contracts.events import SoftwareCreated

RPC_ROOT = "ota.rpc"

MAX_DEVICE_LOOKUP = 100
"""Most controller ids one :class:`FindDevices` asks about.

A reply describes a device in at most about 2.7 KB (a 256-byte id, three 128-character
attributes that JSON may escape to 6 bytes a character, a timestamp), so 100 of them stay
under 300 KB, well below NATS's default max payload of 1 MiB.
"""


ControllerId = Annotated[str, Field(pattern=names.CONTROLLER_ID_RE.pattern)]
"""A controller id Gaggle accepts (URL-safe, at most 256 characters): no other id can exist."""
Attribute = Annotated[str, Field(max_length=ddi.MAX_ATTRIBUTE_VALUE)]
"""A device attribute as configData carries it (hawkBit's limit of 128 characters)."""


def rpc_subject(service: str, verb: str) -> str:
    """``ota.rpc.<service>.<verb>``: where ``service`` answers requests of ``verb``."""
    return f"{RPC_ROOT}.{service}.{verb}"


class RpcMessage(BaseModel):
    """Base of requests and replies: frozen, tolerant of fields added later."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class RpcRequest(RpcMessage):
    """A question to one service. Subclasses name the service answering it and the verb."""

    service: ClassVar[str]
    """The service that answers (a queue group of its replicas)."""
    verb: ClassVar[str]
    callers: ClassVar[tuple[str, ...]] = ()
    """Services that ask, for the documentation."""
    reply: ClassVar[type[RpcMessage]]
    """What the answer is."""

    tenant: str

    @classmethod
    def subject(cls) -> str:
        """The subject requests of this kind are sent to."""
        return rpc_subject(cls.service, cls.verb)


# --- software, answered by artifacts ---------------------------------------------------------


class SoftwareFound(RpcMessage):
    """The answer to :class:`FindSoftware`.

    ``software`` is the ``software.created`` announcement of the entry (None: no such id), the
    same event artifacts published or is about to; ``deleted`` says it was soft-deleted since,
    as a ``software.deleted`` would.
    """

    software: SoftwareCreated | None = None
    deleted: bool = False


class FindSoftware(RpcRequest):
    """Which software has this id? Asked by rollouts about an id it has no announcement of."""

    service: ClassVar[str] = "artifacts"
    verb: ClassVar[str] = "software"
    callers: ClassVar[tuple[str, ...]] = ("rollouts",)
    reply: ClassVar[type[RpcMessage]] = SoftwareFound
    software_id: str = Field(min_length=1, max_length=64)


# --- devices, answered by registry -----------------------------------------------------------


class KnownDevice(RpcMessage):
    """One device as the registry holds it: what ``device.updated`` would say about it now.

    ``updated_at`` is when the registry last changed it; a caller records it as the time of the
    report, so an older ``device.updated`` still on its way changes nothing and a newer one wins.
    """

    controller_id: ControllerId
    hw_model: Attribute | None = None
    hw_revision: Attribute | None = None
    sw_version: Attribute | None = None
    updated_at: AwareDatetime


class DevicesFound(RpcMessage):
    """The answer to :class:`FindDevices`: the devices that exist (unknown ids are left out)."""

    devices: list[KnownDevice] = Field(max_length=MAX_DEVICE_LOOKUP)


class FindDevices(RpcRequest):
    """Which of these devices exist? Asked by rollouts about ids it has no inventory of."""

    service: ClassVar[str] = "registry"
    verb: ClassVar[str] = "devices"
    callers: ClassVar[tuple[str, ...]] = ("rollouts",)
    reply: ClassVar[type[RpcMessage]] = DevicesFound
    controller_ids: list[ControllerId] = Field(min_length=1, max_length=MAX_DEVICE_LOOKUP)


# --- attended upgrades, answered by rollouts ---------------------------------------------------


CheckOutcome = Literal["update", "up_to_date", "unprocessable"]
"""``update``: something newer fits; ``up_to_date``: nothing newer; ``unprocessable``: the
question cannot be answered (unknown device or board, a version that does not order)."""


class UpgradeOffer(RpcMessage):
    """The software a check offers: what a device needs to fetch and verify it."""

    software_id: str = Field(max_length=64)
    name: str = Field(max_length=256)
    version: str = Field(max_length=256)
    filename: str = Field(max_length=256)
    size: int = Field(ge=0)
    md5: str = Field(max_length=64)
    sha1: str = Field(max_length=64)
    sha256: str = Field(max_length=64)
    external_url: str | None = Field(None, max_length=2048)
    """Set for software registered by URL: devices fetch it from there."""


class UpgradeChecked(RpcMessage):
    """The answer to :class:`CheckUpgrade`, with the reasons an operator is shown.

    ``revision`` is a hash over what the answer was made from (the tenant's catalogue, trust
    marks, the device's policy, inventory and rollout): identical checks answered from the same
    revision are the same answer, and share a request hash.
    """

    outcome: CheckOutcome
    reason: str = Field(max_length=1024)
    revision: str = Field(max_length=64)
    offer: UpgradeOffer | None = None
    mode: str | None = Field(None, max_length=16)
    feed: str | None = Field(None, max_length=64)
    rollout_id: str | None = Field(None, max_length=64)
    hw_model: Attribute | None = None
    hw_revision: Attribute | None = None


class CheckUpgrade(RpcRequest):
    """Is there something newer for this device (or board) than ``version``? Asked by the gateway.

    Either ``controller_id`` (the device's policy applies) or ``board`` with ``revision`` (any
    fitting software, newest first, as mode ``latest``).
    """

    service: ClassVar[str] = "rollouts"
    verb: ClassVar[str] = "check"
    callers: ClassVar[tuple[str, ...]] = ("gateway",)
    reply: ClassVar[type[RpcMessage]] = UpgradeChecked
    controller_id: ControllerId | None = None
    board: Attribute | None = None
    revision: Attribute | None = None
    version: Attribute


RequestOutcome = Literal[
    "opened", "open", "queued", "conflict", "changed", "up_to_date", "unprocessable"
]
"""``opened``: this request opened the action; ``open``: it was open already, for the offered
software; ``queued``: accepted, waiting for a free slot of the tenant's cap on updates in flight;
``conflict``: another action is open; ``changed``: the check now offers another software;
``up_to_date``, ``unprocessable``: as the check."""


class UpgradeRequested(RpcMessage):
    """The answer to :class:`RequestUpgrade`."""

    outcome: RequestOutcome
    reason: str = Field(max_length=1024)
    check: UpgradeChecked
    action_id: str | None = Field(None, max_length=64)
    """The device's open action (the offered one, or the one in the way of a conflict)."""


class RequestUpgrade(RpcRequest):
    """A person accepted a check's offer: open the device's action for it. Asked by the gateway.

    ``software_id`` is the offer accepted; if the check now offers something else, nothing is
    opened and the new check is answered instead.
    """

    service: ClassVar[str] = "rollouts"
    verb: ClassVar[str] = "upgrade"
    callers: ClassVar[tuple[str, ...]] = ("gateway",)
    reply: ClassVar[type[RpcMessage]] = UpgradeRequested
    controller_id: ControllerId
    board: Attribute | None = None
    revision: Attribute | None = None
    version: Attribute
    software_id: str = Field(min_length=1, max_length=64)


RPC_TYPES: tuple[type[RpcRequest], ...] = (FindSoftware, FindDevices, CheckUpgrade, RequestUpgrade)
"""Every request kind."""
