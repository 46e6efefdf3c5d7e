"""Attended upgrade checks at the gateway: the request hash, the answers it remembers, bodies."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gaggle_contracts.kv import ChunkDoc, DeploymentDoc, DeploymentEntry, OpenAction
from gaggle_contracts.rpc import CheckUpgrade, UpgradeChecked
from gaggle_gateway.bodies import parse_body
from gaggle_gateway.core import Gateway
from gaggle_gateway.errors import BadRequest, Busy
from gaggle_gateway.upgrade import CheckBody, CheckKey, Upgrades, UpgradeSettings, request_hash

KEY: CheckKey = ("t", "dev-1", None, None, "1.0.0")


class FakeRollouts(Upgrades):
    """Answers checks as rollouts would, counting the questions; the revision is settable."""

    def __init__(self, settings: UpgradeSettings, deployments: dict[str, Any]) -> None:
        mirror = SimpleNamespace(deployments=SimpleNamespace(values=deployments))
        super().__init__(settings, cast(Gateway, SimpleNamespace(mirror=mirror)), lambda: None)
        self.questions: list[CheckUpgrade] = []
        self.revision = "r1"

    async def _ask(self, request: Any, reply: type[Any]) -> Any:
        self.questions.append(request)
        return UpgradeChecked(outcome="up_to_date", reason="nothing newer", revision=self.revision)


def entry(action_id: str) -> DeploymentEntry:
    doc = DeploymentDoc(chunks=[ChunkDoc(module_id="1", name="n", version="1", artifacts=[])])
    return DeploymentEntry(open=OpenAction(action_id=action_id, deployment=doc))


def test_the_request_hash_is_over_the_normalised_request_and_the_revision() -> None:
    first = request_hash(KEY, "r1")
    assert first == request_hash(KEY, "r1")
    assert len(first) == 32
    assert int(first, 16) >= 0
    others = {
        request_hash(KEY, "r2"),
        request_hash(("t", "dev-1", None, None, "1.0.1"), "r1"),
        request_hash(("t", "dev-2", None, None, "1.0.0"), "r1"),
        request_hash(("t", None, "dev-1", None, "1.0.0"), "r1"),
        request_hash(("u", "dev-1", None, None, "1.0.0"), "r1"),
    }
    assert first not in others
    assert len(others) == 5


async def test_identical_checks_are_answered_from_memory_until_it_expires() -> None:
    ups = FakeRollouts(UpgradeSettings(memory_s=60), {})
    first = await ups.check(KEY, "t.dev-1")
    again = await ups.check(KEY, "t.dev-1")
    assert again is first
    assert (len(ups.questions), ups.asked, ups.from_memory) == (1, 1, 1)
    other = await ups.check(("t", "dev-1", None, None, "1.0.1"), "t.dev-1")
    assert other.request_hash != first.request_hash
    assert len(ups.questions) == 2
    # Expired: asked again; the same revision gives the same hash.
    ups.answers[KEY] = first.__class__(first.checked, first.request_hash, 0.0, first.deployment)
    renewed = await ups.check(KEY, "t.dev-1")
    assert len(ups.questions) == 3
    assert renewed.request_hash == first.request_hash
    # A new revision (the catalogue changed): a new hash.
    ups.answers.clear()
    ups.revision = "r2"
    assert (await ups.check(KEY, "t.dev-1")).request_hash != first.request_hash


async def test_a_change_of_the_devices_deployments_entry_forgets_its_answers() -> None:
    deployments: dict[str, Any] = {"t.dev-1": entry("1")}
    ups = FakeRollouts(UpgradeSettings(memory_s=60), deployments)
    await ups.check(KEY, "t.dev-1")
    await ups.check(KEY, "t.dev-1")
    assert len(ups.questions) == 1
    deployments["t.dev-1"] = entry("1")  # an equal value, but a new one from the KV watch
    await ups.check(KEY, "t.dev-1")
    assert len(ups.questions) == 2
    del deployments["t.dev-1"]
    await ups.check(KEY, "t.dev-1")
    assert len(ups.questions) == 3
    # A check by board has no device entry to follow.
    board: CheckKey = ("t", None, "board", "1.0", "1.0.0")
    await ups.check(board, None)
    await ups.check(board, None)
    assert len(ups.questions) == 4


async def test_memory_is_bounded_and_can_be_switched_off() -> None:
    ups = FakeRollouts(UpgradeSettings(memory_s=60, memory_max=3), {})
    for k in range(5):
        await ups.check(("t", None, "b", None, f"1.0.{k}"), None)
    assert len(ups.answers) == 3
    assert ("t", None, "b", None, "1.0.4") in ups.answers
    assert ("t", None, "b", None, "1.0.0") not in ups.answers
    off = FakeRollouts(UpgradeSettings(memory_s=0), {})
    await off.check(KEY, None)
    await off.check(KEY, None)
    assert len(off.questions) == 2
    assert not off.answers


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[]",
        b'{"controller_id": "d"}',
        b'{"version": "1.0"}',
        b'{"board": "", "version": "1.0"}',
        b'{"controller_id": "d", "version": ""}',
        b'{"controller_id": "d", "version": "' + b"1" * 200 + b'"}',
    ],
)
def test_malformed_checks_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_body(raw, CheckBody)


def test_a_check_names_the_device_or_its_board() -> None:
    by_device = parse_body(b'{"controller_id": "d", "version": "1.0", "extra": 1}', CheckBody)
    assert (by_device.controller_id, by_device.board) == ("d", None)
    by_board = parse_body(b'{"board": "b", "revision": "1", "version": "1.0"}', CheckBody)
    assert (by_board.controller_id, by_board.board, by_board.revision) == (None, "b", "1")


class SlowRollouts(FakeRollouts):
    """Answers only once let go, so that checks pile up meanwhile."""

    def __init__(self, settings: UpgradeSettings, refuse: bool = False) -> None:
        super().__init__(settings, {})
        self.go = asyncio.Event()
        self.refuse = refuse

    async def _ask(self, request: Any, reply: type[Any]) -> Any:
        self.questions.append(request)
        await self.go.wait()
        if self.refuse:
            raise Busy("rollouts did not answer", 2)
        return UpgradeChecked(outcome="up_to_date", reason="nothing newer", revision="r")


async def test_identical_checks_arriving_together_ask_rollouts_once() -> None:
    ups = SlowRollouts(UpgradeSettings(memory_s=60))
    waiting = [asyncio.create_task(ups.check(KEY, None)) for _ in range(5)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # one caller goes away: the others still get the answer
    ups.go.set()
    answers = await asyncio.gather(*waiting[1:])
    assert len(ups.questions) == 1
    assert len({a.request_hash for a in answers}) == 1
    assert not ups._asking


async def test_a_refusal_reaches_every_waiting_check_and_is_not_remembered() -> None:
    ups = SlowRollouts(UpgradeSettings(memory_s=60), refuse=True)
    waiting = [asyncio.create_task(ups.check(KEY, None)) for _ in range(3)]
    await asyncio.sleep(0)
    ups.go.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, Busy) for r in results)
    assert len(ups.questions) == 1
    assert not ups.answers
    ups.refuse = False
    assert (await ups.check(KEY, None)).checked.outcome == "up_to_date"
    assert len(ups.questions) == 2
