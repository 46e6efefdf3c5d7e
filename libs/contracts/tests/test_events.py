from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from gaggle_contracts import events
from gaggle_contracts.events import DeviceDiscovered, DeviceSeen, Sighting, utcnow

EXAMPLES = Path(__file__).parent / "examples"


def test_every_event_kind_is_unique_and_matches_its_subject() -> None:
    kinds = [cls.kind for cls in events.EVENT_TYPES]
    assert len(kinds) == len(set(kinds))
    ev = DeviceDiscovered(tenant="acme", controller_id="d1")
    assert ev.subject == "ota.v1.acme.device.discovered"


def test_events_carry_id_time_tenant_and_schema_version() -> None:
    ev = DeviceDiscovered(tenant="acme", controller_id="d1")
    data = json.loads(ev.model_dump_json())
    assert set(data) >= {"event_id", "occurred_at", "tenant", "schema_version"}
    assert data["schema_version"] == 1
    assert data["occurred_at"].endswith("Z")


def test_events_round_trip_through_json_and_ignore_unknown_fields() -> None:
    ev = DeviceSeen(
        tenant="acme", sightings=[Sighting(controller_id="d1", seen_at=utcnow(), address="::1")]
    )
    data = json.loads(ev.model_dump_json())
    data["added_in_a_later_version"] = True
    back = events.event_from_json("device.seen", data)
    assert back == ev


def test_events_are_frozen() -> None:
    ev = DeviceDiscovered(tenant="acme", controller_id="d1")
    with pytest.raises(ValidationError):
        ev.controller_id = "d2"  # type: ignore[misc]


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError):
        DeviceDiscovered.model_validate(
            {"tenant": "a", "controller_id": "d", "occurred_at": "2026-01-01T00:00:00"}
        )


def test_discoveries_of_one_device_share_a_message_id_for_jetstream_dedupe() -> None:
    a = DeviceDiscovered(tenant="acme", controller_id="d1")
    b = DeviceDiscovered(tenant="acme", controller_id="d1")
    assert a.event_id != b.event_id
    assert a.message_id == b.message_id
    assert a.message_id != DeviceDiscovered(tenant="acme", controller_id="d2").message_id


def test_other_events_use_their_event_id_as_message_id() -> None:
    ev = DeviceSeen(tenant="acme", sightings=[])
    assert ev.message_id == str(ev.event_id)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_pinned_examples_still_parse(path: Path) -> None:
    kind = path.stem
    back = events.event_from_json(kind, path.read_bytes())
    assert back.kind == kind


def test_there_is_a_pinned_example_for_every_event() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(events.EVENTS_BY_KIND)


def test_an_event_encodes_to_the_json_it_publishes() -> None:
    ev = DeviceDiscovered(tenant="acme", controller_id="d1")
    assert ev.encode() == ev.model_dump_json().encode()


def test_an_event_larger_than_the_bus_accepts_fails_loudly_where_it_is_encoded() -> None:
    fits = events.DeviceConfigReported(
        tenant="acme", controller_id="d1", data={"k": "x" * (events.MAX_MESSAGE_BYTES - 500)}
    )
    assert len(fits.encode()) <= events.MAX_MESSAGE_BYTES
    too_large = events.DeviceConfigReported(
        tenant="acme", controller_id="d1", data={"k": "x" * events.MAX_MESSAGE_BYTES}
    )
    with pytest.raises(events.MessageTooLargeError) as caught:
        too_large.encode()
    assert caught.value.size > events.MAX_MESSAGE_BYTES
    assert "device.config_reported event is" in str(caught.value)
    assert f"over the limit of {events.MAX_MESSAGE_BYTES} bytes" in str(caught.value)


def test_the_limit_leaves_room_for_headers_under_nats_default_max_payload() -> None:
    nats_default_max_payload = 1 << 20
    assert nats_default_max_payload - events.MAX_MESSAGE_BYTES > 32 * 1024
