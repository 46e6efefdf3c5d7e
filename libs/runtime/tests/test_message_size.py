"""Every way an event or KV value leaves a service is bounded (no servers needed)."""

from __future__ import annotations

from typing import Any

import pytest

from gaggle_contracts.events import MAX_MESSAGE_BYTES, DeviceConfigReported, MessageTooLargeError
from gaggle_contracts.kv import DeviceEntry
from gaggle_runtime.bus import check_publishable, publish_event
from gaggle_runtime.failures import PermanentPublishError, is_permanent
from gaggle_runtime.outbox import Outbox


class NoConn:
    """A connection that must not be used: the check comes before any write."""

    async def execute(self, *args: Any) -> None:
        raise AssertionError("written although too large")


def huge_report() -> DeviceConfigReported:
    return DeviceConfigReported(
        tenant="acme", controller_id="d1", data={"k": "x" * (MAX_MESSAGE_BYTES + 1)}
    )


async def test_the_outbox_refuses_an_event_too_large_for_the_bus() -> None:
    with pytest.raises(MessageTooLargeError):
        await Outbox("svc").event(NoConn(), huge_report())  # type: ignore[arg-type]
    with pytest.raises(MessageTooLargeError):
        await Outbox("svc").many(NoConn(), [huge_report()])  # type: ignore[arg-type]


async def test_the_outbox_refuses_a_kv_value_too_large_for_the_bus() -> None:
    value = DeviceEntry(token_hash="x" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(MessageTooLargeError, match="devices KV value"):
        await Outbox("svc").kv_put(NoConn(), "devices", "acme.d1", value)  # type: ignore[arg-type]


async def test_publishing_refuses_an_event_too_large_for_the_bus() -> None:
    with pytest.raises(MessageTooLargeError):
        await publish_event(None, huge_report())  # type: ignore[arg-type]


def test_what_the_server_would_refuse_is_refused_before_sending_and_is_permanent() -> None:
    headers = {"Nats-Msg-Id": "m1", "content-type": "application/json"}
    check_publishable("ota.v1.acme.device.updated", b"x" * 1000, headers, 1 << 20)
    refusals = [
        ("ota.v1.acme.device.updated", b"x" * (1 << 20)),  # over max_payload
        ("ota.v1.acme.device.updated", b"x" * ((1 << 20) - 100)),  # over it with the headers
        ("ota.v1.ac me.device.updated", b"{}"),  # whitespace in a token
        ("ota.v1..device.updated", b"{}"),  # an empty token
        ("ota.v1.*.device.updated", b"{}"),  # a wildcard
    ]
    for subject, payload in refusals:
        with pytest.raises(PermanentPublishError) as caught:
            check_publishable(subject, payload, headers, 1 << 20)
        assert is_permanent(caught.value)
