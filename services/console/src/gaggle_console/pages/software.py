"""Software: the artifacts catalogue, one software, upload, registration by URL and delete.

An upload is sent by ``static/software.js`` as the request's raw body, with the session's CSRF
token in the ``X-CSRF-Token`` header and the file name in ``X-Filename``; the console passes the
body on to artifacts as it arrives (nothing is held in memory or on disk here), with the
operator's key, and answers with artifacts' verdict as JSON.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import ClientDisconnect

from gaggle_console.upstream import UpstreamError
from gaggle_console.web import (
    Refused,
    choice,
    fetch,
    need_session,
    page_size,
    page_status,
    page_url,
    parts,
    posted,
    text_filters,
    upstream_status,
)
from gaggle_contracts import names

router = APIRouter()
SORTS = {
    "-created": "Newest",
    "created": "Oldest",
    "name": "Name, A to Z",
    "-name": "Name, Z to A",
    "-version": "Version, highest",
    "version": "Version, lowest",
}
LIST_FILTERS = {"name": 255, "version": 128, "hw_model": 128, "hw_revision": 128}
PAGE_SIZES = (10, 25, 50, 100)
DEFAULT_PAGE = 25
MAX_OFFSET = 10_000
MAX_FILENAME = 200
MAX_URL = 2048
UPLOAD_WAIT_S = 600.0
"""How long artifacts may take to answer once an upload's body is sent (it hashes, parses and
verifies the image first)."""
CSRF_HEADER = "X-CSRF-Token"


def software_id(raw: str) -> str | None:
    """``raw`` if it can be a software id (decimal, as artifacts makes them), else None."""
    return raw if names.parse_row_id(raw) is not None else None


def _check_id(raw_id: str) -> None:
    if software_id(raw_id) is None:
        raise Refused(404, "There is no software with this id: ids are numbers.")


async def _list_page(
    request: Request,
    *,
    status_code: int = 200,
    register_error: UpstreamError | str | None = None,
    register_form: dict[str, str] | None = None,
) -> Response:
    c = parts(request)
    session, key = need_session(request)
    query = request.query_params
    filters = text_filters(request, LIST_FILTERS)
    sort = choice(request, "sort", SORTS, "-created")
    limit = page_size(request, PAGE_SIZES, DEFAULT_PAGE)
    try:
        offset = max(0, min(int(query.get("offset") or 0), MAX_OFFSET))
    except ValueError:
        offset = 0
    kept: dict[str, str] = {k: v for k, v in filters.items() if v}
    if sort != "-created":
        kept["sort"] = sort
    if limit != DEFAULT_PAGE:
        kept["limit"] = str(limit)
    page, error = await fetch(
        request,
        "artifacts",
        "/api/v1/software",
        key,
        {**kept, "sort": sort, "limit": limit, "offset": offset},
    )
    next_url = prev_url = None
    if page.get("next_offset") is not None:
        next_url = page_url("/software", {**kept, "offset": page["next_offset"]})
    if offset > 0 and error is None:
        prev_url = page_url("/software", {**kept, "offset": max(0, offset - limit)})
    if status_code == 200:
        status_code = page_status(error)
    deleted = query.get("deleted")
    return c.render(
        request,
        "software_list.html",
        session,
        status_code=status_code,
        page="software",
        filters=filters,
        sorts=SORTS,
        sort=sort,
        limit=limit,
        page_sizes=PAGE_SIZES,
        items=page.get("items", []),
        total=int(page.get("total") or 0),
        first=offset + 1,
        next_url=next_url,
        prev_url=prev_url,
        error=error,
        deleted=software_id(deleted) if deleted else None,
        deleted_how=query.get("how") if query.get("how") in ("soft", "hard") else None,
        register_error=register_error,
        register_form=register_form or {"url": "", "filename": ""},
        csrf_header=CSRF_HEADER,
    )


@router.get("/software", response_class=HTMLResponse)
async def software_list(request: Request) -> Response:
    """One page of the catalogue, with the upload and registration forms when permitted."""
    return await _list_page(request)


async def _software_page(request: Request, raw_id: str, template: str) -> Response:
    """``template`` with the software; the detail page with the service's refusal instead.

    Raises:
        Refused: the id is not one, or artifacts knows no such software.
    """
    c = parts(request)
    session, key = need_session(request)
    _check_id(raw_id)
    found, error = await fetch(
        request,
        "artifacts",
        f"/api/v1/software/{raw_id}",
        key,
        missing=f"Artifacts knows no software {raw_id}.",
    )
    return c.render(
        request,
        "software_detail.html" if error else template,
        session,
        status_code=page_status(error),
        page="software",
        software=None if error else found,
        error=error,
    )


@router.get("/software/{raw_id}", response_class=HTMLResponse)
async def software_detail(request: Request, raw_id: str) -> Response:
    """One software: compatibility, hashes, signature, the image's contents."""
    return await _software_page(request, raw_id, "software_detail.html")


@router.get("/software/{raw_id}/delete", response_class=HTMLResponse)
async def confirm_delete(request: Request, raw_id: str) -> Response:
    """The page that asks before a delete (where the dialog cannot open: no script)."""
    return await _software_page(request, raw_id, "software_delete.html")


@router.post("/software/{raw_id}/delete", response_class=HTMLResponse)
async def delete(request: Request, raw_id: str) -> Response:
    """Delete: artifacts decides soft (a device ever had it) or hard."""
    c = parts(request)
    _, _, key = await posted(request)
    _check_id(raw_id)
    try:
        done = await c.upstream.send("DELETE", "artifacts", f"/api/v1/software/{raw_id}", key)
    except UpstreamError as exc:
        raise Refused(upstream_status(exc), f"The software was not deleted. {exc}") from exc
    how = (done or {}).get("deleted")
    target = "/software?" + urlencode({"deleted": raw_id, "how": how if how else ""})
    return RedirectResponse(target, status_code=303)


@router.post("/software/register", response_class=HTMLResponse)
async def register(request: Request) -> Response:
    """Register software hosted elsewhere by its URL (artifacts fetches it once to check it)."""
    c = parts(request)
    form, _, key = await posted(request)
    sent = {
        "url": form.get("url", "").strip()[:MAX_URL],
        "filename": form.get("filename", "").strip()[:MAX_FILENAME],
    }
    if not sent["url"].startswith(("http://", "https://")):
        return await _list_page(
            request,
            status_code=400,
            register_error="Give the image's http:// or https:// URL.",
            register_form=sent,
        )
    body = {"url": sent["url"], **({"filename": sent["filename"]} if sent["filename"] else {})}
    try:
        made = await c.upstream.send("POST", "artifacts", "/api/v1/software", key, json=body)
    except UpstreamError as exc:
        return await _list_page(
            request, status_code=upstream_status(exc), register_error=exc, register_form=sent
        )
    made_id = software_id(str((made or {}).get("id", "")))
    return RedirectResponse(f"/software/{made_id}" if made_id else "/software", status_code=303)


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


@router.post("/software/upload")
async def upload(request: Request) -> Response:
    """Pass an image (the raw body) on to artifacts as it streams; artifacts' answer as JSON.

    Refused before anything is read: no signed-in session (401), no or a wrong
    ``X-CSRF-Token`` (403), a key without ``software:write`` as the registry said at sign-in
    (403), no ``Content-Length`` (411), no ``X-Filename`` (400).
    """
    c = parts(request)
    _, session = c.session(request)
    if session is None or session.key is None:
        return _refusal(401, "Sign in first.")
    if not session.csrf_ok(request.headers.get(CSRF_HEADER)):
        return _refusal(
            403,
            "This upload was not sent from a page of this console (its CSRF token is missing "
            "or out of date). Reload the page and try again.",
        )
    if "software:write" not in session.permissions:
        # Refused here rather than after the whole image has streamed to artifacts.
        return _refusal(403, "Your key lacks software:write: it cannot upload software.")
    length = request.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        return _refusal(411, "The upload needs a Content-Length.")
    filename = unquote(request.headers.get("x-filename", "")).strip()
    if not filename or len(filename) > MAX_FILENAME:
        return _refusal(400, f"Name the file (X-Filename, at most {MAX_FILENAME} characters).")
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": length,
        "Content-Disposition": f'attachment; filename="{quote(filename, safe="")}"',
    }
    timeout = httpx.Timeout(c.settings.request_timeout_s, read=UPLOAD_WAIT_S)
    try:
        async with c.upstream.stream(
            "POST",
            "artifacts",
            "/api/v1/software",
            session.key,
            params={"filename": filename},
            content=request.stream(),
            headers=headers,
            timeout=timeout,
        ) as answer:
            made = (await answer.aread()) or b"{}"
    except UpstreamError as exc:
        return _refusal(upstream_status(exc), str(exc))
    except ClientDisconnect:
        return _refusal(400, "The upload was interrupted before its end.")
    return Response(made, status_code=201, media_type="application/json")
