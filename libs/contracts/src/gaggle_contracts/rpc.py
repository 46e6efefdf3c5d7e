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

from typing import Annotated, ClassVar

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


RPC_TYPES: tuple[type[RpcRequest], ...] = (FindSoftware, FindDevices)
"""Every request kind."""
