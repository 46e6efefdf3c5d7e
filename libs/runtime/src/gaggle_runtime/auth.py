"""Operator authentication, permissions and the audit trail, the same in every service.

Every request below ``/api/`` needs ``Authorization: Bearer <token>``. The token is either an API
key Gaggle issued (checked against the KV bucket ``api_keys``, which every service follows into
memory) or a JWT from the tenant's OpenID Connect provider (checked against its JWKS, fetched at
start and refreshed in the background). Neither asks another service anything per request.

* :class:`OperatorGate` (ASGI middleware) answers 401 for a missing or bad token, puts the
  :class:`Principal` into the request's state, and records every change an operator asks for
  (``audit.recorded``, through the service's outbox) with its outcome.
* Each route declares the one permission it needs with :func:`needs`, which also gives the route
  its tenant: the caller's own. 403 when the permission is missing; an explicit ``tenant`` query
  that is not the caller's answers 404, like any other tenant's resource.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import nats
import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nats.js.client import JetStreamContext
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gaggle_contracts import names
from gaggle_contracts.access import (
    KEY_PREFIX,
    ApiKeyEntry,
    Permission,
    expand,
    key_hash,
    key_id_of,
    key_matches,
    new_api_key,
)
from gaggle_contracts.events import ApiKeysUsed, AuditRecorded, utcnow
from gaggle_contracts.settings import CommonSettings, nats_servers
from gaggle_runtime.http import ApiError, error_body, send_response
from gaggle_runtime.jetstream import ensure_all
from gaggle_runtime.mirror import BucketMirror

if TYPE_CHECKING:
    from gaggle_runtime.oidc import JwtVerifier

log = logging.getLogger(__name__)

PRINCIPAL = "principal"
"""Key of the caller in the ASGI scope's ``state``."""
DOC_PATHS = ("/openapi.json", "/docs", "/redoc", "/asyncapi")
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant, a name for the audit log, and what they may do."""

    tenant: str
    actor: str
    permissions: frozenset[Permission]


class Unauthenticated(Exception):
    """No token, or one that is malformed, unknown, revoked, expired or badly signed."""


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal`, from memory only."""

    def __init__(self, common: CommonSettings) -> None:
        self.keys = BucketMirror(names.BUCKET_API_KEYS, ApiKeyEntry)
        self.jwt: JwtVerifier | None = None
        if common.oidc_jwks_url:
            # Only with OIDC: PyJWT and cryptography are a good part of a second to import.
            from gaggle_runtime.oidc import JwtVerifier

            self.jwt = JwtVerifier(common)
        self.used: dict[tuple[str, str], Any] = {}
        """``(tenant, key id)`` -> when last used, until the next flush."""

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller, or :class:`Unauthenticated`.

        Raises:
            Unauthenticated: no bearer token, or one that is not valid now.
        """
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("expected 'Authorization: Bearer <token>'")
        if token.startswith(KEY_PREFIX):
            return self._api_key(token)
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.verify(token)
        raise Unauthenticated("invalid token")

    def _api_key(self, token: str) -> Principal:
        key_id = key_id_of(token)
        entry = self.keys.values.get(key_id) if key_id else None
        if key_id is None or entry is None or not key_matches(token, entry.sha256):
            raise Unauthenticated("unknown or revoked API key")
        now = utcnow()
        if entry.expired(now):
            raise Unauthenticated("API key expired")
        self.used[(entry.tenant, key_id)] = now
        return Principal(entry.tenant, f"key:{key_id}", expand(entry.permissions))

    def take_used(self) -> list[ApiKeysUsed]:
        """Last uses since the previous call, one event per tenant."""
        used, self.used = self.used, {}
        by_tenant: dict[str, dict[str, Any]] = {}
        for (tenant, key_id), at in used.items():
            by_tenant.setdefault(tenant, {})[key_id] = at
        return [ApiKeysUsed(tenant=t, last_used=keys) for t, keys in by_tenant.items()]

    async def follow(self, js: Callable[[], JetStreamContext]) -> None:
        """Follow the keys bucket (and the provider's keys) until cancelled."""
        tasks = [asyncio.create_task(self.keys.watch(js))]
        if self.jwt is not None:
            tasks.append(asyncio.create_task(self.jwt.follow()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()


def authorize(principal: Principal, permission: Permission, tenant: str | None) -> str:
    """The tenant a request acts in, if ``principal`` may do what needs ``permission``.

    Raises:
        ApiError: 403 without the permission; 404 for a tenant that is not the caller's.
    """
    if permission not in principal.permissions:
        raise ApiError(
            403,
            "forbidden",
            f"this token lacks the permission {permission.value!r}",
            needs=permission.value,
        )
    if tenant is not None and tenant.lower() != principal.tenant:
        raise ApiError(404, "not_found", f"tenant {tenant!r} not found")
    return principal.tenant


_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`ggl_...`) or a JWT from the tenant's OpenID Connect provider.",
)


class Needs:
    """A route's requirement: the dependency resolves to the caller's tenant."""

    def __init__(self, permission: Permission) -> None:
        self.permission = permission

    async def __call__(
        self,
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        tenant: Annotated[
            str | None,
            Query(
                pattern=names.TENANT_RE.pattern,
                description="Tenant; only the caller's own (the default) is found",
            ),
        ] = None,
    ) -> str:
        """The caller's tenant.

        Raises:
            ApiError: 401 outside the gate, 403 without the permission, 404 for another tenant.
        """
        principal = request.scope.get("state", {}).get(PRINCIPAL)
        if not isinstance(principal, Principal):  # the route is not behind the gate
            raise ApiError(401, "unauthenticated", "missing bearer token")
        return authorize(principal, self.permission, tenant)


def needs(permission: Permission) -> Any:
    """Declare the permission a route needs, as its ``tenant`` parameter's annotation.

    ``tenant: Annotated[str, needs(Permission.ROLLOUT_WRITE)]`` gives the route the caller's tenant.
    """
    return Depends(Needs(permission))


def requirement(dependant: Any) -> Permission | None:
    """The permission a FastAPI route's dependant declares (searched through sub-dependencies)."""
    for dep in dependant.dependencies:
        if isinstance(dep.call, Needs):
            return dep.call.permission
        found = requirement(dep)
        if found is not None:
            return found
    return None


def operator_routes(app: FastAPI) -> list[APIRoute]:
    """Every route below ``/api/``, including those of routers FastAPI includes lazily."""

    def flat(routes: list[Any]) -> list[Any]:
        found = []
        for route in routes:
            inner = getattr(route, "original_router", None)
            found += flat(inner.routes) if inner is not None else [route]
        return found

    return [r for r in flat(app.routes) if isinstance(r, APIRoute) and r.path.startswith("/api/")]


def document_permissions(app: FastAPI) -> None:
    """Name each operation's permission in the OpenAPI document (``x-permission``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for route in operator_routes(app):
            need = requirement(route.dependant)
            for method in route.methods or ():
                operation = schema.get("paths", {}).get(route.path, {}).get(method.lower())
                if operation is not None and need is not None:
                    operation["x-permission"] = need.value
                    text = operation.get("description", "")
                    operation["description"] = f"Needs the permission `{need.value}`.\n\n{text}"
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _outcome(status: int) -> Literal["success", "denied", "rejected", "failed"]:
    if status < 400:
        return "success"
    if status == 403:
        return "denied"
    return "rejected" if status < 500 else "failed"


def _created_id(status: int, head: bytes) -> str | None:
    if status != 201:
        return None
    try:
        body = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    value = body.get("id") if isinstance(body, dict) else None
    return str(value) if isinstance(value, str | int) else None


Recorder = Callable[[AuditRecorded], Awaitable[None]]


class OperatorGate:
    """ASGI middleware: 401 without a valid token below ``/api/``; audit of every change."""

    def __init__(
        self,
        app: ASGIApp,
        service: str,
        auth: Authenticator,
        record: Recorder | None,
        common: CommonSettings,
    ) -> None:
        self.app = app
        self.service = service
        self.auth = auth
        self.record = record
        guarded = ["/api/"]
        if not common.open_docs:
            guarded += DOC_PATHS
        if not common.open_metrics:
            guarded.append("/metrics")
        self.guarded = tuple(guarded)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let a valid caller through; answer 401 for anyone else."""
        if scope["type"] != "http" or not scope["path"].startswith(self.guarded):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        try:
            principal = await self.auth.authenticate(header)
        except Unauthenticated as exc:
            await _unauthenticated(send, str(exc))
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        if self.record is None or scope["method"] not in CHANGING:
            await self.app(scope, receive, send)
            return
        status = 500
        head = bytearray()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(head) < 4096:
                head.extend(message.get("body", b"")[: 4096 - len(head)])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            await self._audit(scope, principal, status, bytes(head))

    async def _audit(self, scope: Scope, principal: Principal, status: int, head: bytes) -> None:
        route = scope.get("route")
        resource = scope["path"].removeprefix("/api/v1/").removeprefix("/api/")
        if created := _created_id(status, head):
            resource = f"{resource}/{created}"
        event = AuditRecorded(
            tenant=principal.tenant,
            actor=principal.actor,
            service=self.service,
            action=getattr(route, "name", None) or "unknown",
            method=scope["method"],
            resource=resource[:512],
            status=status,
            outcome=_outcome(status),
        )
        if self.record is None:
            return
        try:
            await self.record(event)
        except Exception:
            log.error("audit record lost event=%s", event.model_dump_json(), exc_info=True)


async def _unauthenticated(send: Send, message: str) -> None:
    body = orjson.dumps(error_body("unauthenticated", message))
    await send_response(
        send,
        401,
        body,
        [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="gaggle"')],
    )


async def put_key(nats_url: str, tenant: str, permissions: list[str], name: str) -> tuple[str, str]:
    """A new key written straight into KV ``api_keys``: ``(key id, key)``.

    For test and benchmark set-ups that run services without a registry to issue keys. A
    registry that starts later removes keys its table does not have, unless one is its bootstrap
    key (``GAGGLE_REGISTRY_BOOTSTRAP_KEY``).
    """
    key_id, key = new_api_key()
    entry = ApiKeyEntry(tenant=tenant, name=name, permissions=permissions, sha256=key_hash(key))
    nc = await nats.connect(nats_servers(nats_url))
    try:
        js = nc.jetstream()
        await ensure_all(js, CommonSettings(nats_url=nats_url))
        kv = await js.key_value(names.BUCKET_API_KEYS)
        await kv.put(key_id, entry.model_dump_json().encode())
    finally:
        await nc.close()
    return key_id, key
