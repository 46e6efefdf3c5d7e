"""Every name on the bus: the stream, subjects, durable consumers, KV buckets and keys.

Subjects are ``ota.v1.<tenant>.<entity>.<event>``. Tenants are case-insensitive (DDI URLs say
``DEFAULT``) and appear lower-cased inside subjects and keys. Controller ids are free-form in DDI,
so KV keys carry them verbatim only when they are KV-safe and base64url-encoded otherwise.
"""

from __future__ import annotations

import base64
import re

STREAM = "OTA"
"""The one JetStream stream holding every event."""

SUBJECT_ROOT = "ota.v1"
STREAM_SUBJECTS = (f"{SUBJECT_ROOT}.>",)

BUCKET_DEVICES = "devices"
"""KV read model written by registry: ``DeviceEntry`` per ``<tenant>.<controller id>``."""
BUCKET_DEPLOYMENTS = "deployments"
"""KV read model written by rollouts: ``DeploymentEntry`` per ``<tenant>.<controller id>``."""
BUCKET_TENANTS = "tenants"
"""KV of ``TenantConfig`` per ``<tenant>``."""
BUCKET_API_KEYS = "api_keys"
"""KV of live operator API keys written by registry: ``ApiKeyEntry`` per key id."""
BUCKETS = (BUCKET_DEVICES, BUCKET_DEPLOYMENTS, BUCKET_TENANTS, BUCKET_API_KEYS)

TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a tenant may look like in a URL; stored lower-cased."""
_ID_CHAR = "[A-Za-z0-9._~:@+-]"
_ID_START = "[A-Za-z0-9_~:@+-]"
CONTROLLER_ID_RE = re.compile(
    rf"^(?:{_ID_START}{_ID_CHAR}{{0,255}}|\.{_ID_START}{_ID_CHAR}{{0,254}}|\.\.{_ID_CHAR}{{1,254}})$"
)
"""Controller ids: 1..256 URL-safe characters (hawkBit allows 256), but not ``.`` or ``..``.

Those two are dot segments, which clients and proxies remove from a URL path before sending it
(RFC 3986 §5.2.4), so a device with such an id could never reach its own resources. Written
without look-arounds, so that pydantic's regex engine can use it as a field pattern.
"""
_KV_SAFE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_ENCODED_PREFIX = "="


class InvalidNameError(ValueError):
    """A tenant or controller id that Gaggle does not accept."""


def normalize_tenant(tenant: str) -> str:
    """Return the canonical (lower-case) form of a tenant name.

    Raises:
        InvalidNameError: the name is empty, too long, or has characters outside ``[A-Za-z0-9_-]``.
    """
    if not TENANT_RE.match(tenant):
        raise InvalidNameError(f"invalid tenant {tenant!r}: use 1-64 of A-Z a-z 0-9 _ -")
    return tenant.lower()


def check_controller_id(controller_id: str) -> str:
    r"""Return the controller id unchanged if Gaggle accepts it.

    The id must survive a round trip through a URL path unchanged: a character that a client
    would encode, decode or drop (``/``, ``%``, ``?``, ``#``, ``\``, whitespace, control
    characters) or a whole id a client would normalise away (``.``, ``..``) is refused.

    Raises:
        InvalidNameError: empty, longer than 256 characters, with characters that are not
            URL-safe (``A-Z a-z 0-9 . _ ~ : @ + -``), or a dot segment.
    """
    if not CONTROLLER_ID_RE.match(controller_id):
        if controller_id in (".", ".."):
            raise InvalidNameError(
                f"invalid controller id {controller_id!r}: URLs drop it as a dot segment"
            )
        raise InvalidNameError("invalid controller id: use 1-256 of A-Z a-z 0-9 and . _ ~ : @ + -")
    return controller_id


def parse_row_id(raw: str) -> int | None:
    """A row id as the services store them (a PostgreSQL bigint), or None if ``raw`` cannot be.

    Software, action and rollout ids are decimal text of fewer than 19 digits, so that every
    one fits a bigint; anything else names nothing (the APIs answer 404).
    """
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def subject(tenant: str, kind: str) -> str:
    """Subject of an event of ``kind`` (``entity.event``) for ``tenant`` (already normalised)."""
    return f"{SUBJECT_ROOT}.{tenant}.{kind}"


def subscription(kind: str) -> str:
    """Subject filter that matches ``kind`` events of every tenant."""
    return f"{SUBJECT_ROOT}.*.{kind}"


def tenant_of_subject(subj: str) -> str:
    """The tenant token of an event subject."""
    return subj.split(".", 3)[2]


def durable(service: str, kind: str) -> str:
    """Durable consumer name: ``<service>_<entity>_<event>``."""
    return f"{service}_{kind.replace('.', '_')}"


def kv_key(tenant: str, controller_id: str) -> str:
    """KV key of a device: ``<tenant>.<controller id>``, the id encoded when not KV-safe."""
    if _KV_SAFE_RE.match(controller_id) and not controller_id.startswith(_ENCODED_PREFIX):
        return f"{tenant}.{controller_id}"
    encoded = base64.urlsafe_b64encode(controller_id.encode()).decode().rstrip("=")
    return f"{tenant}.{_ENCODED_PREFIX}{encoded}"


def parse_kv_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`kv_key`: ``(tenant, controller id)``."""
    tenant, _, rest = key.partition(".")
    if rest.startswith(_ENCODED_PREFIX):
        raw = rest[len(_ENCODED_PREFIX) :]
        rest = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    return tenant, rest
