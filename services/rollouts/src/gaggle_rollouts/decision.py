"""What a device should run: pure functions, no I/O, one place for gooseBit's selection rules.

Modes (goosebit-model.md §3):

- ``pinned``: nothing, ever.
- ``assigned``: the one software the operator chose, if it fits the device.
- ``latest``: the highest version (swupdate/SemVer order, ``SwVersion``) among fitting software.
- ``rollout`` (default): the software of the newest active (running or paused) rollout of the
  device's feed, if it is running, fits the device, and its started waves include the device.

Then nothing is wanted when the device already runs that version, or when its last action for
that very software failed (an operator must act: a new assignment or a retry), as in gooseBit,
or when the device fell back from that software after installing it (rolled back, see
:mod:`~gaggle_rollouts.health`) until an operator clears it, as NervesHub does against boot
loops.

Where Gaggle deliberately differs from gooseBit:

- A device that has not reported ``hw_boardname`` fits only software whose compatibility says
  any model (``*``); gooseBit files such devices under a ``default``/``default`` hardware row.
- gooseBit skips paused rollouts when picking the newest, so pausing the newest one silently
  re-activates an older one; here a paused rollout simply pauses: ``rollout`` mode offers nothing
  from older rollouts of the feed while a newer one is paused. Finished and aborted rollouts
  do not count.
- Versions that order neither as numbers nor as SemVer are never "latest".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gaggle_contracts.versions import InvalidVersionError, SwVersion
from gaggle_rollouts.domain import Software

ANY = "*"


@dataclass(frozen=True)
class DeviceView:
    """What rollouts knows of a device's inventory."""

    controller_id: str
    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None


@dataclass(frozen=True)
class RolloutView:
    """A rollout as a decision sees it, for one device."""

    rollout_id: str
    feed: str
    software_id: str
    state: str
    """``running`` or ``paused`` count; any other state is ignored."""
    created_order: int
    """Higher is newer."""
    includes_device: bool
    """The device is in a wave that has started."""


@dataclass(frozen=True)
class PolicyView:
    """A device's policy."""

    mode: str = "rollout"
    feed: str = "default"
    software_id: str | None = None


@dataclass(frozen=True)
class Decision:
    """The software a device should get now (None: nothing to do), and why."""

    software_id: str | None
    reason: str
    rollout_id: str | None = None


def fits(pairs: Iterable[tuple[str, str]], device: DeviceView) -> bool:
    """Whether software with these ``(hw_model, hw_revision)`` pairs may run on ``device``."""
    for model, revision in pairs:
        if model != ANY and model != device.hw_model:
            continue
        if revision != ANY and revision != device.hw_revision:
            continue
        return True
    return False


def _version(text: str | None) -> SwVersion | None:
    if text is None:
        return None
    try:
        return SwVersion.parse(text)
    except InvalidVersionError:
        return None


def same_version(a: str | None, b: str | None) -> bool:
    """Whether two version texts mean the same version (``1.2`` is ``1.2.0``)."""
    if a is None or b is None:
        return False
    va, vb = _version(a), _version(b)
    if va is not None and vb is not None:
        return va == vb
    return a == b


def _target(
    device: DeviceView,
    policy: PolicyView,
    catalogue: Mapping[str, Software],
    rollouts: Iterable[RolloutView],
) -> Decision:
    if policy.mode == "pinned":
        return Decision(None, "pinned")
    if policy.mode == "assigned":
        software = catalogue.get(policy.software_id or "")
        if software is None or software.deleted:
            return Decision(None, "assigned software unknown or deleted")
        if not fits(software.compatibility, device):
            return Decision(None, "assigned software does not fit the device")
        return Decision(software.software_id, "assigned")
    if policy.mode == "latest":
        best: tuple[SwVersion, Software] | None = None
        for software in catalogue.values():
            version = _version(software.version)
            if software.deleted or version is None or not fits(software.compatibility, device):
                continue
            if best is None or version > best[0]:
                best = (version, software)
        if best is None:
            return Decision(None, "no fitting software")
        return Decision(best[1].software_id, "latest")
    newest = max(
        (r for r in rollouts if r.feed == policy.feed and r.state in ("running", "paused")),
        key=lambda r: r.created_order,
        default=None,
    )
    if newest is None:
        return Decision(None, "no running rollout in the feed")
    if newest.state == "paused":
        return Decision(None, "rollout paused", newest.rollout_id)
    software = catalogue.get(newest.software_id)
    if software is None or software.deleted or not fits(software.compatibility, device):
        return Decision(None, "rollout software does not fit the device")
    if not newest.includes_device:
        return Decision(None, "device not in a started wave")
    return Decision(software.software_id, "rollout", newest.rollout_id)


def choose_software(
    device: DeviceView,
    policy: PolicyView,
    catalogue: Mapping[str, Software],
    rollouts: Iterable[RolloutView] = (),
    failed_software: frozenset[str] = frozenset(),
    blocked_software: frozenset[str] = frozenset(),
) -> Decision:
    """The software ``device`` should be offered now, if any.

    Args:
        device: The device's reported inventory.
        policy: Its deployment policy.
        catalogue: Software by id (deleted entries included, they are never chosen).
        rollouts: Rollouts of the tenant, with whether each includes this device.
        failed_software: Software ids whose last action on this device ended in error.
        blocked_software: Software ids the device rolled back from (until cleared).
    """
    target = _target(device, policy, catalogue, rollouts)
    if target.software_id is None:
        return target
    software = catalogue[target.software_id]
    if same_version(software.version, device.sw_version):
        return Decision(None, "up to date", target.rollout_id)
    if software.software_id in blocked_software:
        return Decision(
            None, "rolled back on this device; blocked until cleared", target.rollout_id
        )
    if software.software_id in failed_software:
        return Decision(None, "failed on this device before", target.rollout_id)
    return target
