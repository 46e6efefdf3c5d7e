"""The console's device and software pages in Debian's Chromium against the real services.

Registry, rollouts and gateway from ``e2e_stack``, artifacts on moto's S3 API, one real NATS
JetStream and PostgreSQL. An image is uploaded through the page (its progress bar reaches 100%),
listed with its hashes, refused when its inner hash is wrong, and deleted through the dialog; a
device's page follows the feedback the device posts through the gateway, live; a viewer's key
sees no write control, and a forged POST is refused. Each page is photographed into
``GAGGLE_CONSOLE_SCREENSHOTS`` (else the test's temporary folder).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_artifacts.app import build_app as build_artifacts
from gaggle_artifacts.settings import ArtifactsSettings
from gaggle_console.app import build_app as build_console
from gaggle_console.settings import ConsoleSettings
from gaggle_contracts.settings import CommonSettings
from gaggle_storage import StorageSettings
from gaggle_swu import make_rawfile_swu
from gaggle_testing import eventually
from tests.e2e.browser import needs_chromium
from tests.e2e.conftest import BOARD, REVISION, E2EStack

pytestmark = [
    pytest.mark.e2e,
    needs_chromium,
]
DEVICE = "press-live-01"


def _image(version: str, *, wrong_hash: bool = False) -> bytes:
    """An unsigned one-file image of ~2 MiB (big enough for several progress events)."""
    return make_rawfile_swu(
        os.urandom(2 * 1024 * 1024),
        version=version,
        board=BOARD,
        revisions=[REVISION],
        install_path="/tmp/payload",
        key=None,
        cert=None,
        sha256="0" * 64 if wrong_hash else None,
    )


async def _sign_in(page: Any, base: str, key: str) -> None:
    await page.goto(f"{base}/sign-in")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/overview")


async def _upload(page: Any, path: Path) -> str:
    """Upload ``path`` through the form; the result line once the console answered."""
    await page.get_by_label("SWUpdate image (.swu)").set_input_files(str(path))
    await page.get_by_role("button", name="Upload").click()
    result = page.locator("#upload-result p")
    await result.wait_for(timeout=30_000)
    text: str = await result.inner_text()
    return text


async def _feedback(stack: E2EStack, action_id: str, execution: str, details: list[str]) -> None:
    """The device reports on its action through the real gateway."""
    r = await stack.client.post(
        f"{stack.gateway_url}/{stack.tenant}/controller/v1/{DEVICE}"
        f"/deploymentBase/{action_id}/feedback",
        json={
            "id": action_id,
            "status": {"execution": execution, "result": {"finished": "none"}, "details": details},
        },
    )
    assert r.status_code == 200, r.text


async def _key(stack: E2EStack, **body: Any) -> str:
    r = await stack.client.post(f"{stack.registry.url}/api/v1/keys", json={"name": "v", **body})
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


async def test_console_software_upload_delete_device_live_log_and_viewer(
    e2e_stack: E2EStack,
    serve: Any,
    common: CommonSettings,
    operator_key: str,
    s3_endpoint: str,
    browser: Any,
    shots: Path,
    tmp_path: Path,
) -> None:
    stack = e2e_stack
    storage = StorageSettings(
        backend="s3",
        s3_endpoint=s3_endpoint,
        s3_bucket=f"console-{os.urandom(4).hex()}",
        s3_access_key="testing",
        s3_secret_key="testing",
    )
    artifacts = await serve(build_artifacts(common, ArtifactsSettings(), storage))
    console = await serve(
        build_console(
            common,
            ConsoleSettings(
                registry_url=stack.registry.url,
                rollouts_url=stack.rollouts.url,
                artifacts_url=artifacts.url,
            ),
        )
    )
    base = console.url
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await _sign_in(page, base, operator_key)

    # Upload: the bar reaches 100%, and artifacts' answer is shown.
    good = tmp_path / "press-2.0.swu"
    good.write_bytes(_image("2.0"))
    await page.goto(f"{base}/software")
    text = await _upload(page, good)
    assert text.startswith("Uploaded "), text
    bar = page.locator("#upload-progress")
    assert await bar.evaluate("el => [el.value, el.max]") == [100, 100]
    assert "(100%)" in await page.locator("#upload-progress-label").inner_text()
    await page.screenshot(path=shots / "software-upload-done.png", full_page=True)

    # A wrong inner hash: artifacts' 422 and its reason on the page; nothing recorded.
    bad = tmp_path / "bad.swu"
    bad.write_bytes(_image("2.1", wrong_hash=True))
    text = await _upload(page, bad)
    assert text.startswith("Refused (422)"), text
    assert "does not match the sha256" in text

    # The list: the upload with its hashes, and only it.
    await page.goto(f"{base}/software")
    data = good.read_bytes()
    rows = page.locator("#software tbody tr[data-id]")
    assert await rows.count() == 1
    row = rows.first
    assert await row.locator("code.sha256").inner_text() == hashlib.sha256(data).hexdigest()
    assert await row.locator("code.sha1").inner_text() == hashlib.sha1(data).hexdigest()  # noqa: S324
    assert await row.locator("code.md5").inner_text() == hashlib.md5(data).hexdigest()  # noqa: S324
    assert await row.locator(".badge").inner_text() == "unsigned"
    assert f"{BOARD} / {REVISION}" in await row.inner_text()
    software_id = await row.get_attribute("data-id")
    await page.screenshot(path=shots / "software-list.png", full_page=True)

    # Its page, then delete through the dialog.
    await row.locator("th a").click()
    await page.wait_for_url(f"{base}/software/{software_id}")
    assert "press-2.0.swu" in await page.get_by_role("main").inner_text()
    await page.screenshot(path=shots / "software-detail.png", full_page=True)
    await page.get_by_role("link", name="Delete").click()
    dialog = page.get_by_role("dialog")
    await dialog.wait_for()
    assert "removed for good" in await dialog.inner_text()
    await page.screenshot(path=shots / "software-delete-dialog.png")
    await dialog.get_by_role("button", name="Delete").click()
    await page.wait_for_url(f"{base}/software?deleted={software_id}&how=hard")
    assert "was deleted (with its image)" in await page.locator("#deleted-notice").inner_text()
    assert await page.locator("#software tbody tr[data-id]").count() == 0
    r = await stack.client.get(f"{artifacts.url}/api/v1/software/{software_id}")
    assert r.status_code == 404, r.text

    # A device with an open action: its page follows the device's feedback live.
    await stack.poll(DEVICE)
    r = await stack.client.put(
        f"{stack.gateway_url}/{stack.tenant}/controller/v1/{DEVICE}/configData",
        json={"data": {"hw_boardname": BOARD, "hw_revision": REVISION, "sw_version": "1.0"}},
    )
    assert r.status_code == 200, r.text
    await stack.wait_device(DEVICE, lambda d: d.get("sw_version") == "1.0")
    software = await stack.publish_software(b"live image" * 100, version="1.1", filename="l.swu")
    action = await stack.create_action(DEVICE, software.software_id)
    action_id = str(action["id"])
    await stack.wait_offered(DEVICE, lambda links: "deploymentBase" in links, what="no deployment")

    await page.goto(f"{base}/devices?q={DEVICE}")
    await page.get_by_role("link", name=DEVICE).click()
    await page.wait_for_url(f"{base}/devices/{DEVICE}")
    assert await page.locator("#sw-version").inner_text() == "1.0"
    await page.locator('#log-state[data-state="open"]').wait_for(timeout=10_000)
    await page.evaluate("window.stillTheSamePage = true")
    log = page.locator("#live-log")
    await _feedback(stack, action_id, "download", ["downloading l.swu"])
    await _feedback(stack, action_id, "proceeding", ["writing rootfs", "verified payload"])
    await page.wait_for_function(
        "document.getElementById('live-log').textContent.includes('verified payload')",
        timeout=10_000,
    )
    shown = [line.strip() for line in await log.locator(".detail").all_inner_texts()]
    assert shown == ["downloading l.swu", "writing rootfs", "verified payload"], shown
    heads = await log.locator(".head").all_inner_texts()
    assert [h.split(" ", 2)[-1].strip() for h in heads] == [
        f"action {action_id} download",
        f"action {action_id} proceeding",
    ], heads
    assert await page.evaluate("window.stillTheSamePage") is True  # not reloaded
    await page.screenshot(path=shots / "device.png", full_page=True)

    # The action's own page: its whole history, the device's lines in it.
    await page.get_by_role("link", name=f"Action {action_id}").click()
    await page.wait_for_url(f"{base}/devices/{DEVICE}/actions/{action_id}")

    async def in_the_history() -> int:  # rollouts records the feedback shortly
        await page.reload()
        found: int = await page.get_by_text("verified payload").count()
        return found

    await eventually(in_the_history, timeout=10, interval=0.2)
    await page.screenshot(path=shots / "device-action.png", full_page=True)
    await page.go_back()

    # The policy: a refusal shows by the form; a good one is saved.
    await page.get_by_label("Assigned: one chosen software").check()
    await page.get_by_role("button", name="Save policy").click()
    refusal = page.locator("#policy-refused")
    assert "mode assigned needs a software_id" in await refusal.inner_text()
    await page.get_by_label("Latest: the newest software of its feed that fits").check()
    await page.get_by_role("button", name="Save policy").click()
    await page.wait_for_url(f"{base}/devices/{DEVICE}?saved=policy#policy")
    assert "Mode latest" in await page.locator("#policy-now").inner_text()

    # On a phone.
    phone = await browser.new_page(viewport={"width": 390, "height": 844})
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(f"{base}/devices/{DEVICE}")
    await phone.screenshot(path=shots / "device-phone.png", full_page=True)
    await phone.close()

    # A viewer: no upload, register, delete, policy or cancel; a forged POST is refused.
    r = await stack.client.post(
        f"{artifacts.url}/api/v1/software", params={"filename": "kept.swu"}, content=_image("3.0")
    )
    assert r.status_code == 201, r.text
    kept = r.json()["id"]
    viewer_key = await _key(stack, role="viewer")

    async def artifacts_knows_the_viewer() -> bool:
        headers = {"Authorization": f"Bearer {viewer_key}"}
        answer = await stack.client.get(f"{artifacts.url}/api/v1/software", headers=headers)
        return answer.status_code == 200

    await eventually(artifacts_knows_the_viewer)
    viewer = await (await browser.new_context()).new_page()
    await _sign_in(viewer, base, viewer_key)
    await viewer.goto(f"{base}/software")
    assert await viewer.locator("#software tbody tr[data-id]").count() == 1
    for control in ("#upload-form", "#register", "a[data-delete]", "dialog"):
        assert await viewer.locator(control).count() == 0, control
    await viewer.goto(f"{base}/software/{kept}")
    assert await viewer.get_by_role("link", name="Delete").count() == 0
    await viewer.goto(f"{base}/devices/{DEVICE}")
    assert await viewer.locator("#policy-now").count() == 1
    assert await viewer.locator(f"#action-{action_id}").count() == 1
    assert await viewer.get_by_role("button", name="Save policy").count() == 0
    assert await viewer.get_by_role("button", name=f"Cancel action {action_id}").count() == 0
    forged = await viewer.request.post(f"{base}/software/{kept}/delete", form={"csrf": "forged"})
    assert forged.status == 403
    bare = await viewer.request.post(f"{base}/devices/{DEVICE}/policy", form={"mode": "pinned"})
    assert bare.status == 403
    upload = await viewer.request.post(
        f"{base}/software/upload", data=b"x", headers={"X-Filename": "x.swu"}
    )
    assert upload.status == 403
    assert "CSRF token" in (await upload.json())["message"]
    r = await stack.client.get(f"{artifacts.url}/api/v1/software/{kept}")
    assert r.status_code == 200, r.text

    # Without script, Delete leads to a confirmation page, and the same delete.
    nojs_context = await browser.new_context(java_script_enabled=False)
    nojs = await nojs_context.new_page()
    await _sign_in(nojs, base, operator_key)
    await nojs.goto(f"{base}/software/{kept}")
    await nojs.get_by_role("link", name="Delete").click()
    await nojs.wait_for_url(f"{base}/software/{kept}/delete")
    await nojs.get_by_role("button", name="Delete").click()
    await nojs.wait_for_url(f"{base}/software?deleted={kept}&how=hard")
    r = await stack.client.get(f"{artifacts.url}/api/v1/software/{kept}")
    assert r.status_code == 404, r.text
    await nojs_context.close()

    # The operator cancels the open action from the device page.
    await page.goto(f"{base}/devices/{DEVICE}")
    await page.get_by_role("button", name=f"Cancel action {action_id}").click()
    await page.wait_for_url(f"{base}/devices/{DEVICE}?canceled={action_id}")
    badge = page.locator(f"#action-{action_id} .badge").first
    assert await badge.inner_text() == "canceling"

    # The live log's stream follows the operator's key: without a session there is none.
    anonymous = await browser.new_page()
    response = await anonymous.request.get(f"{base}/devices/{DEVICE}/log")
    assert response.status == 401
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(f"{base}/devices/{DEVICE}/log")).status_code == 401
