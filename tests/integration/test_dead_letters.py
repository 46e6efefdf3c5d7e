"""Nothing a device sends is dropped: poison events, refused outbox rows and a database away.

Through the real gateway, registry and rollouts on NATS and PostgreSQL:

* a configData report registry cannot store (a trigger refuses that one device, a data
  condition an operator can remove) is parked while the reports pulled with it are stored; it is
  in the dead-letter API, the metric and ``gaggle dead-letters list``, and ``gaggle dead-letters
  replay`` stores it once the cause is gone. The same for a final feedback in rollouts;
* an outbox row larger than NATS's max_payload is parked, and the rows behind it are delivered;
* with the database unreachable for a while, reports are retried well past ten deliveries and
  stored once it is back, with nothing parked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from gaggle_contracts import names
from gaggle_contracts.events import DeviceConfigReported
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime import metrics as metrics_module
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_storage import LocalStore, StorageSettings
from gaggle_testing import eventually, feedback
from gaggle_testing.proxy import TcpProxy
from tests.integration.support import Run, Stack, run_cli, value

pytestmark = pytest.mark.integration

RETRIES = 3


@pytest.fixture
def common(nats_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    """Quick retries, few before parking; gauges sampled at every scrape."""
    monkeypatch.setattr(metrics_module, "SAMPLE_EVERY_S", 0.0)
    return CommonSettings(
        nats_url=nats_url,
        database_url=database_url,
        log_json=False,
        retry_delay_s=0.02,
        retry_delay_max_s=0.2,
        dead_letter_after=RETRIES,
    )


@dataclass
class Services:
    stack: Stack
    registry: str
    registry_app: Any


@pytest.fixture
async def services(common: CommonSettings, serve: Any, tenant: str, tmp_path: Path) -> Services:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    registry = await serve(build_registry(common, RegistrySettings()))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(polling_sleep="00:00:05"), storage))
    return Services(
        Stack(gateway, rollouts, tenant, LocalStore(storage.dir)), registry.url, registry.app
    )


BLOCK_DEVICES = """
CREATE TABLE public.blocked (id text PRIMARY KEY);
CREATE FUNCTION public.refuse_blocked_device() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.blocked WHERE id = NEW.controller_id) THEN
        RAISE EXCEPTION 'device % refused', NEW.controller_id;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_blocked BEFORE UPDATE OF attributes ON registry.devices
    FOR EACH ROW EXECUTE FUNCTION public.refuse_blocked_device();
"""

BLOCK_CLOSING = """
CREATE TABLE public.blocked (id text PRIMARY KEY);
CREATE FUNCTION public.refuse_blocked_close() RETURNS trigger AS $$
BEGIN
    IF NEW.execution = 'closed'
        AND EXISTS (SELECT 1 FROM public.blocked WHERE id = NEW.action_id::text) THEN
        RAISE EXCEPTION 'closing action % refused', NEW.action_id;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_blocked BEFORE INSERT ON rollouts.action_status
    FOR EACH ROW EXECUTE FUNCTION public.refuse_blocked_close();
"""


async def sql(database_url: str, statement: str, *args: Any) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def gaggle(env: dict[str, str], cwd: Path, *args: str) -> Run:
    """``gaggle *args`` run in ``cwd`` with ``env`` over this process's environment."""
    return await run_cli({**os.environ, **env}, *args, cwd=cwd, code=None)


async def test_a_report_that_cannot_be_stored_is_parked_and_replayed_after_the_fix(
    services: Services,
    common: CommonSettings,
    operator_auth: httpx.Auth,
    operator_key: str,
    tenant: str,
    tmp_path: Path,
) -> None:
    stack, registry = services.stack, services.registry
    await sql(common.database_url, BLOCK_DEVICES)
    await sql(common.database_url, "INSERT INTO public.blocked VALUES ('poison')")
    good = [f"good-{i}" for i in range(6)]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for cid in [*good, "poison"]:
            assert (await client.get(stack.dev(cid))).status_code == 200
        answers = await asyncio.gather(
            *(
                client.put(f"{stack.dev(cid)}/configData", json={"data": {"hw_boardname": cid}})
                for cid in [*good[:3], "poison", *good[3:]]
            )
        )
        assert [r.status_code for r in answers] == [200] * 7

        async def device(cid: str) -> dict[str, Any]:
            r = await client.get(f"{registry}/api/v1/devices/{cid}")
            return r.json() if r.status_code == 200 else {}

        async def parked() -> list[dict[str, Any]]:
            r = await client.get(f"{registry}/api/v1/dead-letters")
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["items"]
            return [x for x in items if x["kind"] == DeviceConfigReported.kind]

        [letter] = await eventually(parked, timeout=15)
        for cid in good:
            assert (await device(cid)).get("hw_model") == cid
        assert (await device("poison")).get("hw_model") is None
        assert letter["consumer"] == names.durable("registry", DeviceConfigReported.kind)
        assert (letter["reason"], letter["attempts"]) == ("failed", RETRIES)
        assert "device poison refused" in letter["error"]
        detail = (await client.get(f"{registry}/api/v1/dead-letters/{letter['id']}")).json()
        assert detail["payload"]["controller_id"] == "poison"
        assert detail["payload"]["data"] == {"hw_boardname": "poison"}

        metrics = (await client.get(f"{registry}/metrics")).text
        labels = {"service": "registry", "kind": DeviceConfigReported.kind}
        assert value(metrics, "gaggle_dead_letters", **labels) == 1

        env = {
            "GAGGLE_REGISTRY_URL": registry,
            "GAGGLE_ROLLOUTS_URL": stack.ro,
            "GAGGLE_API_KEY": operator_key,
        }
        listed = await gaggle(env, tmp_path, "dead-letters", "list", "--service", "registry")
        assert listed.rc == 0, listed
        row = next(line for line in listed.out.splitlines() if "poison refused" in line)
        assert row.split()[:5] == [
            "registry",
            letter["id"],
            DeviceConfigReported.kind,
            letter["consumer"],
            "failed",
        ]
        as_json = await gaggle(
            env, tmp_path, "dead-letters", "list", "--service", "registry", "--json"
        )
        assert [x["id"] for x in json.loads(as_json.out)["items"]] == [letter["id"]]
        shown = await gaggle(env, tmp_path, "dead-letters", "show", "registry", letter["id"])
        assert shown.rc == 0 and '"controller_id": "poison"' in shown.out, shown

        await sql(common.database_url, "DELETE FROM public.blocked")
        replayed = await gaggle(env, tmp_path, "dead-letters", "replay", "registry", letter["id"])
        assert replayed.rc == 0, replayed
        assert f"Replayed registry dead letter {letter['id']}" in replayed.out

        async def stored() -> bool:
            return (await device("poison")).get("hw_model") == "poison"

        await eventually(stored, timeout=15)
        assert await parked() == []
        metrics = (await client.get(f"{registry}/metrics")).text
        assert value(metrics, "gaggle_dead_letters", **labels) == 0
        again = await gaggle(env, tmp_path, "dead-letters", "replay", "registry", "999999")
        assert again.rc == 1 and "registry answered 404 not_found" in again.err, again


async def test_a_final_report_that_cannot_be_applied_holds_back_no_other_device(
    services: Services, common: CommonSettings, operator_auth: httpx.Auth
) -> None:
    stack = services.stack
    sid = await stack.software(common, b"image" * 200)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        actions: dict[str, str] = {}
        for cid in ("f1", "f2", "f3"):
            await client.get(stack.dev(cid))
            await client.put(f"{stack.dev(cid)}/configData", json={"data": {"hw_boardname": "b"}})
            actions[cid] = (await stack.assign(client, cid, sid))["id"]
        await sql(common.database_url, BLOCK_CLOSING)
        await sql(common.database_url, "INSERT INTO public.blocked VALUES ($1)", actions["f2"])
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{stack.dev(cid)}/deploymentBase/{aid}/feedback",
                    json=feedback("closed", "success"),
                )
                for cid, aid in actions.items()
            )
        )
        assert [r.status_code for r in answers] == [200] * 3
        await stack.wait_action(client, actions["f1"], "finished")
        await stack.wait_action(client, actions["f3"], "finished")

        async def parked() -> list[dict[str, Any]]:
            r = await client.get(
                f"{stack.ro}/api/v1/dead-letters", params={"kind": "action.feedback"}
            )
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        [letter] = await eventually(parked, timeout=15)
        assert letter["consumer"] == "rollouts_action_feedback"
        assert f"closing action {actions['f2']} refused" in letter["error"]
        assert (await stack.action(client, actions["f2"]))["active"] is True

        await sql(common.database_url, "DELETE FROM public.blocked")
        r = await client.post(f"{stack.ro}/api/v1/dead-letters/{letter['id']}/replay")
        assert r.status_code == 200, r.text
        done = await stack.wait_action(client, actions["f2"], "finished")
        assert [h["execution"] for h in done["history"]] == [None, "closed"]
        assert await parked() == []


async def test_an_outbox_row_nats_refuses_is_parked_and_later_rows_are_delivered(
    services: Services, common: CommonSettings, operator_auth: httpx.Auth, tenant: str
) -> None:
    subject = names.subject(tenant, "device.updated")
    large = json.dumps({"tenant": tenant, "big": "x" * (2 << 20)}).encode()
    insert = (
        "INSERT INTO registry.outbox (op, target, key, msg_id, payload) VALUES ($1, $2, $3, $4, $5)"
    )
    conn = await asyncpg.connect(common.database_url)
    try:
        async with conn.transaction():
            await conn.execute(insert, "event", subject, "d1", f"{tenant}-large", large)
            await conn.execute(insert, "event", subject, "d1", f"{tenant}-next", b'{"n": 2}')
            await conn.execute("SELECT pg_notify('registry_outbox', '')")
    finally:
        await conn.close()
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    js = broker.connection.jetstream()

    async def delivered() -> bytes | None:
        with contextlib.suppress(Exception):
            return bytes((await js.get_last_msg(names.STREAM, subject)).data or b"")
        return None

    try:
        assert await eventually(delivered, timeout=15) == b'{"n": 2}'
    finally:
        await broker.stop()
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:

        async def parked() -> list[dict[str, Any]]:
            r = await client.get(
                f"{services.registry}/api/v1/dead-letters", params={"consumer": "outbox"}
            )
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        [letter] = await eventually(parked, timeout=15)
        assert (letter["source"], letter["kind"], letter["reason"]) == (
            "outbox",
            "device.updated",
            "refused",
        )
        assert letter["size"] == len(large) and "max_payload" in letter["error"]
        metrics = (await client.get(f"{services.registry}/metrics")).text
        assert value(metrics, "gaggle_dead_letters", service="registry", kind="outbox") == 1


def database_proxy(database_url: str) -> tuple[TcpProxy, str]:
    """A proxy to the PostgreSQL of ``database_url``, and the URL that goes through it."""
    parts = urlsplit(database_url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    port = parts.port or 5432
    proxy = TcpProxy(f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port))
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    url = urlunsplit(("postgresql", f"{auth}127.0.0.1:{proxy.port}", parts.path, "", ""))
    return proxy, url


async def test_a_database_away_is_retried_past_ten_deliveries_and_nothing_is_parked(
    common: CommonSettings, serve: Any, operator_auth: httpx.Auth, tenant: str
) -> None:
    proxy, url = database_proxy(common.database_url)
    await proxy.start()
    through = common.model_copy(update={"database_url": url})
    registry = await serve(build_registry(through, RegistrySettings()))
    durable = names.durable("registry", DeviceConfigReported.kind)
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    js = broker.connection.jetstream()
    kind = DeviceConfigReported.kind
    try:

        async def drained() -> bool:  # whatever earlier tests left in the durable is handled
            info = await js.consumer_info(names.STREAM, durable)
            return (info.num_pending, info.num_ack_pending) == (0, 0)

        await eventually(drained, timeout=15)
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:

            async def retries() -> float:
                text = (await client.get(f"{registry.url}/metrics")).text
                return value(text, "gaggle_events_consumed_total", kind=kind, result="retry")

            before = await retries()
            await proxy.stop()
            reports = [
                DeviceConfigReported(
                    tenant=tenant, controller_id="patient", data={"hw_boardname": "x"}
                )
            ]
            for report in reports:
                await publish_event(broker, report)

            async def many() -> bool:  # eleven failed deliveries, and JetStream still delivers
                return await retries() - before >= 11

            await eventually(many, timeout=30)
            await proxy.start()

            async def stored() -> bool:
                found = []
                for report in reports:
                    r = await client.get(f"{registry.url}/api/v1/devices/{report.controller_id}")
                    found.append(r.status_code == 200 and r.json()["hw_model"] == "x")
                return all(found)

            await eventually(stored, timeout=30)
            r = await client.get(f"{registry.url}/api/v1/dead-letters", params={"state": "all"})
            assert r.json()["items"] == []
            info = await js.consumer_info(names.STREAM, durable)
            assert info.config.max_deliver == -1
    finally:
        await broker.stop()
        await proxy.stop()


async def test_operator_apis_answer_503_while_their_database_is_away_then_200(
    common: CommonSettings,
    serve: Any,
    operator_auth: httpx.Auth,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy, url = database_proxy(common.database_url)
    await proxy.start()
    through = common.model_copy(update={"database_url": url})
    registry = await serve(build_registry(through, RegistrySettings()))
    rollouts = await serve(build_rollouts(through, RolloutsSettings()))
    urls = [f"{registry.url}/api/v1/devices", f"{rollouts.url}/api/v1/rollouts"]
    try:
        async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
            for url in urls:
                assert (await client.get(url)).status_code == 200
            await proxy.stop()
            caplog.clear()
            for url in urls:
                r = await client.get(url)
                assert r.status_code == 503, r.text
                assert r.json() == {
                    "error": "unavailable",
                    "message": "database unavailable; retry later",
                }
                assert r.headers["Retry-After"] == "5"
            away = [rec for rec in caplog.records if rec.name == "gaggle_runtime.http"]
            assert {rec.levelname for rec in away} == {"WARNING"}
            assert len(away) == len(urls)
            assert all(rec.exc_info is None for rec in away)
            assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]

            await proxy.start()
            for url in urls:

                async def back(url: str = url) -> bool:
                    return (await client.get(url)).status_code == 200

                await eventually(back, timeout=15)
    finally:
        await proxy.stop()
