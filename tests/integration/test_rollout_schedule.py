"""Time-forced actions, maintenance windows in a time zone, and rollout approval, seen by devices
through the gateway. Clocks are injected: no test depends on today's date."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_contracts.events import utcnow
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.actions import Actions
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_rollouts.usecases import refresh_windows
from gaggle_storage import LocalStore
from gaggle_testing import eventually, publish_software
from tests.integration.support import Stack, cli_env, device, run_cli
from tests.integration.test_rollout_lifecycle import known_to_rollouts, rollout, wait_link

pytestmark = pytest.mark.integration


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def tick(actions: Actions, now: datetime) -> None:
    """What the engine's window loop does, at ``now``."""
    actions.clock = lambda: now
    await refresh_windows(actions.db, actions)


async def deployment(client: httpx.AsyncClient, s: Stack, cid: str, check: Any) -> dict[str, Any]:
    """The device's deploymentBase, polled through the gateway until ``check`` holds."""

    async def seen() -> dict[str, Any]:
        href = await wait_link(client, s, cid, "deploymentBase")
        doc: dict[str, Any] = (await client.get(href)).json()
        doc["href"] = href
        assert check(doc["deployment"]), doc
        return doc

    found: dict[str, Any] = await eventually(seen, timeout=10)
    return found


async def test_a_time_forced_action_turns_from_attempt_to_forced_at_its_time(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "tf", "2.0.0", [("board", "*")])
    actions: Actions = stack.rollouts.app.state.actions
    now = utcnow()
    forcetime = now + timedelta(hours=1)
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "t1", "board", "1", "1.0.0")
        body = {"software_id": "tf", "filter": {"controller_ids": ["t1"]}}
        await known_to_rollouts(client, stack, body)
        doc = await rollout(
            client,
            stack,
            {
                **body,
                "name": "time-forced",
                "action_type": "timeforced",
                "forcetime": forcetime.isoformat(),
                "start": True,
            },
        )
        assert doc["action_type"] == "timeforced" and at(doc["forcetime"]) == forcetime
        soft = await deployment(client, stack, "t1", lambda d: True)
        assert (soft["deployment"]["download"], soft["deployment"]["update"]) == (
            "attempt",
            "attempt",
        )
        assert "maintenanceWindow" not in soft["deployment"]

        await tick(actions, forcetime - timedelta(seconds=1))
        await asyncio.sleep(0.3)  # what the gateway would have seen by now: still soft
        still = await deployment(client, stack, "t1", lambda d: True)
        assert still["deployment"]["update"] == "attempt" and still["href"] == soft["href"]

        # At its time the engine's own loop (every GAGGLE_ROLLOUTS_FORCE_S) turns it forced.
        actions.clock = lambda: forcetime
        forced = await deployment(client, stack, "t1", lambda d: d["update"] == "forced")
        assert forced["deployment"]["download"] == "forced"
        assert forced["href"] != soft["href"]  # a new ?c=: cached GETs refresh (ddi-api.md §3)
        assert forced["id"] == soft["id"]


# Instants of the injected clock, not of the calendar (fixed-date-ok below). Europe/Berlin in
# 2026: clocks go forward on 29 March at 01:00 UTC and back on 25 October at 01:00 UTC. A
# 02:00-04:00 window is 01:00-02:00 UTC on the first day, 00:00-03:00 UTC on the second.
BERLIN_STEPS = [
    ("2026-03-29T01:00:00Z", "available"),  # fixed-date-ok
    ("2026-03-29T01:59:59Z", "available"),  # fixed-date-ok
    ("2026-03-29T02:00:00Z", "unavailable"),  # fixed-date-ok
    ("2026-10-24T23:59:59Z", "unavailable"),  # fixed-date-ok
    ("2026-10-25T00:00:00Z", "available"),  # fixed-date-ok
    ("2026-10-25T02:59:59Z", "available"),  # fixed-date-ok
    ("2026-10-25T03:00:00Z", "unavailable"),  # fixed-date-ok
]


async def test_a_berlin_window_is_available_exactly_inside_it_across_dst(
    operator_auth: httpx.Auth, stack: Stack, common: CommonSettings
) -> None:
    await publish_software(common, stack.tenant, "bw", "2.0.0", [("board", "*")])
    actions: Actions = stack.rollouts.app.state.actions
    window = {"timezone": "Europe/Berlin", "start": "02:00", "end": "04:00"}
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        await device(client, stack, "w1", "board", "1", "1.0.0")
        actions.clock = lambda: at("2026-03-29T00:59:59Z")  # 01:59:59 CET  # fixed-date-ok
        action = await stack.assign(client, "w1", "bw", maintenance_window=window)
        first = await deployment(client, stack, "w1", lambda d: True)
        assert first["id"] == action["id"]
        assert first["deployment"]["maintenanceWindow"] == "unavailable"
        assert first["deployment"]["update"] == "skip"
        for instant, expected in BERLIN_STEPS:
            await tick(actions, at(instant))
            seen = await deployment(
                client, stack, "w1", lambda d, e=expected: d["maintenanceWindow"] == e
            )
            update = "forced" if expected == "available" else "skip"
            assert seen["deployment"]["update"] == update, (instant, seen)


@pytest.fixture
async def approval_stack(
    common: CommonSettings, serve: Any, tenant: str, operator_key: str, tmp_path: Path
) -> tuple[Stack, Any]:
    registry = await serve(build_registry(common, RegistrySettings()))
    rollouts = await serve(build_rollouts(common, RolloutsSettings(sweep_s=0.5)))
    gateway = await serve(build_gateway(common, GatewaySettings(polling_sleep="00:00:05")))
    return Stack(gateway, rollouts, tenant, LocalStore(tmp_path)), registry


async def test_approval_blocks_the_start_until_an_approver_approves(
    approval_stack: tuple[Stack, Any],
    common: CommonSettings,
    operator_key: str,
    operator_auth: httpx.Auth,
) -> None:
    stack, registry = approval_stack
    tenant = stack.tenant
    env = cli_env(GAGGLE_REGISTRY_URL=registry.url, GAGGLE_ROLLOUTS_URL=stack.ro, COLUMNS="200")

    async def gaggle(key: str, *args: str, code: int = 0) -> str:
        run = await run_cli({**env, "GAGGLE_API_KEY": key}, *args, code=code)
        return run.out + run.err

    await gaggle(operator_key, "tenants", "set", tenant, "--rollout-approval")
    approvals = stack.rollouts.app.state.approvals
    await eventually(lambda: approvals.required(tenant) is True)
    admin = {"Authorization": f"Bearer {operator_key}"}
    async with httpx.AsyncClient(timeout=10) as client:
        keys = {}
        for role in ("operator", "viewer", "approver"):
            r = await client.post(
                f"{registry.url}/api/v1/keys", headers=admin, json={"name": role, "role": role}
            )
            assert r.status_code == 201, r.text
            keys[role] = r.json()["key"]

    await publish_software(common, tenant, "ap", "2.0.0", [("board", "*")])
    async with httpx.AsyncClient(timeout=10, auth=operator_auth) as client:
        await device(client, stack, "a1", "board", "1", "1.0.0")
        await known_to_rollouts(
            client, stack, {"software_id": "ap", "filter": {"controller_ids": ["a1"]}}
        )
    created = await gaggle(
        keys["operator"],
        "--json",
        "rollouts",
        "create",
        "--name",
        "needs approval",
        "--software",
        "ap",
        "--device",
        "a1",
        "--start",
    )
    doc = json.loads(created)
    rid = doc["id"]
    assert (doc["state"], doc["approval"]) == ("created", "pending")
    assert doc["created_by"].startswith("key:")

    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{stack.ro}/api/v1/rollouts/{rid}"

        def bearer(role: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {keys[role]}"}

        # Nobody may start it while it waits, the operator who created it included.
        r = await client.post(f"{url}/start", headers=bearer("operator"))
        assert r.status_code == 409 and "waits for approval" in r.json()["message"], r.text
        # A viewer, and an operator without rollout:approve, cannot approve: 403 in JSON.
        for role in ("viewer", "operator"):
            r = await client.post(f"{url}/approve", headers=bearer(role))
            assert r.status_code == 403, r.text
            assert r.json()["needs"] == "rollout:approve", r.text
        r = await client.get(url, headers=bearer("viewer"))
        assert (r.json()["state"], r.json()["approval"]) == ("created", "pending")
        # The device is offered nothing meanwhile.
        links = (await client.get(stack.dev("a1"))).json()["_links"]
        assert "deploymentBase" not in links, links

    out = await gaggle(keys["approver"], "rollouts", "approve", rid, "--remark", "checked on lab")
    assert "approval approved" in out and "running" in out, out
    async with httpx.AsyncClient(timeout=10) as client:
        await wait_link(client, stack, "a1", "deploymentBase")
        r = await client.get(
            f"{stack.ro}/api/v1/rollouts/{rid}",
            headers={"Authorization": f"Bearer {keys['viewer']}"},
        )
        doc = r.json()
        assert (doc["state"], doc["approval"], doc["approval_remark"]) == (
            "running",
            "approved",
            "checked on lab",
        )
        assert doc["approval_by"].startswith("key:") and doc["approval_by"] != doc["created_by"]

        # The audit log has the request and the approval, and the refused attempts.
        async def audited() -> list[dict[str, Any]]:
            r = await client.get(
                f"{registry.url}/api/v1/audit",
                headers={"Authorization": f"Bearer {operator_key}"},
                params={"resource": f"rollouts/{rid}"},
            )
            items: list[dict[str, Any]] = r.json()["items"]
            wanted = {("create_rollout", "success"), ("approve_rollout", "success")}
            assert wanted <= {(i["action"], i["outcome"]) for i in items}, items
            return items

        items = await eventually(audited, timeout=10)
        by_action = {(i["action"], i["outcome"]): i for i in items}
        assert by_action[("create_rollout", "success")]["actor"] == doc["created_by"]
        assert by_action[("approve_rollout", "success")]["actor"] == doc["approval_by"]
        assert ("approve_rollout", "denied") in by_action
        assert ("start_rollout", "rejected") in by_action

        # Denied: the rollout is aborted and never reaches a device.
        r = await client.post(
            f"{stack.ro}/api/v1/rollouts",
            headers=bearer("operator"),
            json={"name": "denied", "software_id": "ap", "filter": {"controller_ids": ["a1"]}},
        )
        assert r.status_code == 201, r.text
        other = r.json()["id"]
        r = await client.post(
            f"{stack.ro}/api/v1/rollouts/{other}/deny",
            headers=bearer("approver"),
            json={"remark": "not before the fair"},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["approval"]) == ("aborted", "denied")
        assert r.json()["reason"] == f"approval denied by {r.json()['approval_by']}"
        r = await client.post(
            f"{stack.ro}/api/v1/rollouts/{other}/approve", headers=bearer("approver")
        )
        assert r.status_code == 409 and "denied already" in r.json()["message"], r.text


async def test_bad_windows_and_force_times_are_refused_with_reasons(
    operator_auth: httpx.Auth, stack: Stack
) -> None:
    url = f"{stack.ro}/api/v1/rollouts"
    base = {"name": "x", "software_id": "whatever"}
    cases = [
        ({"timezone": "Mars/Olympus", "start": "02:00", "end": "04:00"}, "unknown time zone"),
        ({"schedule": "61 2 * * *", "duration": "01:00:00"}, "not a valid cron"),
        ({"schedule": "0 2 * * *", "duration": "2h"}, "duration: expected HH:MM:SS"),
        ({"start": "02:00", "end": "04:00", "days": ["funday"]}, "days"),
    ]
    async with httpx.AsyncClient(auth=operator_auth, timeout=10) as client:
        for window, words in cases:
            r = await client.post(
                url, params={"tenant": stack.tenant}, json={**base, "maintenance_window": window}
            )
            assert r.status_code == 400, (window, r.text)
            assert r.headers["content-type"] == "application/json"
            assert words in r.text, (window, r.text)
        for extra, words in [
            ({"action_type": "timeforced"}, "needs a forcetime"),
            ({"forcetime": "2026-12-24T18:00:00+01:00"}, "only a timeforced"),  # fixed-date-ok
            (
                {"action_type": "timeforced", "forcetime": "2026-12-24T18:00:00"},  # fixed-date-ok
                "timezone",
            ),
        ]:
            r = await client.post(url, params={"tenant": stack.tenant}, json={**base, **extra})
            assert r.status_code == 400, (extra, r.text)
            assert words in r.text, (extra, r.text)
