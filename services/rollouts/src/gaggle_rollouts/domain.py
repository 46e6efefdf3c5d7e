"""Rollouts domain, pure: how feedback moves an action, and what the device is offered.

Status follows hawkBit (ddi-api.md §6, §7) and only moves forward: once an action is closed
(finished, error, canceled, or downloaded for download-only), later feedback is kept in the history
but changes nothing.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from gaggle_contracts.events import (
    ActionFinished,
    ActionRolledBack,
    ActionUpdated,
    Event,
    FeedbackStatus,
)
from gaggle_contracts.kv import (
    ArtifactDoc,
    ChunkDoc,
    DeploymentDoc,
    DeploymentEntry,
    HandlingType,
    InstalledAction,
    OpenAction,
)
from gaggle_rollouts import health

ActionType = Literal["forced", "soft", "timeforced", "downloadonly"]
KV_HISTORY = 20
"""Status messages kept in the KV document for ``actionHistory``."""
KV_CLOSED_IDS = 10
"""Recently closed action ids kept in KV, so their late feedback is answered 410."""


@dataclass(frozen=True)
class Software:
    """A software as rollouts knows it from the artifacts service's events."""

    tenant: str
    software_id: str
    name: str
    version: str
    file: ArtifactDoc
    """Its one file, as a device's deploymentBase offers it."""
    compatibility: tuple[tuple[str, str], ...]
    """The (hw_model, hw_revision) pairs it fits; ``*`` stands for any."""
    deleted: bool = False


@dataclass(frozen=True)
class Action:
    """One deployment of one software to one device."""

    id: int
    tenant: str
    controller_id: str
    software_id: str
    version: str
    type: ActionType
    status: str
    active: bool
    created_at: datetime | None = None
    closed_at: datetime | None = None
    rollout_id: int | None = None
    window_open: bool | None = None
    """None: no maintenance window; else whether the window is open now."""
    forcetime: datetime | None = None
    """For ``timeforced``: when the action turns from soft to forced."""
    force_due: bool = False
    """For ``timeforced``: whether ``forcetime`` has passed (as last rendered)."""
    from_version: str | None = None
    """What the device reported running when the action opened (rollback detection)."""
    report_timeout_s: float | None = None
    """Its limits (None: the defaults of :mod:`~gaggle_rollouts.health`)."""
    action_timeout_s: float | None = None


def feedback_status(action: Action, fb: FeedbackStatus) -> tuple[str, bool]:
    """New (status, active) after a deploymentBase feedback; a closed action stays as it is."""
    if not action.active:
        return action.status, False
    execution, finished = fb.execution, fb.finished
    if execution == "closed":
        return ("error", False) if finished == "failure" else ("finished", False)
    if execution == "canceled":
        return "canceled", False
    if execution == "downloaded":
        if action.type == "downloadonly":
            return "downloaded", False
        return "downloaded", True
    if action.status in ("canceling", "wait_for_confirmation"):
        # Informational feedback while a cancel or a confirmation is pending keeps it pending.
        return action.status, True
    if execution == "rejected":
        return "warning", True
    if execution == "download":
        return "download", True
    return "running", True


def cancel_feedback_status(action: Action, fb: FeedbackStatus) -> tuple[str, bool]:
    """New (status, active) after a cancelAction feedback (hawkBit #952: closed means accepted)."""
    if not action.active or action.status != "canceling":
        return action.status, action.active
    execution, finished = fb.execution, fb.finished
    if execution == "canceled" or (execution == "closed" and finished != "failure"):
        return "canceled", False
    if execution == "rejected" or (execution == "closed" and finished == "failure"):
        return "cancel_rejected", True
    return "canceling", True


def confirmation_status(action: Action, confirmed: bool) -> tuple[str, bool]:
    """New (status, active) after the device confirmed or denied (hawkBit: denied keeps waiting)."""
    if action.active and action.status == "wait_for_confirmation" and confirmed:
        return "running", True
    return action.status, action.active


def close_for_deleted_device(action: Action) -> tuple[str, bool]:
    """A deleted device's open action is canceled without waiting for the device."""
    return ("canceled", False) if action.active else (action.status, False)


def cancel_requested_status(action: Action) -> tuple[str, bool]:
    """An operator asked to cancel: an open action waits for the device's answer."""
    return ("canceling", True) if action.active else (action.status, action.active)


ReportKind = Literal[
    "feedback",
    "cancel_feedback",
    "confirmed",
    "denied",
    "cancel_requested",
    "device_deleted",
    "timed_out",
    "rolled_back",
]
"""What a report on an action is: the device's feedback or answer, an operator's request, or
what the health checks found (:mod:`~gaggle_rollouts.health`)."""


@dataclass(frozen=True, slots=True)
class Report:
    """One report on an action: feedback from the device, or a note with what happened."""

    tenant: str
    action_id: int
    event_id: Any
    at: datetime
    fb: FeedbackStatus | None
    kind: ReportKind
    note: list[str] | None = None


def apply_report(
    action: Action, kind: ReportKind, fb: FeedbackStatus | None, at: datetime | None = None
) -> tuple[str, bool]:
    """The action's (status, active) after a report of ``kind``; status only moves forward.

    The one exception is a ``timed_out`` action's final report that the gateway received before
    the time-out (see :func:`gaggle_rollouts.health.after_timeout`).

    Args:
        action: The action as it stands.
        kind: What the report is.
        fb: The device's feedback, for ``feedback`` and ``cancel_feedback`` (else unused).
        at: When the report was received (a late final report of a timed-out action).

    Raises:
        ValueError: a feedback report without its feedback.
    """
    if kind in ("feedback", "cancel_feedback"):
        if fb is None:
            raise ValueError(f"a {kind} report needs the device's feedback")
        if kind == "feedback" and action.status == health.TIMED_OUT and at is not None:
            return health.after_timeout(action.status, action.closed_at, fb, at)
        if kind == "feedback":
            return feedback_status(action, fb)
        return cancel_feedback_status(action, fb)
    if kind in ("confirmed", "denied"):
        return confirmation_status(action, kind == "confirmed")
    if kind == "cancel_requested":
        return cancel_requested_status(action)
    if kind == "timed_out":
        return health.timed_out_status(action.active, action.status)
    if kind == "rolled_back":
        return health.rolled_back_status(action.active, action.status)
    return close_for_deleted_device(action)


def handling(
    action_type: ActionType, window_open: bool | None = None, force_due: bool = False
) -> tuple[HandlingType, HandlingType]:
    """``download`` and ``update`` handling of an action type (ddi-api.md, handling table).

    A ``timeforced`` action is soft (``attempt``) until its force time and forced after it
    (``force_due``). Outside its maintenance window (``window_open`` False) a device may download
    but must not install: ``update`` is ``skip``.
    """
    if action_type == "soft" or (action_type == "timeforced" and not force_due):
        download, update = "attempt", "attempt"
    elif action_type == "downloadonly":
        download, update = "forced", "skip"
    else:
        download, update = "forced", "forced"
    if window_open is False:
        update = "skip"
    return download, update  # type: ignore[return-value]


def action_hash(action_id: int, download: str, update: str) -> str:
    """The ``?c=`` value: changes when what the device is told changes, so caches refresh."""
    return str(zlib.crc32(f"{action_id}:{download}:{update}".encode()) - 2**31)


def deployment_doc(action: Action, software: Software) -> DeploymentDoc:
    """The deploymentBase document of ``action``: one chunk with the software's one file."""
    download, update = handling(action.type, action.window_open, action.force_due)
    chunk = ChunkDoc(
        module_id=software.software_id,
        part="os",
        name=software.name,
        version=software.version,
        artifacts=[software.file],
    )
    window: Literal["available", "unavailable"] | None = None
    if action.window_open is not None:
        window = "available" if action.window_open else "unavailable"
    return DeploymentDoc(
        download=download, update=update, maintenance_window=window, chunks=[chunk]
    )


class Docs:
    """:func:`deployment_doc` kept per (software, action type, window, forced): devices share them.

    Rendering a rollout's devices at once builds each distinct document once, not per device.
    """

    def __init__(self) -> None:
        self._docs: dict[tuple[str, str, ActionType, bool | None, bool], DeploymentDoc] = {}

    def __call__(self, action: Action, software: Software) -> DeploymentDoc:
        """The deploymentBase document of ``action`` (see :func:`deployment_doc`)."""
        key = (
            software.tenant,
            software.software_id,
            action.type,
            action.window_open,
            action.force_due,
        )
        doc = self._docs.get(key)
        if doc is None:
            doc = self._docs[key] = deployment_doc(action, software)
        return doc


def deployment_entry(
    open_action: tuple[Action, Software, list[str]] | None,
    installed: tuple[Action, Software] | None,
    closed_ids: list[int],
    auto_confirm: bool = False,
    docs: Callable[[Action, Software], DeploymentDoc] = deployment_doc,
) -> DeploymentEntry | None:
    """What KV ``deployments`` says for a device; None: nothing to say (delete the key).

    ``docs`` builds the deploymentBase documents (a :class:`Docs` shares them among devices).
    """
    if open_action is None and installed is None and not closed_ids and not auto_confirm:
        return None
    open_doc = None
    if open_action is not None:
        action, software, history = open_action
        doc = docs(action, software)
        state: Literal["deployment", "canceling", "wait_for_confirmation"] = "deployment"
        if action.status in ("canceling", "wait_for_confirmation"):
            state = action.status  # type: ignore[assignment]
        open_doc = OpenAction(
            action_id=str(action.id),
            state=state,
            c=action_hash(action.id, doc.download, doc.update),
            deployment=doc,
            history=history[:KV_HISTORY],
            history_status=action.status.upper(),
        )
    installed_doc = None
    if installed is not None:
        action, software = installed
        installed_doc = InstalledAction(action_id=str(action.id), deployment=docs(action, software))
    return DeploymentEntry(
        open=open_doc,
        installed=installed_doc,
        closed=[str(i) for i in closed_ids[:KV_CLOSED_IDS]],
        auto_confirm=auto_confirm,
    )


def with_status(action: Action, status: str, active: bool) -> Action:
    """A copy with a new status."""
    # ``dataclasses.replace`` runs ``__init__`` again, which costs several times this copy of
    # the fields (``Action`` has no ``__post_init__``); it is done for every report applied.
    changed = object.__new__(Action)
    changed.__dict__.update(action.__dict__, status=status, active=active)
    return changed


class EventIds:
    """Random (version 4) event ids drawn from the OS a block at a time.

    The same ids as :func:`uuid.uuid4`, with one system call per :data:`BLOCK` ids instead of
    one per event: a pull of feedback announces hundreds of actions at once.
    """

    BLOCK = 256

    def __init__(self) -> None:
        self._ready: list[UUID] = []

    def __call__(self) -> UUID:
        """A fresh random event id."""
        try:
            return self._ready.pop()
        except IndexError:
            block = os.urandom(16 * self.BLOCK)
            self._ready.extend(
                UUID(bytes=block[i : i + 16], version=4) for i in range(16, len(block), 16)
            )
            return UUID(bytes=block[:16], version=4)


new_event_id = EventIds()
"""The event ids of the events rollouts announces from reports."""


def announcement(action: Action, fb: FeedbackStatus | None, at: datetime | None = None) -> Event:
    """``action.updated`` for an open action (with the report's details), else ``finished``.

    ``at``: when the report was received, the event's time (else now): the registry orders a
    device's action events and version reports by it, whichever it hears of first.
    """
    when = {} if at is None else {"occurred_at": at}
    if action.active:
        return ActionUpdated(
            **when,
            event_id=new_event_id(),
            tenant=action.tenant,
            controller_id=action.controller_id,
            action_id=str(action.id),
            status=action.status,
            details=fb.details if fb else [],
        )
    if action.status == health.ROLLED_BACK:
        return ActionRolledBack(
            **when,
            tenant=action.tenant,
            controller_id=action.controller_id,
            action_id=str(action.id),
            software_id=action.software_id,
            version=action.version,
            reported_version=action.from_version,
            rollout_id=None if action.rollout_id is None else str(action.rollout_id),
        )
    return ActionFinished(
        **when,
        event_id=new_event_id(),
        tenant=action.tenant,
        controller_id=action.controller_id,
        action_id=str(action.id),
        status=action.status,
        software_id=action.software_id,
        version=action.version,
    )


@dataclass
class Applied:
    """What a batch of reports did: each report's action, and what to store and publish."""

    results: list[Action | None] = field(default_factory=list)
    """Each report's action as it is after it (None: no such action)."""
    entries: list[tuple[int, Report, str]] = field(default_factory=list)
    """History entries to record: (action id, report, status recorded), in report order."""
    moved: list[tuple[Action, datetime]] = field(default_factory=list)
    """Actions whose status changed, as they are now, with their status time; in id order."""
    events: list[Event] = field(default_factory=list)
    rendered: dict[str, set[str]] = field(default_factory=dict)
    """Devices whose KV document must be rendered again, by tenant."""

    def rows(self) -> list[tuple[object, ...]]:
        """The history entries as ``action_status`` rows."""
        return [
            (
                action_id,
                r.event_id,
                r.at,
                status,
                r.fb.execution if r.fb else None,
                r.fb.finished if r.fb else None,
                r.fb.code if r.fb else None,
                json.dumps((r.fb.details if r.fb else r.note) or []),
            )
            for action_id, r, status in self.entries
        ]


def apply_reports(
    current: dict[tuple[str, int], tuple[Action, datetime | None]],
    reports: Sequence[Report],
    seen: set[object],
) -> Applied:
    """Apply reports, in their order, to the actions ``current`` holds (with their status time).

    A report whose ``event_id`` is in ``seen`` changes nothing (a redelivery). A report received
    before the one that set an open action's current status only joins the history; closing
    always applies.
    """
    out = Applied()
    changed: set[tuple[str, int]] = set()
    for report in reports:
        key = (report.tenant, report.action_id)
        if key not in current:
            out.results.append(None)
            continue
        action, status_at = current[key]
        if report.event_id is not None:
            if report.event_id in seen:
                out.results.append(action)  # seen before
                continue
            seen.add(report.event_id)
        fb = report.fb
        status, active = apply_report(action, report.kind, fb, report.at)
        if active and status_at is not None and report.at < status_at:
            status = action.status
        out.entries.append((action.id, report, status))
        if (status, active) == (action.status, action.active):
            out.results.append(action)
            if not active:
                continue
            if fb is not None:
                # The device is at work (a first "proceeding" leaves the action "running"):
                # say so, for the registry's update state and for watchers.
                out.events.append(announcement(action, fb, report.at))
        else:
            action = with_status(action, status, active)
            status_at = report.at if status_at is None else max(status_at, report.at)
            current[key] = (action, status_at)
            changed.add(key)
            out.results.append(action)
            out.events.append(announcement(action, fb, report.at))
        out.rendered.setdefault(report.tenant, set()).add(action.controller_id)
    for k in sorted(changed, key=lambda k: k[1]):
        moved, at = current[k]
        assert at is not None  # noqa: S101 - set above for every changed action
        out.moved.append((moved, at))
    return out
