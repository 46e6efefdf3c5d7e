"""One device: its inventory, deployment policy, actions with their history, and a live log.

The inventory and the live log come from the registry, the policy and the actions from rollouts;
each part that a service refuses shows that refusal and the others still show. The live log is
the registry's Server-Sent Events stream of the device's feedback, passed through by the console
(with the operator's key) for ``static/device-log.js``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from gaggle_console.upstream import UpstreamError
from gaggle_console.web import (
    Refused,
    fetch,
    need_session,
    page_status,
    parts,
    posted,
    refused,
    upstream_status,
)
from gaggle_contracts import names

router = APIRouter()
POLICY_MODES = {
    "rollout": "Rollout: what a rollout of its feed assigns",
    "latest": "Latest: the newest software of its feed that fits",
    "assigned": "Assigned: one chosen software",
    "pinned": "Pinned: keep what it runs, offer nothing",
}
ACTIONS_SHOWN = 50
MAX_SOFTWARE_ID = 64
MAX_FEED = 64
STREAM_OPEN_S = 10.0
"""How long the console waits for the registry to start a device's live log."""


def valid_controller_id(controller_id: str) -> str | None:
    """Why ``controller_id`` is no device id (None when it is one)."""
    try:
        names.check_controller_id(controller_id)
    except names.InvalidNameError as exc:
        return str(exc)
    return None


def device_url(controller_id: str) -> str:
    """The device page's path (ids are URL-safe, quoted all the same)."""
    return "/devices/" + quote(controller_id, safe="")


def _check_id(controller_id: str) -> None:
    if problem := valid_controller_id(controller_id):
        raise Refused(400, f"There is no device with this id: {problem}.")


def _check_action_id(action_id: str) -> None:
    if names.parse_row_id(action_id) is None:
        raise Refused(404, "There is no action with this id: ids are numbers.")


async def _get(c: Any, service: str, path: str, key: str, **params: Any) -> Any:
    """The JSON answer, or the :class:`UpstreamError` that refused it."""
    try:
        return await c.upstream.get(service, path, key, params or None)
    except UpstreamError as exc:
        return exc


async def _device_page(
    request: Request,
    controller_id: str,
    *,
    policy_form: dict[str, str] | None = None,
    policy_error: UpstreamError | None = None,
) -> Response:
    """The device page; with ``policy_error``, the policy form as sent and the service's answer."""
    c = parts(request)
    session, key = need_session(request)
    quoted = quote(controller_id, safe="")
    device, policy, actions = await asyncio.gather(
        _get(c, "registry", f"/api/v1/devices/{quoted}", key),
        _get(c, "rollouts", f"/api/v1/devices/{quoted}/policy", key),
        _get(c, "rollouts", f"/api/v1/devices/{quoted}/actions", key, limit=ACTIONS_SHOWN),
    )
    if isinstance(device, UpstreamError) and device.status == 404:
        return refused(request, 404, f"The registry knows no device {controller_id!r}.")
    errors = [e for e in (device, policy, actions) if isinstance(e, UpstreamError)]
    status = min((upstream_status(e) for e in errors), default=200)
    if policy_error is not None:
        status = upstream_status(policy_error)
    form = policy_form
    if form is None and isinstance(policy, dict):
        form = {k: str(policy.get(k) or "") for k in ("mode", "feed", "software_id")}
    return c.render(
        request,
        "device.html",
        session,
        status_code=status,
        page="devices",
        controller_id=controller_id,
        url=device_url(controller_id),
        device=None if isinstance(device, UpstreamError) else device,
        device_error=device if isinstance(device, UpstreamError) else None,
        policy=None if isinstance(policy, UpstreamError) else policy,
        policy_error=policy if isinstance(policy, UpstreamError) else None,
        policy_form=form or {"mode": "rollout", "feed": "default", "software_id": ""},
        policy_refused=policy_error,
        modes=POLICY_MODES,
        actions=None if isinstance(actions, UpstreamError) else actions.get("items", []),
        actions_error=actions if isinstance(actions, UpstreamError) else None,
    )


@router.get("/devices/{controller_id}", response_class=HTMLResponse)
async def device_page(request: Request, controller_id: str) -> Response:
    """The device page."""
    need_session(request)
    _check_id(controller_id)
    return await _device_page(request, controller_id)


@router.post("/devices/{controller_id}/policy", response_class=HTMLResponse)
async def set_policy(request: Request, controller_id: str) -> Response:
    """Set the device's policy; a refusal shows next to the form, as sent."""
    c = parts(request)
    form, _, key = await posted(request)
    _check_id(controller_id)
    sent = {
        "mode": form.get("mode", "").strip()[:32],
        "feed": form.get("feed", "").strip()[:MAX_FEED],
        "software_id": form.get("software_id", "").strip()[:MAX_SOFTWARE_ID],
    }
    body: dict[str, Any] = {"mode": sent["mode"], "feed": sent["feed"] or "default"}
    if sent["software_id"]:
        body["software_id"] = sent["software_id"]
    try:
        await c.upstream.send(
            "PUT",
            "rollouts",
            f"/api/v1/devices/{quote(controller_id, safe='')}/policy",
            key,
            json=body,
        )
    except UpstreamError as exc:
        return await _device_page(request, controller_id, policy_form=sent, policy_error=exc)
    return RedirectResponse(device_url(controller_id) + "?saved=policy#policy", status_code=303)


@router.get("/devices/{controller_id}/actions/{action_id}", response_class=HTMLResponse)
async def action_page(request: Request, controller_id: str, action_id: str) -> Response:
    """One action of the device with its full status history."""
    c = parts(request)
    session, key = need_session(request)
    _check_id(controller_id)
    _check_action_id(action_id)
    action, error = await fetch(
        request,
        "rollouts",
        f"/api/v1/actions/{action_id}",
        key,
        missing=f"Rollouts knows no action {action_id}.",
    )
    if error is None and action.get("controller_id") != controller_id:
        raise Refused(404, f"Action {action_id} is not one of {controller_id!r}.")
    return c.render(
        request,
        "device_action.html",
        session,
        status_code=page_status(error),
        page="devices",
        controller_id=controller_id,
        url=device_url(controller_id),
        action=None if error else action,
        error=error,
    )


@router.post("/devices/{controller_id}/actions/{action_id}/cancel", response_class=HTMLResponse)
async def cancel_action(request: Request, controller_id: str, action_id: str) -> Response:
    """Ask rollouts to cancel an open action of the device."""
    c = parts(request)
    _, _, key = await posted(request)
    _check_id(controller_id)
    _check_action_id(action_id)
    try:
        await c.upstream.send("POST", "rollouts", f"/api/v1/actions/{action_id}/cancel", key)
    except UpstreamError as exc:
        raise Refused(upstream_status(exc), f"The action was not canceled. {exc}") from exc
    return RedirectResponse(device_url(controller_id) + "?canceled=" + action_id, status_code=303)


@router.get("/devices/{controller_id}/log")
async def live_log(request: Request, controller_id: str) -> Response:
    """The registry's live feedback stream of the device, passed through as it comes.

    The answer starts once the registry has started its stream (its first comment), so a
    browser whose ``EventSource`` is open sees what the device reports from then on.
    """
    c = parts(request)
    _, session = c.session(request)
    if session is None or session.key is None:
        return JSONResponse({"message": "sign in first"}, status_code=401)
    if problem := valid_controller_id(controller_id):
        return JSONResponse({"message": problem}, status_code=400)
    stack = contextlib.AsyncExitStack()
    try:
        upstream = await stack.enter_async_context(
            c.upstream.stream(
                "GET",
                "registry",
                f"/api/v1/devices/{quote(controller_id, safe='')}/logs/stream",
                session.key,
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(STREAM_OPEN_S, read=None),
            )
        )
        chunks = upstream.aiter_raw()
        first = await asyncio.wait_for(anext(chunks, b""), STREAM_OPEN_S)
    except UpstreamError as exc:
        await stack.aclose()
        return JSONResponse({"message": str(exc)}, status_code=upstream_status(exc))
    except (TimeoutError, httpx.HTTPError) as exc:
        await stack.aclose()
        return JSONResponse({"message": f"the registry's stream failed: {exc!r}"}, 502)

    async def relay() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except httpx.HTTPError:
            return  # the registry went away: the browser's EventSource reconnects
        finally:
            await stack.aclose()

    return StreamingResponse(
        relay(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
