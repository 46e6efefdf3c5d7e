"""End-to-end fixtures: registry + rollouts + gateway in the test's event loop, real device clients.

``e2e_stack`` starts the three services in-process (see ``tests/integration/test_first_contact.py``)
against this test's NATS and fresh database, with the gateway serving a 1 s polling interval and
streaming artifacts from a local object store in a temporary folder. The returned
:class:`E2EStack` plays the operator and the artifacts service:

* :meth:`E2EStack.publish_software` stores bytes in the object store and announces them with a
  ``software.created`` event, as the artifacts service would;
* :meth:`E2EStack.create_action` assigns it to a device through the rollouts API (creating the
  device in the registry first if it has not polled yet), retrying while rollouts has not
  consumed the event: it asks artifacts about software it was not told of, and answers 503 as no
  artifacts service runs here;
* :meth:`E2EStack.wait_action` polls an action until it reaches a status (bounded), and fails with
  the action's history plus the device client's log tail otherwise.

Client fixtures: ``swupdate_bin`` (the Debian ``swupdate``; fails under ``CI=true``, skips
otherwise when it cannot be installed), ``signing_cert`` (key and certificate for signed ``.swu``
images), ``rauc_python`` (the rauc-hawkbit 0.2.0 venv, cached under ``.gaggle/test-venvs``).

Every test in this folder is marked ``e2e``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gaggle_contracts.events import Compatibility, SoftwareCreated
from gaggle_contracts.settings import CommonSettings
from gaggle_gateway.app import build_app as build_gateway
from gaggle_gateway.settings import GatewaySettings
from gaggle_registry.app import build_app as build_registry
from gaggle_registry.settings import RegistrySettings
from gaggle_rollouts.app import build_app as build_rollouts
from gaggle_rollouts.settings import RolloutsSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_storage import LocalStore, StorageSettings
from tests.e2e.browser import browser, shots

__all__ = ["browser", "shots"]  # fixtures of every e2e test

ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
#: Cache for client virtual environments; reused by later runs (ignored by git via ``.gaggle/``).
TEST_VENVS = ROOT / ".gaggle" / "test-venvs"

#: Board and revision every simulated device reports; images are built for them.
BOARD = "e2eboard"
REVISION = "1.0"

CLOSED_STATUSES = frozenset({"finished", "error", "canceled"})

Diagnostics = Callable[[], str]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this folder ``e2e``."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


# -- helpers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Software:
    """A software as published by :meth:`E2EStack.publish_software`."""

    software_id: str
    name: str
    version: str
    filename: str
    object_key: str
    data: bytes

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest()

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.data, usedforsecurity=False).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def history_details(action: dict[str, Any]) -> list[str]:
    """Every detail line of an action's history, oldest first."""
    return [d for entry in action.get("history") or [] for d in entry.get("details") or []]


def has_detail(action: dict[str, Any], text: str) -> bool:
    """Whether any history entry has a detail line containing ``text``."""
    return any(text in d for d in history_details(action))


def format_action(action: dict[str, Any] | None, *, max_detail: int = 300) -> str:
    """The action as readable text for assertion messages (long detail lines shortened)."""
    if action is None:
        return "(action never fetched)"
    head = {k: v for k, v in action.items() if k != "history"}
    lines = [json.dumps(head, default=str)]
    for entry in action.get("history") or []:
        details = [d if len(d) <= max_detail else d[:max_detail] + "…" for d in entry["details"]]
        summary = {k: v for k, v in entry.items() if k != "details"}
        lines.append(f"  {json.dumps(summary, default=str)} details={details}")
    return "\n".join(lines)


async def _call(fn: Callable[[], Any]) -> Any:
    result = fn()
    if inspect.isawaitable(result):
        result = await result
    return result


class E2EStack:
    """The running services plus the operator's and the artifacts service's side of the tests."""

    def __init__(
        self,
        *,
        tenant: str,
        gateway: Any,
        registry: Any,
        rollouts: Any,
        store: LocalStore,
        client: httpx.AsyncClient,
        broker: Any,
    ) -> None:
        self.tenant = tenant
        self.gateway = gateway
        self.registry = registry
        self.rollouts = rollouts
        self.store = store
        self.client = client
        self.broker = broker

    @property
    def gateway_url(self) -> str:
        """``http://127.0.0.1:<port>`` of the DDI gateway (what devices are given)."""
        return str(self.gateway.url)

    # -- artifacts service's side ---------------------------------------------------------------

    async def publish_software(
        self,
        data: bytes,
        *,
        version: str,
        filename: str,
        name: str = "e2e-image",
        hw_model: str = BOARD,
        software_id: str | None = None,
    ) -> Software:
        """Store ``data`` in the object store and publish ``software.created`` for it."""
        software_id = software_id or str(secrets.randbelow(10**9) + 1)
        key = f"{self.tenant}/{software_id}/{filename}"

        async def chunks() -> AsyncIterator[bytes]:
            step = 64 * 1024
            for i in range(0, len(data), step):
                yield data[i : i + step]

        written = await self.store.write(key, chunks())
        assert written == len(data)
        software = Software(software_id, name, version, filename, key, data)
        event = SoftwareCreated(
            tenant=self.tenant,
            software_id=software_id,
            name=name,
            version=version,
            filename=filename,
            size=len(data),
            md5=software.md5,
            sha1=software.sha1,
            sha256=software.sha256,
            compatibility=[Compatibility(hw_model=hw_model, hw_revision="*")],
            object_key=key,
        )
        await publish_event(self.broker, event)
        return software

    # -- operator's side (rollouts API) ---------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.rollouts.url}/api/v1{path}"

    async def ensure_device(self, controller_id: str) -> None:
        """Create the device in the registry unless it exists, without a token (it polls as before).

        Rollouts refuses actions for a device no service knows, so an operator creates a device
        that has not polled yet before assigning it anything.
        """
        url = f"{self.registry.url}/api/v1/devices"
        params = {"tenant": self.tenant}
        r = await self.client.post(url, params=params, json={"controller_id": controller_id})
        if r.status_code == 409:  # it polled already
            return
        assert r.status_code == 201, f"POST /devices {controller_id} -> {r.status_code} {r.text}"
        r = await self.client.delete(f"{url}/{controller_id}/token", params=params)
        assert r.status_code == 200, f"DELETE /devices/{controller_id}/token -> {r.text}"

    async def create_action(
        self, controller_id: str, software_id: str, type: str = "forced", *, timeout: float = 15.0
    ) -> dict[str, Any]:
        """``POST /devices/{id}/actions``; retries until rollouts has consumed the software."""
        await self.ensure_device(controller_id)
        deadline = time.monotonic() + timeout
        while True:
            r = await self.client.post(
                self._url(f"/devices/{controller_id}/actions"),
                params={"tenant": self.tenant},
                json={"software_id": software_id, "type": type},
            )
            if r.status_code == 201:
                action: dict[str, Any] = r.json()
                assert action["controller_id"] == controller_id, action
                assert action["software_id"] == software_id, action
                assert action["active"] is True, action
                return action
            if r.status_code not in (404, 503) or time.monotonic() > deadline:
                raise AssertionError(
                    f"POST /devices/{controller_id}/actions software_id={software_id} "
                    f"type={type} -> {r.status_code} {r.text}"
                )
            await asyncio.sleep(0.1)

    async def get_action(self, action_id: str) -> dict[str, Any]:
        """``GET /actions/{id}``."""
        r = await self.client.get(
            self._url(f"/actions/{action_id}"), params={"tenant": self.tenant}
        )
        assert r.status_code == 200, f"GET /actions/{action_id} -> {r.status_code} {r.text}"
        action: dict[str, Any] = r.json()
        return action

    async def cancel_action(self, action_id: str) -> dict[str, Any]:
        """``POST /actions/{id}/cancel``; asserts the answer says ``canceling``."""
        r = await self.client.post(
            self._url(f"/actions/{action_id}/cancel"), params={"tenant": self.tenant}
        )
        assert r.status_code == 200, f"POST /actions/{action_id}/cancel -> {r.status_code} {r.text}"
        action: dict[str, Any] = r.json()
        assert action["status"] == "canceling", format_action(action)
        assert action["active"] is True, format_action(action)
        return action

    async def wait_action(
        self,
        action_id: str,
        status: str | Collection[str] | None = None,
        *,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = 20.0,
        diagnostics: Diagnostics | None = None,
        interval: float = 0.1,
    ) -> dict[str, Any]:
        """Poll the action until its status is (one of) ``status`` and ``until(action)`` holds.

        Raises:
            AssertionError: after ``timeout`` seconds, with the action, its history and
                ``diagnostics()`` (e.g. the device client's log tail).
        """
        wanted = {status} if isinstance(status, str) else set(status or ())
        deadline = time.monotonic() + timeout
        action: dict[str, Any] | None = None
        while True:
            action = await self.get_action(action_id)
            if (not wanted or action["status"] in wanted) and (until is None or until(action)):
                return action
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(interval)
        want = f"status in {sorted(wanted)}" if wanted else "the condition"
        raise AssertionError(
            f"action {action_id} did not reach {want} within {timeout:.0f}s; "
            f"last seen:\n{format_action(action)}"
            + (f"\n{await _call(diagnostics)}" if diagnostics else "")
        )

    def action_condition(
        self, action_id: str, check: Callable[[dict[str, Any]], bool]
    ) -> Callable[[], Awaitable[bool]]:
        """An async no-argument condition for the client harnesses' ``until=``."""

        async def condition() -> bool:
            return check(await self.get_action(action_id))

        return condition

    # -- registry -------------------------------------------------------------------------------

    async def wait_device(
        self,
        controller_id: str,
        until: Callable[[dict[str, Any]], bool] = lambda device: True,
        *,
        timeout: float = 15.0,
        diagnostics: Diagnostics | None = None,
    ) -> dict[str, Any]:
        """Poll the registry until it has ``controller_id`` and ``until(device)`` holds."""
        deadline = time.monotonic() + timeout
        last: str = "(never asked)"
        while True:
            r = await self.client.get(
                f"{self.registry.url}/api/v1/devices/{controller_id}",
                params={"tenant": self.tenant},
            )
            last = f"{r.status_code} {r.text}"
            if r.status_code == 200 and until(device := r.json()):
                return dict(device)
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"registry: device {controller_id} not as expected within {timeout:.0f}s; "
            f"last answer: {last}" + (f"\n{await _call(diagnostics)}" if diagnostics else "")
        )

    # -- a device's view ------------------------------------------------------------------------

    async def poll(self, controller_id: str) -> dict[str, Any]:
        """One DDI base poll as ``controller_id`` (what the device would be offered now)."""
        r = await self.client.get(f"{self.gateway_url}/{self.tenant}/controller/v1/{controller_id}")
        assert r.status_code == 200, f"base poll {controller_id} -> {r.status_code} {r.text}"
        body: dict[str, Any] = r.json()
        return body

    async def wait_offered(
        self,
        controller_id: str,
        check: Callable[[dict[str, Any]], bool],
        *,
        what: str,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Base-poll until ``check(_links)`` holds (the KV mirror follows rollouts shortly)."""
        deadline = time.monotonic() + timeout
        while True:
            links = (await self.poll(controller_id)).get("_links") or {}
            if check(links):
                return links
            if time.monotonic() > deadline:
                raise AssertionError(f"base poll of {controller_id}: {what}; _links={links}")
            await asyncio.sleep(0.1)


def random_id(prefix: str) -> str:
    """A controller id no other test uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def tail(text: str, lines: int = 60) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


def last_entry(
    action: dict[str, Any], *, executions: Iterable[str] | None = None
) -> dict[str, Any]:
    """The newest history entry (with one of ``executions`` if given)."""
    wanted = set(executions) if executions is not None else None
    for entry in reversed(action.get("history") or []):
        if wanted is None or entry.get("execution") in wanted:
            return dict(entry)
    raise AssertionError(f"no history entry with execution in {wanted}:\n{format_action(action)}")


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
async def e2e_stack(
    common: CommonSettings, serve: Any, tenant: str, tmp_path: Path, operator_auth: httpx.Auth
) -> AsyncIterator[E2EStack]:
    """Registry, rollouts and gateway (1 s polling, local object store) for one test."""
    objects = tmp_path / "objects"
    registry = await serve(build_registry(common, RegistrySettings()))
    rollouts = await serve(build_rollouts(common, RolloutsSettings()))
    gateway = await serve(
        build_gateway(
            common,
            GatewaySettings(polling_sleep="00:00:01"),
            StorageSettings(backend="local", dir=objects),
        )
    )
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        async with httpx.AsyncClient(timeout=15, auth=operator_auth) as client:
            yield E2EStack(
                tenant=tenant,
                gateway=gateway,
                registry=registry,
                rollouts=rollouts,
                store=LocalStore(objects),
                client=client,
                broker=broker,
            )
    finally:
        await broker.stop()


@pytest.fixture(scope="session")
def swupdate_bin() -> str:
    """Path of the real ``swupdate`` (installed with apt-get when running as root).

    When it cannot be had, the test fails under ``CI=true`` and is skipped otherwise; the message
    names the Debian package to install.
    """
    from tests.e2e.swupdate_harness import SwupdateError, ensure_swupdate

    try:
        return ensure_swupdate(install_timeout=300)
    except SwupdateError as exc:
        message = f"SWUpdate e2e tests need the Debian package 'swupdate': {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def signing_cert(tmp_path_factory: pytest.TempPathFactory, swupdate_bin: str) -> tuple[Path, Path]:
    """``(key, cert)`` that sign test ``.swu`` images; swupdate trusts ``cert`` (``-k``)."""
    from gaggle_swu.build import make_signing_cert

    return make_signing_cert(tmp_path_factory.mktemp("swu-signing"))


@pytest.fixture(scope="session")
def rauc_python() -> Path:
    """Python of the rauc-hawkbit 0.2.0 venv under ``.gaggle/test-venvs`` (built once, reused)."""
    from tests.e2e.rauc_env import ensure_rauc_hawkbit_venv

    try:
        return ensure_rauc_hawkbit_venv(TEST_VENVS)
    except RuntimeError as exc:
        pytest.fail(f"cannot provision the rauc-hawkbit venv under {TEST_VENVS}: {exc}")
