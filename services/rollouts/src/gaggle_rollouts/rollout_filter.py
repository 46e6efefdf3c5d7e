"""What an operator asks of a rollout: which devices of the feed, which waves, thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gaggle_rollouts.decision import DeviceView
from gaggle_rollouts.plan import ErrorAction, WaveSpec


@dataclass(frozen=True)
class DeviceFilter:
    """Narrows a rollout to some devices of its feed; every part is optional."""

    hw_model: str | None = None
    hw_revision: str | None = None
    sw_version: str | None = None
    controller_ids: frozenset[str] | None = None

    def matches(self, device: DeviceView) -> bool:
        """Whether ``device`` passes the filter."""
        return (
            (self.hw_model is None or device.hw_model == self.hw_model)
            and (self.hw_revision is None or device.hw_revision == self.hw_revision)
            and (self.sw_version is None or device.sw_version == self.sw_version)
            and (self.controller_ids is None or device.controller_id in self.controller_ids)
        )

    def public(self) -> dict[str, Any]:
        """As stored and shown (unset parts left out)."""
        out: dict[str, Any] = {}
        for name in ("hw_model", "hw_revision", "sw_version"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.controller_ids is not None:
            out["controller_ids"] = sorted(self.controller_ids)
        return out

    @classmethod
    def of(cls, raw: dict[str, Any]) -> DeviceFilter:
        """From its stored form."""
        ids = raw.get("controller_ids")
        return cls(
            raw.get("hw_model"),
            raw.get("hw_revision"),
            raw.get("sw_version"),
            None if ids is None else frozenset(ids),
        )


@dataclass(frozen=True)
class NewRollout:
    """What an operator asks for (validated by the API)."""

    name: str
    software_id: str
    feed: str
    device_filter: DeviceFilter
    waves: Sequence[WaveSpec]
    success_threshold: int
    error_threshold: int
    error_action: ErrorAction
    action_type: str
    confirmation_required: bool
    maintenance_window: dict[str, Any] | None
    start: bool
    forcetime: datetime | None = None
    created_by: str | None = None
    """Who asked for it, as the audit log names them."""
    approval_required: bool = False
    """Its tenant asks for approval: it waits for an approver before it can start."""
    report_timeout_s: float | None = None
    """How long its actions may go without a report (None: the default, see health.py)."""
    action_timeout_s: float | None = None
    """How long its actions may take to a final state (None: the default)."""
    soak_s: float = 0.0
    """How long a device must stay healthy after its success before it counts (0: no soak)."""
