"""DDI routes: ``/{tenant}/controller/v1/{controllerId}/…``, answered from the KV mirror.

Reads (poll, deploymentBase, cancelAction, installedBase, confirmationBase, artifacts) cost a
dictionary look-up and a JSON render; reports (configData, feedback) are answered 200 only after
JetStream acknowledged the event, else 503 so the device retries. See ddi-api.md for each rule.

Only tenants that exist are served (``Gateway.tenant_exists``); a device's report past one of
hawkBit's quotas is refused (429) before it is acknowledged; and what this gateway acknowledged
is read back at once (``acks.py``): an action whose final report it took is not offered again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import uuid4

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client.core import CounterMetricFamily, Metric
from pydantic import BaseModel
from starlette.types import Scope

from gaggle_contracts import names
from gaggle_contracts.ddi import (
    MAX_ATTRIBUTES,
    MAX_STATUSES,
    AutoConfirmBody,
    ConfigDataBody,
    ConfirmationFeedbackBody,
    DeviceBody,
    FeedbackBody,
    InstalledBaseBody,
)
from gaggle_contracts.events import (
    ActionFeedback,
    AutoConfirmChanged,
    CancelFeedback,
    ConfirmationFeedback,
    DeviceConfigReported,
    Event,
)
from gaggle_contracts.kv import DeploymentEntry, DeviceEntry, OpenAction, TenantConfig
from gaggle_gateway.acks import Acks, FinalReport, fingerprint
from gaggle_gateway.bodies import parse_body, read_limited
from gaggle_gateway.domain import (
    Access,
    action_json,
    artifact_json,
    attributes_after,
    authorize,
    closes_action,
    find_module,
    history_count,
    parse_authorization,
    poll_body,
)
from gaggle_gateway.downloads import serve_artifact
from gaggle_gateway.errors import (
    BadRequest,
    Conflict,
    DdiError,
    Gone,
    NotAllowed,
    NotFound,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
)
from gaggle_gateway.mirror import Mirror
from gaggle_gateway.reporting import DeviceReporter
from gaggle_gateway.settings import GatewaySettings
from gaggle_runtime.bus import publish_event
from gaggle_storage import ObjectStore, StorageSettings

log = logging.getLogger(__name__)

HAL_JSON = "application/hal+json"
PENDING_DEVICE = DeviceEntry(config_requested=False)
ACTION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BASE = "/{tenant}/controller/v1/{controller_id}"

AuthHeader = Annotated[str | None, Header(include_in_schema=False)]


@dataclass(frozen=True)
class Origin:
    """Where a request came from and how the device addressed us (for absolute links)."""

    scheme: str
    host: str
    address: str | None

    @classmethod
    def of(cls, scope: Scope) -> Origin:
        """Read the origin from an ASGI scope, honouring ``X-Forwarded-Proto/-Host/-For``."""
        host = proto = fwd_host = fwd_for = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1")
            elif name == b"x-forwarded-host":
                fwd_host = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                fwd_for = value.decode("latin-1")
        if fwd_host or not host:
            server = scope.get("server") or ("localhost", 80)
            host = (fwd_host or f"{server[0]}:{server[1]}").split(",", 1)[0].strip()
        scheme = (proto or scope.get("scheme", "http")).split(",", 1)[0].strip()
        # A forwarded address is whatever the client wrote: kept short and storable, since
        # one sighting batch carries the addresses of many devices.
        address = fwd_for.split(",", 1)[0].strip()[:64].replace("\0", "\ufffd") if fwd_for else None
        if not address:
            client = scope.get("client")
            address = client[0] if client else None
        return cls(scheme, host, address)

    def base(self, tenant: str, controller_id: str) -> str:
        """Absolute ``…/{tenant}/controller/v1/{id}``."""
        return f"{self.scheme}://{self.host}/{tenant}/controller/v1/{controller_id}"


def authorization_of(scope: Scope) -> str | None:
    """The ``Authorization`` header of an ASGI scope."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


def json_response(body: Any, status: int = 200) -> Response:
    """HAL JSON, rendered with orjson."""
    return Response(orjson.dumps(body), status_code=status, media_type=HAL_JSON)


@dataclass(frozen=True)
class Caller:
    """An authorised request of one device."""

    tenant: str
    """Normalised (lower-case) tenant."""
    config: TenantConfig
    key: str
    device: DeviceEntry | None
    base: str
    """Absolute base URL, with the tenant as the device wrote it."""

    def deployment(self, mirror: Mirror) -> DeploymentEntry | None:
        """The device's entry in KV ``deployments``."""
        return mirror.deployments.values.get(self.key)


POLL_FAILURES = {400: "bad_request", 401: "unauthorized", 404: "not_found"}


class ReplacedCounts:
    """``gaggle_ddi_text_replaced_total{kind}``: device reports whose text had to be made storable.

    Kinds: the event kind the report became (``device.config_reported``, ``action.feedback``…).
    """

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}

    def add(self, kind: str) -> None:
        """Count one report of ``kind``."""
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def describe(self) -> Iterator[Metric]:
        """The family, for registration."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        """The counts so far."""
        family = self._family()
        for kind, count in sorted(self.by_kind.items()):
            family.add_metric([kind], count)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "gaggle_ddi_text_replaced",
            "Device reports whose text (NUL, unpaired surrogates, invalid UTF-8) was replaced.",
            labels=["kind"],
        )


class PollCounts:
    """``gaggle_ddi_polls_total{outcome}``: plain integers on the poll path, read when scraped.

    Outcomes: ``idle`` (nothing to do), ``action`` (the device has an open action),
    ``unauthorized``, ``not_found``, ``bad_request`` and ``error`` (any other refusal).
    """

    __slots__ = ("action", "failed", "idle")

    def __init__(self) -> None:
        self.idle = 0
        self.action = 0
        self.failed: dict[int, int] = {}

    def fail(self, status: int) -> None:
        """Count a poll refused with ``status``."""
        self.failed[status] = self.failed.get(status, 0) + 1

    def describe(self) -> Iterator[Metric]:
        """The family, for registration."""
        yield CounterMetricFamily(
            "gaggle_ddi_polls", "DDI base polls, by outcome.", labels=["outcome"]
        )

    def collect(self) -> Iterator[Metric]:
        """The counts so far."""
        family = CounterMetricFamily(
            "gaggle_ddi_polls", "DDI base polls, by outcome.", labels=["outcome"]
        )
        by_outcome = {"idle": self.idle, "action": self.action}
        for label in (*POLL_FAILURES.values(), "error"):
            by_outcome[label] = 0
        for status, count in self.failed.items():
            by_outcome[POLL_FAILURES.get(status, "error")] += count
        for outcome, count in by_outcome.items():
            family.add_metric([outcome], count)
        yield family


class Gateway:
    """The state every DDI route answers from, and the checks they share."""

    def __init__(
        self,
        settings: GatewaySettings,
        mirror: Mirror,
        reporter: DeviceReporter,
        store: ObjectStore,
        storage: StorageSettings,
        publish: Any,
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

    def caller(
        self,
        origin: Origin | Request,
        tenant_raw: str,
        controller_id: str,
        authorization: str | None,
        *,
        may_register: bool = False,
    ) -> Caller:
        """Validate the path, authenticate, note the sighting.

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
        if isinstance(origin, Request):
            origin = Origin.of(origin.scope)
        if access is Access.REGISTER:
            self.reporter.discovered(tenant, controller_id, origin.address)
        else:
            self.reporter.seen(tenant, controller_id, origin.address)
        return Caller(tenant, config, key, device, origin.base(tenant_raw, controller_id))

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

        Raises:
            DdiError: as :meth:`caller`.
        """
        try:
            caller = self.caller(origin, tenant, controller_id, authorization, may_register=True)
        except DdiError as exc:
            self.polls.fail(exc.status)
            raise
        entry = self.deployment(caller)
        if entry is None or entry.open is None:
            self.polls.idle += 1
        else:
            self.polls.action += 1
        return orjson.dumps(poll_body(caller.base, caller.config, caller.device, entry))

    async def publish(self, event: Event) -> None:
        """Publish and wait for JetStream's ack.

        Raises:
            Unavailable: the bus did not acknowledge; the device should retry.
        """
        try:
            await self.publish_event(event)
        except Exception as exc:
            raise Unavailable("event bus unavailable; retry later") from exc

    def noted(self, caller: Caller, controller_id: str, kind: str, body: DeviceBody) -> None:
        """Log and count a report whose text was made storable (the stored record shows U+FFFD)."""
        if body.replaced:
            self.replaced.add(kind)
            log.warning(
                "device text replaced tenant=%s controller_id=%s kind=%s characters=%d",
                caller.tenant,
                controller_id,
                kind,
                body.replaced,
            )

    def feedback_target(
        self, caller: Caller, action_id: str, kind: type[ActionFeedback] | type[CancelFeedback]
    ) -> OpenAction | FinalReport:
        """The open action a feedback report is for, or the final report that closed it here.

        Raises:
            NotFound: not the device's open action, or one that awaits confirmation.
            NotAllowed: cancel feedback for an action that is not being canceled.
            Gone: the action is closed.
        """
        final = self.acks.final(caller.key, action_id) or self.acks.unsure_final(
            caller.key, action_id
        )
        if final is not None:
            return final
        return self.open_feedback_target(caller, action_id, kind)

    def open_feedback_target(
        self, caller: Caller, action_id: str, kind: type[ActionFeedback] | type[CancelFeedback]
    ) -> OpenAction:
        """The open action a feedback report is for, by the mirror (see ``feedback_target``)."""
        if kind is CancelFeedback:
            action = check_feedback_target(caller, self, action_id)
            if action.state != "canceling":
                raise NotAllowed(f"action {action_id!r} is not being canceled")
            return action
        return deployment_feedback_target(caller, self, action_id)

    async def report_feedback(
        self,
        caller: Caller,
        controller_id: str,
        action_id: str,
        kind: type[ActionFeedback] | type[CancelFeedback],
        target: OpenAction | FinalReport,
        data: bytes,
    ) -> None:
        """Validate a feedback body; on the bus once JetStream has the event.

        A report for an action this gateway saw closed (``target`` is its final report) is
        answered 200 without an event if it repeats that report (a retry), else 410. A repeat of
        a final report the bus did not acknowledge is sent again under the first attempt's
        event id, so it is stored once whether or not the first attempt was.

        Raises:
            BadRequest: not JSON, or not a feedback body.
            QuotaExceeded: more messages than a status may have, or more statuses than an
                action may have (a final report is always taken, so the action can close).
            Gone: a report other than the final one, for an action closed here.
            Unavailable: the bus did not acknowledge; the device should retry.
        """
        body = parse_body(data, FeedbackBody)
        status = body.to_status()
        printed = fingerprint(kind.kind, status)
        event_id = uuid4()
        if isinstance(target, FinalReport) and target.fingerprint != printed:
            if target.event_id is None:
                raise Gone(f"action {action_id!r} is closed")
            target = self.open_feedback_target(caller, action_id, kind)
        if isinstance(target, FinalReport):
            if target.event_id is None:
                return
            event_id, final = target.event_id, True
        else:
            final = closes_action(kind is CancelFeedback, status, target)
        if not final and self.acks.count(caller.key, action_id) >= MAX_STATUSES:
            raise QuotaExceeded(
                f"action {action_id!r} has {MAX_STATUSES} statuses, the most an action may have",
                quota=MAX_STATUSES,
            )
        event = kind(
            event_id=event_id,
            tenant=caller.tenant,
            controller_id=controller_id,
            action_id=action_id,
            status=status,
            device_time=body.device_time(),
        )
        try:
            await self.publish(event)
        except Unavailable:
            if final:
                self.acks.sent_unsure(caller.key, action_id, printed, event_id, time.monotonic())
            raise
        self.acks.acknowledged(caller.key, action_id, printed if final else None, time.monotonic())
        self.noted(caller, controller_id, kind.kind, body)

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

    async def report_config(self, caller: Caller, controller_id: str, body: ConfigDataBody) -> None:
        """A configData report, on the bus once JetStream has it.

        Raises:
            QuotaExceeded: the device would have more than ``MAX_ATTRIBUTES`` attributes.
            Unavailable: the bus did not acknowledge; the device should retry.
        """
        self.check_attributes(caller, body.effective_mode, body.data)
        await self.publish(
            DeviceConfigReported(
                tenant=caller.tenant,
                controller_id=controller_id,
                mode=body.effective_mode,
                data=body.data,
            )
        )
        self.noted(caller, controller_id, DeviceConfigReported.kind, body)

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
    """
    if not ACTION_ID_RE.match(action_id):
        raise NotFound(f"action {action_id!r} not found")
    entry = gw.deployment(caller)
    if entry is None or entry.open is None or entry.open.action_id != action_id:
        raise NotFound(f"action {action_id!r} not found")
    return entry.open


def check_feedback_target(caller: Caller, gw: Gateway, action_id: str) -> OpenAction:
    """The open action a feedback is for; closed ones are 410 Gone, unknown ones 404.

    Closed are those KV says are, and those whose final report this gateway acknowledged.
    """
    if gw.acks.final(caller.key, action_id) is not None:
        raise Gone(f"action {action_id!r} is closed")
    entry = caller.deployment(gw.mirror)
    if entry is not None and (entry.open is None or entry.open.action_id != action_id):
        closed = set(entry.closed)
        if entry.installed is not None:
            closed.add(entry.installed.action_id)
        if action_id in closed:
            raise Gone(f"action {action_id!r} is closed")
    return open_action(caller, gw, action_id)


def deployment_feedback_target(caller: Caller, gw: Gateway, action_id: str) -> OpenAction:
    """The open action a deploymentBase feedback is for, unless it still awaits confirmation."""
    action = check_feedback_target(caller, gw, action_id)
    if action.state == "wait_for_confirmation":
        raise NotFound(f"action {action_id!r} awaits confirmation")
    return action


async def read_body(request: Request, model: type[BaseModel], limit: int) -> Any:
    """Read at most ``limit`` bytes of JSON and validate it; unknown fields are ignored.

    Raises:
        PayloadTooLarge: the body is larger than ``limit``.
        BadRequest: not JSON, or not the expected shape (the message names the field).
    """
    return parse_body(await read_limited(request.scope, request.receive, limit), model)


def make_routes(gw: Gateway) -> APIRouter:
    """The DDI router bound to ``gw``."""
    api = APIRouter(tags=["DDI"])
    limits = gw.settings

    async def report_feedback(
        request: Request,
        caller: Caller,
        controller_id: str,
        action_id: str,
        kind: type[ActionFeedback] | type[CancelFeedback],
    ) -> Response:
        """Validate a feedback body and answer 200 once JetStream has the event."""
        target = gw.feedback_target(caller, action_id, kind)
        data = await read_limited(request.scope, request.receive, limits.max_feedback_bytes)
        await gw.report_feedback(caller, controller_id, action_id, kind, target, data)
        return Response(status_code=200)

    @api.get(BASE, summary="Base poll: what the device should do next")
    async def poll(
        tenant: str, controller_id: str, request: Request, authorization: AuthHeader = None
    ) -> Response:
        # Normally answered by the fast lane in front of the app (fastlane.py); kept here for
        # the OpenAPI document and for any server that mounts the app without it.
        body = gw.poll(Origin.of(request.scope), tenant, controller_id, authorization)
        return Response(body, media_type=HAL_JSON)

    @api.put(BASE + "/configData", summary="Report the device's attributes")
    async def config_data(
        tenant: str, controller_id: str, request: Request, authorization: AuthHeader = None
    ) -> Response:
        # A device may PUT its attributes before the registry has caught up with its first
        # poll, so this request may register too.
        caller = gw.caller(request, tenant, controller_id, authorization, may_register=True)
        body: ConfigDataBody = await read_body(request, ConfigDataBody, limits.max_body_bytes)
        await gw.report_config(caller, controller_id, body)
        return Response(status_code=200)

    @api.get(BASE + "/deploymentBase/{action_id}", summary="The open deployment")
    async def deployment_base(
        tenant: str,
        controller_id: str,
        action_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        action = open_action(caller, gw, action_id)
        if action.state != "deployment":
            raise NotFound(f"action {action_id!r} is not offered for deployment")
        history = history_count(request.query_params.get("actionHistory"))
        return json_response(action_json(caller.base, action, "deployment", history))

    @api.post(BASE + "/deploymentBase/{action_id}/feedback", summary="Report progress or result")
    async def deployment_feedback(
        tenant: str,
        controller_id: str,
        action_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        # Without tracing, answered by the fast lane in front of the app (fastlane.py).
        caller = gw.caller(request, tenant, controller_id, authorization)
        return await report_feedback(request, caller, controller_id, action_id, ActionFeedback)

    @api.get(BASE + "/cancelAction/{action_id}", summary="The cancel request for an action")
    async def cancel_action(
        tenant: str,
        controller_id: str,
        action_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        action = open_action(caller, gw, action_id)
        if action.state != "canceling":
            raise NotFound(f"action {action_id!r} is not being canceled")
        return json_response({"id": action_id, "cancelAction": {"stopId": action_id}})

    @api.post(BASE + "/cancelAction/{action_id}/feedback", summary="Acknowledge or reject a cancel")
    async def cancel_feedback(
        tenant: str,
        controller_id: str,
        action_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        return await report_feedback(request, caller, controller_id, action_id, CancelFeedback)

    @api.get(BASE + "/installedBase/{action_id}", summary="The last finished deployment")
    async def installed_base(
        tenant: str,
        controller_id: str,
        action_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        entry = caller.deployment(gw.mirror)
        if entry is None or entry.installed is None or entry.installed.action_id != action_id:
            raise NotFound(f"no finished action {action_id!r}")
        history = history_count(request.query_params.get("actionHistory"))
        return json_response(action_json(caller.base, entry.installed, "deployment", history))

    @api.put(BASE + "/installedBase", summary="Declare the software already running (experimental)")
    async def declare_installed(
        tenant: str, controller_id: str, request: Request, authorization: AuthHeader = None
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        body: InstalledBaseBody = await read_body(request, InstalledBaseBody, limits.max_body_bytes)
        # Recorded as the device's reported software: the registry keeps sw_version current.
        data = {"sw_version": body.version, "sw_name": body.name}
        gw.check_attributes(caller, "merge", data)
        await gw.publish(
            DeviceConfigReported(
                tenant=caller.tenant, controller_id=controller_id, mode="merge", data=data
            )
        )
        gw.noted(caller, controller_id, DeviceConfigReported.kind, body)
        return Response(status_code=200)

    @api.get(BASE + "/confirmationBase", summary="Auto-confirmation state")
    async def confirmation_base(
        tenant: str, controller_id: str, request: Request, authorization: AuthHeader = None
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization, may_register=True)
        entry = gw.deployment(caller)
        active = bool(entry and entry.auto_confirm)
        links: dict[str, dict[str, str]] = {}
        base = caller.base + "/confirmationBase"
        if active:
            links["deactivateAutoConfirm"] = {"href": f"{base}/deactivateAutoConfirm"}
        else:
            links["activateAutoConfirm"] = {"href": f"{base}/activateAutoConfirm"}
        if entry and entry.open and entry.open.state == "wait_for_confirmation":
            links["confirmationBase"] = {"href": f"{base}/{entry.open.action_id}?c={entry.open.c}"}
        return json_response({"autoConfirm": {"active": active}, "_links": links})

    @api.get(BASE + "/confirmationBase/{action_id}", summary="An action awaiting confirmation")
    async def confirmation_action(
        tenant: str,
        controller_id: str,
        action_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        action = open_action(caller, gw, action_id)
        if action.state != "wait_for_confirmation":
            raise NotFound(f"action {action_id!r} does not await confirmation")
        history = history_count(request.query_params.get("actionHistory"))
        return json_response(action_json(caller.base, action, "confirmation", history))

    @api.post(BASE + "/confirmationBase/{action_id}/feedback", summary="Confirm or deny an action")
    async def confirmation_feedback(
        tenant: str,
        controller_id: str,
        action_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        action = check_feedback_target(caller, gw, action_id)
        if action.state != "wait_for_confirmation":
            raise NotFound(f"action {action_id!r} does not await confirmation")
        body: ConfirmationFeedbackBody = await read_body(
            request, ConfirmationFeedbackBody, limits.max_feedback_bytes
        )
        await gw.publish(
            ConfirmationFeedback(
                tenant=caller.tenant,
                controller_id=controller_id,
                action_id=action_id,
                confirmation=body.confirmation,
                code=body.code,
                details=body.noted(body.details),
            )
        )
        gw.noted(caller, controller_id, ConfirmationFeedback.kind, body)
        return Response(status_code=200)

    async def set_auto_confirm(
        request: Request,
        tenant: str,
        controller_id: str,
        authorization: str | None,
        *,
        active: bool,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        entry = caller.deployment(gw.mirror)
        if active and entry is not None and entry.auto_confirm:
            raise Conflict("auto-confirmation is already active")
        body = AutoConfirmBody()
        if active:
            body = await read_body(request, AutoConfirmBody, limits.max_body_bytes)
        await gw.publish(
            AutoConfirmChanged(
                tenant=caller.tenant,
                controller_id=controller_id,
                active=active,
                initiator=body.initiator,
                remark=body.remark,
            )
        )
        gw.noted(caller, controller_id, AutoConfirmChanged.kind, body)
        return Response(status_code=200)

    @api.post(BASE + "/confirmationBase/activateAutoConfirm", summary="Confirm future actions")
    async def activate_auto_confirm(
        tenant: str, controller_id: str, request: Request, authorization: AuthHeader = None
    ) -> Response:
        return await set_auto_confirm(request, tenant, controller_id, authorization, active=True)

    @api.post(BASE + "/confirmationBase/deactivateAutoConfirm", summary="Stop auto-confirming")
    async def deactivate_auto_confirm(
        tenant: str, controller_id: str, request: Request, authorization: AuthHeader = None
    ) -> Response:
        return await set_auto_confirm(request, tenant, controller_id, authorization, active=False)

    @api.get(BASE + "/softwaremodules/{module_id}/artifacts", summary="A module's artifacts")
    async def artifacts(
        tenant: str,
        controller_id: str,
        module_id: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        chunk = find_module(caller.deployment(gw.mirror), module_id)
        if chunk is None:
            raise NotFound(f"software module {module_id!r} not assigned to this target")
        return json_response([artifact_json(caller.base, module_id, a) for a in chunk.artifacts])

    @api.api_route(
        BASE + "/softwaremodules/{module_id}/artifacts/{filename}",
        methods=["GET", "HEAD"],
        summary="Download an artifact (Range, If-Range, If-Match) or its .MD5SUM",
    )
    async def download(
        tenant: str,
        controller_id: str,
        module_id: str,
        filename: str,
        request: Request,
        authorization: AuthHeader = None,
    ) -> Response:
        caller = gw.caller(request, tenant, controller_id, authorization)
        chunk = find_module(caller.deployment(gw.mirror), module_id)
        if chunk is None:
            raise NotFound(f"software module {module_id!r} not assigned to this target")
        by_name = {a.filename: a for a in chunk.artifacts}
        artifact = by_name.get(filename)
        if artifact is None and filename.endswith(".MD5SUM"):
            artifact = by_name.get(filename[: -len(".MD5SUM")])
            if artifact is not None:
                return Response(
                    f"{artifact.md5}  {artifact.filename}",
                    media_type="text/plain",
                    headers={
                        "Content-Disposition": f"attachment;filename={artifact.filename}.MD5SUM"
                    },
                )
        if artifact is None:
            raise NotFound(f"artifact {filename!r} not found")
        return await serve_artifact(
            request,
            gw.store,
            artifact,
            presign=gw.storage.presign,
            presign_expiry_s=gw.storage.presign_expiry_s,
        )

    return api


def make_publisher(broker: Any, timeout: float) -> Any:
    """``publish(event)`` over ``broker`` with a bounded wait for the ack."""

    async def publish(event: Event) -> None:
        await publish_event(broker, event, timeout=timeout)

    return publish
