"""Operator access on every service: tokens, permissions, tenants, revocation, OIDC, audit.

Registry, artifacts and rollouts run in this test's event loop against a real NATS and
PostgreSQL. Keys are issued through the registry's API (from a bootstrap admin key), so they
travel the way they do in production: table, outbox, KV ``api_keys``, each service's mirror.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_contracts.events import DeviceConfigReported, DeviceUpdated
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.auth import operator_routes, requirement
from gaggle_runtime.bus import make_broker, publish_event, publish_raw
from gaggle_storage import StorageSettings
from gaggle_swu.build import make_rawfile_swu
from gaggle_swu.pki import make_identity
from gaggle_testing import eventually

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.test/"
AUDIENCE = "gaggle-api"


def api_routes(app: FastAPI) -> list[APIRoute]:
    return operator_routes(app)


def test_every_operator_route_declares_its_permission(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = StorageSettings(backend="local", dir=tmp_path)
    common = CommonSettings()
    apps = {
        "registry": build_registry(common, RegistrySettings()),
        "artifacts": build_artifacts(common, ArtifactsSettings(), storage),
        "rollouts": build_rollouts(common, RolloutsSettings()),
        "gateway": build_gateway(common, GatewaySettings(), storage),
    }
    table = {
        (name, method, route.path): requirement(route.dependant)
        for name, app in apps.items()
        for route in api_routes(app)
        for method in sorted(route.methods)
    }
    # Any valid key may ask who it is; every other route declares what it needs.
    assert table.pop(("registry", "GET", "/api/v1/me")) is None
    missing = sorted(k for k, v in table.items() if v is None)
    assert not missing, f"operator routes without a declared permission: {missing}"
    # The table a reviewer reads: every route with its permission; the gateway has none.
    assert len(table) >= 30
    assert not api_routes(apps["gateway"])
    assert table[("rollouts", "POST", "/api/v1/rollouts/{rollout_id}/start")] == (
        Permission.ROLLOUT_WRITE
    )
    assert table[("registry", "GET", "/api/v1/devices")] == Permission.DEVICE_READ
    assert table[("registry", "POST", "/api/v1/keys")] == Permission.ADMIN
    assert table[("artifacts", "DELETE", "/api/v1/software/{software_id}")] == (
        Permission.SOFTWARE_WRITE
    )
    # The OpenAPI documents say it too.
    documented = {
        (name, method.upper(), path): op.get("x-permission")
        for name, app in apps.items()
        for path, ops in app.openapi()["paths"].items()
        if path.startswith("/api/")
        for method, op in ops.items()
        if path != "/api/v1/me"
    }
    assert documented == {k: v.value for k, v in table.items() if v is not None}


# -- a running trio ---------------------------------------------------------------------------


@dataclass
class Trio:
    common: CommonSettings
    tenant: str
    registry: Any
    artifacts: Any
    rollouts: Any
    admin: str

    @property
    def apps(self) -> dict[str, Any]:
        return {"registry": self.registry, "artifacts": self.artifacts, "rollouts": self.rollouts}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def start_trio(
    common: CommonSettings, serve: Callable[..., Awaitable[Any]], tenant: str, admin: Any, tmp: Any
) -> Trio:
    registry = await serve(
        build_registry(
            common, RegistrySettings(bootstrap_key=admin.bootstrap, bootstrap_tenant=tenant)
        )
    )
    artifacts = await serve(
        build_artifacts(
            common,
            ArtifactsSettings(max_upload_bytes=1 << 20),
            StorageSettings(backend="local", dir=tmp),
        )
    )
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    return Trio(common, tenant, registry, artifacts, rollouts, admin.key)


async def issue(
    client: httpx.AsyncClient, trio: Trio, body: dict[str, Any], admin: str | None = None
) -> dict[str, Any]:
    r = await client.post(
        f"{trio.registry.url}/api/v1/keys", json=body, headers=bearer(admin or trio.admin)
    )
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def until_accepted(client: httpx.AsyncClient, url: str, key: str, timeout: float = 5) -> None:
    async def accepted() -> bool:
        return (await client.get(url, headers=bearer(key))).status_code != 401

    await eventually(
        accepted, timeout=timeout, interval=0.02, explain=lambda: f"{url} still refuses a fresh key"
    )


async def created(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> Any:
    """POST until 201 (what it needs arrives by event); the new id."""
    deadline = time.monotonic() + 10
    while True:
        r = await client.post(url, json=body, headers=headers)
        if r.status_code == 201 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def publish_devices(common: CommonSettings, tenant: str, *controller_ids: str) -> None:
    """``device.updated`` (registered) for each device, as the registry announces one."""
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        for controller_id in controller_ids:
            await publish_event(
                broker,
                DeviceUpdated(tenant=tenant, controller_id=controller_id, change="registered"),
            )
    finally:
        await broker.stop()


async def seed(client: httpx.AsyncClient, trio: Trio) -> dict[str, str]:
    """One of each resource of ``trio.tenant``: device, software, rollout, action, key."""
    h = bearer(trio.admin)
    r = await client.post(
        f"{trio.registry.url}/api/v1/devices", json={"controller_id": "dev-a"}, headers=h
    )
    assert r.status_code == 201, r.text
    image = make_rawfile_swu(
        b"x" * 1000,
        version="1.0.0",
        board="board",
        revisions=["1.0"],
        install_path="/tmp/x",
        key=None,
        cert=None,
    )
    r = await client.post(
        f"{trio.artifacts.url}/api/v1/software",
        params={"filename": "a.swu"},
        content=image,
        headers={**h, "content-type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    software_id = r.json()["id"]
    # Rollouts learns of the software from its event.
    action_id = await created(
        client,
        f"{trio.rollouts.url}/api/v1/devices/dev-a/actions",
        {"software_id": software_id, "type": "soft"},
        h,
    )
    # A device of the feed reports its inventory, as the gateway would pass it on.
    broker = make_broker(trio.common.nats_url, "test")
    await broker.connect()
    try:
        await publish_event(
            broker,
            DeviceConfigReported(
                tenant=trio.tenant,
                controller_id="dev-b",
                data={"hw_boardname": "board", "hw_revision": "1.0", "sw_version": "0.9"},
            ),
        )
    finally:
        await broker.stop()
    # Once rollouts knows the device's inventory.
    rollout_id = await created(
        client,
        f"{trio.rollouts.url}/api/v1/rollouts",
        {"name": "r1", "software_id": software_id, "feed": "default"},
        h,
    )
    key_id = (await issue(client, trio, {"name": "spare", "role": "viewer"}))["id"]
    signer = make_identity("signer", datetime.now(UTC))
    entry_id = await created(
        client,
        f"{trio.artifacts.url}/api/v1/trust",
        {"name": "signer", "pem": signer.cert_pem.decode()},
        h,
    )
    return {
        "entry_id": entry_id,
        "controller_id": "dev-a",
        "software_id": str(software_id),
        "action_id": str(action_id),
        "rollout_id": str(rollout_id),
        "key_id": key_id,
        "name": trio.tenant,
        **await park_invalid_events(client, trio),
    }


async def park_invalid_events(client: httpx.AsyncClient, trio: Trio) -> dict[str, str]:
    """A dead letter in each service (events that are not valid); ``<service>.letter_id``."""
    broker = make_broker(trio.common.nats_url, "test")
    await broker.connect()
    try:
        for kind in ("action.created", "software.created"):  # registry, artifacts; rollouts
            subject = names.subject(trio.tenant, kind)
            await publish_raw(broker, subject, b"{}", f"invalid-{trio.tenant}-{kind}")
    finally:
        await broker.stop()
    found = {}
    deadline = time.monotonic() + 10
    for service, running in trio.apps.items():
        while True:
            r = await client.get(f"{running.url}/api/v1/dead-letters", headers=bearer(trio.admin))
            items = r.json()["items"] if r.status_code == 200 else []
            if items or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert items, f"{service} parked nothing: {r.text}"
        found[f"{service}.letter_id"] = items[0]["id"]
    return found


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


async def test_every_route_refuses_no_token_a_wrong_token_a_missing_permission_and_other_tenants(
    common: CommonSettings, serve: Any, tenant: str, issue_key: Any, tmp_path: Any
) -> None:
    admin = await issue_key(tenant, ["admin"])
    trio = await start_trio(common, serve, tenant, admin, tmp_path)
    other_tenant = f"o{secrets.token_hex(5)}"
    async with httpx.AsyncClient(timeout=10) as client:
        ids = await seed(client, trio)
        outsider = (await issue(client, trio, {"name": "x", "role": "viewer"}))["key"]
        # Another tenant's admin, issued by the registry like any key.
        other = await issue_key(other_tenant, ["admin"])
        lacking = {
            p: (
                await issue(
                    client,
                    trio,
                    {
                        "name": f"all but {p}",
                        "permissions": [
                            q.value for q in Permission if q not in (p, Permission.ADMIN)
                        ],
                    },
                )
            )["key"]
            for p in Permission
        }
        for key in [outsider, other.key, *lacking.values()]:
            await until_accepted(client, f"{trio.registry.url}/api/v1/devices", key)
        wrong = [
            "Bearer ggl_000000000000_" + "A" * 43,
            f"Bearer {admin.key[:-1]}{'B' if admin.key[-1] != 'B' else 'C'}",
            "Bearer not-a-token",
            f"Basic {admin.key}",
        ]
        walked = 0
        for service, running in trio.apps.items():
            for route in api_routes(running.app):
                if route.path == "/api/v1/me":  # any valid key: its refusals are tested apart
                    continue
                need = requirement(route.dependant)
                assert need is not None
                url = running.url + fill(
                    route.path, {**ids, "letter_id": ids[f"{service}.letter_id"]}
                )
                for method in sorted(route.methods):
                    what = f"{service} {method} {route.path}"
                    r = await client.request(method, url)
                    assert r.status_code == 401, f"{what} without a token: {r.status_code}"
                    for header in wrong:
                        r = await client.request(method, url, headers={"Authorization": header})
                        assert r.status_code == 401, f"{what} with {header[:20]}: {r.status_code}"
                        assert r.headers["www-authenticate"].startswith("Bearer")
                    r = await client.request(method, url, headers=bearer(lacking[need]))
                    assert r.status_code == 403, f"{what} without {need}: {r.status_code} {r.text}"
                    if method != "HEAD":
                        assert r.json()["needs"] == need.value
                    # Another tenant: naming ours is not found, and so are our ids.
                    r = await client.request(
                        method, url, headers=bearer(other.key), params={"tenant": tenant}
                    )
                    assert r.status_code == 404, f"{what} as another tenant: {r.status_code}"
                    if "{" in route.path and method in ("GET", "HEAD", "DELETE"):
                        r = await client.request(method, url, headers=bearer(other.key))
                        if r.status_code == 200:
                            # Routes that answer for any device id (its policy, its actions)
                            # show the other tenant its own empty defaults, nothing of ours.
                            assert route.path.startswith("/api/v1/devices/{controller_id}/")
                            assert tenant not in r.text, f"{what}: {r.text}"
                            assert r.json().get("items", []) == [], f"{what}: {r.text}"
                        else:
                            assert r.status_code == 404, f"{what} by crafted id: {r.status_code}"
                    walked += 1
        assert walked >= 30
        # Nothing of ours was changed by all that: the resources are still there.
        h = bearer(trio.admin)
        assert (await client.get(f"{trio.registry.url}/api/v1/devices/dev-a", headers=h)).is_success
        assert (
            await client.get(
                f"{trio.artifacts.url}/api/v1/software/{ids['software_id']}", headers=h
            )
        ).is_success
        r = await client.get(f"{trio.rollouts.url}/api/v1/rollouts/{ids['rollout_id']}", headers=h)
        assert r.json()["state"] == "created"


async def test_a_revoked_key_is_refused_by_every_service_within_seconds(
    common: CommonSettings, serve: Any, tenant: str, issue_key: Any, tmp_path: Any
) -> None:
    admin = await issue_key(tenant, ["admin"])
    trio = await start_trio(common, serve, tenant, admin, tmp_path)
    urls = [
        f"{trio.registry.url}/api/v1/devices",
        f"{trio.artifacts.url}/api/v1/software",
        f"{trio.rollouts.url}/api/v1/rollouts",
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        doc = await issue(client, trio, {"name": "ci", "role": "viewer", "expires_in_days": 1})
        assert doc["key"].startswith("ggl_") and doc["permissions"] == ["viewer"]
        for url in urls:
            await until_accepted(client, url, doc["key"])
        listed = (
            await client.get(f"{trio.registry.url}/api/v1/keys", headers=bearer(trio.admin))
        ).json()["items"]
        assert doc["id"] in {k["id"] for k in listed}
        assert all("key" not in k and "sha256" not in k for k in listed)
        r = await client.delete(
            f"{trio.registry.url}/api/v1/keys/{doc['id']}", headers=bearer(trio.admin)
        )
        assert r.status_code == 200 and r.json()["revoked_at"] is not None
        revoked_at = time.monotonic()
        refused_after: dict[str, float] = {}
        while len(refused_after) < len(urls) and time.monotonic() - revoked_at < 5:
            for url in urls:
                if url not in refused_after:
                    r = await client.get(url, headers=bearer(doc["key"]))
                    if r.status_code == 401:
                        refused_after[url] = time.monotonic() - revoked_at
            await asyncio.sleep(0.01)
        assert len(refused_after) == len(urls), f"still accepted after 5 s: {refused_after}"
        # A restarted registry keeps it revoked (its KV check does not bring it back).
        await trio.registry.stop()
        await trio.registry.start()
        await asyncio.sleep(0.3)
        for url in urls:
            assert (await client.get(url, headers=bearer(doc["key"]))).status_code == 401


async def test_key_requests_are_validated(
    common: CommonSettings, serve: Any, tenant: str, issue_key: Any, tmp_path: Any
) -> None:
    admin = await issue_key(tenant, ["admin"])
    trio = await start_trio(common, serve, tenant, admin, tmp_path)
    url = f"{trio.registry.url}/api/v1/keys"
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    async with httpx.AsyncClient(timeout=10, headers=bearer(admin.key)) as client:
        for body in [
            {"name": "x"},
            {"name": "x", "role": "viewer", "permissions": ["device:read"]},
            {"name": "x", "role": "root"},
            {"name": "x", "permissions": ["device:fly"]},
            {"name": "x", "role": "viewer", "expires_at": past},
            {"name": "x", "role": "viewer", "expires_at": "2030-01-01T00:00:00"},  # fixed-date-ok
            {"name": "", "role": "viewer"},
        ]:
            r = await client.post(url, json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"] == "invalid_request"
        assert (await client.get(f"{url}/nothere12345")).status_code == 404
        assert (await client.get(f"{url}/bad")).status_code == 400
        assert (await client.get(f"{trio.registry.url}/api/v1/audit?cursor=zz")).status_code == 400
        # Any valid key may ask who it is and what it may do.
        viewer = await issue(client, trio, {"name": "v", "role": "viewer"})
        me = f"{trio.registry.url}/api/v1/me"
        await until_accepted(client, me, viewer["key"])
        r = await client.get(me, headers=bearer(viewer["key"]))
        assert r.status_code == 200, r.text
        assert r.json() == {
            "tenant": tenant.lower(),
            "actor": f"key:{viewer['id']}",
            "permissions": ["device:read", "rollout:read", "software:read"],
        }
        assert (await client.get(me, headers={"Authorization": ""})).status_code == 401
        unknown = bearer("ggl_000000000000_" + "A" * 43)
        assert (await client.get(me, headers=unknown)).status_code == 401


async def test_an_expired_key_is_refused(
    common: CommonSettings, serve: Any, tenant: str, issue_key: Any, tmp_path: Any
) -> None:
    admin = await issue_key(tenant, ["admin"])
    trio = await start_trio(common, serve, tenant, admin, tmp_path)
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    async with httpx.AsyncClient(timeout=10) as client:
        doc = await issue(client, trio, {"name": "brief", "role": "viewer", "expires_at": soon})
        url = f"{trio.rollouts.url}/api/v1/rollouts"
        await until_accepted(client, url, doc["key"])
        await asyncio.sleep(2.0)
        r = await client.get(url, headers=bearer(doc["key"]))
        assert r.status_code == 401 and "expired" in r.json()["message"]


async def test_changes_are_audited_with_who_what_when_and_outcome(
    nats_url: str, database_url: str, serve: Any, tenant: str, issue_key: Any, tmp_path: Any
) -> None:
    common = CommonSettings(
        nats_url=nats_url, database_url=database_url, log_json=False, key_use_flush_s=0.2
    )
    admin = await issue_key(tenant, ["admin"])
    trio = await start_trio(common, serve, tenant, admin, tmp_path)
    started = datetime.now(UTC)
    async with httpx.AsyncClient(timeout=10) as client:
        ids = await seed(client, trio)
        viewer = await issue(client, trio, {"name": "looker", "role": "viewer"})
        await until_accepted(client, f"{trio.rollouts.url}/api/v1/rollouts", viewer["key"])
        h = bearer(trio.admin)
        ro = f"{trio.rollouts.url}/api/v1/rollouts/{ids['rollout_id']}"
        for command in ("start", "pause", "resume", "abort"):
            assert (await client.post(f"{ro}/{command}", headers=h)).status_code == 200
        r = await client.put(
            f"{trio.rollouts.url}/api/v1/devices/dev-a/policy", json={"mode": "latest"}, headers=h
        )
        assert r.status_code == 200, r.text
        denied = await client.post(f"{ro}/start", headers=bearer(viewer["key"]))
        assert denied.status_code == 403
        assert (
            await client.delete(f"{trio.registry.url}/api/v1/keys/{viewer['id']}", headers=h)
        ).status_code == 200
        audit = f"{trio.registry.url}/api/v1/audit"
        expected = {
            ("registry", "create_device", "success"),
            ("artifacts", "upload_software", "success"),
            ("rollouts", "create_action", "success"),
            ("rollouts", "create_rollout", "success"),
            ("rollouts", "start_rollout", "success"),
            ("rollouts", "pause_rollout", "success"),
            ("rollouts", "resume_rollout", "success"),
            ("rollouts", "abort_rollout", "success"),
            ("rollouts", "put_policy", "success"),
            ("rollouts", "start_rollout", "denied"),
            ("registry", "issue_key", "success"),
            ("registry", "revoke_key", "success"),
        }
        deadline = time.monotonic() + 10
        while True:
            items = (await client.get(audit, headers=h, params={"limit": 1000})).json()["items"]
            seen = {(i["service"], i["action"], i["outcome"]) for i in items}
            if expected <= seen or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert expected <= seen, sorted(expected - seen)
        admin_actor = f"key:{admin.key_id}"
        upload = next(i for i in items if i["action"] == "upload_software")
        assert upload["actor"] == admin_actor
        assert upload["resource"] == f"software/{ids['software_id']}"
        assert upload["status"] == 201
        assert started - timedelta(seconds=5) <= datetime.fromisoformat(upload["at"])
        # Filters: actor, resource prefix, time, and paging.
        by_viewer = (
            await client.get(audit, headers=h, params={"actor": f"key:{viewer['id']}"})
        ).json()["items"]
        assert [(i["action"], i["outcome"], i["status"]) for i in by_viewer] == [
            ("start_rollout", "denied", 403)
        ]
        on_rollout = (
            await client.get(audit, headers=h, params={"resource": f"rollouts/{ids['rollout_id']}"})
        ).json()["items"]
        assert [i["action"] for i in on_rollout] == [
            "start_rollout",
            "abort_rollout",
            "resume_rollout",
            "pause_rollout",
            "start_rollout",
            "create_rollout",  # the id it created is part of its resource
        ]
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await client.get(audit, headers=h, params={"since": future})).json()["items"] == []
        first = (await client.get(audit, headers=h, params={"limit": 5})).json()
        second = (
            await client.get(audit, headers=h, params={"limit": 1000, "cursor": first["next"]})
        ).json()
        assert [i["id"] for i in first["items"] + second["items"]] == [i["id"] for i in items]
        # Reads are not audited; the admin key's last use reaches the registry.
        assert all(i["method"] != "GET" for i in items)
        deadline = time.monotonic() + 5
        while True:
            mine = (
                await client.get(f"{trio.registry.url}/api/v1/keys/{admin.key_id}", headers=h)
            ).json()
            if mine["last_used_at"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert mine["last_used_at"] is not None


# -- OpenID Connect ---------------------------------------------------------------------------


@pytest.fixture
async def idp(serve: Any) -> Any:
    """A JWKS endpoint serving one RSA public key, and the private key to sign with."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid="k1", use="sig", alg="RS256")

    async def jwks(_: Any) -> JSONResponse:
        return JSONResponse({"keys": [jwk]})

    server = await serve(Starlette(routes=[Route("/jwks.json", jwks)]))
    return private, f"{server.url}/jwks.json"


def token(private: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "gaggle_roles": ["operator"],
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm="RS256", headers={"kid": "k1"})


async def test_oidc_tokens_are_verified_against_the_providers_keys(
    nats_url: str, database_url: str, serve: Any, tenant: str, idp: Any
) -> None:
    private, jwks_url = idp
    common = CommonSettings(
        nats_url=nats_url,
        database_url=database_url,
        log_json=False,
        oidc_issuer=ISSUER,
        oidc_audience=AUDIENCE,
        oidc_jwks_url=jwks_url,
    )
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    url = f"{rollouts.url}/api/v1/rollouts"
    good = token(private, gaggle_tenant=tenant)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    head, body, signature = good.split(".")
    tampered_body = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(body).replace(b'"operator"', b'"admin"   ')
    ).decode()
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(url, headers=bearer(good))
        assert r.status_code == 200, r.text
        policy = f"{rollouts.url}/api/v1/devices/dev-o/policy"
        # The device exists once rollouts has heard of it (no registry runs here to ask).
        await publish_devices(common, tenant, "dev-o")
        deadline = time.monotonic() + 10
        while True:
            r = await client.put(policy, json={"mode": "latest"}, headers=bearer(good))
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 200, r.text
        r = await client.get(policy, headers=bearer(good), params={"tenant": tenant})
        assert r.json()["mode"] == "latest"
        refused = {
            "tampered": f"{head}.{tampered_body}.{signature}",
            "expired": token(private, gaggle_tenant=tenant, exp=int(time.time()) - 120),
            "wrong audience": token(private, gaggle_tenant=tenant, aud="someone-else"),
            "wrong issuer": token(private, gaggle_tenant=tenant, iss="https://evil.test/"),
            "other signer": token(stranger, gaggle_tenant=tenant),
            "no expiry": token(private, gaggle_tenant=tenant, exp=None),
            "unsigned": jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "exp": int(time.time()) + 60},
                key=None,
                algorithm="none",
            ),
            "shared secret": jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "exp": int(time.time()) + 60},
                key="k" * 32,
                algorithm="HS256",
                headers={"kid": "k1"},
            ),
        }
        for why, bad in refused.items():
            r = await client.get(url, headers=bearer(bad))
            assert r.status_code == 401, f"{why}: {r.status_code} {r.text}"
        viewer = token(private, gaggle_tenant=tenant, gaggle_roles="viewer")
        assert (await client.get(url, headers=bearer(viewer))).status_code == 200
        r = await client.put(policy, json={"mode": "latest"}, headers=bearer(viewer))
        assert r.status_code == 403
        # Without the tenant claim a token acts in the default tenant: not ours.
        elsewhere = token(private)
        r = await client.get(f"{url}?tenant={tenant}", headers=bearer(elsewhere))
        assert r.status_code == 404
