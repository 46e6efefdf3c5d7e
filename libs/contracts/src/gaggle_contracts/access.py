"""Operator access: permissions, the roles that bundle them, and API keys.

Every operator route names the one permission it needs. A principal (an API key Gaggle issued, or
a JWT from the tenant's OpenID Connect provider) holds a set of permissions within one tenant.

API keys look like ``ggl_<id>_<secret>``: the id is public and names the key in lists, logs and
the audit trail; only the SHA-256 of the whole key is stored. Registry owns the keys and writes
each live one to the KV bucket ``api_keys`` (an :class:`ApiKeyEntry` per id), which every service
watches, so a revoked key (deleted from the bucket) stops working everywhere within moments.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Permission(StrEnum):
    """What a principal may do: ``<resource>:<verb>``, or ``admin`` (keys, audit log, dead letters).

    ``admin`` implies every other permission: whoever manages keys can issue themselves any.
    """

    DEVICE_READ = "device:read"
    DEVICE_WRITE = "device:write"
    SOFTWARE_READ = "software:read"
    SOFTWARE_WRITE = "software:write"
    ROLLOUT_READ = "rollout:read"
    ROLLOUT_WRITE = "rollout:write"
    ROLLOUT_APPROVE = "rollout:approve"
    """Approve or deny rollouts, where the tenant asks for approval (``rollout_approval``)."""
    TRUST_WRITE = "trust:write"
    """Change the tenant's trust store of image signers (held by ``admin`` only, by default)."""
    ADMIN = "admin"


_READ = frozenset({Permission.DEVICE_READ, Permission.SOFTWARE_READ, Permission.ROLLOUT_READ})
_WRITE = frozenset({Permission.DEVICE_WRITE, Permission.SOFTWARE_WRITE, Permission.ROLLOUT_WRITE})

ROLES: dict[str, frozenset[Permission]] = {
    "viewer": _READ,
    "operator": _READ | _WRITE,
    "approver": _READ | {Permission.ROLLOUT_APPROVE},
    "admin": frozenset(Permission),
}
"""Built-in roles: ``viewer`` reads, ``operator`` also changes, ``approver`` reads and approves or
denies rollouts, ``admin`` does everything and manages access."""


def expand(names: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[Permission]:
    """Permissions granted by role and permission names; unknown names grant nothing.

    ``admin`` is both a role and a permission, with the same meaning: everything.
    """
    granted: set[Permission] = set()
    for name in names:
        if name in ROLES:
            granted |= ROLES[name]
        else:
            try:
                granted.add(Permission(name))
            except ValueError:
                continue
    return frozenset(granted)


KEY_PREFIX = "ggl_"
_KEY_RE = re.compile(r"^ggl_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


def new_api_key() -> tuple[str, str]:
    """A fresh key: ``(key id, whole key)``. The whole key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(key: str) -> str | None:
    """The id inside a well-formed key, else None."""
    found = _KEY_RE.match(key)
    return found.group(1) if found else None


def key_hash(key: str) -> str:
    """SHA-256 hex of a whole key: what is stored and compared."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(key_hash(key), stored_hash)


class ApiKeyEntry(BaseModel):
    """A live key in KV ``api_keys`` (key: its id). Revoked keys are deleted from the bucket."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    tenant: str
    name: str = Field(max_length=128)
    permissions: list[str]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    expires_at: AwareDatetime | None = None

    def expired(self, now: datetime) -> bool:
        """Whether the key's time is up."""
        return self.expires_at is not None and now >= self.expires_at
