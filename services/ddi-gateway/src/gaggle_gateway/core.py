"""The gateway core both entry points answer from: the fast lane and the FastAPI routes.

A request passes three steps here. :meth:`Gateway.authorize` checks the path and credentials
against the KV mirror and says who the caller is; :meth:`Gateway.sighted` notes that the device
was seen (or discovered); the rules of the request then read the mirror, and reports are answered
once JetStream acknowledged their event, else 429 with ``Retry-After`` so the device retries.
Feedback reports have rules of their own, in ``feedback.py``.

Only tenants that exist are served (``Gateway.tenant_exists``); a device's report past one of
hawkBit's quotas is refused (429) before it is acknowledged; and what this gateway acknowledged
is read back at once (``acks.py``): an action whose final report it took is not offered again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import orjson

from gaggle_contracts import names
from gaggle_contracts.ddi import MAX_ATTRIBUTES, ConfigDataBody, DeviceBody
from gaggle_contracts.events import ActionFeedback, CancelFeedback, DeviceConfigReported, Event
from gaggle_contracts.kv import DeploymentEntry, DeviceEntry, OpenAction, TenantConfig
from gaggle_gateway.acks import Acks
from gaggle_gateway.bodies import parse_body
from gaggle_gateway.counters import PollCounts, ReplacedCounts, Strain
from gaggle_gateway.domain import (
    Access,
    attributes_after,
    authorize,
    dither_at,
    jitter_share,
    parse_authorization,
    poll_body,
)
from gaggle_gateway.errors import (
    BadRequest,
    Busy,
    DdiError,
    NotFound,
    QuotaExceeded,
    Unauthorized,
)
from gaggle_gateway.ids import report_id, stamp
from gaggle_gateway.mirror import Mirror
from gaggle_gateway.origin import Origin
from gaggle_gateway.reporting import DeviceReporter
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.bus import publish_event
from gaggle_storage import ObjectStore, StorageSettings

log = logging.getLogger(__name__)

HAL_JSON = "application/hal+json"
PENDING_DEVICE = DeviceEntry(config_requested=False)
ACTION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Publish = Callable[[Event], Awaitable[None]]
FeedbackKind = type[ActionFeedback] | type[CancelFeedback]


class DeviceIds(TypedDict):
    """Whose event it is: the fields every device event starts with."""

    tenant: str
    controller_id: str


@dataclass(frozen=True)
class Caller:
    """An authorised request of one device."""

    tenant: str
    """Normalised (lower-case) tenant."""
    controller_id: str
    config: TenantConfig
    key: str
    device: DeviceEntry | None
    base: str
    """Absolute base URL, with the tenant as the device wrote it."""
    registers: bool = False
    """An unknown device that this request registers (announced as discovered, not seen)."""

    @property
    def ids(self) -> DeviceIds:
        """The device's ids, as its events carry them: ``Event(**caller.ids, ...)``."""
        return {"tenant": self.tenant, "controller_id": self.controller_id}

    def deployment(self, mirror: Mirror) -> DeploymentEntry | None:
        """The device's entry in KV ``deployments``."""
        return mirror.deployments.values.get(self.key)


class Gateway:
    """The state every DDI request is answered from, and the checks they share."""

    def __init__(
        self,
        settings: GatewaySettings,
        mirror: Mirror,
        reporter: DeviceReporter,
        store: ObjectStore,
        storage: StorageSettings,
        publish: Publish,
    ) -> None:
        self.settings = settings
        self.mirror = mirror
        self.reporter = reporter
        self.store = store
        self.storage = storage
        self.publish_event = publish
        self.default_tenant = settings.default_tenant_config()
        self.configured_tenants = settings.configured_tenants()
        self.polls = PollCounts()
        self.replaced = ReplacedCounts()
        self.acks = Acks(settings.final_memory_s, settings.final_memory_max)
        self.poll_jitter = settings.poll_jitter
        self.strain = Strain(
            settings.busy_window_s,
            settings.busy_threshold,
            settings.busy_max_factor,
            settings.busy_ack_latency_s,
        )

    def tenant_config(self, tenant: str) -> TenantConfig:
        """The tenant's configuration from KV, else the defaults."""
        return self.mirror.tenants.values.get(tenant, self.default_tenant)

    def tenant_exists(self, tenant: str) -> bool:
        """Whether ``tenant`` (normalised) was created: configured here, in KV, or given a key."""
        return (
            tenant in self.configured_tenants
            or tenant in self.mirror.tenants.values
            or tenant in self.mirror.key_tenants
        )

    def authorize(
        self,
        origin: Origin,
        tenant_raw: str,
        controller_id: str,
        authorization: str | None,
        *,
        may_register: bool = False,
    ) -> Caller:
        """Validate the path and authenticate; nothing is noted.

        Raises:
            BadRequest: odd tenant or controller id.
            NotFound: no such tenant; or credentials fine but no such device, where this
                request does not register.
            Unauthorized: credentials missing or wrong (whether or not the device exists).
        """
        try:
            tenant = names.normalize_tenant(tenant_raw)
            names.check_controller_id(controller_id)
        except names.InvalidNameError as exc:
            raise BadRequest(str(exc)) from exc
        if not self.tenant_exists(tenant):
            raise NotFound(
                f"tenant {tenant_raw!r} does not exist; an operator creates it (README: Tenants)",
                tenant=tenant_raw,
            )
        config = self.tenant_config(tenant)
        key = names.kv_key(tenant, controller_id)
        device = self.mirror.devices.values.get(key)
        creds = parse_authorization(authorization)
        access = authorize(creds, config, device, may_register=may_register)
        if access is Access.UNKNOWN and key in self.mirror.deployments.values:
            # Rollouts already addresses this device and the registry's entry is on its way
            # (its first poll was moments ago): known, without a token of its own.
            access = authorize(creds, config, PENDING_DEVICE, may_register=False)
        if access is Access.DENY:
            raise Unauthorized()
        if access is Access.UNKNOWN:
            raise NotFound(f"target {controller_id!r} not found")
        base = origin.base(tenant_raw, controller_id)
        registers = access is Access.REGISTER
        return Caller(tenant, controller_id, config, key, device, base, registers)

    def sighted(self, caller: Caller, address: str | None) -> Caller:
        """Note that the device was seen (discovered, if this request registers it); ``caller``."""
        if caller.registers:
            self.reporter.discovered(caller.tenant, caller.controller_id, address)
        else:
            self.reporter.seen(caller.tenant, caller.controller_id, address)
        return caller

    def deployment(self, caller: Caller) -> DeploymentEntry | None:
        """The device's KV ``deployments`` entry as this gateway may show it.

        An open action whose final report this gateway acknowledged is not shown, even while
        the mirror has not caught up with its closing yet.
        """
        entry = self.mirror.deployments.values.get(caller.key)
        if (
            entry is not None
            and entry.open is not None
            and self.acks.finals
            and self.acks.final(caller.key, entry.open.action_id) is not None
        ):
            return entry.model_copy(update={"open": None})
        return entry

    def poll(
        self, origin: Origin, tenant: str, controller_id: str, authorization: str | None
    ) -> bytes:
        """The base poll answer, rendered.

        While the ``deployments`` mirror is not current (NATS away, or the bucket reloading
        after a reconnect), a device it shows with an open action is answered 429 (the action
        may have closed meanwhile), and any other device nothing to do, with a sleep of at least
        ``Retry-After`` (README: Scaling the gateway).

        Raises:
            DdiError: as :meth:`authorize`.
            Busy: the mirror is not current and shows the device with an open action.
        """
        try:
            caller = self.authorize(origin, tenant, controller_id, authorization, may_register=True)
        except DdiError as exc:
            self.polls.fail(exc.status)
            raise
        self.sighted(caller, origin.address)
        entry = self.deployment(caller)
        at_least = 0
        if not self.mirror.deployments.current:
            if entry is not None and entry.open is not None:
                self.polls.fail(429)
                raise self.reloading()
            at_least = self.settings.busy_retry_after_s
        if entry is None or entry.open is None:
            self.polls.idle += 1
            # Only a device with nothing to do waits longer while the gateway is busy: one with
            # an open action has work that the busy stack is there to finish. Which idle devices
            # wait longer depends on the signal (counters.Strain): a device whose final report
            # this gateway took lately has nothing more to do for a while.
            finished = caller.key in self.acks.finals
            factor = self.strain.factor(time.monotonic(), finished=finished)
        else:
            self.polls.action += 1
            factor = 1.0
        share = jitter_share(caller.tenant, caller.controller_id) * self.poll_jitter
        dither = dither_at(self.polls.idle + self.polls.action, share)
        body = poll_body(
            caller.base, caller.config, caller.device, entry, share, factor, dither, at_least
        )
        return orjson.dumps(body)

    def reloading(self) -> Busy:
        """The 429 of a request whose answer depends on a ``deployments`` mirror not current."""
        return Busy(
            "device state is being reloaded after a NATS interruption; retry later",
            self.settings.busy_retry_after_s,
        )

    async def publish(self, event: Event) -> None:
        """Publish and wait for JetStream's ack; its time feeds the busy signal (``Strain``).

        Raises:
            Busy: the bus did not acknowledge in time; the device should retry later.
        """
        sent = time.monotonic()
        try:
            await self.publish_event(event)
        except Exception as exc:
            self.strain.refused(time.monotonic())
            raise Busy(
                "event bus busy or unavailable; retry later", self.settings.busy_retry_after_s
            ) from exc
        now = time.monotonic()
        self.strain.acknowledged(now, now - sent)

    async def report(self, caller: Caller, event: Event, body: DeviceBody) -> None:
        """Publish a device's report (:meth:`publish`), then note any text made storable."""
        await self.publish(event)
        self.noted(caller, event.kind, body)

    def noted(self, caller: Caller, kind: str, body: DeviceBody) -> None:
        """Log and count a report whose text was made storable (the stored record shows U+FFFD)."""
        if body.replaced:
            self.replaced.add(kind)
            log.warning(
                "device text replaced tenant=%s controller_id=%s kind=%s characters=%d",
                caller.tenant,
                caller.controller_id,
                kind,
                body.replaced,
            )

    def check_attributes(self, caller: Caller, mode: str, data: dict[str, str]) -> None:
        """Refuse a configData report that would take the device past hawkBit's quota.

        The device's attribute names come from its KV ``devices`` entry. A report that adds
        nothing (or removes) is taken even from a device already past the quota.

        Raises:
            QuotaExceeded: the device would have more than ``MAX_ATTRIBUTES`` attributes.
        """
        keys = caller.device.attribute_keys if caller.device is not None else ()
        after = attributes_after(keys, mode, data)
        if after > MAX_ATTRIBUTES and after > len(keys):
            raise QuotaExceeded(
                f"this report would leave the device with {after} attributes; "
                f"a device may have at most {MAX_ATTRIBUTES}",
                quota=MAX_ATTRIBUTES,
                attributes=len(keys),
            )

    async def report_config(
        self,
        caller: Caller,
        mode: str,
        data: dict[str, str],
        body: DeviceBody,
        device_time: tuple[Any, Any] = (None, None),
    ) -> None:
        """Attributes reported by the device (configData, installedBase), once JetStream has them.

        The event id is the report's (``ids.py``): mode, attributes and the
        :func:`~gaggle_gateway.ids.stamp` of ``device_time`` (``time`` and ``timestamp`` as
        the device sent them).

        Raises:
            QuotaExceeded: the device would have more than ``MAX_ATTRIBUTES`` attributes.
            Busy: the bus did not acknowledge in time; the device should retry later.
        """
        self.check_attributes(caller, mode, data)
        kind = DeviceConfigReported.kind
        content = {"mode": mode, "data": data, "time": stamp(*device_time, time.time())}
        event = DeviceConfigReported(
            event_id=report_id(kind, caller.tenant, caller.controller_id, None, content),
            **caller.ids,
            mode=mode,
            data=data,
        )
        await self.report(caller, event, body)

    async def report_config_data(self, caller: Caller, data: bytes) -> None:
        """A configData report's body, validated and reported (see :meth:`report_config`).

        Raises:
            BadRequest: not JSON, or not a configData body.
            QuotaExceeded: as :meth:`report_config`, or past a quota of the body itself.
            Busy: the bus did not acknowledge in time; the device should retry later.
        """
        body = parse_body(data, ConfigDataBody)
        device_time = (body.time, body.timestamp)
        await self.report_config(caller, body.effective_mode, body.data, body, device_time)

    async def forget(self, every_s: float = 5.0, counts_every: int = 12) -> None:
        """Forget, now and then, acknowledged reports the KV mirror has caught up with.

        Status counts (one per device with an open action) are looked through every
        ``counts_every`` rounds only: a fleet's worth of them takes a while to walk.
        """
        rounds = 0
        while True:
            await asyncio.sleep(every_s)
            rounds += 1
            self.acks.sweep(
                self.mirror.deployments.values,
                time.monotonic(),
                statuses=rounds % counts_every == 0,
            )


def open_action(caller: Caller, gw: Gateway, action_id: str) -> OpenAction:
    """The device's open action with this id, as this gateway may show it.

    Raises:
        NotFound: malformed id, or not the device's open action.
        Busy: the ``deployments`` mirror is not current, so the action may have closed or
            opened meanwhile.
    """
    if not ACTION_ID_RE.match(action_id):
        raise NotFound(f"action {action_id!r} not found")
    if not gw.mirror.deployments.current:
        raise gw.reloading()
    entry = gw.deployment(caller)
    if entry is None or entry.open is None or entry.open.action_id != action_id:
        raise NotFound(f"action {action_id!r} not found")
    return entry.open


def make_publisher(broker: Any, timeout: float) -> Publish:
    """``publish(event)`` over ``broker`` with a bounded wait for the ack."""

    async def publish(event: Event) -> None:
        await publish_event(broker, event, timeout=timeout)

    return publish
