"""The fleet overview: devices by state, model and version; presence; running rollouts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gaggle_console import fleet
from gaggle_console.upstream import UpstreamError
from gaggle_console.web import Console, need_session, parts, upstream_status

router = APIRouter()
OVERVIEW_PAGE = 1000
ROLLOUTS_SHOWN = 50


@router.get("/overview", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    """The fleet overview."""
    c = parts(request)
    session, key = need_session(request)
    errors: list[UpstreamError] = []
    counted: fleet.Fleet | None = None
    try:
        counted = await count_fleet(c, key)
    except UpstreamError as exc:
        errors.append(exc)
    rollouts: list[dict[str, Any]] | None = None
    try:
        page = await c.upstream.get("rollouts", "/api/v1/rollouts", key, {"limit": ROLLOUTS_SHOWN})
        rollouts = [
            {**r, "progress": fleet.progress(r.get("counters") or {})}
            for r in page.get("items", [])
            if r.get("state") in ("running", "paused")
        ]
    except UpstreamError as exc:
        errors.append(exc)
    charts = None
    if counted is not None:
        charts = [
            ("state", "Devices by update state", fleet.bars(counted.by_state)),
            ("model", "Devices by model / revision", fleet.bars(counted.by_model)),
            ("version", "Devices by software version", fleet.bars(counted.by_version)),
        ]
    status = min((upstream_status(e) for e in errors), default=200)
    return c.render(
        request,
        "overview.html",
        session,
        status_code=status,
        page="overview",
        fleet=counted,
        charts=charts,
        rollouts=rollouts,
        errors=errors,
        online_minutes=round(c.settings.online_within_s / 60),
    )


async def count_fleet(c: Console, key: str) -> fleet.Fleet:
    """Counts over the tenant's devices, read page by page (at most the overview's cap).

    Raises:
        UpstreamError: the registry refused a page or could not be reached.
    """
    rows: list[dict[str, Any]] = []
    cursor = None
    cap = c.settings.overview_max_devices
    truncated = False
    while True:
        page = await c.upstream.get(
            "registry",
            "/api/v1/devices",
            key,
            {"limit": min(OVERVIEW_PAGE, cap - len(rows)), "cursor": cursor},
        )
        rows.extend(page.get("items", []))
        cursor = page.get("next")
        if not cursor:
            break
        if len(rows) >= cap:
            truncated = True
            break
    counted = fleet.count(rows, c.now(), timedelta(seconds=c.settings.online_within_s))
    counted.truncated = truncated
    return counted
