"""What the gateway's tests do to its publishing, whichever entry point they drive."""

from __future__ import annotations

from gaggle_contracts.events import Event
from gaggle_gateway.core import Gateway


def lose_first_ack(gateway: Gateway) -> list[Event]:
    """Make the bus store the next event but lose its ack (a timeout); the events so lost.

    Every later event is published and acknowledged as before.
    """
    publish = gateway.publish_event
    lost: list[Event] = []

    async def ack_lost_once(event: Event) -> None:
        await publish(event)
        if not lost:
            lost.append(event)
            raise TimeoutError("no ack")

    gateway.publish_event = ack_lost_once
    return lost


def refuse_all(gateway: Gateway) -> None:
    """Make the bus acknowledge nothing from now on (every publish times out)."""

    async def refused(event: Event) -> None:
        raise TimeoutError("no ack")

    gateway.publish_event = refused
