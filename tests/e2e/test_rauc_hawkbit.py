"""The real rauc-hawkbit 0.2.0 DDI client library against registry + rollouts + gateway.

The client runs in its own venv (``.gaggle/test-venvs/rauc-hawkbit``, built once by
:func:`tests.e2e.rauc_env.ensure_rauc_hawkbit_venv`) through ``rauc_hawkbit_driver.py``, which
repeats ``RaucDBUSDDIClient``'s HTTP logic with the library's own calls (see its docstring).
Failures carry the driver's steps and log tail and the action's history.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    BOARD,
    REVISION,
    E2EStack,
    format_action,
    has_detail,
    last_entry,
    random_id,
    tail,
)
from tests.e2e.rauc_env import DriverResult, run_driver_async

pytestmark = pytest.mark.e2e

log = logging.getLogger(__name__)

BUNDLE_SIZE = 256 * 1024
DRIVER_TIMEOUT = 45.0
ATTRIBUTES = {
    "client": "rauc-hawkbit-0.2.0",
    "hw_boardname": BOARD,
    "hw_revision": REVISION,
    "sw_version": "0.0.1",
}


def report(res: DriverResult) -> str:
    """The driver's outcome for assertion messages: exit code, steps, stderr tail."""
    steps = []
    for step in res.steps:
        brief = {k: v for k, v in step.items() if k not in ("http", "scenario")}
        http = [
            f"{h.get('method')} {h.get('url')} -> {h.get('status', h.get('exception'))}"
            for h in step.get("http") or []
        ]
        steps.append(f"  {json.dumps(brief, default=str)[:600]} http={http}")
    return (
        f"--- rauc-hawkbit driver exit {res.returncode} ---\n"
        + "\n".join(steps)
        + f"\n--- driver stderr (tail) ---\n{tail(res.stderr, 40)}"
    )


def final_poll_links(res: DriverResult) -> list[str]:
    """The links of the driver's base poll right after its last feedback."""
    (final,) = [step for step in res.step("poll") if step["purpose"] == "final"]
    return list(final["links"] or [])


async def run_rauc(
    stack: E2EStack, python: Path, cid: str, scenario: str, download_dir: Path
) -> DriverResult:
    download_dir.mkdir(parents=True, exist_ok=True)
    return await run_driver_async(
        python,
        url=stack.gateway_url,
        tenant=stack.tenant,
        controller_id=cid,
        scenario=scenario,
        download_dir=download_dir,
        attributes=ATTRIBUTES,
        timeout=DRIVER_TIMEOUT,
        max_sleep=0.5,
    )


async def assign_bundle(stack: E2EStack, cid: str, version: str) -> tuple[bytes, str]:
    """Publish a random bundle and open a forced action for ``cid``: ``(bundle, action_id)``."""
    bundle = os.urandom(BUNDLE_SIZE)
    software = await stack.publish_software(
        bundle, version=version, filename=f"e2e-bundle-{version}.raucb", name="e2e-bundle"
    )
    action = await stack.create_action(cid, software.software_id, "forced")
    assert action["version"] == version
    return bundle, action["id"]


@pytest.mark.timeout(180)  # the first run builds the client venv
async def test_rauc_hawkbit_full_cycle_downloads_and_finishes_the_action(
    e2e_stack: E2EStack, rauc_python: Path, tmp_path: Path
) -> None:
    cid = random_id("rauc")
    # The device comes first: its first poll registers it and asks for its attributes ...
    client = asyncio.create_task(run_rauc(e2e_stack, rauc_python, cid, "success", tmp_path / "dl"))

    async def client_state() -> str:
        if client.done():
            return report(client.result())
        return "(rauc-hawkbit driver still running)"

    try:
        device = await e2e_stack.wait_device(
            cid,
            lambda d: d["attributes"].get("client") == ATTRIBUTES["client"],
            diagnostics=client_state,
        )
        assert device["hw_model"] == BOARD, device
        assert device["sw_version"] == ATTRIBUTES["sw_version"], device
        # ... then the operator assigns the bundle, which the polling device picks up.
        bundle, action_id = await assign_bundle(e2e_stack, cid, "2.0.1")
        res = await client
    finally:
        if not client.done():
            # The driver process exits on its own: its next poll fails once the stack stops,
            # and --timeout bounds it anyway.
            client.cancel()

    context = report(res)
    assert res.returncode == 0, context
    assert res.step("config_data"), context
    (deployment,) = res.step("deployment_base")
    assert deployment["body_id"] == action_id, context
    assert deployment["download"] == "forced" and deployment["update"] == "forced", context
    downloads = res.step("download")
    assert len(downloads) == 1, context  # md5 right on the first try
    download = downloads[0]
    assert download["md5_ok"] and download["sha1_ok"] and download["sha256_ok"], context
    assert download["size"] == download["size_declared"] == len(bundle), context
    assert Path(download["path"]).read_bytes() == bundle, context
    (closed,) = res.step("feedback_closed")
    assert closed["execution"] == "closed" and closed["finished"] == "success", context
    # The stock client polls again at once: the action it just finished is not offered again.
    assert "deploymentBase" not in final_poll_links(res), context

    final = await e2e_stack.wait_action(action_id, "finished", diagnostics=lambda: context)
    log.info("final action:\n%s", format_action(final))
    context = f"{format_action(final)}\n{context}"
    assert final["active"] is False, context
    assert final["closed_at"], context
    closing = final["history"][-1]
    assert closing["execution"] == "closed" and closing["finished"] == "success", context
    assert closing["details"] == ["Rauc bundle update completed with result: 0"], context
    assert has_detail(final, "Installing done."), context
    await e2e_stack.wait_offered(
        cid, lambda links: "deploymentBase" not in links, what="finished action still offered"
    )


@pytest.mark.timeout(180)
async def test_rauc_hawkbit_failed_install_ends_the_action_in_error(
    e2e_stack: E2EStack, rauc_python: Path, tmp_path: Path
) -> None:
    cid = random_id("rauc")
    _, action_id = await assign_bundle(e2e_stack, cid, "2.0.2")

    res = await run_rauc(e2e_stack, rauc_python, cid, "failure", tmp_path / "dl")
    context = report(res)
    assert res.returncode == 0, context  # the scenario (reporting a failure) completed
    (closed,) = res.step("feedback_closed")
    assert closed["finished"] == "failure", context
    assert "deploymentBase" not in final_poll_links(res), context

    final = await e2e_stack.wait_action(action_id, "error", diagnostics=lambda: context)
    log.info("final action:\n%s", format_action(final))
    context = f"{format_action(final)}\n{context}"
    assert final["active"] is False, context
    closing = final["history"][-1]
    assert closing["execution"] == "closed" and closing["finished"] == "failure", context
    assert closing["details"] == ["Rauc bundle update completed with result: 1"], context
    assert has_detail(final, "Installation error: simulated failure"), context
    await e2e_stack.wait_offered(
        cid, lambda links: "deploymentBase" not in links, what="failed action still offered"
    )


@pytest.mark.timeout(180)
async def test_rauc_hawkbit_rejects_a_cancel_and_the_action_runs_on(
    e2e_stack: E2EStack, rauc_python: Path, tmp_path: Path
) -> None:
    cid = random_id("rauc")
    _, action_id = await assign_bundle(e2e_stack, cid, "2.0.3")
    await e2e_stack.cancel_action(action_id)
    await e2e_stack.wait_offered(
        cid,
        lambda links: "cancelAction" in links,
        what="cancelAction not offered after the cancel request",
    )

    res = await run_rauc(e2e_stack, rauc_python, cid, "cancel", tmp_path / "dl")
    context = report(res)
    assert res.returncode == 0, context
    (cancel,) = res.step("cancel_action")
    assert cancel["stop_id"] == action_id, context
    assert cancel["body"] == {"id": action_id, "cancelAction": {"stopId": action_id}}, context
    (feedback,) = res.step("cancel_feedback")
    assert feedback["execution"] == "rejected", context

    # The stock client always refuses: the action goes back to running and stays open.
    def rejected(action: dict[str, Any]) -> bool:
        return any(e.get("execution") == "rejected" for e in action["history"])

    final = await e2e_stack.wait_action(
        action_id, {"cancel_rejected", "running"}, until=rejected, diagnostics=lambda: context
    )
    log.info("final action:\n%s", format_action(final))
    context = f"{format_action(final)}\n{context}"
    assert final["active"] is True, context
    assert final["closed_at"] is None, context
    rejection = last_entry(final, executions={"rejected"})
    assert rejection["details"] == ["Cancelling not supported"], context
    assert rejection["status"] in ("cancel_rejected", "running"), context
    assert any(e["status"] == "canceling" for e in final["history"]), context
    # And the deployment is offered again instead of the cancel.
    links = await e2e_stack.wait_offered(
        cid,
        lambda links: (
            f"/deploymentBase/{action_id}?" in (links.get("deploymentBase") or {}).get("href", "")
        ),
        what="deployment not offered again after the rejected cancel",
    )
    assert "cancelAction" not in links, links


@pytest.mark.timeout(120)
async def test_rauc_hawkbit_device_assigned_before_its_first_poll_is_registered(
    e2e_stack: E2EStack, rauc_python: Path, tmp_path: Path
) -> None:
    """A device that gets an action before it ever polled is still a new device.

    hawkBit asks a new target for its attributes (configData link), and the registry must list
    it after its first poll. rauc-hawkbit only PUTs configData when the link is offered.
    """
    cid = random_id("rauc")
    _, action_id = await assign_bundle(e2e_stack, cid, "2.0.4")

    res = await run_rauc(e2e_stack, rauc_python, cid, "success", tmp_path / "dl")
    context = report(res)
    assert res.returncode == 0, context
    await e2e_stack.wait_action(action_id, "finished", diagnostics=lambda: context)
    first_poll = res.steps[1]
    assert first_poll["step"] == "poll", context
    assert "configData" in first_poll["links"], (
        "the first poll of a new device that already has an action offered no configData link\n"
        + context
    )
    device = await e2e_stack.wait_device(cid, timeout=5, diagnostics=lambda: context)
    assert device["attributes"].get("client") == ATTRIBUTES["client"], device
