"""A scripted device through every DDI endpoint, against the real gateway, rollouts and registry."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from gaggle_contracts.settings import CommonSettings
from gaggle_testing import feedback
from tests.integration.support import Stack

pytestmark = pytest.mark.integration


async def test_full_deployment_cycle_with_download_range_and_final_feedback(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    payload = os.urandom(300_000)
    sid = await stack.software(common, payload)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        first = (await client.get(stack.dev("d1"))).json()
        assert set(first["_links"]) == {"configData"}
        r = await client.put(
            f"{stack.dev('d1')}/configData", json={"mode": None, "data": {"hw_boardname": "board"}}
        )
        assert r.status_code == 200

        action = await stack.assign(client, "d1", sid)
        body = await stack.wait_poll(client, "d1", lambda links: "deploymentBase" in links)
        href = body["_links"]["deploymentBase"]["href"]
        assert href.startswith(f"{stack.dev('d1')}/deploymentBase/{action['id']}?c=")

        deployment = (await client.get(href)).json()
        assert deployment["id"] == action["id"]
        assert deployment["deployment"]["download"] == "forced"
        assert deployment["deployment"]["update"] == "forced"
        assert "maintenanceWindow" not in deployment["deployment"]
        chunk = deployment["deployment"]["chunks"][0]
        assert (chunk["part"], chunk["version"], chunk["name"]) == ("os", "1.2.3", "board-image")
        art = chunk["artifacts"][0]
        assert art["filename"] == "image-1.2.3.swu"
        assert art["size"] == len(payload)
        assert art["hashes"] == {
            "sha1": hashlib.sha1(payload).hexdigest(),  # noqa: S324
            "md5": hashlib.md5(payload).hexdigest(),  # noqa: S324
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        url = art["_links"]["download"]["href"]
        assert art["_links"]["download-http"]["href"] == url
        assert url == f"{stack.dev('d1')}/softwaremodules/{sid}/artifacts/image-1.2.3.swu"

        head = await client.head(url)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(payload))
        assert head.headers["etag"] == f'"{art["hashes"]["sha1"]}"'
        assert head.headers["accept-ranges"] == "bytes"
        assert head.content == b""

        # A cut download resumed with Range, as SWUpdate does.
        part = await client.get(url, headers={"Range": "bytes=100000-"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 100000-{len(payload) - 1}/{len(payload)}"
        assert part.content == payload[100000:]
        full = await client.get(url)
        assert full.status_code == 200
        assert full.content == payload
        suffix = await client.get(url, headers={"Range": "bytes=-10"})
        assert suffix.content == payload[-10:]
        multi = await client.get(url, headers={"Range": "bytes=0-9,20-29"})
        assert multi.status_code == 206
        assert multi.headers["content-type"].startswith("multipart/byteranges")
        assert payload[:10] in multi.content and payload[20:30] in multi.content
        assert int(multi.headers["content-length"]) == len(multi.content)
        bad = await client.get(url, headers={"Range": f"bytes={len(payload)}-"})
        assert bad.status_code == 416
        assert bad.headers["content-range"] == f"bytes */{len(payload)}"
        stale = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and stale.content == payload
        fresh = await client.get(
            url, headers={"Range": "bytes=0-9", "If-Range": head.headers["etag"]}
        )
        assert fresh.status_code == 206 and fresh.content == payload[:10]
        assert (await client.get(url, headers={"If-Match": '"nope"'})).status_code == 412
        md5 = await client.get(f"{url}.MD5SUM")
        assert md5.text == f"{art['hashes']['md5']}  image-1.2.3.swu"

        listing = (await client.get(f"{stack.dev('d1')}/softwaremodules/{sid}/artifacts")).json()
        assert listing[0]["filename"] == "image-1.2.3.swu"

        fb_url = f"{stack.dev('d1')}/deploymentBase/{action['id']}/feedback"
        r = await client.post(fb_url, json=feedback("proceeding", progress={"cnt": 2, "of": 0}))
        assert r.status_code == 200
        await stack.wait_action(client, action["id"], "running")
        # The deployment stays offered until the device reports a final result.
        body = (await client.get(stack.dev("d1"))).json()
        assert "deploymentBase" in body["_links"]

        r = await client.post(fb_url, json=feedback("closed", "success", progress={}))
        assert r.status_code == 200
        done = await stack.wait_action(client, action["id"], "finished")
        assert done["active"] is False
        assert [h["execution"] for h in done["history"]] == [None, "proceeding", "closed"]
        body = await stack.wait_poll(client, "d1", lambda links: "deploymentBase" not in links)
        installed = body["_links"]["installedBase"]["href"]
        assert installed.endswith(f"/installedBase/{action['id']}")
        assert (await client.get(installed)).json()["id"] == action["id"]

        late = await client.post(fb_url, json=feedback("proceeding"))
        assert late.status_code == 410
        assert (
            await client.get(f"{stack.dev('d1')}/deploymentBase/{action['id']}")
        ).status_code == 404


async def test_cancel_cycle_offers_cancel_and_closes_on_acknowledgement(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, b"x" * 1000)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(stack.dev("d2"))  # first contact registers the device
        action = await stack.assign(client, "d2", sid)
        r = await client.post(
            f"{stack.ro}/api/v1/actions/{action['id']}/cancel", params={"tenant": stack.tenant}
        )
        assert r.json()["status"] == "canceling"
        body = await stack.wait_poll(client, "d2", lambda links: "cancelAction" in links)
        href = body["_links"]["cancelAction"]["href"]
        assert href == f"{stack.dev('d2')}/cancelAction/{action['id']}"
        assert "deploymentBase" not in body["_links"]
        assert (await client.get(href)).json() == {
            "id": action["id"],
            "cancelAction": {"stopId": action["id"]},
        }
        r = await client.post(f"{href}/feedback", json=feedback("closed", "success"))
        assert r.status_code == 200
        done = await stack.wait_action(client, action["id"], "canceled")
        assert done["active"] is False
        await stack.wait_poll(client, "d2", lambda links: "cancelAction" not in links)


async def test_rejected_cancel_returns_the_action_to_the_device(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, b"y" * 1000)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(stack.dev("d3"))  # first contact registers the device
        action = await stack.assign(client, "d3", sid)
        await client.post(
            f"{stack.ro}/api/v1/actions/{action['id']}/cancel", params={"tenant": stack.tenant}
        )
        body = await stack.wait_poll(client, "d3", lambda links: "cancelAction" in links)
        # Cancel feedback for an action that is not canceling is 405; this one is.
        r = await client.post(
            f"{body['_links']['cancelAction']['href']}/feedback",
            json=feedback("rejected", "success"),
        )
        assert r.status_code == 200
        back = await stack.wait_action(client, action["id"], "cancel_rejected")
        assert back["active"] is True
        await stack.wait_poll(client, "d3", lambda links: "deploymentBase" in links)
        r = await client.post(
            f"{stack.dev('d3')}/cancelAction/{action['id']}/feedback",
            json=feedback("closed", "success"),
        )
        assert r.status_code == 405


async def test_failed_install_closes_the_action_as_error(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    sid = await stack.software(common, b"z" * 1000)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(stack.dev("d4"))  # first contact registers the device
        action = await stack.assign(client, "d4", sid)
        await stack.wait_poll(client, "d4", lambda links: "deploymentBase" in links)
        r = await client.post(
            f"{stack.dev('d4')}/deploymentBase/{action['id']}/feedback",
            json=feedback("closed", "failure"),
        )
        assert r.status_code == 200
        done = await stack.wait_action(client, action["id"], "error")
        assert done["history"][-1]["details"] == ["closed failure"]
        body = await stack.wait_poll(client, "d4", lambda links: "deploymentBase" not in links)
        assert "installedBase" not in body["_links"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("put", "/configData", b"{not json", 400),
        ("put", "/configData", b'{"data": {}}', 400),
        ("put", "/configData", b'{"mode": "upsert", "data": {"a": "b"}}', 400),
        ("put", "/configData", b'{"data": {"a": "' + b"x" * 200_000 + b'"}}', 413),
        (
            "post",
            "/deploymentBase/999/feedback",
            b'{"status": {"execution": "closed", "result": {"finished": "success"}}}',
            404,
        ),
        ("post", "/deploymentBase/../feedback", b"{}", 404),
        ("get", "/deploymentBase/abc", b"", 404),
        ("get", "/cancelAction/1", b"", 404),
        ("get", "/installedBase/1", b"", 404),
        ("get", "/softwaremodules/1/artifacts", b"", 404),
        ("get", "/softwaremodules/1/artifacts/x.swu", b"", 404),
    ],
)
async def test_bad_device_input_gets_a_clear_4xx(
    operator_auth: httpx.Auth, stack: Stack, method: str, path: str, body: bytes, status: int
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await client.get(stack.dev("bad"))
        r = await client.request(
            method,
            stack.dev("bad") + path,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == status, r.text
        assert "message" in r.json()


@pytest.mark.parametrize(
    "url_path",
    [
        "/DEFAULT/controller/v1/" + "x" * 257,
        "/DEFAULT/controller/v1/a%20b",
        # Ids that would not round-trip: dot segments and separators sent encoded.
        "/DEFAULT/controller/v1/%2E%2E",
        "/DEFAULT/controller/v1/%2e",
        "/DEFAULT/controller/v1/dev%2F1",
        "/DEFAULT/controller/v1/dev%2F1/configData",
        "/DEFAULT/controller/v1/%20dev",
        "/DEFAULT/controller/v1/dev%3Fx",
        "/DEFAULT/controller/v1/dev%5C1/deploymentBase/1",
        "/DE.FAULT/controller/v1/dev",
        "/" + "t" * 65 + "/controller/v1/dev",
    ],
)
async def test_odd_tenant_or_controller_id_is_400(
    operator_auth: httpx.Auth, stack: Stack, url_path: str
) -> None:
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        r = await client.get(stack.gw + url_path)
        assert r.status_code == 400
        assert r.json()["errorCode"]
