"""The console in Debian's Chromium (Playwright) against real registry and rollouts services.

A small fleet polls the real gateway and reports its configData; the console is signed in to
with real API keys. Each page is photographed; with ``GAGGLE_CONSOLE_SCREENSHOTS=<dir>`` (as
``docs/console``) the pictures are written there, else to the test's temporary folder.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gaggle_console.app import build_app as build_console
from gaggle_console.settings import ConsoleSettings
from gaggle_contracts.settings import CommonSettings
from tests.e2e.browser import needs_chromium
from tests.e2e.conftest import E2EStack

pytestmark = [
    pytest.mark.e2e,
    needs_chromium,
]
FLEET = {  # controller id -> (model, revision, version)
    **{f"press-{i:02d}": ("press", "a", "1.0") for i in range(1, 8)},
    **{f"pump-{i:02d}": ("pump", "b", "2.1") for i in range(1, 5)},
}
NEVER_SEEN = "spare-01"


async def _fleet(stack: E2EStack) -> None:
    """The fleet polls once and reports its configData; one more device is made but never seen."""
    for cid, (model, revision, version) in FLEET.items():
        await stack.poll(cid)
        r = await stack.client.put(
            f"{stack.gateway_url}/{stack.tenant}/controller/v1/{cid}/configData",
            json={"data": {"hw_boardname": model, "hw_revision": revision, "sw_version": version}},
        )
        assert r.status_code == 200, r.text
    await stack.ensure_device(NEVER_SEEN)
    for cid, (model, _, version) in FLEET.items():
        await stack.wait_device(
            cid,
            lambda d, m=model, v=version: (
                d.get("hw_model") == m
                and d.get("sw_version") == v
                and d.get("last_seen_at") is not None
            ),
        )


async def _rollout(stack: E2EStack) -> None:
    """A running rollout of the presses in two waves; one device of the first reports success."""
    software = await stack.publish_software(
        b"press image 1.1" * 64, version="1.1", filename="press-1.1.swu", hw_model="press"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # 503 until rollouts has the software's event (no artifacts service to ask)
        r = await stack.client.post(
            f"{stack.rollouts.url}/api/v1/rollouts",
            json={
                "name": "press 1.1",
                "software_id": software.software_id,
                "waves": [{"count": 2}, {"count": 5}],
                "start": True,
            },
        )
        if r.status_code != 503 or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    deadline = loop.time() + 10
    while True:  # the first wave's actions are made by the rollout engine, shortly
        r = await stack.client.get(f"{stack.rollouts.url}/api/v1/rollouts/{rollout_id}/devices")
        assert r.status_code == 200, r.text
        sent = [m for m in r.json()["items"] if m.get("action_id")]
        if sent:
            break
        assert loop.time() < deadline, r.text
        await asyncio.sleep(0.1)
    cid, action_id = sent[0]["controller_id"], sent[0]["action_id"]
    await stack.wait_offered(cid, lambda links: "deploymentBase" in links, what="no deployment")
    r = await stack.client.post(
        f"{stack.gateway_url}/{stack.tenant}/controller/v1/{cid}/deploymentBase/{action_id}/feedback",
        json={
            "id": str(action_id),
            "status": {"execution": "closed", "result": {"finished": "success"}},
        },
    )
    assert r.status_code == 200, r.text
    deadline = loop.time() + 10
    while True:
        r = await stack.client.get(f"{stack.rollouts.url}/api/v1/rollouts/{rollout_id}")
        if r.json()["counters"].get("success") == 1:
            return
        assert loop.time() < deadline, r.text
        await asyncio.sleep(0.1)


async def _key(stack: E2EStack, **body: Any) -> str:
    r = await stack.client.post(f"{stack.registry.url}/api/v1/keys", json={"name": "c", **body})
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


async def test_console_sign_in_overview_devices_and_csrf(
    e2e_stack: E2EStack,
    serve: Any,
    common: CommonSettings,
    operator_key: str,
    browser: Any,
    shots: Path,
) -> None:
    stack = e2e_stack
    await _fleet(stack)
    await _rollout(stack)
    console = await serve(
        build_console(
            common,
            ConsoleSettings(registry_url=stack.registry.url, rollouts_url=stack.rollouts.url),
        )
    )
    base = console.url
    page = await browser.new_page(viewport={"width": 1200, "height": 900})

    # Signed out, every page leads to the sign-in form; a wrong key is refused on it.
    await page.goto(f"{base}/overview")
    assert page.url == f"{base}/sign-in"
    await page.screenshot(path=shots / "sign-in.png", full_page=True)
    await page.get_by_label("API key").fill("gk_notakey_" + "0" * 40)
    await page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    assert "This API key was not accepted" in await alert.inner_text()
    assert page.url == f"{base}/sign-in"
    await page.screenshot(path=shots / "sign-in-refused.png", full_page=True)

    # A good key: the overview counts the fleet.
    await page.get_by_label("API key").fill(operator_key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/overview")
    assert await page.locator("#count-total").inner_text() == str(len(FLEET) + 1)
    assert await page.locator("#count-online").inner_text() == str(len(FLEET))
    assert await page.locator("#count-offline").inner_text() == "0"
    assert await page.locator("#count-never").inner_text() == "1"
    models = page.locator("#chart-model g")
    found = {
        await g.get_attribute("data-label"): await g.get_attribute("data-count")
        for g in await models.all()
    }
    assert found == {"press / a": "7", "pump / b": "4", "(none)": "1"}
    versions = page.locator('#chart-version g[data-label="1.0"]')
    assert await versions.get_attribute("data-count") == "7"
    progress = page.get_by_label("1 of 7 devices done (14%)")
    assert await progress.get_attribute("value") == "1"
    assert await progress.get_attribute("max") == "7"
    await page.screenshot(path=shots / "overview.png", full_page=True)

    # Landmarks, and the keyboard: the first Tab reaches "Skip to content", then the menu.
    assert await page.get_by_role("main").count() == 1
    assert await page.get_by_role("navigation", name="Main").count() == 1
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    await page.keyboard.press("Tab")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Devices"
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{base}/devices")

    # Devices: text search, then cursor paging.
    await page.get_by_label("Search id or name").fill("pump")
    await page.get_by_label("Search id or name").press("Enter")
    await page.wait_for_url("**/devices?q=pump*")
    rows = page.locator("#devices tbody th[scope=row]")
    assert sorted(await rows.all_inner_texts()) == [c for c in sorted(FLEET) if "pump" in c]
    await page.goto(f"{base}/devices?limit=10")
    assert await rows.count() == 10
    await page.screenshot(path=shots / "devices.png", full_page=True)
    await page.get_by_role("link", name="Next page").click()
    rest = await rows.all_inner_texts()
    assert rest == sorted([*FLEET, NEVER_SEEN])[10:]

    # A POST without the page's CSRF token is refused, and the session stays.
    forged = await page.request.post(f"{base}/sign-out", form={"csrf": "forged"})
    assert forged.status == 403
    bare = await page.request.post(f"{base}/sign-out", form={})
    assert bare.status == 403
    await page.goto(f"{base}/overview")
    assert page.url == f"{base}/overview"

    # On a phone.
    phone = await browser.new_page(viewport={"width": 390, "height": 844})
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(f"{base}/overview")
    await phone.screenshot(path=shots / "overview-phone.png", full_page=True)
    await phone.close()

    # Sign out ends the session.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/sign-in")
    await page.goto(f"{base}/devices")
    assert page.url == f"{base}/sign-in"

    # A key that may read rollouts only: the registry's 403 shows as such.
    await page.get_by_label("API key").fill(await _key(stack, permissions=["rollout:read"]))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/overview")
    text = await page.get_by_role("alert").inner_text()
    assert "403" in text
    assert "registry" in text
    response = await page.goto(f"{base}/devices")
    assert response is not None
    assert response.status == 403
