"""Attended upgrade checks on the device edge, in the style of OpenWrt's ASU.

README: Attended upgrade checks.

``POST /{tenant}/upgrade/v1/check`` asks whether something newer fits the device (by its
``controller_id``, under its policy) or a board (``board`` and ``revision``, as mode ``latest``)
than ``version``. Rollouts decides (``ota.rpc.rollouts.check``); the gateway remembers each
answer under the normalised request for ``GAGGLE_GATEWAY_UPGRADE_MEMORY_S`` seconds, so identical
checks are answered from memory, as polls are, until then or until the device's KV
``deployments`` entry changes. Each answer carries a ``request_hash``: a hash over the
normalised request and the revision of the catalogue and policy it was answered from.

``POST /{tenant}/upgrade/v1/request`` turns the offer into the device's action (the person said
yes; ``ota.rpc.rollouts.upgrade``): 202 with ``Retry-After`` while the action is being prepared
(just opened, or queued under the tenant's cap on updates in flight) until the gateway's mirror
shows its ``deploymentBase``, polled at ``GET /{tenant}/upgrade/v1/request/{request_hash}``; then
200 with the deploymentBase link. A device with another open action is answered 409.

Authentication is DDI's (``TargetToken``, ``GatewayToken``, anonymous where the tenant allows):
a check by board, with no device, needs a ``GatewayToken`` unless the tenant is anonymous.
"""

# The routes carry no docstrings: FastAPI would publish them as OpenAPI descriptions, and each
# route's ``summary=`` already says what it does.
# ruff: noqa: D103

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gaggle_contracts import names
from gaggle_contracts.ddi import MAX_ATTRIBUTE_VALUE
from gaggle_contracts.kv import DeploymentEntry
from gaggle_contracts.rpc import (
    CheckUpgrade,
    RequestUpgrade,
    UpgradeChecked,
    UpgradeOffer,
    UpgradeRequested,
)
from gaggle_contracts.versions import InvalidVersionError, SwVersion
from gaggle_gateway.bodies import parse_body, read_limited
from gaggle_gateway.core import Caller, Gateway
from gaggle_gateway.domain import Access, authorize, parse_authorization
from gaggle_gateway.errors import BadRequest, Busy, DdiError, NotFound, Unauthorized
from gaggle_gateway.origin import Origin
from gaggle_runtime.rpc import RpcUnavailableError, ask
from gaggle_runtime.telemetry import Tracing

PREFIX = "/{tenant}/upgrade/v1"
HASH_HEADER = "X-Request-Hash"
HASH_RE = re.compile(r"^[0-9a-f]{32}$")


class UpgradeSettings(BaseSettings):
    """How long answers are remembered, and how long rollouts may take to give one."""

    model_config = SettingsConfigDict(env_prefix="GAGGLE_GATEWAY_UPGRADE_", extra="ignore")

    memory_s: float = Field(10.0, ge=0)
    """How long a check's answer is reused for identical checks (0: always ask rollouts)."""
    memory_max: int = Field(10_000, ge=1)
    """Most check answers kept (the oldest go first)."""
    request_memory_s: float = Field(3600.0, gt=0)
    """How long an upgrade request can be polled by its hash."""
    ask_timeout_s: float = Field(3.0, gt=0)
    """How long rollouts may take to answer; then 429 with ``Retry-After``."""
    retry_after_s: int = Field(2, ge=1)
    """``Retry-After`` of a 202 (being prepared) and of a 429 (rollouts not answering)."""
    max_body_bytes: int = Field(4096, ge=256)


class CheckBody(BaseModel):
    """A check: the device (``controller_id``) or its hardware, and the version it runs."""

    model_config = ConfigDict(extra="ignore")

    controller_id: str | None = Field(None, min_length=1, max_length=256)
    board: str | None = Field(None, min_length=1, max_length=MAX_ATTRIBUTE_VALUE)
    revision: str | None = Field(None, min_length=1, max_length=MAX_ATTRIBUTE_VALUE)
    version: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_VALUE)
    request_hash: str | None = Field(None, max_length=64)
    """On an upgrade request: the check the person accepted (412 if its answer changed)."""

    @model_validator(mode="after")
    def _who(self) -> CheckBody:
        if self.controller_id is None and self.board is None:
            raise ValueError("name the device (controller_id) or its hardware (board, revision)")
        return self


# --- errors: the gateway's JSON error shape, with the request hash where there is one --------


class UpgradeError(DdiError, status=400, code="gaggle.upgrade.invalid"):
    """Base of the check's own refusals; carries the request hash in a header when known."""

    def __init__(self, message: str, request_hash: str | None = None, **info: Any) -> None:
        if request_hash:
            info["request_hash"] = request_hash
        super().__init__(message, **info)
        self.request_hash = request_hash

    def headers(self) -> dict[str, str] | None:
        """``X-Request-Hash`` when the refusal was answered from a check."""
        return {HASH_HEADER: self.request_hash} if self.request_hash else None


class Unprocessable(UpgradeError, status=422, code="gaggle.upgrade.unprocessable"):
    """Well-formed, but not answerable: unknown device or board, a version that does not order."""


class ActionOpen(UpgradeError, status=409, code="gaggle.upgrade.actionOpen"):
    """The device has another open action."""


class OfferChanged(UpgradeError, status=412, code="gaggle.upgrade.offerChanged"):
    """The check the person accepted is not what a check answers now."""


# --- memory ---------------------------------------------------------------------------------

CheckKey = tuple[str, str | None, str | None, str | None, str]
"""Normalised request: tenant, controller id, board, revision, version."""


@dataclass(frozen=True)
class Remembered:
    """A check's answer, as long as it may be reused."""

    checked: UpgradeChecked
    request_hash: str
    expires: float
    deployment: DeploymentEntry | None
    """The device's KV ``deployments`` entry when answered: another one means ask again."""


@dataclass(frozen=True)
class Pending:
    """An upgrade request being prepared, polled by its hash."""

    tenant: str
    controller_id: str
    software_id: str
    offer: UpgradeOffer
    action_id: str | None
    expires: float


def request_hash(key: CheckKey, revision: str) -> str:
    """A hash over the normalised request and the revision it was answered from."""
    return hashlib.sha256(orjson.dumps([*key, revision])).hexdigest()[:32]


class Upgrades:
    """The check answers and upgrade requests this gateway remembers, and how it asks rollouts."""

    def __init__(
        self,
        settings: UpgradeSettings,
        gateway: Gateway,
        nats: Callable[[], NatsClient],
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.nats = nats
        self.tracing = tracing
        self.answers: OrderedDict[CheckKey, Remembered] = OrderedDict()
        self.requests: OrderedDict[str, Pending] = OrderedDict()
        self._asking: dict[CheckKey, asyncio.Future[Remembered]] = {}
        """Checks being asked of rollouts now: identical ones wait for the same answer."""
        self.from_memory = 0
        """Checks answered from memory (a counter for tests and the benchmark)."""
        self.asked = 0
        """Checks rollouts was asked about."""

    def _current(self, key: CheckKey, device_key: str | None, now: float) -> Remembered | None:
        found = self.answers.get(key)
        if found is None:
            return None
        entry = (
            None if device_key is None else self.gateway.mirror.deployments.values.get(device_key)
        )
        if found.expires <= now or found.deployment is not entry:
            del self.answers[key]
            return None
        return found

    async def check(self, key: CheckKey, device_key: str | None) -> Remembered:
        """The answer to the check ``key``, from memory or from rollouts (asked once at a time).

        Raises:
            Busy: rollouts did not answer in time.
        """
        now = time.monotonic()
        found = self._current(key, device_key, now)
        if found is not None:
            self.from_memory += 1
            return found
        asking = self._asking.get(key)
        if asking is None:
            # One question to rollouts at a time per check: identical checks arriving meanwhile
            # wait for the same answer (or refusal). A caller that goes away cancels only its
            # own wait, not the question.
            asking = asyncio.ensure_future(self._fresh(key, device_key, now))
            self._asking[key] = asking
            asking.add_done_callback(lambda done: self._asked(key, done))
        else:
            self.from_memory += 1
        return await asyncio.shield(asking)

    def _asked(self, key: CheckKey, done: asyncio.Future[Remembered]) -> None:
        if self._asking.get(key) is done:
            del self._asking[key]
        if not done.cancelled():
            done.exception()  # retrieved: a refusal nobody waited for is no error to log

    async def _fresh(self, key: CheckKey, device_key: str | None, now: float) -> Remembered:
        """Ask rollouts, and remember the answer."""
        entry = (
            None if device_key is None else self.gateway.mirror.deployments.values.get(device_key)
        )
        tenant, cid, board, revision, version = key
        checked = await self._ask(
            CheckUpgrade(
                tenant=tenant, controller_id=cid, board=board, revision=revision, version=version
            ),
            UpgradeChecked,
        )
        self.asked += 1
        found = Remembered(
            checked, request_hash(key, checked.revision), now + self.settings.memory_s, entry
        )
        if self.settings.memory_s > 0:
            self.answers[key] = found
            while len(self.answers) > self.settings.memory_max:
                self.answers.popitem(last=False)
        return found

    async def request(self, key: CheckKey, software_id: str) -> UpgradeRequested:
        """Ask rollouts to open the device's action for ``software_id``.

        Raises:
            Busy: rollouts did not answer in time.
        """
        tenant, cid, board, revision, version = key
        assert cid is not None  # noqa: S101 - the route refuses requests without a device
        answer: UpgradeRequested = await self._ask(
            RequestUpgrade(
                tenant=tenant,
                controller_id=cid,
                board=board,
                revision=revision,
                version=version,
                software_id=software_id,
            ),
            UpgradeRequested,
        )
        return answer

    async def _ask(self, request: Any, reply: type[Any]) -> Any:
        try:
            return await ask(self.nats(), request, reply, self.settings.ask_timeout_s, self.tracing)
        except RpcUnavailableError as exc:
            raise Busy(f"{exc}; retry later", self.settings.retry_after_s) from exc

    def pending(self, hash_: str, pending: Pending) -> None:
        """Remember an upgrade request being prepared."""
        self.requests[hash_] = pending
        self.requests.move_to_end(hash_)
        now = time.monotonic()
        while self.requests and (
            len(self.requests) > self.settings.memory_max
            or next(iter(self.requests.values())).expires <= now
        ):
            self.requests.popitem(last=False)

    def find(self, hash_: str) -> Pending | None:
        """The upgrade request of that hash, while it is remembered."""
        found = self.requests.get(hash_)
        if found is None or found.expires <= time.monotonic():
            return None
        return found


# --- routes ---------------------------------------------------------------------------------

AuthHeader = Annotated[str | None, Header(include_in_schema=False)]


async def upgrades(request: Request) -> Upgrades:
    """The app's :class:`Upgrades`, made at first use from the gateway and the environment."""
    state = request.app.state
    found = getattr(state, "upgrades", None)
    if found is None:
        service = state.service
        found = state.upgrades = Upgrades(
            UpgradeSettings(),
            cast(Gateway, state.gateway),
            lambda: service.broker.connection,
            service.tracing,
        )
    return cast(Upgrades, found)


Ups = Annotated[Upgrades, Depends(upgrades)]
router = APIRouter(tags=["Attended upgrades"])


@dataclass(frozen=True)
class Asked:
    """An authorised check: its normalised key, the caller (None: by board) and the origin."""

    key: CheckKey
    caller: Caller | None
    origin: Origin
    tenant_raw: str
    body: CheckBody


def _authorised(
    ups: Upgrades, request: Request, tenant: str, body: CheckBody, authorization: str | None
) -> Asked:
    """Authenticate as DDI does; the check's normalised key.

    Raises:
        BadRequest: odd tenant or controller id.
        NotFound: no such tenant.
        Unauthorized: credentials missing or wrong.
        Unprocessable: unknown device, or a version that does not order.
    """
    gw = ups.gateway
    origin = Origin.of(request.scope)
    caller = None
    if body.controller_id is not None:
        try:
            caller = gw.authorize(origin, tenant, body.controller_id, authorization)
        except NotFound as exc:
            if gw.tenant_exists(tenant.lower()):
                raise Unprocessable(f"device {body.controller_id!r} is unknown") from exc
            raise
        norm = caller.tenant
    else:
        try:
            norm = names.normalize_tenant(tenant)
        except names.InvalidNameError as exc:
            raise BadRequest(str(exc)) from exc
        if not gw.tenant_exists(norm):
            raise NotFound(f"tenant {tenant!r} does not exist", tenant=tenant)
        creds = parse_authorization(authorization)
        if authorize(creds, gw.tenant_config(norm), None, may_register=False) is Access.DENY:
            raise Unauthorized()
    try:
        SwVersion.parse(body.version)
    except InvalidVersionError as exc:
        raise Unprocessable(f"version {body.version!r} does not order: {exc}") from exc
    key: CheckKey = (norm, body.controller_id, body.board, body.revision, body.version)
    return Asked(key, caller, origin, tenant, body)


async def _asked(ups: Upgrades, request: Request, tenant: str, authorization: str | None) -> Asked:
    data = await read_limited(request.scope, request.receive, ups.settings.max_body_bytes)
    return _authorised(ups, request, tenant, parse_body(data, CheckBody), authorization)


def _download(asked: Asked, offer: UpgradeOffer) -> dict[str, Any]:
    href = offer.external_url
    if href is None and asked.caller is not None:
        # The device's own artifact link; it serves once the device has an action for it.
        href = (
            f"{asked.caller.base}/softwaremodules/{offer.software_id}/artifacts/"
            f"{quote(offer.filename, safe='')}"
        )
    return {
        "href": href,
        "size": offer.size,
        "hashes": {"md5": offer.md5, "sha1": offer.sha1, "sha256": offer.sha256},
    }


def _json(body: dict[str, Any], status: int, hash_: str, **headers: str) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={HASH_HEADER: hash_, **headers},
    )


def _answered(asked: Asked, found: Remembered) -> Response:
    """200 with the offer, 204 up to date, 422 unprocessable; the hash always."""
    checked = found.checked
    if checked.outcome == "unprocessable" or (checked.outcome == "update" and not checked.offer):
        raise Unprocessable(checked.reason, found.request_hash)
    if checked.outcome == "up_to_date" or checked.offer is None:
        return Response(status_code=204, headers={HASH_HEADER: found.request_hash})
    offer = checked.offer
    body = {
        "version": offer.version,
        "software_id": offer.software_id,
        "download": _download(asked, offer),
        "notes": f"{offer.name} {offer.version}: {checked.reason}",
        "request_hash": found.request_hash,
    }
    return _json(body, 200, found.request_hash)


@router.post(PREFIX + "/check", summary="Is there something newer for this device? (ASU style)")
async def check(
    tenant: str, request: Request, ups: Ups, authorization: AuthHeader = None
) -> Response:
    asked = await _asked(ups, request, tenant, authorization)
    device_key = asked.caller.key if asked.caller else None
    return _answered(asked, await ups.check(asked.key, device_key))


def _ready(asked_base: str, pending: Pending, hash_: str, entry: DeploymentEntry) -> Response:
    """200: the device's deploymentBase for the requested software is there."""
    action = entry.open
    assert action is not None  # noqa: S101 - the caller checked
    body = {
        "status": "ready",
        "request_hash": hash_,
        "action_id": action.action_id,
        "software_id": pending.software_id,
        "version": pending.offer.version,
        "deploymentBase": {"href": f"{asked_base}/deploymentBase/{action.action_id}?c={action.c}"},
    }
    return _json(body, 200, hash_)


def _preparing(ups: Upgrades, tenant_raw: str, pending: Pending, hash_: str, why: str) -> Response:
    body = {
        "status": "preparing",
        "detail": why,
        "request_hash": hash_,
        "action_id": pending.action_id,
    }
    poll = f"/{tenant_raw}/upgrade/v1/request/{hash_}"
    return _json(
        body, 202, hash_, **{"Retry-After": str(ups.settings.retry_after_s), "Location": poll}
    )


def _standing(
    ups: Upgrades, caller: Caller, pending: Pending, hash_: str, tenant_raw: str, why: str
) -> Response:
    """The request as the mirror shows it: ready (200), in the way (409), or preparing (202)."""
    gw = ups.gateway
    if not gw.mirror.deployments.current:
        raise gw.reloading()
    entry = gw.deployment(caller)
    if entry is not None and entry.open is not None:
        chunks = entry.open.deployment.chunks
        if any(c.module_id == pending.software_id for c in chunks):
            return _ready(caller.base, pending, hash_, entry)
        raise ActionOpen(
            f"the device has another open action ({entry.open.action_id})",
            hash_,
            action_id=entry.open.action_id,
        )
    return _preparing(ups, tenant_raw, pending, hash_, why)


@router.post(PREFIX + "/request", summary="Accept a check's offer: the device's action (ASU style)")
async def upgrade_request(
    tenant: str, request: Request, ups: Ups, authorization: AuthHeader = None
) -> Response:
    asked = await _asked(ups, request, tenant, authorization)
    caller = asked.caller
    if caller is None:
        raise Unprocessable("an upgrade request names the device (controller_id)")
    found = await ups.check(asked.key, caller.key)
    hash_ = found.request_hash
    wanted = asked.body.request_hash
    if wanted is not None and wanted != hash_:
        raise OfferChanged(f"the check's answer changed since {wanted}; check again", hash_)
    if found.checked.outcome != "update" or found.checked.offer is None:
        return _answered(asked, found)
    offer = found.checked.offer
    pending = Pending(
        caller.tenant,
        caller.controller_id,
        offer.software_id,
        offer,
        None,
        time.monotonic() + ups.settings.request_memory_s,
    )
    entry = ups.gateway.deployment(caller)
    if entry is not None and entry.open is not None:
        # Open already: ready if it is this software, else in the way. Nothing to ask.
        ups.pending(hash_, pending)
        return _standing(ups, caller, pending, hash_, tenant, "")
    if not ups.gateway.mirror.deployments.current:
        raise ups.gateway.reloading()
    answer = await ups.request(asked.key, offer.software_id)
    outcome = answer.outcome
    if outcome == "conflict":
        raise ActionOpen(answer.reason, hash_, action_id=answer.action_id)
    if outcome == "changed":
        raise OfferChanged(answer.reason, hash_)
    if outcome == "unprocessable":
        raise Unprocessable(answer.reason, hash_)
    if outcome == "up_to_date":
        return Response(status_code=204, headers={HASH_HEADER: hash_})
    pending = Pending(
        pending.tenant,
        pending.controller_id,
        pending.software_id,
        offer,
        answer.action_id,
        pending.expires,
    )
    ups.pending(hash_, pending)
    if outcome == "opened":
        # Just opened: its deploymentBase is on its way to the gateways' mirrors.
        return _preparing(ups, tenant, pending, hash_, answer.reason)
    return _standing(ups, caller, pending, hash_, tenant, answer.reason)


@router.get(PREFIX + "/request/{request_hash}", summary="Where an upgrade request stands")
async def upgrade_status(
    tenant: str, request_hash: str, request: Request, ups: Ups, authorization: AuthHeader = None
) -> Response:
    if not HASH_RE.match(request_hash):
        raise BadRequest("a request hash is 32 hexadecimal digits")
    pending = ups.find(request_hash)
    if pending is None or pending.tenant != tenant.lower():
        raise NotFound(f"no upgrade request {request_hash!r} here; request it again")
    caller = ups.gateway.authorize(
        Origin.of(request.scope), tenant, pending.controller_id, authorization
    )
    return _standing(ups, caller, pending, request_hash, tenant, "being prepared")
