"""Rollouts: the list, the form of a new one, the live view with its commands, the members.

The live view is fed by the rollouts service's event stream (``GET /api/v1/rollouts/{id}/events``),
relayed here with the operator's own key (``/rollouts/{id}/events``); ``static/rollout-live.js``
moves its progress bars and counters without reloading the page.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from gaggle_console import fleet
from gaggle_console.upstream import UpstreamError
from gaggle_console.web import (
    Console,
    Refused,
    choice,
    fetch,
    need_permission,
    need_session,
    next_page_url,
    page_status,
    page_url,
    parts,
    posted,
    upstream_status,
)

router = APIRouter()
ROLLOUT_STATES = ("created", "running", "paused", "finished", "aborted")
MEMBER_STATES = (
    "waiting",
    "pending",
    "running",
    "success",
    "failure",
    "canceled",
    "timed_out",
    "rolled_back",
)
ACTION_TYPES = {
    "forced": "Forced: install at once",
    "soft": "Soft: the device may wait",
    "downloadonly": "Download only",
    "timeforced": "Time-forced: soft until the force time, forced after",
}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
COMMANDS = {
    "start": "rollout:write",
    "pause": "rollout:write",
    "resume": "rollout:write",
    "abort": "rollout:write",
    "approve": "rollout:approve",
    "deny": "rollout:approve",
}
LIST_PAGE = 25
MEMBERS_PAGE = 50
MAX_TAGGED = 100_000
"""Devices a tag may select at most (the rollouts API takes at most 100,000 ids)."""
STREAM_READ_S = 60.0
"""The rollouts stream sends a comment every 15 s: silent this long, it is gone."""
ID = re.compile(r"^\d{1,18}$")
HHMM = re.compile(r"^\d{2}:\d{2}$")
FORM_FIELDS = (
    "name",
    "software_id",
    "feed",
    "hw_model",
    "hw_revision",
    "sw_version",
    "tag",
    "controller_ids",
    "wave_unit",
    "waves",
    "success_threshold",
    "error_threshold",
    "error_action",
    "action_type",
    "forcetime",
    "window_start",
    "window_end",
    "window_timezone",
    "window_days",
    "confirmation_required",
    "start",
)
DEFAULTS = {
    "feed": "default",
    "wave_unit": "percent",
    "waves": "10, 30, 60",
    "success_threshold": "80",
    "error_threshold": "20",
    "error_action": "pause",
    "action_type": "forced",
    "window_timezone": "UTC",
    "start": "on",
}


class FormError(ValueError):
    """A field of the new-rollout form that cannot be sent as it is."""


def _progress(doc: dict[str, Any]) -> dict[str, Any]:
    done, total, percent = fleet.progress(doc.get("counters") or {})
    return {**doc, "done": done, "total": total, "percent": percent}


def _wave_progress(wave: dict[str, Any]) -> dict[str, Any]:
    counters = {**(wave.get("counters") or {})}
    counters.setdefault("total", wave.get("size") or 0)
    done, total, percent = fleet.progress(counters)
    return {**wave, "done": done, "total": total, "percent": percent}


@router.get("/rollouts", response_class=HTMLResponse)
async def rollouts(request: Request) -> Response:
    """Rollouts, newest first, with their state and progress; paged."""
    c = parts(request)
    session, key = need_session(request)
    state = choice(request, "state", ROLLOUT_STATES)
    before = request.query_params.get("before") or ""
    before = before if ID.match(before) else ""
    page, error = await fetch(
        request,
        "rollouts",
        "/api/v1/rollouts",
        key,
        {"state": state, "before": before, "limit": LIST_PAGE},
    )
    kept = {"state": state} if state else {}
    return c.render(
        request,
        "rollouts.html",
        session,
        status_code=page_status(error),
        page="rollouts",
        items=[_progress(r) for r in page.get("items", [])],
        states=ROLLOUT_STATES,
        state=state,
        next_url=next_page_url("/rollouts", kept, page, "before"),
        first_url=page_url("/rollouts", kept) if before else None,
        error=error,
    )


def _new_form(
    request: Request,
    values: dict[str, str],
    error: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    c = parts(request)
    session, _ = need_session(request)
    return c.render(
        request,
        "rollout_new.html",
        session,
        status_code=status_code,
        page="rollouts",
        values=values,
        action_types=ACTION_TYPES,
        error=error,
    )


def _need_write(request: Request) -> None:
    session, _ = need_session(request)
    need_permission(session, "rollout:write", "create rollouts")


@router.get("/rollouts/new", response_class=HTMLResponse)
async def new_rollout_form(request: Request) -> Response:
    """The form of a new rollout (for keys with ``rollout:write``)."""
    _need_write(request)
    return _new_form(request, dict(DEFAULTS))


def _int(values: dict[str, str], name: str, what: str, low: int, high: int) -> int:
    raw = values.get(name, "").strip() or DEFAULTS[name]
    try:
        number = int(raw)
    except ValueError:
        raise FormError(f"{what}: give a whole number from {low} to {high}.") from None
    if not low <= number <= high:
        raise FormError(f"{what}: give a whole number from {low} to {high}.")
    return number


def _ids(raw: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", raw.strip()) if part]


def rollout_body(values: dict[str, str]) -> dict[str, Any]:
    """The rollouts API's body (``RolloutBody``) of the form's fields, the tag left aside.

    Raises:
        FormError: a field cannot be sent as it is (the service checks the rest).
    """
    body: dict[str, Any] = {
        "name": values.get("name", "").strip(),
        "software_id": values.get("software_id", "").strip(),
        "feed": values.get("feed", "").strip() or "default",
        "success_threshold": _int(values, "success_threshold", "Success threshold", 1, 100),
        "error_threshold": _int(values, "error_threshold", "Error threshold", 0, 100),
        "error_action": values.get("error_action") or "pause",
        "action_type": values.get("action_type") or "forced",
        "confirmation_required": bool(values.get("confirmation_required")),
        "start": bool(values.get("start")),
    }
    if not body["name"]:
        raise FormError("Name: give the rollout a name.")
    if not body["software_id"]:
        raise FormError("Software id: name the software to roll out.")
    found: dict[str, Any] = {
        name: values.get(name, "").strip()
        for name in ("hw_model", "hw_revision", "sw_version")
        if values.get(name, "").strip()
    }
    ids = _ids(values.get("controller_ids", ""))
    if ids:
        found["controller_ids"] = ids
    body["filter"] = found
    unit = "count" if values.get("wave_unit") == "count" else "percent"
    waves = [w for w in re.split(r"[\s,]+", values.get("waves", "").strip()) if w]
    if not waves:
        waves = ["100"] if unit == "percent" else []
    if not waves or not all(w.isdigit() and 0 < int(w) <= 10_000_000 for w in waves):
        raise FormError("Waves: give each wave's size as a whole number, separated by commas.")
    body["waves"] = [{unit: int(w)} for w in waves]
    if body["action_type"] == "timeforced":
        raw = values.get("forcetime", "").strip()
        try:
            forcetime = datetime.fromisoformat(raw)
        except ValueError:
            raise FormError("Force time: a time-forced rollout needs its force time.") from None
        if forcetime.tzinfo is None:
            forcetime = forcetime.replace(tzinfo=UTC)
        body["forcetime"] = forcetime.isoformat()
    start, end = values.get("window_start", "").strip(), values.get("window_end", "").strip()
    if start or end:
        if not (HHMM.match(start) and HHMM.match(end)):
            raise FormError("Maintenance window: give its start and end as HH:MM.")
        window: dict[str, Any] = {
            "start": start,
            "end": end,
            "timezone": values.get("window_timezone", "").strip() or "UTC",
        }
        days = [d.lower() for d in re.split(r"[\s,]+", values.get("window_days", "")) if d]
        if any(d not in DAYS for d in days):
            raise FormError("Maintenance window days: mon, tue, wed, thu, fri, sat or sun.")
        if days:
            window["days"] = days
        body["maintenance_window"] = window
    return body


async def tagged(c: Console, key: str, tag: str) -> list[str]:
    """The ids of the registry's devices with ``tag`` (at most :data:`MAX_TAGGED`).

    Raises:
        UpstreamError: the registry refused a page or could not be reached.
        FormError: no device has the tag, or too many.
    """
    ids: list[str] = []
    cursor = None
    while True:
        page = await c.upstream.get(
            "registry", "/api/v1/devices", key, {"tag": tag, "limit": 1000, "cursor": cursor}
        )
        ids.extend(str(d["controller_id"]) for d in page.get("items", []))
        cursor = page.get("next")
        if len(ids) > MAX_TAGGED:
            raise FormError(f"Tag: more than {MAX_TAGGED} devices have the tag {tag!r}.")
        if not cursor:
            break
    if not ids:
        raise FormError(f"Tag: no device has the tag {tag!r}.")
    return ids


@router.post("/rollouts/new", response_class=HTMLResponse)
async def create_rollout(request: Request) -> Response:
    """Create the rollout; a refusal is shown next to the form, its values kept."""
    c = parts(request)
    form, session, key = await posted(request)
    need_permission(session, "rollout:write", "create rollouts")
    values = {name: form.get(name, "")[:20_000] for name in FORM_FIELDS}
    try:
        body = rollout_body(values)
        tag = values["tag"].strip()
        if tag:
            ids = await tagged(c, key, tag)
            given = body["filter"].get("controller_ids")
            if given is not None:
                ids = [i for i in given if i in set(ids)]
                if not ids:
                    raise FormError(f"Tag: none of the device ids given has the tag {tag!r}.")
            body["filter"]["controller_ids"] = ids
        doc = await c.upstream.send("POST", "rollouts", "/api/v1/rollouts", key, json=body)
    except FormError as exc:
        return _new_form(request, values, str(exc), 400)
    except UpstreamError as exc:
        return _new_form(request, values, str(exc), upstream_status(exc))
    return RedirectResponse(f"/rollouts/{doc['id']}", status_code=303)


def _check_id(rollout_id: str) -> None:
    if not ID.match(rollout_id):
        raise Refused(404, f"There is no rollout {rollout_id!r}.")


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
async def rollout(request: Request, rollout_id: str) -> Response:
    """One rollout, live: overall and per-wave progress, state, commands."""
    c = parts(request)
    session, key = need_session(request)
    _check_id(rollout_id)
    doc, error = await fetch(request, "rollouts", f"/api/v1/rollouts/{rollout_id}", key)
    if error is None:
        doc = _progress(doc)
        doc["waves"] = [_wave_progress(w) for w in doc.get("waves") or []]
    return c.render(
        request,
        "rollout.html",
        session,
        status_code=page_status(error),
        page="rollouts",
        r=None if error else doc,
        rollout_id=rollout_id,
        error=error,
    )


@router.get("/rollouts/{rollout_id}/events")
async def rollout_events(request: Request, rollout_id: str) -> Response:
    """The rollouts service's event stream of the rollout, relayed with the operator's key."""
    c = parts(request)
    _, key = need_session(request)
    if not ID.match(rollout_id):
        return Response("unknown rollout", status_code=404, media_type="text/plain")
    stack = contextlib.AsyncExitStack()
    timeout = httpx.Timeout(c.settings.request_timeout_s, read=STREAM_READ_S)
    try:
        upstream = await stack.enter_async_context(
            c.upstream.stream(
                "GET",
                "rollouts",
                f"/api/v1/rollouts/{rollout_id}/events",
                key,
                headers={"Accept": "text/event-stream"},
                timeout=timeout,
            )
        )
    except UpstreamError as exc:
        await stack.aclose()
        return Response(str(exc), status_code=upstream_status(exc), media_type="text/plain")

    async def relay() -> Any:
        try:
            async for chunk in upstream.aiter_bytes():
                yield chunk
        except httpx.HTTPError:
            return  # the browser reconnects and is sent the rollout as it is then
        finally:
            await stack.aclose()

    return StreamingResponse(
        relay(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post("/rollouts/{rollout_id}/{command}", response_class=HTMLResponse)
async def command(request: Request, rollout_id: str, command: str) -> Response:
    """Start, pause, resume, abort, approve or deny the rollout."""
    c = parts(request)
    form, session, key = await posted(request)
    _check_id(rollout_id)
    if command not in COMMANDS:
        raise Refused(404, f"A rollout has no command {command!r}.")
    need_permission(session, COMMANDS[command], f"{command} rollouts")
    body = None
    if command in ("approve", "deny"):
        remark = form.get("remark", "").strip()[:1024]
        body = {"remark": remark} if remark else {}
    try:
        await c.upstream.send(
            "POST", "rollouts", f"/api/v1/rollouts/{rollout_id}/{command}", key, json=body
        )
    except UpstreamError as exc:
        raise Refused(upstream_status(exc), str(exc)) from exc
    return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)


@router.get("/rollouts/{rollout_id}/devices", response_class=HTMLResponse)
async def members(request: Request, rollout_id: str) -> Response:
    """A rollout's devices with their wave and state, paged by device id."""
    c = parts(request)
    session, key = need_session(request)
    _check_id(rollout_id)
    state = choice(request, "state", MEMBER_STATES)
    after = (request.query_params.get("after") or "")[:256]
    path = f"/rollouts/{rollout_id}/devices"
    page, error = await fetch(
        request,
        "rollouts",
        f"/api/v1{path}",
        key,
        {"state": state, "after": after, "limit": MEMBERS_PAGE},
    )
    kept = {"state": state} if state else {}
    return c.render(
        request,
        "rollout_devices.html",
        session,
        status_code=page_status(error),
        page="rollouts",
        rollout_id=rollout_id,
        items=page.get("items", []),
        states=MEMBER_STATES,
        state=state,
        next_url=next_page_url(path, kept, page, "after"),
        first_url=page_url(path, kept) if after else None,
        error=error,
    )
