"""Reports applied in batches: one transaction for many, the same outcome as one by one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest

from gaggle_contracts import names
from gaggle_contracts.events import ActionFeedback, ActionFinished, FeedbackStatus
from gaggle_contracts.settings import CommonSettings
from gaggle_rollouts.domain import Report
from gaggle_runtime.bus import make_broker, publish_event, publish_raw
from gaggle_testing import eventually
from tests.integration.support import Stack

pytestmark = pytest.mark.integration


def fb(execution: str, finished: str = "none") -> FeedbackStatus:
    return FeedbackStatus.model_validate(
        {"execution": execution, "finished": finished, "details": [f"{execution} {finished}"]}
    )


async def test_a_batch_of_reports_ends_as_the_same_reports_one_after_another(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, b"image" * 200)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        actions = {}
        for cid in ("b1", "b2", "b3"):
            await client.get(stack.dev(cid))
            await client.put(f"{stack.dev(cid)}/configData", json={"data": {"hw_boardname": "b"}})
            actions[cid] = int((await stack.assign(client, cid, sid))["id"])
    repo = stack.rollouts.app.state.actions
    cases = stack.rollouts.app.state.usecases
    t = stack.tenant
    a1, a2, a3 = actions["b1"], actions["b2"], actions["b3"]
    e = [uuid4() for _ in range(6)]

    t0 = datetime.now(UTC)  # after the actions' creation entries, which are stamped "now"

    def at(seconds: int) -> datetime:
        return t0 + timedelta(seconds=seconds)

    before = {a: len(await repo.history(a)) for a in (a1, a2, a3)}  # the creation's entries
    batch = [
        Report(t, a1, e[0], at(1), fb("proceeding"), "feedback"),
        Report(t, a1, e[0], at(1), fb("proceeding"), "feedback"),  # the same event twice
        Report(t, a2, e[1], at(5), fb("download"), "feedback"),
        Report(t, a1, e[2], at(3), fb("closed", "success"), "feedback"),
        Report(t, 10**12, e[3], at(1), fb("proceeding"), "feedback"),  # no such action
        # Received before the report that set b2's status: it only joins the history.
        Report(t, a2, e[4], at(2), fb("proceeding"), "feedback"),
        Report(t, a3, e[5], at(4), fb("closed", "failure"), "feedback"),
    ]
    results = await cases.apply_many(batch)
    assert [(r.status, r.active) if r else None for r in results] == [
        ("running", True),
        ("running", True),
        ("download", True),
        ("finished", False),
        None,
        ("download", True),
        ("error", False),
    ]
    for action_id, expected in {
        a1: ["running", "finished"],
        # Ordered by reception time; the late "proceeding" keeps the status it found.
        a2: ["download", "download"],
        a3: ["error"],
    }.items():
        history = (await repo.history(action_id))[before[action_id] :]
        assert [h["status"] for h in history] == expected, action_id
    late = (await repo.history(a2))[before[a2]]
    assert (late["execution"], late["details"]) == ("proceeding", ["proceeding none"])
    stored = {a: await repo.get_action(t, a) for a in (a1, a2, a3)}
    assert {a: (x.status, x.active) for a, x in stored.items() if x} == {
        a1: ("finished", False),
        a2: ("download", True),
        a3: ("error", False),
    }

    # The whole batch redelivered changes nothing, and announces nothing.
    queued: list[Any] = []
    queue_many = repo.outbox.many

    async def spy(conn: Any, events: Any = (), **rest: Any) -> None:
        queued.extend([*events, *rest.get("kv_puts", ()), *rest.get("kv_deletes", ())])
        await queue_many(conn, events, **rest)

    repo.outbox.many = spy
    again = await cases.apply_many(batch)
    repo.outbox.many = queue_many
    assert queued == []
    assert [(r.status, r.active) if r else None for r in again] == [
        ("finished", False),
        ("finished", False),
        ("download", True),
        ("finished", False),
        None,
        ("download", True),
        ("error", False),
    ]
    assert [len(await repo.history(a)) - before[a] for a in (a1, a2, a3)] == [2, 2, 1]

    # The gateway learns of it: b2 still has its deployment, b1 and b3 none.
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await stack.wait_poll(client, "b1", lambda links: "deploymentBase" not in links)
        await stack.wait_poll(client, "b3", lambda links: "deploymentBase" not in links)
        body = await stack.wait_poll(client, "b2", lambda links: "deploymentBase" in links)
        deployment = (await client.get(body["_links"]["deploymentBase"]["href"])).json()
        assert deployment["id"] == str(a2)


async def test_one_pull_of_feedback_for_many_devices_applies_each_event_once(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    """A pull with reports of many devices, one event twice, an invalid and an unknown one."""
    sid = await stack.software(common, b"image" * 200)
    devices = [f"p{i}" for i in range(8)]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        actions: dict[str, str] = {}
        for cid in devices:
            await client.get(stack.dev(cid))
            await client.put(f"{stack.dev(cid)}/configData", json={"data": {"hw_boardname": "b"}})
            actions[cid] = (await stack.assign(client, cid, sid))["id"]
        for cid in devices:
            await stack.wait_poll(client, cid, lambda links: "deploymentBase" in links)

    service = stack.rollouts.app.state.service
    [consumer] = [
        s
        for s in service.broker.subscribers
        if getattr(s.config, "durable_name", None) == names.durable("rollouts", "action.feedback")
    ]
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    finished: list[ActionFinished] = []

    async def on_finished(msg: Any) -> None:
        finished.append(ActionFinished.model_validate_json(msg.data))

    watch = await broker.connection.subscribe(
        names.subject(stack.tenant, ActionFinished.kind), cb=on_finished
    )
    success = FeedbackStatus(execution="closed", finished="success", details=["done"])
    events = [
        ActionFeedback(
            tenant=stack.tenant, controller_id=cid, action_id=actions[cid], status=success
        )
        for cid in devices
    ]
    unknown = ActionFeedback(
        tenant=stack.tenant, controller_id="p0", action_id=str(10**12), status=success
    )
    subject = events[0].subject
    try:
        await consumer.stop()  # what follows is published while nobody pulls: one pull
        for event in events:
            await publish_event(broker, event)
        # The same event again under another message id (JetStream would drop the same id).
        await publish_raw(broker, subject, events[0].encode(), f"{events[0].message_id}-again")
        await publish_raw(broker, subject, b'{"tenant": "not an event"', "garbage-1")
        await publish_event(broker, unknown)
        await consumer.start()
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
            for cid in devices:
                done = await stack.wait_action(client, actions[cid], "finished")
                assert [h["execution"] for h in done["history"]] == [None, "closed"], cid
                # The gateway stops offering the closed action (its KV entry was rewritten).
                await stack.wait_poll(client, cid, lambda links: "deploymentBase" not in links)

            async def parked() -> list[dict[str, Any]]:
                r = await client.get(
                    f"{stack.ro}/api/v1/dead-letters", params={"kind": "action.feedback"}
                )
                items: list[dict[str, Any]] = r.json()["items"]
                assert items
                return items

            [letter] = await eventually(parked, timeout=10)
            assert (letter["msg_id"], letter["reason"]) == ("garbage-1", "invalid")

        async def all_finished() -> bool:
            assert sorted(e.action_id for e in finished) == sorted(actions.values())
            return True

        await eventually(all_finished, timeout=10)

        async def settled() -> bool:
            info = await broker.connection.jetstream().consumer_info(
                names.STREAM, names.durable("rollouts", "action.feedback")
            )
            assert (info.num_pending, info.num_ack_pending) == (0, 0), info
            return True

        await eventually(settled, timeout=10)
        await asyncio.sleep(0.2)  # nothing announced twice, also a moment later
        assert len(finished) == len(devices)
        assert {e.status for e in finished} == {"finished"}
    finally:
        await watch.unsubscribe()
        await broker.stop()
