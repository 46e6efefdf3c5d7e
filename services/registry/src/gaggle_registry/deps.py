"""What the registry's routes are given, from the parts ``app.py`` puts in ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from nats.aio.client import Client as NatsClient

from gaggle_registry.access import AccessStore
from gaggle_registry.listing import DeviceListing
from gaggle_registry.repository import Repo
from gaggle_registry.tenant_store import TenantStore
from gaggle_runtime.auth import PRINCIPAL, Principal
from gaggle_runtime.state import part


def _nats(request: Request) -> NatsClient:
    nc: NatsClient = request.app.state.service.broker.connection
    return nc


def _actor(request: Request) -> str:
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    return principal.actor if isinstance(principal, Principal) else "unknown"


Devices = Annotated[Repo, part("repo")]
Listing = Annotated[DeviceListing, part("listing")]
Access = Annotated[AccessStore, part("access")]
Tenants = Annotated[TenantStore, part("tenants")]
Bootstrap = Annotated[str, part("bootstrap_tenant")]
"""The tenant whose admins manage every tenant (lower case)."""
Nats = Annotated[NatsClient, Depends(_nats)]
Actor = Annotated[str, Depends(_actor)]
"""Who the caller is, as the audit log names them."""
