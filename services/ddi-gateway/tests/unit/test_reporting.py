from __future__ import annotations

import time

from gaggle_contracts.events import DeviceSeen
from gaggle_gateway.reporting import RENDER_SLICE, render_sightings


async def test_rendered_sightings_are_a_valid_device_seen_event() -> None:
    now = time.time()
    chunk = [
        (f"dev-{i}", (now + i, "192.0.2.1" if i % 2 else None)) for i in range(RENDER_SLICE + 5)
    ]
    payload = await render_sightings("acme", "00000000-0000-4000-8000-000000000009", chunk)
    event = DeviceSeen.model_validate_json(payload)
    assert event.tenant == "acme"
    assert str(event.event_id) == "00000000-0000-4000-8000-000000000009"
    assert len(event.sightings) == RENDER_SLICE + 5
    first, second = event.sightings[0], event.sightings[1]
    assert first.controller_id == "dev-0"
    assert first.address is None
    assert second.address == "192.0.2.1"
    assert abs(first.seen_at.timestamp() - now) < 1e-3
    assert first.seen_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
