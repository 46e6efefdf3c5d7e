#!/usr/bin/env python3
"""Drive the real ``rauc-hawkbit`` 0.2.0 DDI client library against a DDI server.

Run this with the python of the rauc-hawkbit virtual environment (see ``rauc_env.py``); it
imports nothing from Gaggle or pytest.

It uses the library's plain ``DDIClient`` (aiohttp only). ``RaucDBUSDDIClient`` needs
PyGObject + the D-Bus system bus + RAUC, so it is not used. Instead, this script repeats the
HTTP-level logic of ``RaucDBUSDDIClient`` step by step, with the same library calls, regular
expressions and arguments. The RAUC install is simulated, and its D-Bus callbacks become
feedback calls that carry the same payloads.

Scenarios
---------
success  Poll the base resource. When ``_links.configData`` shows, PUT configData with
         ``--attributes`` (``DDIClient.configData(closed, success, **attrs)``). When
         ``_links.deploymentBase`` shows, parse its href with ``/deploymentBase/(.+)\\?c=(.+)$``.
         Then GET ``deploymentBase[id](c)``, which sends ``GET .../deploymentBase/{id}?c={c}`` and
         builds the URL from ``--url``, not from the href host. Take chunk 0 and artifact 0, and
         prefer ``download`` over ``download-http``. Download with the library (the
         ``softwaremodules[..].artifacts[..]`` API when the href matches
         ``/softwaremodules/(.+)/artifacts/(.+)$``, else ``get_binary(href)``), with up to 3
         tries, checking the md5 against ``hashes.md5``. Then POST proceeding/none (what RAUC's
         Progress callback sends), and finally closed/success
         ``["Rauc bundle update completed with result: 0"]`` with ``progress: {}`` (stock).
failure  The same, but RAUC "fails". First POST proceeding/failure ``[<LastError>]``, as the
         stock LastError callback does, then closed/failure
         ``["Rauc bundle update completed with result: 1"]``.
cancel   Poll until ``_links.cancelAction`` shows (deploymentBase links are ignored while
         waiting), parse ``/cancelAction/(.+)$``, GET ``cancelAction[id]``, read
         ``cancelAction.stopId``, and POST to ``cancelAction/{stopId}/feedback`` what the stock
         client always sends: ``{"id": stopId, "time": ..., "status": {"result": {"finished":
         "success"}, "execution": "rejected", "details": ["Cancelling not supported"]}}``.

Unless ``--no-final-poll`` is given, one more base poll follows. Its links are reported, and it
PUTs configData if that link shows, as the stock client would.

Output: one JSON object per line on stdout, one for each step (``step``, ``t``, ``scenario``,
``action_id``, ``http`` = the HTTP requests made in that step, with the method, URL, status,
the headers actually sent, the request body and some response headers). The last line has
``"step": "result"``. Library debug logging goes to stderr.

Exit codes: 0 scenario completed; 1 scenario failed (HTTP error, bad document, md5 mismatch, ...);
2 usage error; 3 ``--timeout`` expired; 4 rauc-hawkbit / aiohttp could not be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_IMPORT = 0, 1, 2, 3, 4

try:
    import aiohttp
    from rauc_hawkbit.ddi.cancel_action import CancelStatusExecution, CancelStatusResult
    from rauc_hawkbit.ddi.client import (
        APIError,
        ConfigStatusExecution,
        ConfigStatusResult,
        DDIClient,
    )
    from rauc_hawkbit.ddi.deployment_base import (
        DeploymentStatusExecution,
        DeploymentStatusResult,
    )
except ImportError as exc:  # pragma: no cover - environment problem
    _msg = f"cannot import rauc-hawkbit/aiohttp: {exc!r} (python {sys.executable})"
    sys.stdout.write(json.dumps({"step": "result", "ok": False, "error": _msg}) + "\n")
    sys.stdout.flush()
    sys.exit(EXIT_IMPORT)

try:  # importlib.metadata is stdlib since 3.8
    from importlib.metadata import version as _dist_version

    LIB_VERSIONS = {name: _dist_version(name) for name in ("rauc-hawkbit", "aiohttp")}
except Exception:  # pragma: no cover
    LIB_VERSIONS = {}

# Regular expressions copied from rauc_hawkbit/rauc_dbus_ddi_client.py (0.2.0).
DEPLOYMENT_RE = r"/deploymentBase/(.+)\?c=(.+)$"
CANCEL_RE = r"/cancelAction/(.+)$"
SOFTWAREMODULE_RE = r"/softwaremodules/(.+)/artifacts/(.+)$"
DOWNLOAD_TRIES = 3  # RaucDBUSDDIClient.download_artifact(tries=3)

RESPONSE_HEADERS_OF_INTEREST = (
    "Content-Type",
    "Content-Length",
    "Content-Disposition",
    "ETag",
    "Location",
    "WWW-Authenticate",
)


class DriverError(Exception):
    """The scenario cannot complete; the message explains why."""


class HttpRecorder:
    """Collects facts about every HTTP request the library makes (via aiohttp tracing)."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []

    def trace_config(self) -> aiohttp.TraceConfig:
        tc = aiohttp.TraceConfig()
        tc.on_request_start.append(self._on_start)
        tc.on_request_headers_sent.append(self._on_headers_sent)
        tc.on_request_chunk_sent.append(self._on_chunk_sent)
        tc.on_request_redirect.append(self._on_redirect)
        tc.on_request_end.append(self._on_end)
        tc.on_request_exception.append(self._on_exception)
        return tc

    def drain(self) -> list[dict[str, Any]]:
        """Return the records collected since the last call, finalising request bodies."""
        out = []
        for rec in self._records:
            body = rec.pop("_body", None)
            if body:
                try:
                    rec["body"] = json.loads(bytes(body))
                except ValueError:
                    rec["body_raw"] = bytes(body).decode("utf-8", "replace")
            out.append(rec)
        self._records = []
        return out

    async def _on_start(self, session: Any, ctx: Any, params: Any) -> None:
        ctx.rec = {"method": params.method, "url": str(params.url), "_body": bytearray()}
        self._records.append(ctx.rec)

    async def _on_headers_sent(self, session: Any, ctx: Any, params: Any) -> None:
        # Headers actually written on the wire for this hop (incl. aiohttp's defaults).
        hop = {"url": str(params.url), "headers": dict(params.headers)}
        ctx.rec.setdefault("hops", []).append(hop)
        ctx.rec["request_headers"] = hop["headers"]

    async def _on_chunk_sent(self, session: Any, ctx: Any, params: Any) -> None:
        ctx.rec["_body"].extend(params.chunk)

    async def _on_redirect(self, session: Any, ctx: Any, params: Any) -> None:
        resp = params.response
        ctx.rec.setdefault("redirects", []).append(
            {"status": resp.status, "location": resp.headers.get("Location")}
        )

    async def _on_end(self, session: Any, ctx: Any, params: Any) -> None:
        resp = params.response
        ctx.rec["status"] = resp.status
        if str(resp.url) != ctx.rec["url"]:
            ctx.rec["final_url"] = str(resp.url)
        ctx.rec["response_headers"] = {
            k: resp.headers[k] for k in RESPONSE_HEADERS_OF_INTEREST if k in resp.headers
        }

    async def _on_exception(self, session: Any, ctx: Any, params: Any) -> None:
        ctx.rec["exception"] = repr(params.exception)


class Driver:
    """Runs one scenario with rauc-hawkbit's DDIClient, mirroring RaucDBUSDDIClient."""

    def __init__(
        self, args: argparse.Namespace, session: aiohttp.ClientSession, recorder: HttpRecorder
    ) -> None:
        self.args = args
        self.recorder = recorder
        self.t0 = time.monotonic()
        self.action_id: str | None = None
        self.phase = "starting"
        self.last_links: list[str] | None = None
        split = urlsplit(args.url)
        # DDIClient builds '{http|https}://{host}{api_path}': the host may carry a path prefix.
        host = split.netloc + split.path.rstrip("/")
        self.ddi = DDIClient(
            session, host, split.scheme == "https", args.token, args.tenant, args.controller_id
        )
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", args.controller_id)
        self.bundle_dl_location = Path(args.download_dir) / f"{safe_id}.raucb"

    # -- output -------------------------------------------------------------------------------
    def emit(self, step: str, **fields: Any) -> None:
        """Print one JSON line describing a finished step, with the HTTP requests it made."""
        line = {
            "step": step,
            "t": round(time.monotonic() - self.t0, 3),
            "scenario": self.args.scenario,
            "action_id": self.action_id,
        }
        line.update(fields)
        line["http"] = self.recorder.drain()
        sys.stdout.write(json.dumps(line, default=str) + "\n")
        sys.stdout.flush()

    # -- polling ------------------------------------------------------------------------------
    async def poll(self, purpose: str) -> tuple[dict[str, Any], float]:
        """One base poll (``await ddi()``), then configData if requested, like the stock loop."""
        while True:
            try:
                base = await self.ddi()
                break
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                # Transport problem (server not up yet?): the stock client retries; so do we.
                self.emit("poll_retry", purpose=purpose, error=repr(exc))
                await asyncio.sleep(min(1.0, self.args.max_sleep))
        if not isinstance(base, dict):
            raise DriverError(
                f"base poll returned {type(base).__name__}, not a JSON object: {base!r}"
            )
        links = base.get("_links")
        if links is not None and not isinstance(links, dict):
            raise DriverError(f"_links is not an object: {links!r}")
        try:
            sleep_str = base["config"]["polling"]["sleep"]
            # exactly as RaucDBUSDDIClient.sleep (a duration, not a point in time)
            t = datetime.strptime(sleep_str, "%H:%M:%S")  # noqa: DTZ007
        except (KeyError, TypeError, ValueError) as exc:
            raise DriverError(
                f"config.polling.sleep missing or not HH:MM:SS ({exc!r}); "
                f"the stock client would fail here"
            ) from exc
        server_sleep = t.hour * 3600 + t.minute * 60 + t.second
        self.last_links = sorted(links) if links is not None else None
        self.emit(
            "poll",
            purpose=purpose,
            has_links=links is not None,
            links=self.last_links,
            hrefs={k: v.get("href") for k, v in (links or {}).items() if isinstance(v, dict)},
            sleep=sleep_str,
        )
        # Stock: `if '_links' in base: if 'configData' in base['_links']: await self.identify(base)`
        if links is not None and "configData" in links:
            await self.identify()
        return base, min(float(server_sleep), self.args.max_sleep)

    async def identify(self) -> None:
        """PUT configData exactly as RaucDBUSDDIClient.identify()."""
        if not self.args.attributes:
            raise DriverError(
                "configData requested but --attributes is empty; rauc-hawkbit "
                "asserts len(kwdata) > 0 (AssertionError in the stock client)"
            )
        await self.ddi.configData(
            ConfigStatusExecution.closed, ConfigStatusResult.success, **self.args.attributes
        )
        self.emit("config_data", data=self.args.attributes)

    async def wait_for_link(self, rel: str) -> dict[str, Any]:
        """Poll until ``_links[rel]`` shows; sleep the server's interval capped by --max-sleep."""
        self.phase = f"waiting for a {rel} link"
        while True:
            base, sleep_s = await self.poll("wait_" + rel)
            links = base.get("_links") or {}
            if rel in links:
                return base
            if rel == "deploymentBase" and "cancelAction" in links:
                raise DriverError(
                    "got a cancelAction link while waiting for a deploymentBase "
                    f"link in scenario {self.args.scenario!r}"
                )
            await asyncio.sleep(sleep_s)

    # -- deployment ---------------------------------------------------------------------------
    async def feedback(
        self, step: str, execution: Any, result: Any, details: list[str], **progress: Any
    ) -> None:
        """POST deploymentBase/{id}/feedback with the library's call, then emit a step."""
        await self.ddi.deploymentBase[self.action_id].feedback(
            execution, result, details, **progress
        )
        self.emit(
            step, execution=execution.name, finished=result.name, details=details, progress=progress
        )

    async def run_deployment(self) -> dict[str, Any]:
        base = await self.wait_for_link("deploymentBase")
        self.phase = "processing the deployment"
        href = base["_links"]["deploymentBase"].get("href", "")
        match = re.search(DEPLOYMENT_RE, href)
        if match is None:
            raise DriverError(
                f"deploymentBase href {href!r} does not match {DEPLOYMENT_RE}; the "
                "stock client crashes here (AttributeError on match.groups())"
            )
        action_id, resource = match.groups()
        self.action_id = action_id
        self.emit("deployment_found", href=href, c=resource)

        deploy_info = await self.ddi.deploymentBase[action_id](resource)
        try:
            chunks = deploy_info["deployment"]["chunks"]
        except (KeyError, TypeError) as exc:
            raise DriverError(
                f"deploymentBase body has no deployment.chunks: {deploy_info!r}"
            ) from exc
        self.emit(
            "deployment_base",
            body_id=deploy_info.get("id"),
            download=deploy_info["deployment"].get("download"),
            update=deploy_info["deployment"].get("update"),
            chunks=len(chunks),
        )
        if not chunks:
            msg = "Deployment without chunks found. Ignoring"
            await self.feedback(
                "feedback_closed",
                DeploymentStatusExecution.closed,
                DeploymentStatusResult.failure,
                [msg],
            )
            raise DriverError(msg)
        chunk = chunks[0]
        if not chunk.get("artifacts"):
            msg = "Deployment without artifacts found. Ignoring"
            await self.feedback(
                "feedback_closed",
                DeploymentStatusExecution.closed,
                DeploymentStatusResult.failure,
                [msg],
            )
            raise DriverError(msg)
        artifact = chunk["artifacts"][0]
        links = artifact.get("_links") or {}
        # prefer https ('download') over http ('download-http'), like the stock client
        rel = "download" if "download" in links else "download-http"
        if rel not in links:
            raise DriverError(f"artifact has neither download nor download-http link: {artifact!r}")
        download_url = links[rel]["href"]
        hashes = artifact.get("hashes") or {}
        if "md5" not in hashes:
            raise DriverError(
                f"artifact hashes have no 'md5' (stock client: KeyError 'md5'); hashes={hashes!r}"
            )
        await self.download_artifact(download_url, rel, artifact)

        # Simulated RAUC install: Progress property callback -> proceeding/none feedback.
        self.phase = "sending feedback"
        if self.args.progress_style == "stock":
            await self.feedback(
                "feedback_proceeding",
                DeploymentStatusExecution.proceeding,
                DeploymentStatusResult.none,
                ["Installing done."],
                percentage=100,
            )
        else:
            await self.feedback(
                "feedback_proceeding",
                DeploymentStatusExecution.proceeding,
                DeploymentStatusResult.none,
                ["Installing"],
                cnt=0,
                of=1,
            )
        final_progress = {} if self.args.progress_style == "stock" else {"cnt": 1, "of": 1}
        if self.args.scenario == "success":
            await self.feedback(
                "feedback_closed",
                DeploymentStatusExecution.closed,
                DeploymentStatusResult.success,
                ["Rauc bundle update completed with result: 0"],
                **final_progress,
            )
        else:
            # LastError property callback, then Completed signal with result != 0.
            await self.feedback(
                "feedback_last_error",
                DeploymentStatusExecution.proceeding,
                DeploymentStatusResult.failure,
                ["Installation error: simulated failure (rauc-hawkbit e2e driver)"],
            )
            await self.feedback(
                "feedback_closed",
                DeploymentStatusExecution.closed,
                DeploymentStatusResult.failure,
                ["Rauc bundle update completed with result: 1"],
                **final_progress,
            )
        return {"bundle": str(self.bundle_dl_location)}

    async def download_artifact(self, url: str, rel: str, artifact: dict[str, Any]) -> None:
        """Mirror RaucDBUSDDIClient.download_artifact(): API path or static URL, 3 md5 tries."""
        self.phase = "downloading the artifact"
        md5sum = artifact["hashes"]["md5"]
        match = re.search(SOFTWAREMODULE_RE, url)
        for dl_try in range(DOWNLOAD_TRIES):
            if match is not None:
                software_module, filename = match.groups()
                via = "softwaremodules-api"
                checksum = await self.ddi.softwaremodules[software_module].artifacts[filename](
                    str(self.bundle_dl_location)
                )
            else:
                via = "static-url"
                checksum = await self.ddi.get_binary(url, str(self.bundle_dl_location))
            data = self.bundle_dl_location.read_bytes()
            hashes = artifact.get("hashes") or {}
            self.emit(
                "download",
                attempt=dl_try + 1,
                href=url,
                link_rel=rel,
                via=via,
                path=str(self.bundle_dl_location),
                size=len(data),
                size_declared=artifact.get("size"),
                md5=checksum,
                md5_expected=md5sum,
                md5_ok=checksum == md5sum,
                sha1_ok=hashlib.sha1(data, usedforsecurity=False).hexdigest() == hashes.get("sha1"),
                sha256_ok=hashlib.sha256(data).hexdigest() == hashes.get("sha256"),
            )
            if checksum == md5sum:
                return
        status_msg = f"Artifact checksum does not match after {DOWNLOAD_TRIES} tries."
        await self.feedback(
            "feedback_closed",
            DeploymentStatusExecution.closed,
            DeploymentStatusResult.failure,
            [status_msg],
        )
        raise DriverError(status_msg)

    # -- cancel -------------------------------------------------------------------------------
    async def run_cancel(self) -> dict[str, Any]:
        self.phase = "waiting for a cancelAction link"
        while True:
            base, sleep_s = await self.poll("wait_cancelAction")
            if "cancelAction" in (base.get("_links") or {}):
                break
            await asyncio.sleep(sleep_s)
        self.phase = "processing the cancel request"
        href = base["_links"]["cancelAction"].get("href", "")
        match = re.search(CANCEL_RE, href)
        if match is None:
            raise DriverError(f"cancelAction href {href!r} does not match {CANCEL_RE}")
        (action_id,) = match.groups()
        self.action_id = action_id
        self.emit("cancel_found", href=href)
        stop_info = await self.ddi.cancelAction[action_id]()
        try:
            stop_id = stop_info["cancelAction"]["stopId"]
        except (KeyError, TypeError) as exc:
            raise DriverError(
                f"cancelAction body lacks cancelAction.stopId: {stop_info!r}"
            ) from exc
        self.emit("cancel_action", body=stop_info, stop_id=stop_id)
        # Stock RaucDBUSDDIClient.cancel(): always rejects.
        details = ("Cancelling not supported",)
        await self.ddi.cancelAction[stop_id].feedback(
            CancelStatusExecution.rejected, CancelStatusResult.success, status_details=details
        )
        self.emit(
            "cancel_feedback",
            stop_id=stop_id,
            execution="rejected",
            finished="success",
            details=list(details),
        )
        return {"stop_id": stop_id}

    # -- entry --------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        if self.args.scenario == "cancel":
            info = await self.run_cancel()
        else:
            info = await self.run_deployment()
        if not self.args.no_final_poll:
            self.phase = "final poll"
            await self.poll("final")
        return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--tenant", default="DEFAULT")
    p.add_argument("--controller-id", required=True)
    p.add_argument("--token", default="", help="target token; empty still sends 'TargetToken '")
    p.add_argument(
        "--attributes",
        default='{"client": "rauc-hawkbit-0.2.0"}',
        help="JSON object sent as configData data (library: **kwdata)",
    )
    p.add_argument("--scenario", choices=("success", "failure", "cancel"), required=True)
    p.add_argument("--timeout", type=float, default=60.0, help="overall limit in seconds")
    p.add_argument("--download-dir", required=True, help="existing writable directory")
    p.add_argument(
        "--max-sleep",
        type=float,
        default=0.5,
        help="cap on the server's polling sleep between polls (seconds)",
    )
    p.add_argument(
        "--progress-style",
        choices=("stock", "cnt-of"),
        default="stock",
        help="stock: proceeding {'percentage': 100}, final progress {}; "
        "cnt-of: proceeding {'cnt': 0, 'of': 1}, final {'cnt': 1, 'of': 1}",
    )
    p.add_argument(
        "--no-final-poll",
        action="store_true",
        help="skip the extra base poll after the last feedback",
    )
    args = p.parse_args(argv)
    try:
        attrs = json.loads(args.attributes)
    except ValueError as exc:
        p.error(f"--attributes is not JSON: {exc}")
    if not isinstance(attrs, dict):
        p.error("--attributes must be a JSON object")
    args.attributes = attrs
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).netloc:
        p.error("--url must be http(s)://host[:port][/prefix]")
    if not Path(args.download_dir).is_dir():
        p.error(f"--download-dir {args.download_dir!r} is not a directory")
    return args


async def amain(args: argparse.Namespace) -> int:
    recorder = HttpRecorder()
    async with aiohttp.ClientSession(trace_configs=[recorder.trace_config()]) as session:
        driver = Driver(args, session, recorder)
        driver.emit(
            "start",
            url=args.url,
            tenant=args.tenant,
            controller_id=args.controller_id,
            token_set=bool(args.token),
            versions=LIB_VERSIONS,
            python=sys.version.split()[0],
        )
        task = asyncio.ensure_future(driver.run())
        done, _ = await asyncio.wait({task}, timeout=args.timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            driver.emit(
                "result",
                ok=False,
                exit=EXIT_TIMEOUT,
                error=f"timeout after {args.timeout}s while {driver.phase} "
                f"(last links seen: {driver.last_links})",
            )
            return EXIT_TIMEOUT
        try:
            info = task.result()
        except DriverError as exc:
            error = str(exc)
        except APIError as exc:  # library raises this for every non-200 status
            error = f"HTTP error while {driver.phase}: {exc}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = f"transport error while {driver.phase}: {exc!r}"
        except Exception as exc:  # library assertion, unexpected JSON shape, ...
            error = f"unexpected {exc!r} while {driver.phase}"
        else:
            driver.emit("result", ok=True, exit=EXIT_OK, **info)
            return EXIT_OK
        driver.emit("result", ok=False, exit=EXIT_FAILED, error=error)
        sys.stderr.write(f"rauc-hawkbit driver: scenario {args.scenario} failed: {error}\n")
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
