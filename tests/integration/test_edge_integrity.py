"""The device edge keeps what it acknowledged: odd text, quotas, final reports read back.

Through the real gateway, registry and rollouts on NATS and PostgreSQL (``Stack``), except where
a test needs the KV mirror to hold still: there the test plays registry and rollouts itself by
writing KV entries, so what it sees can only come from the gateway's own memory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gaggle_contracts import names
from gaggle_contracts.ddi import replaced_note
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_storage import LocalStore, StorageSettings
from gaggle_testing import eventually, feedback
from tests.integration.support import Stack

pytestmark = pytest.mark.integration

R = "\ufffd"
"""What the edge puts in place of a character the store cannot keep."""


class EdgeStack(Stack):
    """``Stack`` with the registry's URL, for the inventory."""

    def __init__(self, registry: Any, *args: Any) -> None:
        super().__init__(*args)
        self.reg = registry.url

    async def device(
        self, client: httpx.AsyncClient, cid: str, check: Any, timeout: float = 10
    ) -> dict[str, Any]:
        async def listed() -> dict[str, Any] | None:
            r = await client.get(f"{self.reg}/api/v1/devices/{cid}", params={"tenant": self.tenant})
            return dict(r.json()) if r.status_code == 200 and check(r.json()) else None

        return dict(await eventually(listed, timeout))

    async def registered(self, client: httpx.AsyncClient, cid: str) -> None:
        """The device polled once, and the registry has it."""
        await client.get(self.dev(cid))
        await self.device(client, cid, lambda d: True)

    async def policy(self, client: httpx.AsyncClient, cid: str, body: dict[str, Any]) -> None:
        url = f"{self.ro}/api/v1/devices/{cid}/policy"
        r = await until_known(lambda: client.put(url, params={"tenant": self.tenant}, json=body))
        assert r.status_code == 200, r.text


async def until_known(request: Any) -> httpx.Response:
    """``request()``'s answer once it is not 404 (what it names has reached the service)."""

    async def answer() -> httpx.Response | None:
        r: httpx.Response = await request()
        return r if r.status_code != 404 else None

    return await eventually(answer)  # type: ignore[no-any-return]


@pytest.fixture
async def edge(
    common: CommonSettings, serve: Any, tenant: str, tmp_path: Path, operator_key: str
) -> EdgeStack:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    registry = await serve(build_registry(common, RegistrySettings()))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(polling_sleep="00:00:05"), storage))
    return EdgeStack(registry, gateway, rollouts, tenant, LocalStore(storage.dir))


def raw(body: str) -> dict[str, Any]:
    """Arguments for a request whose JSON body is sent exactly as written (escapes and all)."""
    return {"content": body.encode(), "headers": {"Content-Type": "application/json"}}


def status_body(execution: str, finished: str, details: str) -> str:
    """A feedback body with ``details`` (a JSON array, as written) in it."""
    return (
        f'{{"id": "1", "status": {{"execution": "{execution}",'
        f' "result": {{"finished": "{finished}"}}, "details": {details}}}}}'
    )


async def open_action(client: httpx.AsyncClient, s: EdgeStack, cid: str, sid: str) -> str:
    """An action of ``sid`` for ``cid``, registered by a first poll, once the gateway offers it."""
    await s.registered(client, cid)
    action = await s.assign(client, cid, sid)
    await s.wait_poll(client, cid, lambda links: "deploymentBase" in links)
    return str(action["id"])


# -- text the store cannot keep ---------------------------------------------------------------


async def test_config_data_with_nul_and_lone_surrogates_is_recorded_and_decided_on(
    operator_auth: httpx.Auth, edge: EdgeStack, common: CommonSettings
) -> None:
    sid = await edge.software(common, b"c" * 500)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(edge.dev("cfg-1"))
        r = await client.put(
            f"{edge.dev('cfg-1')}/configData",
            **raw(
                '{"data": {"hw_boardname": "board", "hw_revision": "1.0", "sw_version": "0.1",'
                ' "note\\u0000": "a\\u0000b", "lone": "\\ud800x", "\\udc00": "pair\\ud83d"}}'
            ),
        )
        assert r.status_code == 200, r.text
        device = await edge.device(client, "cfg-1", lambda d: d["hw_model"] == "board")
        assert (device["hw_revision"], device["sw_version"]) == ("1.0", "0.1")
        assert device["attributes"][f"note{R}"] == f"a{R}b"
        assert device["attributes"]["lone"] == f"{R}x"
        assert device["attributes"][R] == f"pair{R}"
        assert device["config_requested"] is False

        # Bytes that are not UTF-8 at all are kept the same way.
        r = await client.put(
            f"{edge.dev('cfg-1')}/configData",
            content=b'{"data": {"vendor": "caf\xe9"}}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        device = await edge.device(client, "cfg-1", lambda d: "vendor" in d["attributes"])
        assert device["attributes"]["vendor"] == f"caf{R}"

        # The inventory moved as if the text were clean: rollouts decides on hw_model.
        await edge.policy(client, "cfg-1", {"mode": "assigned", "software_id": sid})
        await edge.wait_poll(client, "cfg-1", lambda links: "deploymentBase" in links)

        metrics = (await client.get(f"{edge.gw}/metrics")).text
        assert 'gaggle_ddi_text_replaced_total{kind="device.config_reported"} 2.0' in metrics


async def test_feedback_with_nul_and_lone_surrogates_is_kept_and_closes_the_action(
    operator_auth: httpx.Auth, edge: EdgeStack, common: CommonSettings
) -> None:
    sid = await edge.software(common, b"f" * 500)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        action_id = await open_action(client, edge, "fb-1", sid)
        url = f"{edge.dev('fb-1')}/deploymentBase/{action_id}/feedback"
        r = await client.post(
            url, **raw(status_body("proceeding", "none", '["step\\u0000 1", "\\ud800"]'))
        )
        assert r.status_code == 200, r.text
        r = await client.post(url, **raw(status_body("closed", "success", '["done\\u0000"]')))
        assert r.status_code == 200, r.text
        done = await edge.wait_action(client, action_id, "finished")
        assert done["active"] is False
        history = done["history"]
        assert [h["execution"] for h in history] == [None, "proceeding", "closed"]
        assert history[1]["details"] == [f"step{R} 1", R, replaced_note(2)]
        assert history[2]["details"] == [f"done{R}", replaced_note(1)]
        body = await edge.wait_poll(client, "fb-1", lambda links: "installedBase" in links)
        assert "deploymentBase" not in body["_links"]


async def test_cancel_feedback_with_nul_cancels_the_action(
    operator_auth: httpx.Auth, edge: EdgeStack, common: CommonSettings
) -> None:
    sid = await edge.software(common, b"k" * 500)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        action_id = await open_action(client, edge, "cx-1", sid)
        r = await client.post(
            f"{edge.ro}/api/v1/actions/{action_id}/cancel", params={"tenant": edge.tenant}
        )
        assert r.status_code == 200, r.text
        await edge.wait_poll(client, "cx-1", lambda links: "cancelAction" in links)
        r = await client.post(
            f"{edge.dev('cx-1')}/cancelAction/{action_id}/feedback",
            **raw(status_body("canceled", "success", '["stopped\\u0000", "\\udfff"]')),
        )
        assert r.status_code == 200, r.text
        done = await edge.wait_action(client, action_id, "canceled")
        assert done["history"][-1]["details"] == [f"stopped{R}", R, replaced_note(2)]


async def test_installed_base_with_nul_records_the_software(
    operator_auth: httpx.Auth, edge: EdgeStack
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await edge.registered(client, "ib-1")
        body = raw('{"name": "img\\u0000", "version": "2.0\\ud800"}')
        # Until the gateway's mirror has the registered device.
        r = await until_known(lambda: client.put(f"{edge.dev('ib-1')}/installedBase", **body))
        assert r.status_code == 200, r.text
        device = await edge.device(client, "ib-1", lambda d: d["sw_version"] is not None)
        assert device["sw_version"] == f"2.0{R}"
        assert device["attributes"]["sw_name"] == f"img{R}"


async def test_confirmation_and_auto_confirm_with_nul_move_the_action(
    operator_auth: httpx.Auth, edge: EdgeStack, common: CommonSettings
) -> None:
    sid = await edge.software(common, b"q" * 500)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await edge.registered(client, "cf-1")
        first = await edge.assign(client, "cf-1", sid, confirmation_required=True)
        await edge.wait_poll(client, "cf-1", lambda links: "confirmationBase" in links)
        r = await client.post(
            f"{edge.dev('cf-1')}/confirmationBase/{first['id']}/feedback",
            **raw('{"confirmation": "confirmed", "details": ["ok\\u0000"]}'),
        )
        assert r.status_code == 200, r.text
        running = await edge.wait_action(client, str(first["id"]), "running")
        assert running["history"][-1]["details"] == [
            "Confirmed by the device.",
            f"ok{R}",
            replaced_note(1),
        ]

        await edge.registered(client, "cf-2")
        second = await edge.assign(client, "cf-2", sid, confirmation_required=True)
        await edge.wait_poll(client, "cf-2", lambda links: "confirmationBase" in links)
        r = await client.post(
            f"{edge.dev('cf-2')}/confirmationBase/activateAutoConfirm",
            **raw('{"initiator": "op\\u0000", "remark": "\\ud800"}'),
        )
        assert r.status_code == 200, r.text
        running = await edge.wait_action(client, str(second["id"]), "running")
        assert running["history"][-1]["details"] == [f"Confirmed automatically (op{R})."]


@pytest.mark.parametrize("cid", [".", ".."])
async def test_a_dot_segment_id_sent_verbatim_is_a_clear_400(edge: EdgeStack, cid: str) -> None:
    # httpx (like most clients) would drop the segment; a raw request keeps it.
    port = edge.gateway.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /DEFAULT/controller/v1/{cid} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    writer.write(request.encode() + b"\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert "dot segment" in orjson.loads(body)["message"]


# -- quotas ------------------------------------------------------------------------------------


async def test_config_data_past_a_hundred_attributes_is_429_before_it_is_acknowledged(
    operator_auth: httpx.Auth, edge: EdgeStack
) -> None:
    url = f"{edge.dev('q-1')}/configData"
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(edge.dev("q-1"))
        r = await client.put(url, json={"data": {f"k{i}": "v" for i in range(101)}})
        assert r.status_code == 429
        assert r.json()["errorCode"] == "hawkbit.server.error.quota.tooManyEntries"
        assert "at most 100 attributes" in r.json()["message"]

        assert (await client.put(url, json={"data": {f"a{i}": "v" for i in range(60)}})).is_success
        await edge.device(client, "q-1", lambda d: len(d["attributes"]) == 60)
        gateway = edge.gateway.app.state.gateway
        key = names.kv_key(edge.tenant, "q-1")

        async def mirrored() -> None:
            while len(getattr(gateway.mirror.devices.values.get(key), "attribute_keys", ())) < 60:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(mirrored(), 10)
        r = await client.put(url, json={"data": {f"b{i}": "v" for i in range(41)}})
        assert r.status_code == 429, r.text
        body = r.json()
        assert "101 attributes" in body["message"] and "at most 100" in body["message"]
        assert body["info"] == {"quota": 100, "attributes": 60}

        # Up to the quota, and changes to what the device has, are taken.
        r = await client.put(url, json={"data": {f"b{i}": "v" for i in range(40)}})
        assert r.status_code == 200
        device = await edge.device(client, "q-1", lambda d: len(d["attributes"]) == 100)
        assert "b39" in device["attributes"]
        assert (await client.put(url, json={"data": {"a0": "changed"}})).status_code == 200
        await edge.device(client, "q-1", lambda d: d["attributes"]["a0"] == "changed")
        r = await client.put(url, json={"mode": "remove", "data": {"a1": ""}})
        assert r.status_code == 200


async def test_feedback_with_more_than_fifty_messages_is_429(
    operator_auth: httpx.Auth, edge: EdgeStack, common: CommonSettings
) -> None:
    sid = await edge.software(common, b"m" * 500)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        action_id = await open_action(client, edge, "msg-1", sid)
        url = f"{edge.dev('msg-1')}/deploymentBase/{action_id}/feedback"
        body = feedback("proceeding")
        body["status"]["details"] = [f"line {i}" for i in range(51)]
        r = await client.post(url, json=body)
        assert r.status_code == 429
        assert "at most 50 messages per status" in r.json()["message"]
        body["status"]["details"] = body["status"]["details"][:50]
        assert (await client.post(url, json=body)).status_code == 200

        async def reported() -> bool:
            return len((await edge.action(client, action_id))["history"]) >= 2

        await eventually(reported)
        await asyncio.sleep(0.3)
        history = (await edge.action(client, action_id))["history"]
        assert len(history) == 2  # the creation, and the report taken
        assert len(history[-1]["details"]) == 50


# -- what the gateway acknowledged, read back -------------------------------------------------


async def test_a_device_polling_right_after_its_success_is_never_offered_the_action_again(
    operator_auth: httpx.Auth, edge: EdgeStack, common: CommonSettings
) -> None:
    sid = await edge.software(common, b"s" * 500)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        action_id = await open_action(client, edge, "ryw-1", sid)
        url = f"{edge.dev('ryw-1')}/deploymentBase/{action_id}/feedback"
        success = feedback("closed", "success")
        assert (await client.post(url, json=success)).status_code == 200
        offered = 0
        for _ in range(200):
            links = (await client.get(edge.dev("ryw-1"))).json()["_links"]
            offered += "deploymentBase" in links
        assert offered == 0
        deployment = await client.get(f"{edge.dev('ryw-1')}/deploymentBase/{action_id}")
        assert deployment.status_code == 404

        # A retry of the report that closed it is taken again, and changes nothing.
        assert (await client.post(url, json=success)).status_code == 200
        done = await edge.wait_action(client, action_id, "finished")
        await asyncio.sleep(0.5)
        assert (await client.post(url, json=success)).status_code == 200
        # Another report for the closed action is hawkBit's 410.
        r = await client.post(url, json=feedback("closed", "failure"))
        assert r.status_code == 410
        assert (await client.post(url, json=feedback("proceeding"))).status_code == 410
        await asyncio.sleep(0.5)
        assert (await edge.action(client, action_id))["history"] == done["history"]
        assert [h["execution"] for h in done["history"]] == [None, "closed"]
