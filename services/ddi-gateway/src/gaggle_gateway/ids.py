"""Event ids of device reports, derived from the report itself.

A report answered 429 because JetStream did not acknowledge it in time may have been stored all
the same. The device retries it; the retry must be recognised, not counted twice. So a report's
event id (sent as ``Nats-Msg-Id``) is not random but a UUID (version 5) of a canonical encoding
of who reported what: the event kind, tenant, controller id, action id and the validated content.
An identical retry gets the same id on any gateway process, also after a restart: JetStream drops
it within its duplicate window, and rollouts, which keeps each feedback's event id in the
action's history, keeps it once for good.

What counts as the content decides which reports are one report:

- feedback (deploymentBase, cancelAction) that does not close the action: the status (execution,
  result, code, details, progress) and its :func:`stamp`: the device's own ``time`` /
  ``timestamp`` as sent. Two identical statuses with the same device time are one report;
  clients send the time to the second, so a device that repeats a message a second or more
  later is kept twice.
- a final report (one that closes the action): the status alone, without the device time. An
  action closes once, so a second final report with the same status is a retry, even if the
  client wrote a new time into it.
- confirmation feedback: confirmation, code, details and the stamp.
- configData and installedBase: mode, attributes and the stamp. Applying the same attributes
  twice in a row changes nothing, so a retry with a new time costs only a second write.

A report without a device time is stamped with the gateway's clock in windows of
:data:`WINDOW_S`: identical reports within one window are one report, as the bus's duplicate
window would have them anyway, and a device that repeats a report later (a second cancel
rejected with the same words) is kept again. A retry that falls into the next window is kept
twice, as any repeated report.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

import orjson

REPORTS = UUID("6f1c2a8e-5b0d-4c57-9a61-0d3e7c2b9f14")
"""Namespace of report ids; fixed, so ids agree across processes and versions."""
WINDOW_S = 120
"""Windows of the clock that stamp reports without a device time: JetStream's default
duplicate window, counted from the epoch so that every gateway process has the same ones."""


def stamp(device_time: Any, device_timestamp: Any, now: float) -> Any:
    """What tells a report apart from an identical one sent at another time.

    The device's ``time`` and ``timestamp`` as sent; without either, the window of
    :data:`WINDOW_S` seconds ``now`` (``time.time()``) falls in.
    """
    if device_time is None and device_timestamp is None:
        return {"window": int(now // WINDOW_S)}
    return [device_time, device_timestamp]


def report_id(
    kind: str, tenant: str, controller_id: str, action_id: str | None, content: Any
) -> UUID:
    """The event id of a report: the same for the same report, different for another one.

    ``content`` is anything JSON can encode (a dict of the validated fields); keys are sorted, so
    the order in which the device wrote its fields does not matter.
    """
    name = orjson.dumps(
        [kind, tenant, controller_id, action_id, content], option=orjson.OPT_SORT_KEYS
    )
    return uuid5(REPORTS, name.decode())
