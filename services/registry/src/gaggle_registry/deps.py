"""What the registry's routes are given, from the parts ``app.py`` puts in ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from nats.aio.client import Client as NatsClient

from gaggle_registry.access import AccessStore
from gaggle_registry.repository import Repo
from gaggle_registry.tenant_store import TenantStore
from gaggle_runtime.auth import PRINCIPAL, Principal


def _repo(request: Request) -> Repo:
    repo: Repo = request.app.state.repo
    return repo


def _access(request: Request) -> AccessStore:
    access: AccessStore = request.app.state.access
    return access


def _tenants(request: Request) -> TenantStore:
    tenants: TenantStore = request.app.state.tenants
    return tenants


def _nats(request: Request) -> NatsClient:
    nc: NatsClient = request.app.state.service.broker.connection
    return nc


def _bootstrap(request: Request) -> str:
    tenant: str = request.app.state.bootstrap_tenant
    return tenant


def _actor(request: Request) -> str:
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    return principal.actor if isinstance(principal, Principal) else "unknown"


Devices = Annotated[Repo, Depends(_repo)]
Access = Annotated[AccessStore, Depends(_access)]
Tenants = Annotated[TenantStore, Depends(_tenants)]
Nats = Annotated[NatsClient, Depends(_nats)]
Bootstrap = Annotated[str, Depends(_bootstrap)]
"""The tenant whose admins manage every tenant (lower case)."""
Actor = Annotated[str, Depends(_actor)]
"""Who the caller is, as the audit log names them."""
