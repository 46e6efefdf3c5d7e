"""What the registry's routes are given, from the parts ``app.py`` puts in ``app.state``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from nats.aio.client import Client as NatsClient

from gaggle_registry.access import AccessStore
from gaggle_registry.listing import DeviceListing
from gaggle_registry.repository import Repo
from gaggle_registry.tenant_store import TenantStore
from gaggle_runtime.auth import PRINCIPAL, Principal


def state(name: str) -> Any:
    """A dependency giving ``app.state.<name>``."""

    def part(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(part)


def _nats(request: Request) -> NatsClient:
    nc: NatsClient = request.app.state.service.broker.connection
    return nc


def _actor(request: Request) -> str:
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    return principal.actor if isinstance(principal, Principal) else "unknown"


Devices = Annotated[Repo, state("repo")]
Listing = Annotated[DeviceListing, state("listing")]
Access = Annotated[AccessStore, state("access")]
Tenants = Annotated[TenantStore, state("tenants")]
Bootstrap = Annotated[str, state("bootstrap_tenant")]
"""The tenant whose admins manage every tenant (lower case)."""
Nats = Annotated[NatsClient, Depends(_nats)]
Actor = Annotated[str, Depends(_actor)]
"""Who the caller is, as the audit log names them."""
