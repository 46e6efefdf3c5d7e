"""Poison events, transient failures and replays through a small service on real NATS + PostgreSQL.

The service stores the items of ``probe.happened`` events, a pull's events in one transaction
(a :class:`Coalescer`). A trigger refuses items listed in its ``blocked`` table: a data
condition that fails an event for good until an operator removes it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import pytest
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig
from prometheus_client.parser import text_string_to_metric_families

from gaggle_contracts import names
from gaggle_contracts.events import Event
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime import metrics as metrics_module
from gaggle_runtime.bus import consumer_options, make_broker, publish_event, publish_raw
from gaggle_runtime.coalesce import Coalescer
from gaggle_runtime.service import Service
from gaggle_testing import eventually

pytestmark = pytest.mark.integration

KIND = "probe.happened"


class ProbeHappened(Event):
    """Test-only event: an item to store."""

    kind: ClassVar[str] = KIND
    item: str


SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS {schema}.items (tenant text, item text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {schema}.blocked (item text PRIMARY KEY);
CREATE OR REPLACE FUNCTION {schema}.refuse_blocked() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM {schema}.blocked WHERE item = NEW.item) THEN
        RAISE EXCEPTION 'item % is blocked', NEW.item;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS refuse_blocked ON {schema}.items;
CREATE TRIGGER refuse_blocked BEFORE INSERT ON {schema}.items
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_blocked();
"""


class Probe:
    """A service consuming ``probe.happened`` of one tenant; counts its handler's calls."""

    def __init__(
        self,
        common: CommonSettings,
        tenant: str,
        *,
        blocked: tuple[str, ...] = (),
        fail: Callable[[str], BaseException | None] | None = None,
    ) -> None:
        self.name = f"probe{secrets.token_hex(4)}"
        self.tenant = tenant
        self.calls: Counter[str] = Counter()
        self.fail = fail
        self.service = Service(self.name, common, schema=self.name)
        schema = self.name

        async def prepare() -> None:
            async with self.service.db.pool.acquire() as conn:
                await conn.execute(SCHEMA_SQL.format(schema=schema))
                await conn.executemany(
                    f"INSERT INTO {schema}.blocked VALUES ($1)",  # noqa: S608
                    [(b,) for b in blocked],
                )

        async def store(events: list[ProbeHappened]) -> list[None]:
            async with self.service.db.pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    f"INSERT INTO {schema}.items VALUES ($1, $2) ON CONFLICT DO NOTHING",  # noqa: S608
                    [(e.tenant, e.item) for e in events],
                )
            return [None] * len(events)

        batch = Coalescer(store, max_batch=64)

        @self.service.broker.subscriber(**consumer_options(self.name, KIND, common, batch=64))
        async def on_probe(event: ProbeHappened) -> None:
            if event.tenant != self.tenant:  # another test's events, still in the stream
                return
            self.calls[event.item] += 1
            if self.fail is not None and (exc := self.fail(event.item)) is not None:
                raise exc
            await batch.submit(event)

        self.service.on_start.append(prepare)
        self.app = self.service.secure(self.service.app(title="probe", description="probe"))
        self.durable = names.durable(self.name, KIND)

    async def items(self) -> set[str]:
        rows = await self.service.db.pool.fetch(f"SELECT item FROM {self.name}.items")  # noqa: S608
        return {r["item"] for r in rows}

    async def unblock(self, item: str) -> None:
        sql = f"DELETE FROM {self.name}.blocked WHERE item = $1"  # noqa: S608
        await self.service.db.pool.execute(sql, item)


@pytest.fixture
def fast(common: CommonSettings, monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    """Settings whose retries come quickly; metrics sampled at every scrape."""
    monkeypatch.setattr(metrics_module, "SAMPLE_EVERY_S", 0.0)
    return common.model_copy(
        update={"retry_delay_s": 0.02, "retry_delay_max_s": 0.1, "dead_letter_after": 3}
    )


async def publish(common: CommonSettings, events: list[Event]) -> None:
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        await asyncio.gather(*(publish_event(broker, e) for e in events))
    finally:
        await broker.stop()


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_a_poison_event_is_parked_the_others_are_stored_and_a_replay_stores_it(
    fast: CommonSettings, serve: Any, tenant: str, operator_auth: httpx.Auth
) -> None:
    probe = Probe(fast, tenant, blocked=("poison",))
    url = (await serve(probe.app)).url
    good = [f"good-{i}" for i in range(8)]
    events = [ProbeHappened(tenant=tenant, item=i) for i in [*good[:4], "poison", *good[4:]]]
    await publish(fast, events)

    async with httpx.AsyncClient(base_url=url, auth=operator_auth, timeout=10) as client:

        async def parked() -> list[dict[str, Any]]:
            r = await client.get("/api/v1/dead-letters")
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        [letter] = await eventually(parked, timeout=15)
        assert await probe.items() == set(good)
        assert probe.calls["poison"] == fast.dead_letter_after
        assert letter["source"] == "consumer"
        assert (letter["consumer"], letter["kind"]) == (probe.durable, KIND)
        assert letter["subject"] == names.subject(tenant, KIND)
        assert letter["msg_id"] == events[4].message_id
        assert (letter["reason"], letter["attempts"]) == ("failed", fast.dead_letter_after)
        assert "item poison is blocked" in letter["error"]
        assert letter["replayable"] is True and letter["replayed_at"] is None

        detail = (await client.get(f"/api/v1/dead-letters/{letter['id']}")).json()
        assert detail["payload"]["item"] == "poison"
        assert detail["payload_encoding"] == "json"
        assert detail["headers"]["content-type"] == "application/json"
        assert "Nats-Msg-Id" not in detail["headers"]

        text = (await client.get("/metrics")).text
        assert sample(text, "gaggle_dead_letters", service=probe.name, kind=KIND) == 1
        assert sample(text, "gaggle_events_consumed_total", kind=KIND, result="dead_letter") == 1
        assert sample(text, "gaggle_events_consumed_total", kind=KIND, result="retry") == 2

        # Acked: nothing of it is left in the consumer.
        js = probe.service.broker.connection.jetstream()

        async def acked() -> bool:
            info = await js.consumer_info(names.STREAM, probe.durable)
            return (info.num_ack_pending, info.num_pending) == (0, 0)

        await eventually(acked, timeout=15)
        assert probe.calls["poison"] == fast.dead_letter_after

        # Replaying before the cause is gone parks it again: the same dead letter, open again.
        r = await client.post(f"/api/v1/dead-letters/{letter['id']}/replay")
        assert r.status_code == 200, r.text
        assert r.json()["replays"] == 1

        async def parked_again() -> bool:
            again = await parked()
            return bool(again) and again[0]["attempts"] == 2 * fast.dead_letter_after

        await eventually(parked_again, timeout=15)
        assert [x["id"] for x in await parked()] == [letter["id"]]

        await probe.unblock("poison")
        r = await client.post(f"/api/v1/dead-letters/{letter['id']}/replay")
        assert r.status_code == 200, r.text
        assert r.json()["replays"] == 2 and r.json()["replayed_at"] is not None

        async def stored() -> bool:
            return "poison" in await probe.items()

        await eventually(stored, timeout=15)
        assert await parked() == []
        replayed = (await client.get("/api/v1/dead-letters", params={"state": "replayed"})).json()
        assert [x["id"] for x in replayed["items"]] == [letter["id"]]
        text = (await client.get("/metrics")).text
        assert sample(text, "gaggle_dead_letters", service=probe.name, kind=KIND) == 0

        # Unknown ids, another tenant's letter, bad cursors: clear 4xx.
        assert (await client.get("/api/v1/dead-letters/999999")).status_code == 404
        assert (await client.post("/api/v1/dead-letters/999999/replay")).status_code == 404
        assert (await client.get("/api/v1/dead-letters/0")).status_code == 400
        assert (await client.get("/api/v1/dead-letters", params={"cursor": "x"})).status_code == 400
        other = (await client.get("/api/v1/dead-letters", params={"tenant": "someone"})).json()
        assert other["error"] == "not_found"
    async with httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
        assert (await anonymous.get("/api/v1/dead-letters")).status_code == 401


async def test_events_that_are_not_valid_are_parked_at_once(
    fast: CommonSettings, serve: Any, tenant: str, operator_auth: httpx.Auth
) -> None:
    probe = Probe(fast, tenant)
    url = (await serve(probe.app)).url
    broker = make_broker(fast.nats_url, "test")
    await broker.connect()
    try:
        subject = names.subject(tenant, KIND)
        await publish_raw(broker, subject, b"not json at all", f"bad-{tenant}-1")
        await publish_raw(broker, subject, b'{"tenant": "%s"}' % tenant.encode(), f"bad-{tenant}-2")
    finally:
        await broker.stop()
    async with httpx.AsyncClient(base_url=url, auth=operator_auth, timeout=10) as client:

        async def both() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = (await client.get("/api/v1/dead-letters")).json()["items"]
            return items if len(items) == 2 else []

        letters = await eventually(both, timeout=15)
        assert {(x["reason"], x["attempts"]) for x in letters} == {("invalid", 1)}
        assert {x["msg_id"] for x in letters} == {f"bad-{tenant}-1", f"bad-{tenant}-2"}
        by_msg = {x["msg_id"]: x for x in letters}
        not_json = by_msg[f"bad-{tenant}-1"]
        first = (await client.get(f"/api/v1/dead-letters/{not_json['id']}")).json()
        assert (first["payload"], first["payload_encoding"]) == ("not json at all", "text")
        assert "item" in by_msg[f"bad-{tenant}-2"]["error"]


async def test_a_dependency_away_is_retried_past_ten_deliveries_and_nothing_is_parked(
    fast: CommonSettings, serve: Any, tenant: str, operator_auth: httpx.Auth
) -> None:
    probe = Probe(fast, tenant, fail=lambda item: ConnectionResetError("away"))
    # The durable exists already, made with the old limit of 10 deliveries.
    broker = make_broker(fast.nats_url, "test")
    await broker.connect()
    try:
        js = broker.connection.jetstream()
        await js.add_consumer(
            names.STREAM,
            ConsumerConfig(
                durable_name=probe.durable,
                filter_subject=names.subscription(KIND),
                ack_policy=JsAckPolicy.EXPLICIT,
                max_deliver=10,
                ack_wait=fast.ack_wait_s,
            ),
        )
        url = (await serve(probe.app)).url
        info = await js.consumer_info(names.STREAM, probe.durable)
        assert info.config.max_deliver == -1
        await publish_event(broker, ProbeHappened(tenant=tenant, item="patient"))

        async def many_tries() -> bool:
            return probe.calls["patient"] >= 15

        await eventually(many_tries, timeout=15)
        probe.fail = None  # the dependency is back

        async def stored() -> bool:
            return "patient" in await probe.items()

        await eventually(stored, timeout=15)
    finally:
        await broker.stop()
    async with httpx.AsyncClient(base_url=url, auth=operator_auth, timeout=10) as client:
        r = await client.get("/api/v1/dead-letters", params={"state": "all"})
        assert r.json()["items"] == []
        text = (await client.get("/metrics")).text
        assert sample(text, "gaggle_events_consumed_total", kind=KIND, result="retry") >= 14


async def test_a_replay_is_handled_by_the_consumer_that_parked_it_alone(
    fast: CommonSettings, serve: Any, tenant: str, operator_auth: httpx.Auth
) -> None:
    parks = Probe(fast, tenant, blocked=("shared",))
    keeps = Probe(fast, tenant)
    parks_url = (await serve(parks.app)).url
    keeps_url = (await serve(keeps.app)).url
    await publish(fast, [ProbeHappened(tenant=tenant, item="shared")])
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:

        async def parked() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = (
                await client.get(f"{parks_url}/api/v1/dead-letters")
            ).json()["items"]
            return items

        [letter] = await eventually(parked, timeout=15)
        assert await keeps.items() == {"shared"}
        assert keeps.calls["shared"] == 1
        await parks.unblock("shared")
        r = await client.post(f"{parks_url}/api/v1/dead-letters/{letter['id']}/replay")
        assert r.status_code == 200, r.text

        async def stored() -> bool:
            return "shared" in await parks.items()

        await eventually(stored, timeout=15)

        # The replay reached the other consumer too (its subject is the same), which acked it.
        js = keeps.service.broker.connection.jetstream()

        async def drained() -> bool:
            info = await js.consumer_info(names.STREAM, keeps.durable)
            return (info.num_pending, info.num_ack_pending) == (0, 0)

        await eventually(drained, timeout=15)
        assert keeps.calls["shared"] == 1
        text = (await client.get(f"{keeps_url}/metrics")).text
        assert sample(text, "gaggle_events_consumed_total", kind=KIND, result="skipped") >= 1
