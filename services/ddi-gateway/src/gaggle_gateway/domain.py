"""Gateway rules without I/O: who may poll, and what a poll answers.

Authentication follows hawkBit's tenant switches (ddi-api.md §1): ``TargetToken`` (the device's
own token, compared as a SHA-256 hash in constant time), ``GatewayToken`` (tenant-wide), and, as
in gooseBit's embedded default, anonymous polls. A refusal never says whether the device exists.
"""

from __future__ import annotations

import hmac
import math
import zlib
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import quote

from gaggle_contracts.events import FeedbackStatus
from gaggle_contracts.kv import (
    ArtifactDoc,
    ChunkDoc,
    DeploymentDoc,
    DeploymentEntry,
    DeviceEntry,
    InstalledAction,
    OpenAction,
    TenantConfig,
    token_hash,
)


def _matches(token: str, stored_hash: str | None) -> bool:
    return stored_hash is not None and hmac.compare_digest(token_hash(token), stored_hash)


@dataclass(frozen=True)
class Credentials:
    """What the ``Authorization`` header presented."""

    scheme: Literal["none", "target", "gateway"]
    token: str = ""


NO_CREDENTIALS = Credentials("none")


def parse_authorization(header: str | None) -> Credentials | None:
    """Read ``TargetToken <t>`` / ``GatewayToken <t>``; None when the header is unusable.

    An empty ``TargetToken`` (rauc-hawkbit sends ``"TargetToken "`` when it has none) counts as
    no credentials at all.
    """
    if header is None or not header.strip():
        return NO_CREDENTIALS
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    kind = scheme.lower()
    if kind == "targettoken":
        return Credentials("target", token) if token else NO_CREDENTIALS
    if kind == "gatewaytoken" and token:
        return Credentials("gateway", token)
    return None


class Access(Enum):
    """Outcome of an authorisation check."""

    ALLOW = "allow"
    REGISTER = "register"
    """Unknown device that may be registered by this request."""
    UNKNOWN = "unknown"
    """Credentials fine, but no such device (404 outside the poll)."""
    DENY = "deny"


def authorize(
    creds: Credentials | None,
    tenant: TenantConfig,
    device: DeviceEntry | None,
    *,
    may_register: bool,
) -> Access:
    """Decide whether a request of ``device`` (None: unknown) with ``creds`` is let in.

    ``may_register`` is true for the requests that auto-register (the base poll and
    ``GET …/confirmationBase``).
    """
    if creds is None:
        return Access.DENY
    if creds.scheme == "gateway":
        if not _matches(creds.token, tenant.gateway_token_hash):
            return Access.DENY
        if device is not None:
            return Access.ALLOW
        return Access.REGISTER if may_register else Access.UNKNOWN
    if creds.scheme == "target":
        if not tenant.target_token:
            return Access.DENY
        if device is None:
            if tenant.anonymous:
                return _unknown(tenant, may_register)
            return Access.DENY
        if _matches(creds.token, device.token_hash):
            return Access.ALLOW
        return Access.ALLOW if device.token_hash is None and tenant.anonymous else Access.DENY
    # No credentials.
    if not tenant.anonymous:
        return Access.DENY
    if device is None:
        return _unknown(tenant, may_register)
    return Access.ALLOW if device.token_hash is None else Access.DENY


def closes_action(cancel: bool, status: FeedbackStatus, action: OpenAction) -> bool:
    """Whether a feedback report closes its (open) action, as rollouts will decide it.

    Deployment feedback closes with ``closed`` (any result) or ``canceled``, and a download-only
    action also with ``downloaded``; cancel feedback closes with ``canceled``, or ``closed``
    unless it failed (hawkBit #952). ``rejected`` closes nothing: hawkBit keeps the action
    running (a warning) or, for a cancel, running again (cancel rejected).
    """
    execution = status.execution
    if cancel:
        return execution == "canceled" or (execution == "closed" and status.finished != "failure")
    if execution in ("closed", "canceled"):
        return True
    doc = action.deployment
    download_only = doc.update == "skip" and doc.maintenance_window is None
    return execution == "downloaded" and download_only


def attributes_after(keys: tuple[str, ...], mode: str, data: dict[str, str]) -> int:
    """How many attributes a device with attribute names ``keys`` has after a configData report."""
    if mode == "replace":
        return len(data)
    if mode == "remove":
        return len(set(keys).difference(data))
    return len(set(keys).union(data))


def _unknown(tenant: TenantConfig, may_register: bool) -> Access:
    if may_register and tenant.auto_register:
        return Access.REGISTER
    return Access.UNKNOWN if not may_register else Access.DENY


MAX_SLEEP_S = 24 * 3600 - 1
"""``23:59:59``: every DDI client parses ``HH:MM:SS`` below 24 h."""


@lru_cache(maxsize=256)
def sleep_seconds(sleep: str) -> int:
    """Seconds of an ``HH:MM:SS`` polling interval (validated where it was configured)."""
    hours, minutes, seconds = sleep.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds)


@lru_cache(maxsize=4096)
def format_sleep(seconds: int) -> str:
    """``HH:MM:SS`` of ``seconds``, capped at :data:`MAX_SLEEP_S`."""
    seconds = max(0, min(seconds, MAX_SLEEP_S))
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def jitter_share(tenant: str, controller_id: str) -> float:
    """A device's fixed place in ``[-1, 1]``, from a hash of its ids.

    Stable across polls, restarts and gateway workers, so a device keeps its rhythm while a
    fleet that started together spreads out. CRC-32 spreads ids well enough for this and costs
    a fraction of a cryptographic hash on the poll path.
    """
    return zlib.crc32(f"{tenant}/{controller_id}".encode()) / 0x7FFFFFFF - 1


GOLDEN = (5**0.5 - 1) / 2
"""The golden ratio's fraction: its multiples modulo 1 are spread over ``[0, 1)`` as evenly as
any sequence can be, from the first few on (an additive recurrence, or Weyl sequence)."""


def dither_at(sequence: int, share: float = 0.0) -> float:
    """A point in ``[0, 1)`` for the ``sequence``-th poll, moved by the device's ``share``.

    Successive polls get points spread evenly over the interval whatever the fleet's size; the
    device's share keeps two gateway processes at the same count from handing a device the
    same rounding.
    """
    return (sequence * GOLDEN + share) % 1.0


def paced(
    sleep: str, share: float = 0.0, factor: float = 1.0, dither: float = 0.5, at_least: int = 0
) -> str:
    """``sleep`` stretched by ``factor``, then moved by ``share`` of itself; whole seconds.

    ``share`` is the device's :func:`jitter_share` times the jitter setting (0.1: up to 10%
    either way), ``factor`` the stretch while the system is busy. The result, ``target``
    seconds, is rounded down or up by ``dither`` (a point in ``[0, 1)``): up when ``dither`` is
    below its fraction. With dithers spread evenly over successive polls (:func:`dither_at`) a
    device sleeps ``target`` on average, not ``target`` rounded: 5.3 s is 5 s seven polls in
    ten and 6 s three in ten. So a fleet keeps the configured poll rate (the shares average
    out), and a short interval spreads too: 5 s moved by at most 10% would round to 5 s for
    every device, and a fleet that started together would stay in step.

    A sleep of at least one second stays at least one second, and at most ``23:59:59``; it is
    at least ``at_least`` seconds.
    """
    if share == 0.0 and factor == 1.0 and not at_least:
        return sleep
    base = sleep_seconds(sleep)
    target = base * factor * (1 + share)
    whole = math.floor(target)
    seconds = whole + 1 if dither < target - whole else whole
    return format_sleep(max(seconds, min(base, 1), at_least))


def poll_body(
    base: str,
    tenant: TenantConfig,
    device: DeviceEntry | None,
    deployment: DeploymentEntry | None,
    share: float = 0.0,
    factor: float = 1.0,
    dither: float = 0.5,
    at_least: int = 0,
) -> dict[str, Any]:
    """The base poll answer. ``base`` is the absolute ``…/controller/v1/{id}`` URL.

    ``_links`` is always present (rauc-hawkbit indexes it); at most one of confirmationBase,
    cancelAction and deploymentBase; deploymentBase and confirmationBase carry ``?c=``.
    The sleep is :func:`paced` by ``share``, ``factor``, ``dither`` and ``at_least``, the
    open-action interval as the tenant's own.
    """
    links: dict[str, dict[str, str]] = {}
    sleep = tenant.polling_sleep
    if deployment is not None:
        action = deployment.open
        if action is not None:
            if action.state == "deployment":
                links["deploymentBase"] = {
                    "href": f"{base}/deploymentBase/{action.action_id}?c={action.c}"
                }
            elif action.state == "canceling":
                links["cancelAction"] = {"href": f"{base}/cancelAction/{action.action_id}"}
            else:
                links["confirmationBase"] = {
                    "href": f"{base}/confirmationBase/{action.action_id}?c={action.c}"
                }
            sleep = tenant.polling_sleep_open_action or sleep
        if deployment.installed is not None:
            links["installedBase"] = {
                "href": f"{base}/installedBase/{deployment.installed.action_id}"
            }
    if device is None or device.config_requested:
        links["configData"] = {"href": f"{base}/configData"}
    polling = {"sleep": paced(sleep, share, factor, dither, at_least)}
    return {"config": {"polling": polling}, "_links": links}


MAX_HISTORY = 100
"""hawkBit caps ``actionHistory`` at 100 messages."""


def artifact_json(base: str, module_id: str, artifact: ArtifactDoc) -> dict[str, Any]:
    """One artifact: all three hashes (each client checks another), both download rels.

    Clients prefer ``download``; SWUpdate without TLS needs ``download-http``: both point to the
    same URL. External software links straight to its URL.
    """
    own = f"{base}/softwaremodules/{module_id}/artifacts/{quote(artifact.filename, safe='')}"
    href = artifact.external_url or own
    return {
        "filename": artifact.filename,
        "hashes": {"sha1": artifact.sha1, "md5": artifact.md5, "sha256": artifact.sha256},
        "size": artifact.size,
        "_links": {
            "download": {"href": href},
            "download-http": {"href": href},
            "md5sum": {"href": f"{own}.MD5SUM"},
            "md5sum-http": {"href": f"{own}.MD5SUM"},
        },
    }


def chunk_json(base: str, chunk: ChunkDoc) -> dict[str, Any]:
    """One chunk (software module); ``metadata`` only when there is some."""
    body: dict[str, Any] = {"part": chunk.part, "version": chunk.version, "name": chunk.name}
    if chunk.metadata:
        body["metadata"] = chunk.metadata
    body["artifacts"] = [artifact_json(base, chunk.module_id, a) for a in chunk.artifacts]
    return body


def deployment_json(base: str, doc: DeploymentDoc) -> dict[str, Any]:
    """``download``, ``update``, ``maintenanceWindow`` (only when there is one) and ``chunks``."""
    body: dict[str, Any] = {"download": doc.download, "update": doc.update}
    if doc.maintenance_window is not None:
        body["maintenanceWindow"] = doc.maintenance_window
    body["chunks"] = [chunk_json(base, c) for c in doc.chunks]
    return body


def history_count(raw: str | None) -> int:
    """``actionHistory`` query: absent or 0 none, n > 0 the last n, < 0 the most (capped)."""
    if raw is None or raw == "":
        return 0
    try:
        n = int(raw)
    except ValueError:
        return 0
    return MAX_HISTORY if n < 0 else min(n, MAX_HISTORY)


def action_json(
    base: str, action: OpenAction | InstalledAction, section: str, history: int
) -> dict[str, Any]:
    """A deploymentBase, installedBase or confirmationBase body: ``id``, section, history."""
    body: dict[str, Any] = {
        "id": action.action_id,
        section: deployment_json(base, action.deployment),
    }
    if history and isinstance(action, OpenAction) and action.history:
        body["actionHistory"] = {
            "status": action.history_status,
            "messages": action.history[:history],
        }
    return body


def find_module(entry: DeploymentEntry | None, module_id: str) -> ChunkDoc | None:
    """The chunk ``module_id`` of the device's open or installed action (hawkBit's access rule)."""
    if entry is None:
        return None
    for action in (entry.open, entry.installed):
        if action is None:
            continue
        for chunk in action.deployment.chunks:
            if chunk.module_id == module_id:
                return chunk
    return None
