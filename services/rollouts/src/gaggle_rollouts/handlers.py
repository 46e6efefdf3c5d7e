"""Rollouts subscribers: one function per event, each handing it to its use case.

The use cases arrive by FastStream's context (``Context("usecases")``), put there by
:func:`gaggle_rollouts.app.build_app`; :data:`SUBSCRIBERS` says which durable consumer feeds
which function, and ``app.py`` subscribes them with the service's settings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from faststream import Context
from faststream.nats.message import NatsBatchMessage
from pydantic import BaseModel

from gaggle_contracts.events import (
    ActionFeedback,
    AutoConfirmChanged,
    CancelFeedback,
    ConfirmationFeedback,
    DeviceSeen,
    DeviceUpdated,
    SoftwareCreated,
    SoftwareDeleted,
)
from gaggle_rollouts.usecases import FEEDBACK_PULL, INVENTORY_BATCH, UseCases
from gaggle_runtime.batches import BatchRunner, consume_batch
from gaggle_runtime.deadletters import ConsumerFailures

SERVICE = "rollouts"

Cases = Annotated[UseCases, Context("usecases")]
Pulled = Annotated[NatsBatchMessage, Context("message")]
Failures = Annotated[ConsumerFailures, Context("failures")]
Runner = Annotated[BatchRunner, Context("feedback_runner")]


async def on_software_created(event: SoftwareCreated, cases: Cases) -> None:
    """ota.v1.*.software.created -> catalogue upsert; devices in ``latest`` re-decided."""
    await cases.software_created(event)


async def on_software_deleted(event: SoftwareDeleted, cases: Cases) -> None:
    """ota.v1.*.software.deleted -> no new actions for that software."""
    await cases.software_deleted(event)


async def on_device_updated(event: DeviceUpdated, cases: Cases) -> None:
    """ota.v1.*.device.updated -> inventory kept; re-decided; deleted: open action canceled."""
    await cases.device_updated(event)


async def on_device_seen(event: DeviceSeen, cases: Cases) -> None:
    """ota.v1.*.device.seen -> devices in a soak after their success are seen back."""
    await cases.device_seen(event)


# A pull's feedback is applied in one transaction, in pull order; a redelivered report may come
# after a newer one: the history is ordered by when the gateway received them, and a report older
# than the one that set the action's status does not change it (domain.apply_reports).
async def on_action_feedback(
    events: list[ActionFeedback | bytes],
    msg: Pulled,
    cases: Cases,
    failures: Failures,
    runner: Runner,
) -> None:
    """ota.v1.*.action.feedback (a pull at once) -> history; status moved forward; KV refreshed."""
    # Each event was decoded alone (a payload that is not one stays bytes and is parked alone);
    # each is acked only once the batch's transaction committed and its follow-ups ran. A few
    # pulls are applied at once (FEEDBACK_IN_FLIGHT), each in its own transaction.
    raws = msg.raw_message
    await runner.submit(
        raws,
        lambda: consume_batch(
            failures, raws, events, ActionFeedback.model_validate_json, cases.feedback_batch
        ),
    )


async def on_cancel_feedback(event: CancelFeedback, cases: Cases) -> None:
    """ota.v1.*.cancel.feedback -> canceled, or back to running if the device refused."""
    await cases.report(event, "cancel_feedback", event.status)


async def on_confirmation(event: ConfirmationFeedback, cases: Cases) -> None:
    """ota.v1.*.confirmation.feedback -> confirmed: the action runs; denied: it waits on."""
    confirmed = event.confirmation == "confirmed"
    text = "Confirmed by the device." if confirmed else "Denied by the device."
    await cases.report(
        event, "confirmed" if confirmed else "denied", None, note=[text, *event.details]
    )


async def on_auto_confirm(event: AutoConfirmChanged, cases: Cases) -> None:
    """ota.v1.*.device.auto_confirm -> kept; switched on, a waiting action is confirmed."""
    await cases.auto_confirm(event)


SUBSCRIBERS: list[tuple[str, Callable[..., Awaitable[Any]], int | None]] = [
    (SoftwareCreated.kind, on_software_created, None),
    (SoftwareDeleted.kind, on_software_deleted, None),
    (DeviceUpdated.kind, on_device_updated, INVENTORY_BATCH),
    (DeviceSeen.kind, on_device_seen, None),
    (ActionFeedback.kind, on_action_feedback, FEEDBACK_PULL),
    (CancelFeedback.kind, on_cancel_feedback, None),
    (ConfirmationFeedback.kind, on_confirmation, None),
    (AutoConfirmChanged.kind, on_auto_confirm, None),
]
"""(event kind, subscriber, events per pull if not the default) of every rollouts consumer."""
WHOLE_PULLS: dict[str, type[BaseModel]] = {ActionFeedback.kind: ActionFeedback}
"""Consumers whose subscriber gets a pull at once (and settles each event itself): the model."""
