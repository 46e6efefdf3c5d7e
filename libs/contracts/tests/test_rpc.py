from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gaggle_contracts import ddi, names
from gaggle_contracts.events import utcnow
from gaggle_contracts.rpc import (
    MAX_DEVICE_LOOKUP,
    RPC_TYPES,
    DevicesFound,
    FindDevices,
    FindSoftware,
    KnownDevice,
    SoftwareFound,
)

EXAMPLES = Path(__file__).parent / "examples" / "rpc"
NATS_MAX_PAYLOAD = 1024 * 1024


def test_requests_go_to_the_service_that_answers_them_outside_the_stream() -> None:
    assert FindSoftware.subject() == "ota.rpc.artifacts.software"
    assert FindSoftware.reply is SoftwareFound
    assert FindDevices.subject() == "ota.rpc.registry.devices"
    assert FindDevices.reply is DevicesFound
    subjects = [cls.subject() for cls in RPC_TYPES]
    assert len(subjects) == len(set(subjects))
    for subject in subjects:  # never captured by the OTA stream
        assert not subject.startswith(names.SUBJECT_ROOT + ".")


@pytest.mark.parametrize("cls", RPC_TYPES, ids=lambda c: c.subject())
def test_pinned_requests_and_replies_still_parse(cls: type[FindSoftware | FindDevices]) -> None:
    stem = cls.subject().removeprefix("ota.rpc.")
    request = cls.model_validate_json((EXAMPLES / f"{stem}.request.json").read_bytes())
    assert request.tenant == "default"
    reply = cls.reply.model_validate_json((EXAMPLES / f"{stem}.reply.json").read_bytes())
    assert reply.model_dump()


def test_a_device_lookup_asks_only_about_ids_that_can_exist() -> None:
    with pytest.raises(ValidationError):
        FindDevices(tenant="t", controller_ids=["a b"])
    with pytest.raises(ValidationError):
        FindDevices(tenant="t", controller_ids=[])
    with pytest.raises(ValidationError):
        FindDevices(tenant="t", controller_ids=["d"] * (MAX_DEVICE_LOOKUP + 1))


def test_the_largest_device_lookup_and_its_answer_fit_the_bus_with_room_to_spare() -> None:
    ids = [f"{i:0256}" for i in range(MAX_DEVICE_LOOKUP)]
    request = FindDevices(tenant="t" * 64, controller_ids=ids)
    assert len(request.model_dump_json()) < NATS_MAX_PAYLOAD // 4
    costly = "\x01" * ddi.MAX_ATTRIBUTE_VALUE  # six bytes each in JSON
    reply = DevicesFound(
        devices=[
            KnownDevice(
                controller_id=cid,
                hw_model=costly,
                hw_revision=costly,
                sw_version=costly,
                updated_at=utcnow(),
            )
            for cid in ids
        ]
    )
    assert len(reply.model_dump_json().encode()) < NATS_MAX_PAYLOAD // 3
