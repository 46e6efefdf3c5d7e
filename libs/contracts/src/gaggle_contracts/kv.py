"""KV read models: the values in the ``devices``, ``deployments`` and ``tenants`` buckets.

The DDI gateway watches these buckets into memory and answers polls from them, so each value is
shaped for one dictionary look-up and one JSON render.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_UPDATES_IN_FLIGHT = 1_000
"""Default cap on a tenant's devices with an open action (gooseBit's ``max_concurrent_updates``).

Chosen from measurement (bench/README.md, "The default cap on updates in flight"): 3,000
devices fetching a 4 MiB image on two cores were all confirmed as soon with 1,000 as with no cap
(3,000), or sooner, using as much CPU or less, while a cap of 300 took a fifth to a quarter
longer and 35 to 45 % more CPU (devices waiting for a slot keep polling). A larger cap buys
nothing there; it only puts more downloads on the network at once."""
MAX_UPDATES_IN_FLIGHT_LIMIT = 1_000_000
"""The largest cap an operator may set: far above any one server's fleet, still a number."""


def token_hash(token: str) -> str:
    """SHA-256 hex of a device or gateway token: only hashes are stored, sent and compared."""
    return hashlib.sha256(token.encode()).hexdigest()


class KvValue(BaseModel):
    """Base of every KV value: frozen, tolerant of fields added later."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class DeviceEntry(KvValue):
    """A known device, for the gateway. Written by registry into ``devices``."""

    token_hash: str | None = None
    """SHA-256 hex of the device's TargetToken, if it has one."""
    config_requested: bool = True
    """Whether the poll should offer the ``configData`` link."""
    attribute_keys: tuple[str, ...] = ()
    """Names of the device's configData attributes, sorted: the gateway refuses (429) a report
    that would take the device past hawkBit's quota before it answers 200."""

    @field_validator("attribute_keys")
    @classmethod
    def _shared_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        return _shared(tuple(sorted(set(keys))))


@lru_cache(maxsize=4096)
def _shared(keys: tuple[str, ...]) -> tuple[str, ...]:
    """One tuple for every equal set of attribute names.

    A fleet reports the same few attribute names on every device; the gateway keeps an entry
    per device in memory, and sharing the tuple keeps that cost at one pointer per device.
    """
    return keys


class ArtifactDoc(KvValue):
    """One downloadable file of a chunk; links are rendered by the gateway per request."""

    filename: str
    size: int
    md5: str
    sha1: str
    sha256: str
    object_key: str | None = None
    """Key in the object store; the gateway streams it (or redirects to a presigned URL)."""
    external_url: str | None = None
    """Set for software hosted elsewhere: devices are sent there directly."""


class ChunkDoc(KvValue):
    """One DDI chunk (a software module)."""

    module_id: str
    part: str = "os"
    name: str
    version: str
    metadata: list[dict[str, str]] = Field(default_factory=list)
    artifacts: list[ArtifactDoc]


HandlingType = Literal["skip", "attempt", "forced"]


class DeploymentDoc(KvValue):
    """The body of a ``deploymentBase`` answer, minus absolute links."""

    download: HandlingType = "forced"
    update: HandlingType = "forced"
    maintenance_window: Literal["available", "unavailable"] | None = None
    chunks: list[ChunkDoc]


class OpenAction(KvValue):
    """The device's open action as the gateway offers it."""

    action_id: str
    state: Literal["deployment", "canceling", "wait_for_confirmation"] = "deployment"
    c: str = "0"
    """Value of the ``?c=`` hash on the link; changes when the handling changes."""
    deployment: DeploymentDoc
    history: list[str] = Field(default_factory=list)
    """Newest-first status messages for ``actionHistory``."""
    history_status: str = "RUNNING"


class InstalledAction(KvValue):
    """The device's last finished action, for the ``installedBase`` link."""

    action_id: str
    deployment: DeploymentDoc


class DeploymentEntry(KvValue):
    """What a device should do. Written by rollouts into ``deployments``; no key: nothing to do."""

    open: OpenAction | None = None
    installed: InstalledAction | None = None
    closed: list[str] = Field(default_factory=list)
    """Ids of recently closed actions: their feedback is answered 410 Gone."""
    auto_confirm: bool = False


class TenantConfig(KvValue):
    """Per-tenant settings, in ``tenants`` under the tenant name. Written by registry.

    The gateway reads the device-side ones; rollouts reads ``max_updates_in_flight`` and
    ``rollout_approval``.
    """

    polling_sleep: str = "00:01:00"
    """``HH:MM:SS`` below 24 h, as every DDI client parses it."""
    polling_sleep_open_action: str | None = None
    """Shorter interval while the device has an open action, if set."""
    anonymous: bool = True
    """Polls without any Authorization header are accepted."""
    auto_register: bool = True
    """Unknown controller ids are registered on their first poll."""
    target_token: bool = True
    """``TargetToken`` authentication is accepted."""
    gateway_token_hash: str | None = None
    """SHA-256 hex of the tenant-wide ``GatewayToken``; none: gateway tokens are refused."""
    max_updates_in_flight: int = MAX_UPDATES_IN_FLIGHT
    """Devices that may have an open action at once; rollouts queue the others of a started wave
    and open their actions as earlier ones close. Registry checks the range where it is set."""
    rollout_approval: bool = False
    """New rollouts wait for someone with ``rollout:approve`` before they can start (hawkBit's
    ``rollout.approval.enabled``). Rollouts reads it."""
    require_signature: bool = False
    """Artifacts refuses (422) images whose sw-description signature does not verify against the
    tenant's trust store, unsigned ones included."""
    require_image_hashes: bool = False
    """Artifacts refuses images with an entry naming a file but no ``sha256``, naming a file the
    archive does not hold, or with a member no entry names."""
    monotonic_versions: bool = False
    """Artifacts refuses an image not newer (``SwVersion`` order) than the newest software in the
    catalogue for any board it is for."""
    download_redirect: bool | None = None
    """The gateway answers a device's download of a stored artifact with a redirect (302) to a
    presigned URL of the object store instead of streaming it (S3 back-end only; a local folder
    is always streamed). None: the deployment's default (``GAGGLE_STORAGE_PRESIGN``)."""
