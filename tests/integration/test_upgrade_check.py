"""Attended upgrade checks (ASU style) through the gateway: registry, artifacts, rollouts and the
gateway on one real NATS JetStream and PostgreSQL, the image registered by URL fetched over HTTP,
and ``gaggle check`` as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_storage import StorageSettings
from gaggle_swu import make_rawfile_swu
from gaggle_testing import eventually
from tests.integration.support import cli_env, policy, run_cli

pytestmark = pytest.mark.integration

BOARD, REV = "board", "1.0"


def image(version: str) -> bytes:
    return make_rawfile_swu(
        os.urandom(2048),
        version=version,
        board=BOARD,
        revisions=[REV],
        install_path="/tmp/x",
        key=None,
        cert=None,
    )


@dataclass
class Edge:
    gw: str
    ro: str
    registry: str
    artifacts: str
    tenant: str
    gateway: Any
    external_url: str
    external: bytes
    stored_id: str
    external_id: str
    rollouts: Any

    def url(self, rest: str) -> str:
        return f"{self.gw}/{self.tenant.upper()}/upgrade/v1{rest}"

    def dev(self, cid: str) -> str:
        return f"{self.gw}/{self.tenant.upper()}/controller/v1/{cid}"


@pytest.fixture
async def edge(
    common: CommonSettings, serve: Any, operator_auth: httpx.Auth, tenant: str, tmp_path: Path
) -> Edge:
    storage = StorageSettings(backend="local", dir=tmp_path / "objects")
    external = image("1.3.0")

    async def hosted(_: Any) -> Response:
        return Response(external, media_type="application/octet-stream")

    files = await serve(Starlette(routes=[Route("/images/update-1.3.0.swu", hosted)]))
    registry = await serve(build_registry(common, RegistrySettings()))
    artifacts = await serve(
        build_artifacts(common, ArtifactsSettings(allow_private_urls=True), storage)
    )
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(build_gateway(common, GatewaySettings(polling_sleep="00:00:05"), storage))
    external_url = f"{files.url}/images/update-1.3.0.swu"
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        params = {"tenant": tenant}
        r = await client.post(
            f"{artifacts.url}/api/v1/software",
            params={**params, "filename": "update-1.2.0.swu"},
            content=image("1.2.0"),
        )
        assert r.status_code == 201, r.text
        stored_id = r.json()["id"]
        r = await client.post(
            f"{artifacts.url}/api/v1/software", params=params, json={"url": external_url}
        )
        assert r.status_code == 201, r.text
        assert r.json()["external_url"] == external_url
        external_id = r.json()["id"]
    return Edge(
        gateway.url,
        rollouts.url,
        registry.url,
        artifacts.url,
        tenant,
        gateway,
        external_url,
        external,
        stored_id,
        external_id,
        rollouts,
    )


async def registered(client: httpx.AsyncClient, e: Edge, cid: str) -> None:
    """A device registered by its first poll, known to rollouts (no inventory reported)."""
    assert (await client.get(e.dev(cid))).status_code == 200

    async def known() -> bool:
        r = await client.get(f"{e.ro}/api/v1/devices/{cid}/policy", params={"tenant": e.tenant})
        assert r.status_code == 200, r.text
        return True

    await eventually(known, timeout=10)


async def test_check_request_and_poll_answer_as_asu_does(
    edge: Edge, operator_auth: httpx.Auth, tenant: str
) -> None:
    e = edge
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await registered(client, e, "dev-1")
        # Mode latest: the newest fitting software, the one registered by URL (1.3.0). The
        # device has reported no inventory, so nothing was decided for it on its own.
        await policy(client, e, "dev-1", {"mode": "latest"})
        asked = {"controller_id": "dev-1", "board": BOARD, "revision": REV, "version": "1.0.0"}

        async def offered() -> httpx.Response:
            r = await client.post(e.url("/check"), json=asked)
            assert r.status_code == 200, r.text
            return r

        r = await eventually(offered, timeout=10)
        body = r.json()
        assert body["version"] == "1.3.0"
        assert body["software_id"] == e.external_id
        assert body["download"]["href"] == e.external_url
        assert body["download"]["size"] == len(e.external)
        assert body["download"]["hashes"]["sha256"] == hashlib.sha256(e.external).hexdigest()
        assert "latest" in body["notes"]
        first_hash = body["request_hash"]
        assert r.headers["X-Request-Hash"] == first_hash

        # Identical checks share the hash, and are answered from the gateway's memory.
        ups = e.gateway.app.state.upgrades
        remembered = ups.from_memory
        again = await client.post(e.url("/check"), json=dict(reversed(list(asked.items()))))
        assert again.status_code == 200
        assert again.json()["request_hash"] == first_hash
        assert ups.from_memory == remembered + 1

        # Up to date: 204 with the hash in a header; another request, another hash.
        r = await client.post(e.url("/check"), json={**asked, "version": "1.3.0"})
        assert r.status_code == 204
        assert r.content == b""
        assert len(r.headers["X-Request-Hash"]) == 32
        assert r.headers["X-Request-Hash"] != first_hash

        # Malformed: 400. Well-formed but unprocessable: 422. Both in the JSON error shape.
        for bad in (
            b"{not json",
            b'{"controller_id": "dev-1"}',
            b'{"version": "1.0.0"}',
            b'{"controller_id": "dev-1", "version": 100}',
        ):
            r = await client.post(
                e.url("/check"), content=bad, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["message"]
        for unprocessable in (
            {**asked, "version": "one point oh"},
            {"controller_id": "nobody", "version": "1.0.0"},
            {"board": "no-such-board", "revision": REV, "version": "1.0.0"},
        ):
            r = await client.post(e.url("/check"), json=unprocessable)
            assert r.status_code == 422, (unprocessable, r.text)
            assert r.json()["message"]

        # By board, without a device: as mode latest, the same offer.
        r = await client.post(
            e.url("/check"), json={"board": BOARD, "revision": REV, "version": "1.2.0"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["software_id"] == e.external_id
        assert r.json()["download"]["href"] == e.external_url

        # The person says yes: 202 while the action is prepared, then 200 with its
        # deploymentBase, which is the one the device's poll shows.
        r = await client.post(e.url("/request"), json={**asked, "request_hash": first_hash})
        assert r.status_code == 202, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-Request-Hash"] == first_hash
        assert r.json()["status"] == "preparing"
        poll_url = e.gw + r.headers["Location"]
        assert poll_url == e.url(f"/request/{first_hash}")

        async def ready() -> dict[str, Any]:
            r = await client.get(poll_url)
            assert r.status_code == 200, r.text
            return dict(r.json())

        done = await eventually(ready, timeout=10)
        assert done["status"] == "ready"
        assert done["software_id"] == e.external_id
        links = (await client.get(e.dev("dev-1"))).json()["_links"]
        assert links["deploymentBase"]["href"] == done["deploymentBase"]["href"]
        deployment = (await client.get(done["deploymentBase"]["href"])).json()
        artifact = deployment["deployment"]["chunks"][0]["artifacts"][0]
        assert artifact["_links"]["download"]["href"] == e.external_url

        # Asked again: ready at once. A stale hash is refused (412) with the current one.
        r = await client.post(e.url("/request"), json=asked)
        assert r.status_code == 200, r.text
        assert r.json()["action_id"] == done["action_id"]
        r = await client.post(e.url("/request"), json={**asked, "request_hash": "0" * 32})
        assert r.status_code == 412, r.text
        assert r.headers["X-Request-Hash"] == first_hash

        # Unknown and malformed hashes.
        assert (await client.get(e.url(f"/request/{'a' * 32}"))).status_code == 404
        assert (await client.get(e.url("/request/xyz"))).status_code == 400

        # Another device with another open action (the stored 1.2.0, assigned): 409.
        await registered(client, e, "dev-2")
        await policy(client, e, "dev-2", {"mode": "latest"})
        r = await client.post(
            f"{e.ro}/api/v1/devices/dev-2/actions",
            params={"tenant": tenant},
            json={"software_id": e.stored_id},
        )
        assert r.status_code == 201, r.text
        other = {**asked, "controller_id": "dev-2"}
        r = await client.post(e.url("/check"), json=other)
        assert r.status_code == 200, r.text
        r = await client.post(e.url("/request"), json=other)
        assert r.status_code == 409, r.text
        assert r.json()["message"]
        assert r.json()["info"]["request_hash"] == r.headers["X-Request-Hash"]

    # The operator's view of the same decision, through the command line.
    env = cli_env(
        GAGGLE_ROLLOUTS_URL=e.ro,
        GAGGLE_REGISTRY_URL=e.registry,
        GAGGLE_ARTIFACTS_URL=e.artifacts,
        GAGGLE_API_KEY=operator_auth.key,
        COLUMNS="200",
    )
    run = await run_cli(env, "check", "dev-1", "--version", "1.0.0")
    # dev-1 reported no hardware: only software for any board would fit it.
    assert "204 up to date" in run.out
    assert "does not fit" in run.out
    run = await run_cli(
        env, "check", "dev-1", "--version", "1.0.0", "--board", BOARD, "--revision", REV
    )
    assert "200 update available" in run.out
    assert "mode latest" in run.out
    assert f"software {e.external_id}: " in run.out
    assert "newer, fits" in run.out
    assert "not newer" not in run.out
    run = await run_cli(env, "--json", "check", "dev-1", "--version", "1.3.0")
    assert '"status": 204' in run.out
    run = await run_cli(env, "check", "nobody", code=None)
    assert run.rc != 0
    assert "nobody" in run.err


async def test_checks_are_authenticated_as_ddi_requests_are(
    edge: Edge, operator_auth: httpx.Auth
) -> None:
    e = edge
    secret = "a-long-shared-secret"
    by_board = {"board": BOARD, "revision": REV, "version": "1.0.0"}
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        await registered(client, e, "dev-1")
        r = await client.put(
            f"{e.registry}/api/v1/tenants/{e.tenant}",
            json={"anonymous": False, "gateway_token": secret},
        )
        assert r.status_code in (200, 201), r.text

        async def refused() -> bool:
            r = await client.post(e.url("/check"), json=by_board)
            assert r.status_code == 401, r.text
            return True

        await eventually(refused, timeout=10)
        for header in ("GatewayToken wrong-token", "Bearer nonsense", "TargetToken wrong"):
            for body in (by_board, {**by_board, "controller_id": "dev-1"}):
                r = await client.post(e.url("/check"), json=body, headers={"Authorization": header})
                assert r.status_code == 401, (header, body, r.text)
        r = await client.post(
            e.url("/request"),
            json={**by_board, "controller_id": "dev-1"},
            headers={"Authorization": "GatewayToken wrong-token"},
        )
        assert r.status_code == 401
        good = {"Authorization": f"GatewayToken {secret}"}
        r = await client.post(e.url("/check"), json=by_board, headers=good)
        assert r.status_code == 200, r.text
        r = await client.post(
            e.url("/check"), json={**by_board, "controller_id": "dev-1"}, headers=good
        )
        assert r.status_code in (200, 204), r.text
        # An unknown tenant is 404, as for DDI.
        r = await client.post(f"{e.gw}/no-such-tenant/upgrade/v1/check", json=by_board)
        assert r.status_code == 404


async def test_a_request_queued_under_the_tenants_cap_is_202_until_its_rollout_opens_it(
    edge: Edge, operator_auth: httpx.Auth
) -> None:
    e = edge
    params = {"tenant": e.tenant}
    async with httpx.AsyncClient(auth=operator_auth, timeout=30) as client:
        r = await client.put(
            f"{e.registry}/api/v1/tenants/{e.tenant}", json={"max_updates_in_flight": 1}
        )
        assert r.status_code in (200, 201), r.text
        caps = e.rollouts.app.state.store.members.caps
        await eventually(lambda: caps.cap(e.tenant) == 1)
        inventory = {"hw_boardname": BOARD, "hw_revision": REV, "sw_version": "1.0.0"}
        for cid in ("dev-a", "dev-b"):
            await registered(client, e, cid)
            r = await client.put(f"{e.dev(cid)}/configData", json={"data": inventory})
            assert r.status_code == 200

            async def reported(cid: str = cid) -> bool:
                r = await client.get(f"{e.ro}/api/v1/devices/{cid}/check", params=params)
                assert r.status_code == 200, r.text
                assert r.json().get("hw_model") == BOARD, r.text
                return True

            await eventually(reported, timeout=10)
        r = await client.post(
            f"{e.ro}/api/v1/rollouts",
            params=params,
            json={"name": "to 1.3.0", "software_id": e.external_id, "start": True},
        )
        assert r.status_code == 201, r.text
        rollout_id = str(r.json()["id"])

        async def split() -> tuple[str, str]:
            links = {
                cid: (await client.get(e.dev(cid))).json()["_links"] for cid in ("dev-a", "dev-b")
            }
            running = [cid for cid, found in links.items() if "deploymentBase" in found]
            assert len(running) == 1, links
            return running[0], next(c for c in links if c not in running)

        running, queued = await eventually(split, timeout=15)
        asked = {"version": "1.0.0"}

        # The running device: offered its rollout's software, and its action is ready at once.
        r = await client.post(e.url("/request"), json={**asked, "controller_id": running})
        assert r.status_code == 200, r.text
        first = r.json()

        # The queued one: the same offer, accepted, but its slot is not free yet: 202.
        r = await client.post(e.url("/check"), json={**asked, "controller_id": queued})
        assert r.status_code == 200, r.text
        assert f"rollout {rollout_id}" in r.json()["notes"]
        r = await client.post(e.url("/request"), json={**asked, "controller_id": queued})
        assert r.status_code == 202, r.text
        assert r.json()["action_id"] is None
        poll_url = e.gw + r.headers["Location"]
        r = await client.get(poll_url)
        assert r.status_code == 202, r.text
        assert r.headers["Retry-After"]

        # The running device finishes; the rollout opens the queued device's action.
        r = await client.post(
            f"{e.dev(running)}/deploymentBase/{first['action_id']}/feedback",
            json={"status": {"execution": "closed", "result": {"finished": "success"}}},
        )
        assert r.status_code == 200, r.text

        async def ready() -> dict[str, Any]:
            r = await client.get(poll_url)
            assert r.status_code == 200, r.text
            return dict(r.json())

        done = await eventually(ready, timeout=20)
        assert done["software_id"] == e.external_id
        links = (await client.get(e.dev(queued))).json()["_links"]
        assert links["deploymentBase"]["href"] == done["deploymentBase"]["href"]
