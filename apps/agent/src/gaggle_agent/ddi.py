"""The DDI side: requests to a hawkBit-compatible server over one ``httpx.Client``.

It follows the links the server returns and builds only the URLs hawkBit defines relative to
them (``{deploymentBase href without query}/feedback``, ``{cancelAction href}/feedback``), as
SWUpdate and hawkbit-rs do. Reports look like SWUpdate's (``id``, ``time``, ``status`` with
``progress {cnt, of}``: gooseBit refuses a report without both counters). A 429 is waited out
(``Retry-After``) and the request sent again.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from gaggle_agent import __version__
from gaggle_agent.config import Config

__all__ = [
    "Artifact",
    "DdiClient",
    "DdiError",
    "DownloadError",
    "feedback_body",
    "feedback_url",
    "parse_sleep",
]

log = logging.getLogger(__name__)

HASHES = ("sha256", "sha1", "md5")
_SLEEP = re.compile(r"^(\d{1,2}):(\d{1,2}):(\d{1,2})$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
MAX_THROTTLE_RETRIES = 10
MAX_RETRY_AFTER = 600.0


class DdiError(Exception):
    """A DDI request failed: no answer, or an answer that is not 200 (``status`` says which)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DownloadError(DdiError):
    """An artifact could not be downloaded completely, or its size or a hash is wrong."""


def parse_sleep(value: Any, default: float) -> float:
    """``config.polling.sleep`` (``HH:MM:SS``) in seconds; ``default`` when absent or malformed."""
    if not isinstance(value, str) or not (m := _SLEEP.match(value)):
        return default
    hours, minutes, seconds = (int(g) for g in m.groups())
    return float(hours * 3600 + minutes * 60 + seconds) or default


def feedback_url(href: str) -> str:
    """``{href without query}/feedback``: where hawkBit takes the reports on an action."""
    parts = urlsplit(href)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/feedback", "", ""))


def ddi_time(now: float | None = None) -> str:
    """``YYYYmmddTHHMMSS`` in UTC, the ``time`` every DDI client sends."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))


def feedback_body(
    action_id: str,
    execution: str,
    finished: str,
    details: list[str],
    progress: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """A feedback report; ``id`` is a number when the action id is one (gooseBit insists)."""
    return {
        "id": int(action_id) if action_id.isdigit() else action_id,
        "time": ddi_time(),
        "status": {
            "execution": execution,
            "result": {"finished": finished, "progress": {"cnt": progress[0], "of": progress[1]}},
            "details": details,
        },
    }


@dataclass(frozen=True)
class Artifact:
    """One file of a deployment, as the server describes it."""

    filename: str
    size: int | None
    hashes: dict[str, str]
    href: str

    @classmethod
    def from_json(cls, doc: Any, prefer_http: bool) -> Artifact:
        """Read an artifact object; raises ``DdiError`` when it has no usable download link."""
        if not isinstance(doc, dict):
            raise DdiError("malformed deploymentBase: an artifact is not an object")
        links = doc.get("_links") or {}
        order = ("download-http", "download") if prefer_http else ("download", "download-http")
        href = next(
            (
                links[rel]["href"]
                for rel in order
                if isinstance(links.get(rel), dict) and isinstance(links[rel].get("href"), str)
            ),
            None,
        )
        if href is None:
            raise DdiError("malformed deploymentBase: an artifact has no download link")
        name = doc.get("filename")
        safe = os.path.basename(name) if isinstance(name, str) else ""
        if safe in ("", ".", "..") or safe != name:
            raise DdiError(f"malformed deploymentBase: unusable artifact filename {name!r}")
        size = doc.get("size")
        hashes = doc.get("hashes") or {}
        return cls(
            filename=safe,
            size=size if isinstance(size, int) and size >= 0 else None,
            hashes={k: v.lower() for k, v in hashes.items() if k in HASHES and isinstance(v, str)},
            href=href,
        )


class DdiClient:
    """The requests of one device to its server."""

    def __init__(
        self,
        config: Config,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        headers = {"User-Agent": f"gaggle-agent/{__version__}"}
        if config.authorization:
            headers["Authorization"] = config.authorization
        verify: Any = str(config.ca_file) if config.ca_file else config.verify_tls
        self.http = http or httpx.Client(
            timeout=config.timeout, verify=verify, follow_redirects=True
        )
        # Redirects to another origin drop Authorization (httpx does it, as curl): a CDN or
        # pre-signed S3 URL must not need the device's token.
        self.http.headers.update(headers)
        self.sleep = sleep
        self.prefer_http = config.url.startswith("http://")

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    # -- JSON requests ---------------------------------------------------------------------------

    def request(self, method: str, url: str, body: Any = None) -> httpx.Response:
        """One JSON request, sent again after a 429 as long as the server asks (bounded).

        Raises:
            DdiError: no answer, or an answer other than 200.
        """
        headers = {"Accept": "application/json"}
        for _ in range(MAX_THROTTLE_RETRIES):
            try:
                r = self.http.request(method, url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise DdiError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
            if r.status_code == 429:
                wait = retry_after(r.headers.get("Retry-After"))
                log.info("throttled method=%s url=%s wait_s=%.1f", method, url, wait)
                self.sleep(wait)
                continue
            if r.status_code != 200:
                raise DdiError(f"{method} {url} -> {r.status_code} {r.text[:300]}", r.status_code)
            log.debug("ddi method=%s url=%s status=%s", method, url, r.status_code)
            return r
        raise DdiError(f"{method} {url}: still throttled after {MAX_THROTTLE_RETRIES} tries", 429)

    def get_json(self, url: str) -> dict[str, Any]:
        """``GET`` a JSON object."""
        r = self.request("GET", url)
        try:
            doc = r.json()
        except ValueError as exc:
            raise DdiError(f"GET {url}: not JSON") from exc
        if not isinstance(doc, dict):
            raise DdiError(f"GET {url}: not a JSON object")
        return doc

    def poll(self) -> dict[str, Any]:
        """The base poll."""
        return self.get_json(self.config.base_url)

    def send_config(self, href: str | None, data: Mapping[str, str]) -> None:
        """``PUT`` configData (``mode: merge``) to ``href``, else to ``{base}/configData``."""
        body = {
            "id": "",
            "time": ddi_time(),
            "status": {"result": {"finished": "success"}, "execution": "closed", "details": []},
            "data": dict(data),
            "mode": "merge",
        }
        self.request("PUT", href or f"{self.config.base_url}/configData", body)

    def post(self, url: str, body: dict[str, Any]) -> None:
        """``POST`` a report."""
        self.request("POST", url, body)

    # -- downloads ------------------------------------------------------------------------------

    def download(
        self,
        artifact: Artifact,
        dest: Path,
        *,
        attempts: int,
        between: Callable[[], None],
        on_bytes: Callable[[int], None] | None = None,
    ) -> dict[str, str]:
        """Download ``artifact`` to ``dest``, resuming ``dest.part`` with ``Range``; check it.

        ``between()`` is called between attempts (it waits) and ``on_bytes(total)`` after each
        chunk written. A ``.part`` file left by an earlier run is resumed too.

        Returns:
            The hashes checked, name to hex digest.

        Raises:
            DownloadError: still incomplete after ``attempts``, or size or a hash is wrong.
        """
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        last_error = "no attempt made"
        for attempt in range(1, attempts + 1):
            offset = part.stat().st_size if part.exists() else 0
            if artifact.size is not None and offset > artifact.size:
                part.unlink()
                offset = 0
            if artifact.size is not None and offset == artifact.size and offset > 0:
                break
            try:
                self._fetch(artifact, part, offset, on_bytes)
                break
            except _Complete:
                break
            except OSError as exc:  # the disk, not the network
                raise DownloadError(f"cannot store {artifact.filename}: {exc}") from exc
            except (httpx.HTTPError, DdiError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "download interrupted file=%s attempt=%s/%s error=%s",
                    artifact.filename,
                    attempt,
                    attempts,
                    last_error,
                )
                if isinstance(exc, DdiError) and exc.status in (401, 403, 404, 410):
                    raise DownloadError(f"download of {artifact.filename}: {exc}") from exc
                if attempt < attempts:
                    between()
        else:
            raise DownloadError(
                f"download of {artifact.filename} failed after {attempts} attempts: {last_error}"
            )
        try:
            checked = verify(part, artifact)
            os.replace(part, dest)
        except OSError as exc:
            raise DownloadError(f"cannot store {artifact.filename}: {exc}") from exc
        return checked

    def _fetch(
        self, artifact: Artifact, part: Path, offset: int, on_bytes: Callable[[int], None] | None
    ) -> None:
        headers = {"Accept": "application/octet-stream"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        log.info("download file=%s offset=%s url=%s", artifact.filename, offset, artifact.href)
        with self.http.stream("GET", artifact.href, headers=headers) as r:
            if r.status_code == 416 and offset:
                raise _Complete
            if r.status_code == 206 and offset:
                m = _CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    raise DdiError(f"unexpected Content-Range {r.headers.get('Content-Range')!r}")
                mode = "ab"
            elif r.status_code == 200:
                offset, mode = 0, "wb"  # the server sent it all: start over
            else:
                raise DdiError(f"GET {artifact.href} -> {r.status_code}", r.status_code)
            total = offset
            with part.open(mode) as f:
                for chunk in r.iter_bytes(64 * 1024):
                    f.write(chunk)
                    total += len(chunk)
                    if on_bytes is not None:
                        on_bytes(total)
                f.flush()
                os.fsync(f.fileno())
            if artifact.size is not None and total < artifact.size:
                raise DdiError(f"connection ended after {total} of {artifact.size} bytes")


class _Complete(Exception):
    """416 to a Range from the end of the file: nothing left to fetch."""


def verify(path: Path, artifact: Artifact) -> dict[str, str]:
    """Check the size and every hash the server gave; the part file is removed on a mismatch."""
    size = path.stat().st_size
    if artifact.size is not None and size != artifact.size:
        path.unlink()
        raise DownloadError(
            f"Size mismatch for {artifact.filename}: expected {artifact.size}, got {size}"
        )
    digests = {name: hashlib.new(name, usedforsecurity=False) for name in artifact.hashes}
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            for digest in digests.values():
                digest.update(chunk)
    checked = {}
    for name, digest in digests.items():
        got, want = digest.hexdigest(), artifact.hashes[name]
        if got != want:
            path.unlink()
            raise DownloadError(
                f"Checksum mismatch ({name}) for {artifact.filename}: expected {want}, got {got}"
            )
        checked[name] = got
    return checked


def retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (delay-seconds or HTTP-date); 1 s without one."""
    if value is None:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
