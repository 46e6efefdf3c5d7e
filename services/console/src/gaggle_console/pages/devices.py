"""The device list: the registry's filters, text search, order and cursor paging."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from gaggle_console import fleet
from gaggle_console.web import (
    choice,
    fetch,
    need_session,
    next_page_url,
    page_size,
    page_status,
    page_url,
    parts,
    text_filters,
)
from gaggle_contracts.events import UPDATE_STATES

router = APIRouter()
SORTS = {
    "controller_id": "Id, A to Z",
    "-controller_id": "Id, Z to A",
    "-last_seen": "Seen most recently",
    "last_seen": "Seen least recently",
    "-created": "Newest",
    "created": "Oldest",
}
LIST_FILTERS = ("state", "hw_model", "hw_revision", "sw_version", "tag", "feed", "q")
PAGE_SIZES = (10, 25, 50, 100, 250)
DEFAULT_PAGE = 50
MAX_FIELD = 256
"""Longest filter value passed on (the registry takes at most 256 characters of search text)."""


@router.get("/devices", response_class=HTMLResponse)
async def devices(request: Request) -> Response:
    """One page of the device list."""
    c = parts(request)
    session, key = need_session(request)
    filters = text_filters(request, dict.fromkeys(LIST_FILTERS, MAX_FIELD))
    if filters["state"] not in UPDATE_STATES:
        filters["state"] = ""
    sort = choice(request, "sort", SORTS, "controller_id")
    limit = page_size(request, PAGE_SIZES, DEFAULT_PAGE)
    cursor = (request.query_params.get("cursor") or "")[:2048]
    kept = {k: v for k, v in filters.items() if v}
    if sort != "controller_id":
        kept["sort"] = sort
    if limit != DEFAULT_PAGE:
        kept["limit"] = str(limit)
    page, error = await fetch(
        request,
        "registry",
        "/api/v1/devices",
        key,
        {**kept, "sort": sort, "limit": limit, "cursor": cursor},
    )
    items = list(page.get("items", []))
    online_within = timedelta(seconds=c.settings.online_within_s)
    current = c.now()
    for item in items:
        seen = fleet.parse_time(item.get("last_seen_at"))
        item["presence"] = (
            "never seen"
            if seen is None
            else "online"
            if current - seen <= online_within
            else "offline"
        )
    return c.render(
        request,
        "devices.html",
        session,
        status_code=page_status(error),
        page="devices",
        filters=filters,
        states=UPDATE_STATES,
        sorts=SORTS,
        sort=sort,
        limit=limit,
        page_sizes=PAGE_SIZES,
        items=items,
        next_url=next_page_url("/devices", kept, page),
        first_url=page_url("/devices", kept) if cursor else None,
        error=error,
    )
