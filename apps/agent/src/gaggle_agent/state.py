"""What the agent must remember across its own restart and the device's reboot: one JSON file.

The file is written atomically (a temporary file in the same folder, flushed and synced, then
renamed over the old one, then the folder synced), so a power cut leaves either the old or the
new state, never half of one. An unreadable file is kept aside (``<name>.bad``) and the agent
starts afresh rather than refusing to run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CANCELLABLE",
    "DONE_MEMORY",
    "PHASES",
    "ActionState",
    "HookClock",
    "PendingReport",
    "State",
    "StateStore",
]

log = logging.getLogger(__name__)

PHASES = ("new", "downloading", "downloaded", "installing", "restarting", "verifying")
"""An action's phases, in order. ``restarting`` is saved before the restart hook runs: found
after a start of the agent it means the restart happened, and ``version`` and ``ready`` decide."""
CANCELLABLE = frozenset({"new", "downloading", "downloaded"})
"""Phases in which a cancel is accepted: nothing is installed yet."""
_DONE_KEPT = 20
DONE_MEMORY = 600.0
"""Seconds during which a finished action offered again is not run again."""


@dataclass
class HookClock:
    """When a hook was first run for an action, and how often it was retried (``$1``, ``$2``)."""

    first: float
    retries: int = 0


@dataclass
class ActionState:
    """The action being worked on."""

    action_id: str
    href: str
    """The deploymentBase href it came from (feedback goes to its path + ``/feedback``)."""
    version: str
    phase: str = "new"
    files: list[str] = field(default_factory=list)
    """Downloaded artifacts, in the server's order."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What the hooks get as ``$3`` (as JSON)."""
    clocks: dict[str, HookClock] = field(default_factory=dict)
    noted: list[str] = field(default_factory=list)
    """One-off reports already sent (e.g. waiting for the maintenance window)."""

    @property
    def cancellable(self) -> bool:
        """Whether a cancel can still be accepted (installation not started)."""
        return self.phase in CANCELLABLE


@dataclass
class PendingReport:
    """A final report not yet answered by the server: sent again until it is."""

    url: str
    body: dict[str, Any]


@dataclass
class State:
    """Everything in the state file."""

    action: ActionState | None = None
    pending: list[PendingReport] = field(default_factory=list)
    done: dict[str, float] = field(default_factory=dict)
    """Ids of the last actions finished or canceled here, with the time (POSIX seconds)."""
    installed_version: str | None = None
    """The version the last successful action installed."""
    config_href: str | None = None
    """The configData href the server gave last."""

    def mark_done(self, action_id: str, now: float) -> None:
        """Remember ``action_id`` as finished at ``now`` (the last few only)."""
        self.done.pop(action_id, None)
        self.done[action_id] = now
        for old in list(self.done)[:-_DONE_KEPT]:
            del self.done[old]

    def recently_done(self, action_id: str, now: float) -> bool:
        """Whether ``action_id`` was finished here less than ``DONE_MEMORY`` seconds ago.

        A server may offer a closed action for a moment longer (its view trails the device's):
        it is not run again. gooseBit names actions by their software, so the same id comes back
        when an operator assigns that software again: after a while it is run again.
        """
        at = self.done.get(action_id)
        return at is not None and now - at < DONE_MEMORY

    def to_json(self) -> dict[str, Any]:
        """The JSON document stored."""
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> State:
        """Read a stored document (``KeyError``, ``TypeError``, ``ValueError`` if malformed)."""
        if doc.get("version") != 1:
            raise ValueError(f"unknown state version {doc.get('version')!r}")
        action = None
        if doc.get("action") is not None:
            raw = dict(doc["action"])
            raw["clocks"] = {k: HookClock(**v) for k, v in raw.get("clocks", {}).items()}
            action = ActionState(**raw)
            if action.phase not in PHASES:
                raise ValueError(f"unknown phase {action.phase!r}")
        return cls(
            action=action,
            pending=[PendingReport(**p) for p in doc.get("pending", [])],
            done={str(k): float(v) for k, v in doc.get("done", {}).items()},
            installed_version=doc.get("installed_version"),
            config_href=doc.get("config_href"),
        )


class StateStore:
    """Loads and saves :class:`State` at one path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State:
        """The stored state; a fresh one when there is none or it cannot be read."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return State()
        try:
            return State.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            bad = self.path.with_name(self.path.name + ".bad")
            log.error("unreadable state file path=%s error=%s kept_as=%s", self.path, exc, bad)
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            return State()

    def save(self, state: State) -> None:
        """Write ``state`` atomically (temporary file, fsync, rename, fsync of the folder)."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
