"""Device reports in, events out: what each request publishes, through either entry point."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gaggle_contracts import names
from gaggle_contracts.ddi import MAX_ATTRIBUTES
from gaggle_contracts.kv import (
    ChunkDoc,
    DeploymentDoc,
    DeploymentEntry,
    DeviceEntry,
    OpenAction,
    TenantConfig,
)
from gaggle_gateway import ids, routes
from gaggle_gateway.origin import Origin

from ..publishing import lose_first_ack
from .fakes import Bus

BASE = "/default/controller/v1"
ENTRIES = ["lane", "routes"]
DOC = DeploymentDoc(chunks=[ChunkDoc(module_id="7", name="img", version="2.0", artifacts=[])])


def known(bus: Bus, cid: str, entry: DeploymentEntry | None = None) -> str:
    """Make ``cid`` a registered device of ``default`` in the mirror, with ``entry``."""
    key = names.kv_key("default", cid)
    bus.gateway.mirror.devices.values[key] = DeviceEntry(config_requested=False)
    if entry is not None:
        bus.gateway.mirror.deployments.values[key] = entry
    return key


def open_action(action_id: str, state: str = "deployment") -> DeploymentEntry:
    return DeploymentEntry(
        open=OpenAction.model_validate({"action_id": action_id, "state": state, "deployment": DOC})
    )


def closed(execution: str = "closed", finished: str = "success") -> dict[str, Any]:
    return {"status": {"execution": execution, "result": {"finished": finished}}}


@pytest.mark.parametrize("entry", ENTRIES)
async def test_config_data_publishes_the_reported_attributes(bus: Bus, entry: str) -> None:
    known(bus, "d-1")
    async with bus.client(entry) as client:
        r = await client.put(f"{BASE}/d-1/configData", json={"mode": "merge", "data": {"hw": "b"}})
    assert r.status_code == 200, r.text
    [event] = bus.events("device.config_reported")
    assert (event["tenant"], event["controller_id"]) == ("default", "d-1")
    assert (event["mode"], event["data"]) == ("merge", {"hw": "b"})
    assert bus.events("device.discovered") == []


@pytest.mark.parametrize("entry", ENTRIES)
async def test_config_data_of_an_unknown_device_announces_it(bus: Bus, entry: str) -> None:
    async with bus.client(entry) as client:
        r = await client.put(f"{BASE}/new-1/configData", json={"data": {"hw": "b"}})
    assert r.status_code == 200, r.text
    assert [e["controller_id"] for e in bus.events("device.config_reported")] == ["new-1"]
    for _ in range(100):  # the announcement is sent beside the request, not in its way
        if bus.events("device.discovered"):
            break
        await asyncio.sleep(0.001)
    assert [e["controller_id"] for e in bus.events("device.discovered")] == ["new-1"]


@pytest.mark.parametrize("entry", ENTRIES)
async def test_config_data_past_the_attribute_quota_is_429_and_publishes_nothing(
    bus: Bus, entry: str
) -> None:
    known(bus, "d-1")
    data = {f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}
    async with bus.client(entry) as client:
        r = await client.put(f"{BASE}/d-1/configData", json={"data": data})
    assert r.status_code == 429, r.text
    assert bus.events("device.config_reported") == []


@pytest.mark.parametrize("entry", ENTRIES)
async def test_a_request_of_a_tenant_that_does_not_exist_is_404(bus: Bus, entry: str) -> None:
    async with bus.client(entry) as client:
        put = await client.put("/nowhere/controller/v1/d-1/configData", json={"data": {}})
        post = await client.post(
            "/nowhere/controller/v1/d-1/deploymentBase/5/feedback", json=closed()
        )
    assert (put.status_code, post.status_code) == (404, 404)
    assert put.json() == post.json() | {"message": put.json()["message"]}
    assert bus.events("device.config_reported") == bus.events("action.feedback") == []


@pytest.mark.parametrize("entry", ENTRIES)
async def test_deployment_feedback_publishes_it_once_and_remembers_the_final_report(
    bus: Bus, entry: str
) -> None:
    known(bus, "d-1", open_action("5"))
    url = f"{BASE}/d-1/deploymentBase/5/feedback"
    async with bus.client(entry) as client:
        progress = await client.post(url, json=closed("proceeding", "none"))
        final = await client.post(url, json=closed())
        retry = await client.post(url, json=closed())
        other = await client.post(url, json=closed("closed", "failure"))
        poll = await client.get(f"{BASE}/d-1")
    assert [r.status_code for r in (progress, final, retry, other)] == [200, 200, 200, 410]
    events = bus.events("action.feedback")
    assert [(e["action_id"], e["status"]["execution"]) for e in events] == [
        ("5", "proceeding"),
        ("5", "closed"),
    ]
    assert events[1]["status"]["finished"] == "success"
    # Acknowledged final: not offered again while the mirror still shows the action open.
    assert "deploymentBase" not in poll.json()["_links"]


async def test_a_report_the_bus_does_not_acknowledge_is_429_alike_on_both_entry_points(
    bus: Bus,
) -> None:
    known(bus, "d-1", open_action("5"))
    answers = []
    for entry in ENTRIES:
        lose_first_ack(bus.gateway)
        async with bus.client(entry) as client:
            config = await client.put(f"{BASE}/d-1/configData", json={"data": {"hw": entry}})
        lose_first_ack(bus.gateway)
        async with bus.client(entry) as client:
            url = f"{BASE}/d-1/deploymentBase/5/feedback"
            progress = await client.post(url, json=closed("proceeding", "none"))
        for r in (config, progress):
            assert r.status_code == 429, r.text
            assert r.headers["Retry-After"] == "5"
            assert r.headers["Content-Type"] == "application/json"
        answers.append((config.json(), progress.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == {
        "exceptionClass": "Busy",
        "errorCode": "hawkbit.server.error.tooManyRequests",
        "message": "event bus busy or unavailable; retry later",
    }


@pytest.mark.parametrize("entry", ENTRIES)
async def test_a_final_report_the_bus_may_have_lost_is_sent_again_under_its_event_id(
    bus: Bus, entry: str
) -> None:
    known(bus, "d-1", open_action("5"))
    lost = lose_first_ack(bus.gateway)
    url = f"{BASE}/d-1/deploymentBase/5/feedback"
    async with bus.client(entry) as client:
        first = await client.post(url, json=closed())
        retry = await client.post(url, json=closed())
        again = await client.post(url, json=closed())
    assert [first.status_code, retry.status_code, again.status_code] == [429, 200, 200]
    assert first.headers["Retry-After"] == "5"
    assert first.json()["errorCode"] == "hawkbit.server.error.tooManyRequests"
    ids = [e["event_id"] for e in bus.events("action.feedback")]
    assert ids == [str(lost[0].event_id)] * 2


@pytest.mark.parametrize("entry", ENTRIES)
async def test_feedback_text_is_made_storable_and_counted(bus: Bus, entry: str) -> None:
    known(bus, "d-1", open_action("5"))
    body = {"status": {"execution": "proceeding", "result": {"finished": "none"}}}
    body["status"]["details"] = ["a\u0000b"]
    async with bus.client(entry) as client:
        r = await client.post(f"{BASE}/d-1/deploymentBase/5/feedback", json=body)
    assert r.status_code == 200, r.text
    [event] = bus.events("action.feedback")
    text, note = event["status"]["details"]
    assert text == "a\ufffdb"
    assert note.startswith("gaggle: replaced 1 character")
    assert bus.gateway.replaced.by_kind == {"action.feedback": 1}


async def test_cancel_feedback_publishes_cancel_feedback(bus: Bus) -> None:
    known(bus, "d-1", open_action("5", "canceling"))
    async with bus.client("lane") as client:
        r = await client.post(f"{BASE}/d-1/cancelAction/5/feedback", json=closed("canceled"))
    assert r.status_code == 200, r.text
    assert [e["action_id"] for e in bus.events("cancel.feedback")] == ["5"]
    assert bus.events("action.feedback") == []


async def test_confirmation_and_auto_confirm_publish_their_events(bus: Bus) -> None:
    known(bus, "d-1", open_action("5", "wait_for_confirmation"))
    async with bus.client("lane") as client:
        confirmed = await client.post(
            f"{BASE}/d-1/confirmationBase/5/feedback", json={"confirmation": "confirmed"}
        )
        activated = await client.post(
            f"{BASE}/d-1/confirmationBase/activateAutoConfirm", json={"initiator": "op"}
        )
    assert (confirmed.status_code, activated.status_code) == (200, 200)
    [confirmation] = bus.events("confirmation.feedback")
    assert (confirmation["action_id"], confirmation["confirmation"]) == ("5", "confirmed")
    [auto] = bus.events("device.auto_confirm")
    assert (auto["active"], auto["initiator"]) == (True, "op")


async def test_sightings_of_a_poll_are_flushed_as_one_device_seen(bus: Bus) -> None:
    known(bus, "d-1")
    known(bus, "d-2")
    async with bus.client("lane") as client:
        for cid in ("d-1", "d-2", "d-1"):
            assert (await client.get(f"{BASE}/{cid}")).status_code == 200
    assert bus.events("device.seen") == []
    assert await bus.gateway.reporter.flush() == 2
    [seen] = bus.events("device.seen")
    assert sorted(s["controller_id"] for s in seen["sightings"]) == ["d-1", "d-2"]


async def test_the_fast_lane_answers_as_the_routes_do(bus: Bus) -> None:
    bus.gateway.mirror.tenants.values["locked"] = TenantConfig(anonymous=False)
    known(bus, "d-1", open_action("5", "wait_for_confirmation"))
    closed_entry = DeploymentEntry(closed=["4"])
    known(bus, "d-2", closed_entry)
    feedback = "deploymentBase/{}/feedback"
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/default/controller/v1/d-1", None),
        ("GET", "/default/controller/v1/new-2", None),
        ("GET", "/nowhere/controller/v1/d-1", None),
        ("GET", "/locked/controller/v1/d-1", None),
        ("GET", "/default/controller/v1/" + "x" * 300, None),
        ("PUT", "/locked/controller/v1/d-1/configData", {"data": {}}),
        ("PUT", "/default/controller/v1/d-1/configData", b"{not json"),
        ("PUT", "/default/controller/v1/d-1/configData", {"data": {"k": "v" * 70_000}}),
        ("PUT", "/default/controller/v1/d-1/configData", {"mode": "sideways", "data": {}}),
        ("POST", f"{BASE}/d-1/" + feedback.format("5"), closed()),
        ("POST", f"{BASE}/d-1/" + feedback.format("9"), closed()),
        ("POST", f"{BASE}/d-2/" + feedback.format("4"), closed()),
        ("POST", f"{BASE}/d-2/" + feedback.format("5"), {"status": {}}),
        ("POST", f"{BASE}/nobody/" + feedback.format("5"), closed()),
    ]
    answers: dict[str, list[tuple[int, bytes]]] = {}
    for entry in ENTRIES:
        async with bus.client(entry) as client:
            answers[entry] = []
            for method, url, body in requests:
                if isinstance(body, bytes):
                    r = await client.request(method, url, content=body)
                else:
                    r = await client.request(method, url, json=body)
                answers[entry].append((r.status_code, r.content))
    assert answers["lane"] == answers["routes"]
    statuses = [status for status, _ in answers["lane"]]
    assert statuses == [200, 200, 404, 401, 400, 401, 400, 413, 400, 404, 404, 410, 404, 404]


async def test_authorising_notes_nothing_until_the_sighting_is_recorded(bus: Bus) -> None:
    known(bus, "d-1")
    origin = Origin("http", "gw", "10.0.0.9")
    gw = bus.gateway
    new = gw.authorize(origin, "DEFAULT", "new-1", None, may_register=True)
    old = gw.authorize(origin, "default", "d-1", None)
    assert (new.registers, new.controller_id, new.base) == (
        True,
        "new-1",
        "http://gw/DEFAULT/controller/v1/new-1",
    )
    assert (old.registers, old.tenant) == (False, "default")
    await asyncio.sleep(0.01)
    assert await gw.reporter.flush() == 0
    assert bus.events("device.discovered") == []
    assert gw.sighted(new, origin.address) is new
    gw.sighted(old, origin.address)
    for _ in range(100):
        if bus.events("device.discovered"):
            break
        await asyncio.sleep(0.001)
    assert [(e["controller_id"], e["address"]) for e in bus.events("device.discovered")] == [
        ("new-1", "10.0.0.9")
    ]
    assert await gw.reporter.flush() == 1
    [seen] = bus.events("device.seen")
    assert [s["controller_id"] for s in seen["sightings"]] == ["d-1"]


@pytest.mark.parametrize("entry", ENTRIES)
async def test_a_repeated_report_has_the_event_id_of_the_first_and_another_report_not(
    bus: Bus, entry: str
) -> None:
    known(bus, "d-1", open_action("5"))
    progress = {
        "time": "20261123T182554",
        "status": {"execution": "proceeding", "result": {"finished": "none"}, "details": ["x"]},
    }
    later = {**progress, "time": "20261123T182555"}
    attributes = {"data": {"hw": "b"}, "time": "20261123T182554"}
    async with bus.client(entry) as client:
        url = f"{BASE}/d-1/deploymentBase/5/feedback"
        for body in (progress, progress, later):
            assert (await client.post(url, json=body)).status_code == 200
        for body in (attributes, attributes, {**attributes, "data": {"hw": "c"}}):
            assert (await client.put(f"{BASE}/d-1/configData", json=body)).status_code == 200
    for kind in ("action.feedback", "device.config_reported"):
        first, retry, other = (e["event_id"] for e in bus.events(kind))
        assert first == retry != other


async def test_confirmations_are_identified_by_their_content_auto_confirm_switches_are_not(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A confirmation carries no device time: the gateway's clock stamps it, held inside one
    # window here so that the retry cannot fall into the next.
    now = (1_000 + 0.5) * ids.WINDOW_S
    monkeypatch.setattr(routes, "stamp", lambda t, ts, _now: ids.stamp(t, ts, now))
    known(bus, "d-1", open_action("5", "wait_for_confirmation"))
    async with bus.client("routes") as client:
        url = f"{BASE}/d-1/confirmationBase/5/feedback"
        for body in (
            {"confirmation": "denied"},
            {"confirmation": "denied"},
            {"confirmation": "confirmed"},
        ):
            assert (await client.post(url, json=body)).status_code == 200
        off = f"{BASE}/d-1/confirmationBase/deactivateAutoConfirm"
        for _ in range(2):
            assert (await client.post(off)).status_code == 200
    first, retry, other = (e["event_id"] for e in bus.events("confirmation.feedback"))
    assert first == retry != other
    switches = [e["event_id"] for e in bus.events("device.auto_confirm")]
    assert len(set(switches)) == 2


@pytest.mark.parametrize("entry", ENTRIES)
async def test_while_the_deployments_mirror_is_not_current_no_action_is_answered_from_it(
    bus: Bus, entry: str
) -> None:
    bus.gateway.mirror.tenants.values["default"] = TenantConfig(polling_sleep="00:00:02")
    known(bus, "d-1", open_action("5"))
    known(bus, "d-2", open_action("6"))
    known(bus, "d-3")
    async with bus.client(entry) as client:
        final = await client.post(f"{BASE}/d-2/deploymentBase/6/feedback", json=closed())
        assert final.status_code == 200
        bus.gateway.mirror.deployments.current = False
        for path in ("", "/deploymentBase/5", "/confirmationBase", "/cancelAction/5"):
            r = await client.get(f"{BASE}/d-1{path}")
            assert r.status_code == 429, path
            assert r.headers["Retry-After"] == "5"
        url = f"{BASE}/d-1/deploymentBase/5/feedback"
        assert (await client.post(url, json=closed("proceeding", "none"))).status_code == 429
        # What this gateway acknowledged it still knows: no offer, and the retry is 200.
        idle = await client.get(f"{BASE}/d-2")
        assert (idle.status_code, idle.json()["_links"]) == (200, {})
        again = await client.post(f"{BASE}/d-2/deploymentBase/6/feedback", json=closed())
        assert again.status_code == 200
        # Nothing to do, as far as the mirror knows: come back once it has caught up.
        idle = await client.get(f"{BASE}/d-3")
        assert idle.status_code == 200
        assert idle.json() == {"config": {"polling": {"sleep": "00:00:05"}}, "_links": {}}

        bus.gateway.mirror.deployments.current = True
        links = (await client.get(f"{BASE}/d-1")).json()["_links"]
        assert "/deploymentBase/5?c=" in links["deploymentBase"]["href"]
        sleep = (await client.get(f"{BASE}/d-3")).json()["config"]["polling"]["sleep"]
        assert sleep in ("00:00:01", "00:00:02", "00:00:03")
    assert len(bus.events("action.feedback")) == 1
    assert bus.gateway.polls.failed == {429: 1}
