"""Feedback reports: which action a report is for, and how it reaches the bus.

Deployment and cancel feedback arrive by the fast lane or by the FastAPI routes; both hand the
request to :func:`take_feedback`. The action is checked before the body is read (404, 405 and
410 cost no upload); the report is answered 200 once JetStream has its event, and what this
gateway acknowledged is remembered (``acks.py``): a closed action's final report is answered
200 again without a second event. Each report's event id is derived from the report
(``ids.py``), so a retry of a report the bus may have stored is stored once.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from starlette.types import Receive, Scope

from gaggle_contracts.ddi import MAX_STATUSES, FeedbackBody
from gaggle_contracts.events import CancelFeedback, FeedbackStatus
from gaggle_contracts.kv import OpenAction
from gaggle_gateway.acks import FinalReport, fingerprint
from gaggle_gateway.bodies import parse_body, read_limited
from gaggle_gateway.core import Caller, FeedbackKind, Gateway, open_action
from gaggle_gateway.domain import closes_action
from gaggle_gateway.errors import Busy, Gone, NotAllowed, NotFound, QuotaExceeded
from gaggle_gateway.ids import report_id, stamp


async def take_feedback(
    gw: Gateway, caller: Caller, action_id: str, kind: FeedbackKind, scope: Scope, receive: Receive
) -> None:
    """Check the action, read the body within the limit, and report it (:func:`report_feedback`).

    Raises:
        DdiError: as :func:`feedback_target`, :func:`~gaggle_gateway.bodies.read_limited` and
            :func:`report_feedback`.
    """
    target = feedback_target(gw, caller, action_id, kind)
    data = await read_limited(scope, receive, gw.settings.max_feedback_bytes)
    await report_feedback(gw, caller, action_id, kind, target, data)


def feedback_target(
    gw: Gateway, caller: Caller, action_id: str, kind: FeedbackKind
) -> OpenAction | FinalReport:
    """The open action a feedback report is for, or the final report that closed it here.

    Raises:
        NotFound: not the device's open action, or one that awaits confirmation.
        NotAllowed: cancel feedback for an action that is not being canceled.
        Gone: the action is closed.
    """
    final = gw.acks.final(caller.key, action_id) or gw.acks.unsure_final(caller.key, action_id)
    if final is not None:
        return final
    return open_feedback_target(gw, caller, action_id, kind)


def open_feedback_target(
    gw: Gateway, caller: Caller, action_id: str, kind: FeedbackKind
) -> OpenAction:
    """The open action a feedback report is for, by the mirror (see :func:`feedback_target`)."""
    action = check_feedback_target(gw, caller, action_id)
    if kind is CancelFeedback:
        if action.state != "canceling":
            raise NotAllowed(f"action {action_id!r} is not being canceled")
    elif action.state == "wait_for_confirmation":
        raise NotFound(f"action {action_id!r} awaits confirmation")
    return action


def check_feedback_target(gw: Gateway, caller: Caller, action_id: str) -> OpenAction:
    """The open action a feedback is for; closed ones are 410 Gone, unknown ones 404.

    Closed are those KV says are, and those whose final report this gateway acknowledged.
    """
    if gw.acks.final(caller.key, action_id) is not None:
        raise Gone(f"action {action_id!r} is closed")
    entry = caller.deployment(gw.mirror)
    if entry is not None and (entry.open is None or entry.open.action_id != action_id):
        closed = set(entry.closed)
        if entry.installed is not None:
            closed.add(entry.installed.action_id)
        if action_id in closed:
            raise Gone(f"action {action_id!r} is closed")
    return open_action(caller, gw, action_id)


async def report_feedback(
    gw: Gateway,
    caller: Caller,
    action_id: str,
    kind: FeedbackKind,
    target: OpenAction | FinalReport,
    data: bytes,
) -> None:
    """Validate a feedback body; on the bus once JetStream has the event.

    A report for an action this gateway saw closed (``target`` is its final report) is
    answered 200 without an event if it repeats that report (a retry), else 410. A repeat of
    a final report the bus did not acknowledge is sent again: its event id is the first
    attempt's (:func:`feedback_id`), so it is stored once whether or not the first attempt was.

    Raises:
        BadRequest: not JSON, or not a feedback body.
        QuotaExceeded: more messages than a status may have, or more statuses than an
            action may have (a final report is always taken, so the action can close).
        Gone: a report other than the final one, for an action closed here.
        Busy: the bus did not acknowledge in time; the device should retry later.
    """
    body = parse_body(data, FeedbackBody)
    status = body.to_status()
    printed = fingerprint(kind.kind, status)
    if isinstance(target, FinalReport) and target.fingerprint != printed:
        if not target.unsure:
            raise Gone(f"action {action_id!r} is closed")
        target = open_feedback_target(gw, caller, action_id, kind)
    if isinstance(target, FinalReport):
        if not target.unsure:
            return
        final = True
    else:
        final = closes_action(kind is CancelFeedback, status, target)
    if not final and gw.acks.count(caller.key, action_id) >= MAX_STATUSES:
        raise QuotaExceeded(
            f"action {action_id!r} has {MAX_STATUSES} statuses, the most an action may have",
            quota=MAX_STATUSES,
        )
    event = kind(
        event_id=feedback_id(caller, action_id, kind, status, None if final else body),
        **caller.ids,
        action_id=action_id,
        status=status,
        device_time=body.device_time(),
    )
    try:
        await gw.publish(event)
    except Busy:
        if final:
            gw.acks.sent_unsure(caller.key, action_id, printed, time.monotonic())
        raise
    gw.acks.acknowledged(caller.key, action_id, printed if final else None, time.monotonic())
    gw.noted(caller, kind.kind, body)


def feedback_id(
    caller: Caller,
    action_id: str,
    kind: FeedbackKind,
    status: FeedbackStatus,
    body: FeedbackBody | None,
) -> UUID:
    """The event id of a feedback report (``ids.py``).

    ``body`` is given for a report that does not close the action: its :func:`stamp` then
    tells two reports of the same status apart. A final report's id is its status alone.
    """
    content: dict[str, Any] = {"status": status.model_dump(mode="json")}
    if body is not None:
        content["time"] = stamp(body.time, body.timestamp, time.time())
    return report_id(kind.kind, caller.tenant, caller.controller_id, action_id, content)
