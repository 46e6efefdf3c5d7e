"""The real SWUpdate suricatta client against registry + rollouts + gateway.

Each test plays the artifacts service (a signed ``.swu`` in the object store plus its
``software.created`` event) and the operator (the rollouts action API), then runs the Debian
``swupdate`` binary through :mod:`tests.e2e.swupdate_harness`. Failures carry the swupdate log
tail and the action's history.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from gaggle_swu.build import make_rawfile_swu
from tests.e2e.conftest import (
    BOARD,
    CLOSED_STATUSES,
    REVISION,
    E2EStack,
    format_action,
    has_detail,
    last_entry,
    random_id,
)
from tests.e2e.swupdate_harness import SwupdateDevice, SwupdateError

pytestmark = pytest.mark.e2e

log = logging.getLogger(__name__)

OLD_VERSION = "0.0.1"
PAYLOAD_SIZE = 300 * 1024


def make_image(
    tmp_path: Path, signing_cert: tuple[Path, Path], version: str, **overrides: Any
) -> tuple[bytes, bytes, Path]:
    """``(swu, payload, install_path)``: a signed rawfile image writing into the device dir."""
    key, cert = signing_cert
    payload = os.urandom(PAYLOAD_SIZE)
    install_path = tmp_path / "device" / "installed.bin"
    swu = make_rawfile_swu(
        payload,
        version=version,
        board=BOARD,
        revisions=[REVISION],
        install_path=str(install_path),
        key=key,
        cert=cert,
        **overrides,
    )
    return swu, payload, install_path


def make_device(
    stack: E2EStack, tmp_path: Path, signing_cert: tuple[Path, Path], swupdate_bin: str, cid: str
) -> SwupdateDevice:
    return SwupdateDevice(
        server_url=stack.gateway_url,
        tenant=stack.tenant,
        controller_id=cid,
        workdir=tmp_path / "device",
        public_cert=signing_cert[1],
        board=BOARD,
        revision=REVISION,
        sw_version=OLD_VERSION,
        binary=swupdate_bin,
    )


async def device_run(stack: E2EStack, action_id: str, run: Awaitable[float]) -> float:
    """Await a harness run; on failure add the action's history to swupdate's log tail."""
    try:
        return await run
    except SwupdateError as exc:
        action = await stack.get_action(action_id)
        raise AssertionError(f"{exc}\n--- action {action_id} ---\n{format_action(action)}") from exc


def is_offered(action_id: str) -> Any:
    def check(links: dict[str, Any]) -> bool:
        href = (links.get("deploymentBase") or {}).get("href", "")
        return f"/deploymentBase/{action_id}" in href

    return check


@pytest.mark.timeout(180)
async def test_swupdate_full_cycle_installs_and_finishes_the_action(
    e2e_stack: E2EStack, tmp_path: Path, signing_cert: tuple[Path, Path], swupdate_bin: str
) -> None:
    version = "1.0.1"
    swu, payload, install_path = make_image(tmp_path, signing_cert, version)
    software = await e2e_stack.publish_software(
        swu, version=version, filename=f"e2e-image-{version}.swu"
    )
    cid = random_id("swu")
    action = await e2e_stack.create_action(cid, software.software_id, "forced")
    action_id = action["id"]
    assert action["version"] == version
    await e2e_stack.wait_offered(cid, is_offered(action_id), what="new action not offered")
    dev = make_device(e2e_stack, tmp_path, signing_cert, swupdate_bin, cid)

    with dev:
        # Phase 1: download, verify, install; SWUpdate then reports "All Chunks Installed."
        await device_run(
            e2e_stack,
            action_id,
            dev.run_phase1_async(
                install_path,
                expected_payload=payload,
                until=e2e_stack.action_condition(
                    action_id, lambda a: has_detail(a, "All Chunks Installed.")
                ),
                timeout=60,
            ),
        )
        assert install_path.read_bytes() == payload
        after1 = await e2e_stack.get_action(action_id)
        context = f"{format_action(after1)}\n{dev.log_tail('phase1')}"
        assert after1["active"] is True, context
        assert after1["status"] not in CLOSED_STATUSES, context
        chunks = [e for e in after1["history"] if "All Chunks Installed." in e["details"]]
        assert chunks, context
        assert chunks[-1]["execution"] == "proceeding", context
        assert chunks[-1]["finished"] == "none", context
        # The action must still be offered, or phase 2 reports nothing.
        await e2e_stack.wait_offered(
            cid, is_offered(action_id), what="action not offered after phase 1", timeout=3
        )

        # Phase 2: restart as after a reboot (-c 2); SWUpdate posts closed/success.
        await device_run(
            e2e_stack,
            action_id,
            dev.run_phase2_async(
                e2e_stack.action_condition(action_id, lambda a: a["status"] in CLOSED_STATUSES),
                sw_version=version,
                timeout=45,
            ),
        )

    final = await e2e_stack.wait_action(
        action_id, "finished", timeout=10, diagnostics=lambda: dev.log_tail("phase2")
    )
    context = f"{format_action(final)}\n{dev.log_tail('phase2')}"
    log.info("final action:\n%s", format_action(final))
    assert final["active"] is False, context
    assert final["closed_at"], context
    closing = final["history"][-1]
    assert closing["execution"] == "closed", context
    assert closing["finished"] == "success", context
    assert "Update Installed." in closing["details"], context
    links = await e2e_stack.wait_offered(
        cid, lambda links: "deploymentBase" not in links, what="finished action still offered"
    )
    assert "cancelAction" not in links


@pytest.mark.timeout(120)
async def test_swupdate_failed_install_ends_the_action_in_error(
    e2e_stack: E2EStack, tmp_path: Path, signing_cert: tuple[Path, Path], swupdate_bin: str
) -> None:
    version = "1.0.2"
    # sw-description declares a sha256 the payload does not have: SWUpdate refuses to install.
    # (not all zeros: SWUpdate reads an all-zero hash as "hash not set").
    wrong = hashlib.sha256(b"not the payload").hexdigest()
    swu, _, install_path = make_image(tmp_path, signing_cert, version, sha256=wrong)
    software = await e2e_stack.publish_software(
        swu, version=version, filename=f"e2e-broken-{version}.swu"
    )
    cid = random_id("swu")
    action_id = (await e2e_stack.create_action(cid, software.software_id, "forced"))["id"]
    dev = make_device(e2e_stack, tmp_path, signing_cert, swupdate_bin, cid)

    with dev:
        await device_run(
            e2e_stack,
            action_id,
            dev.run_until_async(
                e2e_stack.action_condition(action_id, lambda a: a["status"] in CLOSED_STATUSES),
                phase="install",
                sw_version=OLD_VERSION,
                timeout=60,
            ),
        )

    final = await e2e_stack.wait_action(
        action_id, "error", timeout=10, diagnostics=lambda: dev.log_tail("install")
    )
    context = f"{format_action(final)}\n{dev.log_tail('install')}"
    log.info("final action:\n%s", format_action(final))
    assert final["active"] is False, context
    closing = last_entry(final, executions={"closed"})
    assert closing["finished"] == "failure", context
    # SWUpdate's log thread may still post a batch after its closed/failure; it is kept in the
    # history, but nothing after the closing report moves the action.
    after = final["history"][final["history"].index(closing) :]
    assert all(h["status"] == "error" for h in after), context
    assert closing["details"], context  # SWUpdate 2022.12 says "No suitable .swu image found"
    # SWUpdate's uploaded log lines, with the reason, are in the history.
    assert has_detail(final, "HASH mismatch"), context
    assert has_detail(final, wrong), context
    assert not install_path.exists(), "a payload with a wrong hash was installed\n" + context


@pytest.mark.timeout(120)
async def test_swupdate_acknowledges_a_cancel_before_installing(
    e2e_stack: E2EStack, tmp_path: Path, signing_cert: tuple[Path, Path], swupdate_bin: str
) -> None:
    version = "1.0.3"
    swu, _, install_path = make_image(tmp_path, signing_cert, version)
    software = await e2e_stack.publish_software(
        swu, version=version, filename=f"e2e-cancel-{version}.swu"
    )
    cid = random_id("swu")
    action_id = (await e2e_stack.create_action(cid, software.software_id, "forced"))["id"]
    await e2e_stack.cancel_action(action_id)
    await e2e_stack.wait_offered(
        cid,
        lambda links: (
            f"/cancelAction/{action_id}" in (links.get("cancelAction") or {}).get("href", "")
        ),
        what="cancelAction not offered after the cancel request",
    )
    dev = make_device(e2e_stack, tmp_path, signing_cert, swupdate_bin, cid)

    with dev:
        await device_run(
            e2e_stack,
            action_id,
            dev.run_until_async(
                e2e_stack.action_condition(action_id, lambda a: a["status"] in CLOSED_STATUSES),
                phase="cancel",
                sw_version=OLD_VERSION,
                timeout=45,
            ),
        )

    final = await e2e_stack.wait_action(
        action_id, "canceled", timeout=10, diagnostics=lambda: dev.log_tail("cancel")
    )
    context = f"{format_action(final)}\n{dev.log_tail('cancel')}"
    log.info("final action:\n%s", format_action(final))
    assert final["active"] is False, context
    ack = last_entry(final, executions={"closed", "canceled"})
    assert ack["execution"] == "closed" and ack["finished"] == "success", context
    assert not install_path.exists(), "SWUpdate installed a canceled action\n" + context
    links = await e2e_stack.wait_offered(
        cid,
        lambda links: "cancelAction" not in links and "deploymentBase" not in links,
        what="canceled action still offered",
    )
    assert "deploymentBase" not in links
