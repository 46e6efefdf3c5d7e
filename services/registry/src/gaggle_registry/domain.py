"""Registry domain: devices as plain data, and the rules that need no I/O."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from gaggle_contracts.ddi import MAX_ATTRIBUTES
from gaggle_contracts.kv import DeviceEntry

MAX_STORED_ATTRIBUTES = 2 * MAX_ATTRIBUTES
"""The most attributes the registry keeps for a device.

The gateway refuses (429) a report past hawkBit's quota of ``MAX_ATTRIBUTES`` before it answers
200, from the attribute names in KV ``devices``. Reports it acknowledged in the moments before
that entry caught up with an earlier one may go past the quota together; they are kept, up to
this bound, which keeps the device's KV entry and events small.
"""

LIFTED = {"hw_boardname": "hw_model", "hw_revision": "hw_revision", "sw_version": "sw_version"}
"""configData keys the registry keeps in their own columns (``hw_boardname`` is our hw_model)."""


ACTION_STATE = {
    "scheduled": "pending",
    "wait_for_confirmation": "pending",
    "running": "installing",
    "retrieved": "downloading",
    "download": "downloading",
    "downloaded": "downloading",
    "warning": "installing",
    "canceling": "installing",
    "cancel_rejected": "installing",
}
"""A device's update state while its action is open, from the action's status."""


class TooManyAttributesError(ValueError):
    """Applying a report would leave a device with more attributes than allowed."""


def merge_attributes(current: dict[str, str], mode: str, data: dict[str, str]) -> dict[str, str]:
    """Apply a configData report as the DDI spec says.

    ``merge`` adds and overwrites keys, ``replace`` clears everything first, ``remove`` deletes
    the keys named in ``data``.

    Raises:
        TooManyAttributesError: the result would have more than ``MAX_STORED_ATTRIBUTES`` keys.
    """
    if mode == "replace":
        result = dict(data)
    elif mode == "remove":
        result = {k: v for k, v in current.items() if k not in data}
    else:
        result = {**current, **data}
    if len(result) > MAX_STORED_ATTRIBUTES and len(result) > len(current):
        raise TooManyAttributesError(
            f"{len(result)} attributes; the registry keeps at most {MAX_STORED_ATTRIBUTES}"
        )
    return result


def late_data(current: dict[str, str], mode: str, data: dict[str, str]) -> dict[str, str]:
    """What a configData report older than one already applied may still merge.

    JetStream may redeliver a report after a newer one of the same device was applied (its
    first delivery timed out). Applying it as it is would put an old value back, for example
    the version the device ran before its update. So a late ``merge`` only adds keys the
    device has not reported since, and a late ``replace`` or ``remove`` changes nothing.
    """
    if mode != "merge":
        return {}
    return {k: v for k, v in data.items() if k not in current}


def lifted(attributes: dict[str, str]) -> dict[str, str | None]:
    """The column values taken from the attributes."""
    return {column: attributes.get(key) for key, column in LIFTED.items()}


REVERT = "revert"
"""Pseudo-state: back to ``up_to_date`` (something installed) or ``unknown`` (a cancel)."""


def finished_state(status: str) -> str:
    """Update state after an action closed with ``status``."""
    if status in ("finished", "downloaded"):
        return "success"
    if status in ("error", "timed_out"):
        return "error"
    return REVERT


def installed_or_reported(
    installed: str,
    succeeded_at: datetime,
    reported: str | None,
    reported_at: datetime | None,
) -> str:
    """The version a device runs once its action finished, for ``device.updated`` (installed).

    What the action installed, unless the device reported its version itself after it reported
    its success (both times the gateway's): then its own word stands, whichever event registry
    handled first (a device that fell back to its old slot says so right after its reboot).
    """
    if reported is not None and reported_at is not None and reported_at > succeeded_at:
        return reported
    return installed


def new_token() -> str:
    """A device token: 32 random URL-safe characters (hawkBit uses 32 alphanumerics)."""
    return secrets.token_urlsafe(24)


def encode_cursor(values: list[Any]) -> str:
    """An opaque keyset cursor."""
    return base64.urlsafe_b64encode(json.dumps(values, default=str).encode()).decode()


def decode_cursor(cursor: str) -> list[Any]:
    """The values of a cursor; ``ValueError`` when it is not one of ours."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a cursor from this API") from exc
    if not isinstance(values, list) or len(values) != 2:
        raise ValueError("not a cursor from this API")
    return values


V = TypeVar("V")


def kv_changes(
    held: Mapping[str, bytes],
    pending: Iterable[tuple[str, str, bytes]],
    wanted: Iterable[tuple[str, V]],
    encode: Callable[[V], bytes],
) -> tuple[list[tuple[str, V]], list[str]]:
    """The KV writes that leave a bucket holding exactly ``wanted``, and no more.

    Args:
        held: what the bucket holds now, key -> value.
        pending: writes already queued and still to land on top of ``held``, in order:
            ``("kv_put", key, value)`` or ``("kv_delete", key, _)``.
        wanted: every key that should exist, with its value.
        encode: a wanted value as the bytes the bucket would hold.

    Returns:
        The puts (keys missing or holding other bytes, with their wanted value) and the
        deletes (keys held that are not wanted), each in a stable order.
    """
    will_hold = dict(held)
    for op, key, payload in pending:
        if op == "kv_put":
            will_hold[key] = payload
        else:
            will_hold.pop(key, None)
    puts: list[tuple[str, V]] = []
    for key, value in wanted:
        if will_hold.pop(key, None) != encode(value):
            puts.append((key, value))
    return puts, sorted(will_hold)  # what is left is held but not wanted


@dataclass(frozen=True)
class Device:
    """One device of one tenant, as the registry stores it."""

    tenant: str
    controller_id: str
    name: str | None = None
    token_hash: str | None = None
    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    config_requested: bool = True
    update_state: str = "unknown"
    installed_version: str | None = None
    action_id: str | None = None
    feed: str = "default"
    tags: list[str] = field(default_factory=list)
    last_seen_at: datetime | None = None
    last_address: str | None = None
    registered_via: str = "poll"
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def kv_entry(self) -> DeviceEntry:
        """What the gateway needs to know about this device."""
        return DeviceEntry(
            token_hash=self.token_hash,
            config_requested=self.config_requested,
            attribute_keys=tuple(self.attributes),
        )

    def public(self) -> dict[str, Any]:
        """The operator's view: everything but the token hash."""
        return {
            "tenant": self.tenant,
            "controller_id": self.controller_id,
            "name": self.name,
            "hw_model": self.hw_model,
            "hw_revision": self.hw_revision,
            "sw_version": self.sw_version,
            "attributes": self.attributes,
            "config_requested": self.config_requested,
            "update_state": self.update_state,
            "installed_version": self.installed_version,
            "action_id": self.action_id,
            "feed": self.feed,
            "tags": self.tags,
            "last_seen_at": self.last_seen_at,
            "last_address": self.last_address,
            "registered_via": self.registered_via,
            "has_token": self.token_hash is not None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
