"""The console's rollout and access pages in Debian's Chromium against the real services.

Registry, rollouts and gateway run on a real NATS and PostgreSQL; a small fleet speaks DDI to the
gateway (its polls and feedback sent by the test, as the devices would). A rollout is created
through the console's form and followed live on its page, which is never reloaded: its progress
bars move as the devices report. Each new page is photographed (``GAGGLE_CONSOLE_SCREENSHOTS``).
"""

from __future__ import annotations

import asyncio
import re
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
MODEL = "belt"
FLEET = [f"belt-{i:02d}" for i in range(1, 7)]
WAVES = [2, 2, 2]


async def _fleet(stack: E2EStack) -> None:
    """Every device polls once and reports its model and version."""
    for cid in FLEET:
        await stack.poll(cid)
        r = await stack.client.put(
            f"{stack.gateway_url}/{stack.tenant}/controller/v1/{cid}/configData",
            json={"data": {"hw_boardname": MODEL, "hw_revision": "a", "sw_version": "1.0"}},
        )
        assert r.status_code == 200, r.text


async def _known_to_rollouts(stack: E2EStack, software_id: str) -> None:
    """Wait until rollouts knows the software and every device (a probe rollout, aborted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    url = f"{stack.rollouts.url}/api/v1/rollouts"
    while True:
        r = await stack.client.post(
            url,
            json={"name": "probe", "software_id": software_id, "filter": {"hw_model": MODEL}},
        )
        if r.status_code == 201:
            await stack.client.post(f"{url}/{r.json()['id']}/abort")
            if r.json()["counters"]["total"] == len(FLEET):
                return
        assert loop.time() < deadline, r.text
        await asyncio.sleep(0.2)


async def _succeed(stack: E2EStack, rollout_id: str, wave: int) -> None:
    """Each device of ``wave`` finds its action in its poll and reports success."""
    r = await stack.client.get(f"{stack.rollouts.url}/api/v1/rollouts/{rollout_id}/devices")
    assert r.status_code == 200, r.text
    for member in [m for m in r.json()["items"] if m["wave"] == wave]:
        cid = member["controller_id"]
        links = await stack.wait_offered(
            cid, lambda links: "deploymentBase" in links, what="no deployment", timeout=15
        )
        action_id = links["deploymentBase"]["href"].split("/")[-1].split("?")[0]
        r = await stack.client.post(
            f"{stack.gateway_url}/{stack.tenant}/controller/v1/{cid}/deploymentBase/{action_id}/feedback",
            json={
                "id": action_id,
                "status": {"execution": "closed", "result": {"finished": "success"}},
            },
        )
        assert r.status_code == 200, r.text


async def _wait_text(page: Any, selector: str, text: str, timeout: float = 20_000) -> None:
    await page.wait_for_function(
        "([s, t]) => document.querySelector(s)?.textContent.trim() === t",
        arg=[selector, text],
        timeout=timeout,
    )


async def _wait_value(page: Any, selector: str, value: int, timeout: float = 20_000) -> None:
    await page.wait_for_function(
        "([s, v]) => document.querySelector(s)?.value === v",
        arg=[selector, value],
        timeout=timeout,
    )


async def test_console_rollout_live_pause_resume_and_access(
    e2e_stack: E2EStack,
    serve: Any,
    common: CommonSettings,
    operator_key: str,
    browser: Any,
    shots: Path,
) -> None:
    stack = e2e_stack
    await _fleet(stack)
    software = await stack.publish_software(
        b"belt image 2.0" * 64, version="2.0", filename="belt-2.0.swu", hw_model=MODEL
    )
    await _known_to_rollouts(stack, software.software_id)
    console = await serve(
        build_console(
            common,
            ConsoleSettings(registry_url=stack.registry.url, rollouts_url=stack.rollouts.url),
        )
    )
    base = console.url
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await page.goto(f"{base}/sign-in")
    await page.get_by_label("API key").fill(operator_key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/overview")

    # The form: a rollout of the belts in three waves of two, started at once.
    await page.get_by_role("link", name="Rollouts").click()
    await page.wait_for_url(f"{base}/rollouts")
    await page.get_by_role("link", name="New rollout").click()
    await page.wait_for_url(f"{base}/rollouts/new")
    await page.get_by_label("Name").fill("belts 2.0")
    await page.get_by_label("Software id").fill(software.software_id)
    await page.get_by_label("Model").fill(MODEL)
    await page.get_by_label("Wave sizes in").select_option("count")
    await page.get_by_label("Waves", exact=True).fill(", ".join(str(w) for w in WAVES))
    await page.get_by_label("Success threshold (%)").fill("100")
    await page.get_by_label("Action type").select_option("soft")
    await page.screenshot(path=shots / "rollout-new.png", full_page=True)

    # A refusal of the service is shown next to the form, and nothing typed is lost.
    await page.get_by_label("Window's time zone").fill("Mars/Olympus")
    await page.get_by_label("Maintenance window from (HH:MM)").fill("02:00")
    await page.get_by_label("until (HH:MM)").fill("04:00")
    await page.get_by_role("button", name="Create rollout").click()
    alert = page.get_by_role("alert")
    assert "Not created" in await alert.inner_text()
    assert await page.get_by_label("Name").input_value() == "belts 2.0"
    assert await page.get_by_label("Waves", exact=True).input_value() == "2, 2, 2"
    assert await page.get_by_label("Action type").input_value() == "soft"
    await page.screenshot(path=shots / "rollout-new-refused.png", full_page=True)
    await page.get_by_label("Window's time zone").fill("UTC")
    await page.get_by_label("Maintenance window from (HH:MM)").fill("")
    await page.get_by_label("until (HH:MM)").fill("")
    await page.get_by_role("button", name="Create rollout").click()
    await page.wait_for_url(re.compile(r".*/rollouts/\d+$"))
    live_url = page.url
    rollout_id = live_url.rsplit("/", 1)[1]
    assert rollout_id.isdigit()

    # The live page: it is never reloaded from here on (the marker would be gone).
    await page.evaluate("window.__stayed = 'on this page'")
    await page.wait_for_function(
        "document.getElementById('live').textContent.startsWith('Live')", timeout=15_000
    )
    assert await page.locator("#overall").get_attribute("max") == str(len(FLEET))

    # Pause and resume: the state changes on the page, live.
    await page.get_by_role("button", name="Pause").click()
    await _wait_text(page, "#state", "paused")
    assert await page.get_by_role("button", name="Resume").is_visible()
    assert not await page.get_by_role("button", name="Pause").is_visible()
    await page.get_by_role("button", name="Resume").click()
    await _wait_text(page, "#state", "running")

    # The abort button asks first; keeping the rollout changes nothing.
    await page.get_by_role("button", name="Abort…").click()
    dialog = page.get_by_role("dialog")
    assert await dialog.is_visible()
    await dialog.get_by_role("button", name="Keep it").click()
    assert not await dialog.is_visible()

    # The devices report, wave after wave; the bars follow.
    await _succeed(stack, rollout_id, 1)
    await _wait_value(page, "#wave-1", 2)
    await _wait_value(page, "#overall", 2)
    assert await page.locator("#count-success").inner_text() == "2"
    assert await page.locator("#wave-2").evaluate("e => e.value") == 0
    await page.screenshot(path=shots / "rollout-live.png", full_page=True)
    for wave in (2, 3):
        await _succeed(stack, rollout_id, wave)
        await _wait_value(page, f"#wave-{wave}", 2)
    await _wait_text(page, "#state", "finished")
    await _wait_value(page, "#overall", len(FLEET))
    assert await page.locator("#overall-label").inner_text() == "6 of 6 done (100%)"
    assert await page.locator("#live").inner_text() == "This rollout is finished."
    assert page.url == live_url
    assert await page.evaluate("window.__stayed") == "on this page"
    assert int(await page.locator("#rollout").get_attribute("data-updates")) >= 5
    assert not await page.get_by_role("button", name="Abort…").is_visible()
    await page.screenshot(path=shots / "rollout-finished.png", full_page=True)

    # A POST without the page's CSRF token is refused: the rollout is not touched.
    forged = await page.request.post(f"{base}/rollouts/{rollout_id}/abort", form={"csrf": "forged"})
    assert forged.status == 403
    assert "CSRF" in await forged.text()
    forged = await page.request.post(f"{base}/access/keys", form={"name": "x", "role": "admin"})
    assert forged.status == 403
    r = await stack.client.get(f"{stack.rollouts.url}/api/v1/rollouts/{rollout_id}")
    assert r.json()["state"] == "finished"

    # Members, then the list.
    await page.get_by_role("link", name="Its devices").click()
    await page.wait_for_url(f"{base}/rollouts/{rollout_id}/devices")
    rows = page.locator("#members tbody tr")
    assert await rows.count() == len(FLEET)
    assert sorted(await page.locator("#members tbody th").all_inner_texts()) == FLEET
    assert set(await page.locator("#members tbody td:nth-child(3)").all_inner_texts()) == {
        "success"
    }
    await page.screenshot(path=shots / "rollout-devices.png", full_page=True)
    await page.goto(f"{base}/rollouts")
    row = page.locator(f'#rollouts tr[data-rollout="{rollout_id}"]')
    assert "finished" in await row.inner_text()
    assert await row.locator("progress").get_attribute("value") == str(len(FLEET))
    await page.screenshot(path=shots / "rollouts.png", full_page=True)

    # Access: issue a viewer key; it is shown once.
    await page.get_by_role("link", name="Access").click()
    await page.wait_for_url(f"{base}/access")
    await page.get_by_label("Name").fill("e2e viewer")
    await page.get_by_label("Role", exact=True).select_option("viewer")
    await page.get_by_label("Expires in (days; empty: never)").fill("7")
    await page.get_by_role("button", name="Issue key").click()
    new_key = await page.get_by_label("The new API key").input_value()
    assert new_key.startswith("ggl_")
    assert "new" not in page.url and new_key not in page.url
    await page.screenshot(path=shots / "key-issued.png", full_page=True)
    await page.goto(f"{base}/access")
    assert new_key not in await page.content()
    key_row = page.locator("#keys tbody tr", has_text="e2e viewer")
    assert "viewer" in await key_row.inner_text()
    await page.screenshot(path=shots / "keys.png", full_page=True)

    # The viewer sees the rollout but none of the write buttons, nor the access pages.
    viewer = await browser.new_page(viewport={"width": 390, "height": 844})
    await viewer.goto(f"{base}/sign-in")
    await viewer.get_by_label("API key").fill(new_key)
    await viewer.get_by_role("button", name="Sign in").click()
    await viewer.wait_for_url(f"{base}/overview")
    assert await viewer.get_by_role("link", name="Access").count() == 0
    await viewer.goto(f"{base}/rollouts")
    assert await viewer.get_by_role("link", name="New rollout").count() == 0
    await viewer.goto(f"{base}/rollouts/{rollout_id}")
    for name in ("Start", "Pause", "Resume", "Abort…"):
        assert await viewer.get_by_role("button", name=name).count() == 0, name
    await viewer.screenshot(path=shots / "rollout-phone.png", full_page=True)
    response = await viewer.goto(f"{base}/access")
    assert response is not None and response.status == 403
    assert "admin" in await viewer.get_by_role("alert").inner_text()
    response = await viewer.goto(f"{base}/rollouts/new")
    assert response is not None and response.status == 403
    await viewer.close()

    # Revoke it (asked first), on the admin's page.
    await key_row.get_by_role("button", name="Revoke…").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke the key").click()
    await page.wait_for_url(f"{base}/access?revoked=*")
    assert await page.locator("#keys tbody tr", has_text="e2e viewer").count() == 0

    # The audit log shows the changes: the rollout's commands and the key's issue and revoke.
    wanted = ("create_rollout", "pause_rollout", "resume_rollout", "issue_key", "revoke_key")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        await page.goto(f"{base}/access/audit")
        text = await page.locator("#audit").inner_text()
        if all(w in text for w in wanted):
            break
        assert loop.time() < deadline, text
        await asyncio.sleep(0.5)
    assert f"rollouts/{rollout_id}/pause" in text
    await page.screenshot(path=shots / "audit.png", full_page=True)
    await page.get_by_label("Resource starts with").fill(f"rollouts/{rollout_id}/")
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_url("**/access/audit?*")
    filtered = await page.locator("#audit tbody").inner_text()
    assert "pause_rollout" in filtered and "issue_key" not in filtered
