"""Attended upgrade checks (in the style of OpenWrt's ASU): is there something newer, and why.

A device, or the person in front of it, asks whether something newer than ``version`` fits it
under its policy; if the person says yes, the offer becomes the device's action. The rule is
:func:`answer`, pure; :class:`Checker` reads what it needs and answers the gateway
(``ota.rpc.rollouts.check`` / ``.upgrade``) and the operator API (``GET
/api/v1/devices/{id}/check``).

What is offered, by the device's mode (as :mod:`~gaggle_rollouts.decision`):

- ``pinned``: nothing;
- ``assigned``: the assigned software, if it fits and is newer;
- ``latest``: the newest fitting software, if newer;
- ``rollout``: the software of the newest active rollout of the device's feed, if the rollout
  runs, the device is in one of its started waves, and it is newer.

A check by board and revision (no device) answers as mode ``latest``. Deleted and untrusted
software (its signer left the trust store) is never offered; nor is software the device rolled
back from, or whose last action on it failed, as for unattended decisions. "Newer" is
:class:`~gaggle_contracts.versions.SwVersion` order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gaggle_contracts.rpc import (
    CheckOutcome,
    CheckUpgrade,
    RequestUpgrade,
    UpgradeChecked,
    UpgradeOffer,
    UpgradeRequested,
)
from gaggle_contracts.versions import InvalidVersionError, SwVersion
from gaggle_rollouts.actions import OPEN_ACTION, Actions, ActionSpec
from gaggle_rollouts.catalogue import Catalogue
from gaggle_rollouts.choosing import Chooser
from gaggle_rollouts.decision import ANY, DeviceView, PolicyView, fits
from gaggle_rollouts.domain import Software
from gaggle_rollouts.health_store import blocked_software
from gaggle_rollouts.known import ReadThrough
from gaggle_rollouts.policies import Policies
from gaggle_runtime.db import Conn
from gaggle_runtime.rpc import Responder
from gaggle_runtime.service import Database
from gaggle_runtime.telemetry import Tracing

UNTRUSTED = "SELECT software_id FROM rollouts.untrusted_software WHERE tenant = $1"
NEWEST_ACTIVE_ROLLOUT = """
SELECT id, state, software_id FROM rollouts.rollouts
WHERE tenant = $1 AND feed = $2 AND state IN ('running', 'paused') ORDER BY id DESC LIMIT 1"""
MEMBER_STATE = """
SELECT state FROM rollouts.rollout_devices WHERE rollout_id = $1 AND controller_id = $2"""
REQUESTED_NOTE = "Requested by the device (attended upgrade check)."


@dataclass(frozen=True)
class RolloutSeen:
    """The newest active rollout of a device's feed, as a check sees it."""

    rollout_id: str
    state: str
    software_id: str
    member_state: str | None
    """The device's state in it; None: not a member; ``waiting``: its wave has not started."""


@dataclass(frozen=True)
class Considered:
    """One catalogue entry and what the check made of it."""

    software_id: str
    version: str
    verdict: str


@dataclass(frozen=True)
class Answer:
    """A check's answer: the outcome, the offer (for ``update``), and why."""

    outcome: CheckOutcome
    reason: str
    offer: Software | None = None
    considered: list[Considered] = field(default_factory=list)


def _version(text: str) -> SwVersion | None:
    try:
        return SwVersion.parse(text)
    except InvalidVersionError:
        return None


def _pairs(software: Software) -> str:
    return ", ".join(f"{m}/{r}" for m, r in software.compatibility) or "any"


def _verdicts(
    catalogue: Mapping[str, Software],
    device: DeviceView,
    running: SwVersion,
    untrusted: frozenset[str],
) -> list[Considered]:
    out = []
    for sid in sorted(catalogue, key=lambda s: (len(s), s)):
        software = catalogue[sid]
        version = _version(software.version)
        if software.deleted:
            verdict = "deleted"
        elif sid in untrusted:
            verdict = "untrusted: never offered"
        elif not fits(software.compatibility, device):
            verdict = f"does not fit (it is for {_pairs(software)})"
        elif version is None:
            verdict = "its version does not order"
        elif version > running:
            verdict = "newer, fits"
        else:
            verdict = "not newer"
        out.append(Considered(sid, software.version, verdict))
    return out


def _policy_target(
    device: DeviceView,
    policy: PolicyView,
    live: Mapping[str, Software],
    rollout: RolloutSeen | None,
) -> tuple[Software | None, str]:
    """The software the policy points at (None: none), and why."""
    if policy.mode == "pinned":
        return None, "pinned: this device is never offered an update"
    if policy.mode == "assigned":
        software = live.get(policy.software_id or "")
        if software is None:
            return None, "assigned software is unknown, deleted or untrusted"
        if not fits(software.compatibility, device):
            return None, f"assigned software {software.software_id} does not fit the device"
        return software, f"assigned: software {software.software_id}"
    if policy.mode == "latest":
        best: tuple[SwVersion, Software] | None = None
        for software in live.values():
            version = _version(software.version)
            if version is None or not fits(software.compatibility, device):
                continue
            if best is None or version > best[0]:
                best = (version, software)
        if best is None:
            return None, "latest: no fitting software"
        return best[1], "latest: the newest fitting software"
    if rollout is None:
        return None, f"no running rollout in feed {policy.feed!r}"
    if rollout.state != "running":
        return None, f"rollout {rollout.rollout_id} of feed {policy.feed!r} is paused"
    software = live.get(rollout.software_id)
    if software is None:
        return None, f"rollout {rollout.rollout_id}'s software is deleted or untrusted"
    if not fits(software.compatibility, device):
        return None, f"rollout {rollout.rollout_id}'s software does not fit the device"
    if rollout.member_state in (None, "waiting"):
        return None, f"device not in a started wave of rollout {rollout.rollout_id}"
    return software, f"rollout {rollout.rollout_id} of feed {policy.feed!r}"


def answer(
    device: DeviceView,
    policy: PolicyView,
    catalogue: Mapping[str, Software],
    *,
    rollout: RolloutSeen | None = None,
    untrusted: frozenset[str] = frozenset(),
    failed: frozenset[str] = frozenset(),
    blocked: frozenset[str] = frozenset(),
) -> Answer:
    """What a check of ``device`` (running ``device.sw_version``) answers under ``policy``.

    Pure. ``catalogue`` holds deleted software too (never offered), as do ``untrusted`` ids.
    """
    running = _version(device.sw_version or "")
    if running is None:
        return Answer("unprocessable", f"{device.sw_version!r} is not a version Gaggle can order")
    considered = _verdicts(catalogue, device, running, untrusted)
    live = {sid: s for sid, s in catalogue.items() if not s.deleted and sid not in untrusted}
    target, why = _policy_target(device, policy, live, rollout)
    if target is None:
        return Answer("up_to_date", why, None, considered)
    version = _version(target.version)
    if version is None or not version > running:
        return Answer(
            "up_to_date",
            f"{why}: {target.version} is not newer than {device.sw_version}",
            None,
            considered,
        )
    if target.software_id in blocked:
        return Answer(
            "up_to_date",
            f"{why}: rolled back on this device; blocked until cleared",
            None,
            considered,
        )
    if target.software_id in failed:
        return Answer("up_to_date", f"{why}: failed on this device before", None, considered)
    return Answer("update", why, target, considered)


def revision(
    device: DeviceView,
    policy: PolicyView,
    catalogue: Mapping[str, Software],
    rollout: RolloutSeen | None,
    sets: Iterable[frozenset[str]],
) -> str:
    """A hash over everything a check's answer was made from (32 hex digits)."""
    doc = {
        "device": [device.hw_model, device.hw_revision],
        "policy": [policy.mode, policy.feed, policy.software_id],
        "catalogue": sorted(
            [
                s.software_id,
                s.version,
                s.deleted,
                s.file.sha256,
                s.file.external_url,
                sorted(list(p) for p in s.compatibility),
            ]
            for s in catalogue.values()
        ),
        "rollout": None
        if rollout is None
        else [rollout.rollout_id, rollout.state, rollout.software_id, rollout.member_state],
        "sets": [sorted(s) for s in sets],
    }
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()[:32]


def offer_of(software: Software) -> UpgradeOffer:
    """What the gateway hands the device about the offered software."""
    f = software.file
    return UpgradeOffer(
        software_id=software.software_id,
        name=software.name,
        version=software.version,
        filename=f.filename,
        size=f.size,
        md5=f.md5,
        sha1=f.sha1,
        sha256=f.sha256,
        external_url=f.external_url,
    )


@dataclass(frozen=True)
class Checked:
    """A check's answer with what it was made from, for the gateway and for operators."""

    answer: Answer
    reply: UpgradeChecked
    controller_id: str | None
    version: str


class Checker:
    """Answers checks and upgrade requests from the tables (one snapshot a check)."""

    def __init__(
        self,
        db: Database,
        catalogue: Catalogue,
        policies: Policies,
        actions: Actions,
        chooser: Chooser,
        known: ReadThrough,
    ) -> None:
        self.db = db
        self.catalogue = catalogue
        self.policies = policies
        self.actions = actions
        self.chooser = chooser
        self.known = known

    async def check(self, req: CheckUpgrade) -> Checked:
        """Answer ``req``: the device's policy applies, or (by board) mode ``latest``.

        Raises:
            OwnerUnavailable: the device is not known here and the registry did not answer.
        """
        tenant = req.tenant.lower()
        cid = req.controller_id
        if cid is not None and not await self.known.device(tenant, cid):
            return self._unprocessable(f"device {cid!r} is unknown", cid, req.version)
        async with (
            self.db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await self._check(conn, tenant, req)

    def _unprocessable(self, reason: str, cid: str | None, version: str) -> Checked:
        reply = UpgradeChecked(outcome="unprocessable", reason=reason, revision="")
        return Checked(Answer("unprocessable", reason), reply, cid, version)

    async def _check(self, conn: Conn, tenant: str, req: CheckUpgrade) -> Checked:
        catalogue = await self.catalogue.all(conn, tenant)
        untrusted = frozenset(r[0] for r in await conn.fetch(UNTRUSTED, tenant))
        cid = req.controller_id
        failed: frozenset[str] = frozenset()
        blocked: frozenset[str] = frozenset()
        rollout = None
        if cid is None and req.board is None:
            return self._unprocessable("name a controller_id or a board", None, req.version)
        if cid is None:
            policy = PolicyView("latest")
            device = DeviceView("", req.board, req.revision, req.version)
            if not any(
                not s.deleted and sid not in untrusted and _names_board(s, req.board)
                for sid, s in catalogue.items()
            ):
                return self._unprocessable(
                    f"no software in the catalogue is for board {req.board!r}", None, req.version
                )
        else:
            policies, devices = await self.policies.views(conn, tenant, [cid])
            policy = policies.get(cid, PolicyView())
            known = devices.get(cid, DeviceView(cid))
            device = DeviceView(
                cid,
                known.hw_model if known.hw_model is not None else req.board,
                known.hw_revision if known.hw_revision is not None else req.revision,
                req.version,
            )
            failed = await self.actions.failed_software(conn, tenant, cid)
            blocked = frozenset((await blocked_software(conn, tenant, [cid])).get(cid, set()))
            if policy.mode == "rollout":
                rollout = await _rollout(conn, tenant, policy.feed, cid)
        found = answer(
            device,
            policy,
            catalogue,
            rollout=rollout,
            untrusted=untrusted,
            failed=failed,
            blocked=blocked,
        )
        rev = revision(device, policy, catalogue, rollout, (untrusted, failed, blocked))
        reply = UpgradeChecked(
            outcome=found.outcome,
            reason=found.reason,
            revision=rev,
            offer=None if found.offer is None else offer_of(found.offer),
            mode=policy.mode,
            feed=policy.feed if cid is not None else None,
            rollout_id=None if rollout is None else rollout.rollout_id,
            hw_model=device.hw_model,
            hw_revision=device.hw_revision,
        )
        return Checked(found, reply, cid, req.version)

    async def request(self, req: RequestUpgrade) -> UpgradeRequested:
        """Open the device's action for the offer the person accepted, if it still stands.

        In mode ``rollout`` the action is the rollout's (its cap on updates in flight applies:
        ``queued`` until a slot is free); otherwise it is opened for the device at once.
        """
        tenant = req.tenant.lower()
        checked = (
            await self.check(
                CheckUpgrade(
                    tenant=tenant,
                    controller_id=req.controller_id,
                    board=req.board,
                    revision=req.revision,
                    version=req.version,
                )
            )
        ).reply
        if checked.outcome != "update" or checked.offer is None:
            return UpgradeRequested(outcome=checked.outcome, reason=checked.reason, check=checked)
        sid = checked.offer.software_id
        if sid != req.software_id:
            reason = f"the check now offers software {sid}, not {req.software_id}; check again"
            return UpgradeRequested(outcome="changed", reason=reason, check=checked)
        cid = req.controller_id
        if checked.mode == "rollout":
            await self.chooser.choose(tenant, cid)
            return await self._after(tenant, cid, sid, checked, "opened by its rollout")
        software = await self.catalogue.software(tenant, sid)
        if software is None:  # deleted between the check and now
            return UpgradeRequested(outcome="changed", reason="the offer is gone", check=checked)
        async with self.db.pool.acquire() as conn, conn.transaction():
            await self.policies.lock(conn, tenant, [cid])
            row = await conn.fetchrow(OPEN_ACTION, tenant, cid)
            if row is None:
                opened = await self.actions.open_one(
                    conn, tenant, cid, software, ActionSpec("forced"), REQUESTED_NOTE
                )
                return UpgradeRequested(
                    outcome="opened",
                    reason="action opened",
                    check=checked,
                    action_id=str(opened.id),
                )
        return await self._after(tenant, cid, sid, checked, "")

    async def _after(
        self, tenant: str, cid: str, sid: str, checked: UpgradeChecked, opened: str
    ) -> UpgradeRequested:
        """Where the device stands once an action may have been opened for ``sid``."""
        action = await self.actions.open_action_of(tenant, cid)
        if action is None:
            return UpgradeRequested(
                outcome="queued",
                reason="accepted; waiting for a free slot under the tenant's cap on updates",
                check=checked,
            )
        if action.software_id != sid:
            return UpgradeRequested(
                outcome="conflict",
                reason=f"action {action.id} (software {action.software_id}) is open",
                check=checked,
                action_id=str(action.id),
            )
        return UpgradeRequested(
            outcome="opened" if opened else "open",
            reason=f"action {opened or 'open already'}",
            check=checked,
            action_id=str(action.id),
        )

    async def explain(
        self,
        tenant: str,
        controller_id: str,
        version: str | None,
        board: str | None = None,
        revision: str | None = None,
    ) -> dict[str, Any]:
        """The operator's view of a device's check: the answer and what led to it.

        ``version`` defaults to the one the device reported; ``board`` and ``revision`` stand
        for its hardware while it reported none, as in the device's own check.
        """
        if version is None:
            async with self.db.pool.acquire() as conn:
                _, devices = await self.policies.views(conn, tenant, [controller_id])
            known = devices.get(controller_id)
            version = known.sw_version if known is not None else None
        if version is None:
            reason = "the device has not reported its version; give one"
            return {
                "controller_id": controller_id,
                "version": None,
                "status": 422,
                "outcome": "unprocessable",
                "reason": reason,
            }
        checked = await self.check(
            CheckUpgrade(
                tenant=tenant,
                controller_id=controller_id,
                board=board,
                revision=revision,
                version=version,
            )
        )
        reply = checked.reply
        return {
            "controller_id": controller_id,
            "version": version,
            "status": {"update": 200, "up_to_date": 204}.get(reply.outcome, 422),
            "outcome": reply.outcome,
            "reason": reply.reason,
            "policy": {"mode": reply.mode, "feed": reply.feed},
            "rollout_id": reply.rollout_id,
            "hw_model": reply.hw_model,
            "hw_revision": reply.hw_revision,
            "offer": None if reply.offer is None else reply.offer.model_dump(),
            "revision": reply.revision or None,
            "considered": [
                {"software_id": c.software_id, "version": c.version, "verdict": c.verdict}
                for c in checked.answer.considered
            ],
        }


def _names_board(software: Software, board: str | None) -> bool:
    """Whether ``software`` is for ``board`` (by name, or for any board)."""
    return any(model in (ANY, board) for model, _ in software.compatibility)


async def _rollout(conn: Conn, tenant: str, feed: str, cid: str) -> RolloutSeen | None:
    row = await conn.fetchrow(NEWEST_ACTIVE_ROLLOUT, tenant, feed)
    if row is None:
        return None
    member = await conn.fetchval(MEMBER_STATE, row["id"], cid)
    return RolloutSeen(str(row["id"]), row["state"], row["software_id"], member)


def make_responder(checker: Checker, tracing: Tracing | None = None) -> Responder:
    """Rollouts' request-reply endpoints: ``ota.rpc.rollouts.check`` and ``.upgrade``."""
    responder = Responder("rollouts", tracing=tracing)

    async def check(request: CheckUpgrade) -> UpgradeChecked:
        """ota.rpc.rollouts.check -> the answer, with its revision."""
        return (await checker.check(request)).reply

    responder.endpoint(CheckUpgrade, check)
    responder.endpoint(RequestUpgrade, checker.request)
    return responder
