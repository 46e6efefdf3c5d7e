"""Operator API of the trust store: ``/api/v1/trust`` (list, add, remove) and the policy."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from gaggle_artifacts.deps import Judge, Trust
from gaggle_artifacts.errors import found
from gaggle_artifacts.signatures import MAX_PEM, parse_trust_entry
from gaggle_contracts import names
from gaggle_contracts.access import Permission
from gaggle_runtime.auth import needs

TrustReader = Annotated[str, needs(Permission.SOFTWARE_READ)]
"""The caller's tenant, if it may read software (and so see who may sign it)."""
TrustWriter = Annotated[str, needs(Permission.TRUST_WRITE)]
"""The caller's tenant, if it may change the trust store."""

api = APIRouter(prefix="/api/v1", tags=["trust"])


class NewTrustEntry(BaseModel):
    """A certificate (CMS signers) or public key (raw RSA signatures) to trust, in PEM."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    pem: str = Field(min_length=1, max_length=MAX_PEM)


@api.get("/trust", summary="The trust store and the image policy")
async def list_trust(tenant: TrustReader, trust: Trust, gate: Judge) -> dict[str, Any]:
    """The tenant's certificates and keys, and its image policy (set with the tenant)."""
    tenant = tenant.lower()
    return {
        "items": await trust.documents(tenant),
        "policy": gate.policies.policy(tenant).public(),
    }


@api.post("/trust", status_code=201, summary="Trust a certificate or public key")
async def add_trust(tenant: TrustWriter, body: NewTrustEntry, trust: Trust) -> dict[str, Any]:
    """Add a PEM certificate or public key; images it verifies from now on are ``verified``."""
    parse_trust_entry(body.pem)  # 422 for anything but one certificate or public key
    return await trust.add(tenant.lower(), body.name, body.pem)


@api.delete("/trust/{entry_id}", summary="Stop trusting a certificate or key")
async def remove_trust(
    tenant: TrustWriter,
    entry_id: Annotated[str, Path(max_length=20)],
    trust: Trust,
) -> dict[str, Any]:
    """Remove an entry: software it verified becomes ``untrusted`` (rollouts stop using it)."""
    row_id = names.parse_row_id(entry_id)
    removed = await trust.remove(tenant.lower(), row_id) if row_id is not None else None
    entry, untrusted = found(removed, "trust entry", entry_id)
    return {"removed": entry, "untrusted": [str(i) for i in untrusted]}
