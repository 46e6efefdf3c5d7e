"""What this gateway acknowledged, kept in memory: final reports, and statuses per open action.

A device's final report (closed, canceled) is answered 200 once JetStream has it; rollouts then
closes the action and rewrites the device's KV ``deployments`` entry, and the mirror learns of it
milliseconds to seconds later. Until then the mirror still shows the action open. This memory
lets the gateway read its own writes meanwhile: an action whose final report it acknowledged is
not offered again, a retried identical final report is answered 200 without a second event, and
a different report for it is answered 410 as for any closed action.

A final report the bus did not acknowledge in time (the device got 429) may still have been
stored. It is remembered as unsure, so that the device's retry of the same report is published
again, under the same event id (a report's id is derived from it, ``ids.py``): JetStream and
rollouts then keep it once, and the retry is answered 200 even if the first attempt already
closed the action (the mirror alone would then answer 410).

The memories are bounded: a final report is kept while the mirror still shows its action open
and for ``keep_s`` after the acknowledgement (the retry window), an unsure one for ``keep_s``,
and at most ``max_finals`` of each (the oldest goes first); status counts are kept for actions
the mirror shows open, one per device. Each gateway process knows only what it acknowledged itself.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from gaggle_contracts.events import FeedbackStatus
from gaggle_contracts.kv import DeploymentEntry


def fingerprint(kind: str, status: FeedbackStatus) -> bytes:
    """What makes a report the same report, whatever its device time: its kind and status."""
    return hashlib.blake2b(
        kind.encode() + b"\0" + status.model_dump_json().encode(), digest_size=16
    ).digest()


@dataclass(frozen=True, slots=True)
class FinalReport:
    """A final report this gateway acknowledged."""

    action_id: str
    fingerprint: bytes
    at: float
    """When it was acknowledged, or sent without an acknowledgement (monotonic seconds)."""
    unsure: bool = False
    """Sent, but the bus did not acknowledge it: a retry is sent again (under the same id)."""


def _is_open(deployments: Mapping[str, DeploymentEntry], key: str, action_id: str) -> bool:
    entry = deployments.get(key)
    return entry is not None and entry.open is not None and entry.open.action_id == action_id


class Acks:
    """Final reports and status counts this gateway acknowledged, per device key."""

    def __init__(self, keep_s: float, max_finals: int) -> None:
        self.keep_s = keep_s
        self.max_finals = max_finals
        self.finals: OrderedDict[str, FinalReport] = OrderedDict()
        """Device key -> its newest acknowledged final report, oldest first."""
        self.unsure: OrderedDict[str, FinalReport] = OrderedDict()
        """Device key -> its newest final report sent but not acknowledged, oldest first."""
        self.statuses: dict[str, tuple[str, int]] = {}
        """Device key -> (open action id, statuses acknowledged for it)."""

    def final(self, key: str, action_id: str) -> FinalReport | None:
        """The acknowledged final report of this action, if this gateway remembers one."""
        final = self.finals.get(key)
        return final if final is not None and final.action_id == action_id else None

    def unsure_final(self, key: str, action_id: str) -> FinalReport | None:
        """The final report of this action that was sent but not acknowledged, if any."""
        final = self.unsure.get(key)
        return final if final is not None and final.action_id == action_id else None

    def sent_unsure(self, key: str, action_id: str, fingerprint: bytes, now: float) -> None:
        """Note a final report whose event the bus may or may not have stored."""
        self.unsure.pop(key, None)
        self.unsure[key] = FinalReport(action_id, fingerprint, now, unsure=True)
        while len(self.unsure) > self.max_finals:
            self.unsure.popitem(last=False)

    def count(self, key: str, action_id: str) -> int:
        """Statuses of the action this gateway acknowledged."""
        held = self.statuses.get(key)
        return held[1] if held is not None and held[0] == action_id else 0

    def acknowledged(self, key: str, action_id: str, fingerprint: bytes | None, now: float) -> None:
        """Note a report answered 200; ``fingerprint`` is set for a final one."""
        if fingerprint is None:
            self.statuses[key] = (action_id, self.count(key, action_id) + 1)
            return
        self.statuses.pop(key, None)
        self.unsure.pop(key, None)
        self.finals.pop(key, None)
        self.finals[key] = FinalReport(action_id, fingerprint, now)
        while len(self.finals) > self.max_finals:
            self.finals.popitem(last=False)

    def sweep(
        self, deployments: Mapping[str, DeploymentEntry], now: float, *, statuses: bool = True
    ) -> None:
        """Forget what the mirror has caught up with.

        A final report goes once the mirror no longer shows its action open and its retry
        window has passed (only the oldest are looked at); an unsure one once its window has
        passed; a status count, if ``statuses``,
        once the mirror no longer shows its action open (every count is looked at).
        """
        expired = now - self.keep_s
        gone = []
        for key, final in self.finals.items():
            if final.at > expired:
                break  # the rest are younger
            if not _is_open(deployments, key, final.action_id):
                gone.append(key)
        for key in gone:
            del self.finals[key]
        while self.unsure and next(iter(self.unsure.values())).at <= expired:
            self.unsure.popitem(last=False)
        if statuses:
            done = [
                key
                for key, (action_id, _) in self.statuses.items()
                if not _is_open(deployments, key, action_id)
            ]
            for key in done:
                del self.statuses[key]
