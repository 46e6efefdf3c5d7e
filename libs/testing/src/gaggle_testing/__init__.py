"""What the tests of every member share, so each waits and seeds the bus the same way.

Imported by tests only (``libs/*/tests``, ``services/*/tests``, ``apps/*/tests``, ``tests/``);
no service depends on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import nats

from gaggle_contracts.events import Compatibility, SoftwareCreated
from gaggle_contracts.kv import ArtifactDoc, ChunkDoc, DeploymentDoc, DeploymentEntry, OpenAction
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.bus import make_broker, publish_event
from gaggle_runtime.jetstream import ensure_all

__all__ = ["ART", "deployment", "eventually", "feedback", "kv_put", "publish_software"]


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.05,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Call ``check`` (plain or async) until it returns something truthy; return that.

    An ``AssertionError`` raised by ``check`` counts as "not yet", so a check may assert. When
    ``timeout`` passes, the last ``AssertionError`` is raised again, or a new one naming the last
    result and what ``explain`` says.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            if time.monotonic() > deadline:
                detail = f"\n{explain()}" if explain is not None else ""
                raise AssertionError(f"still {result!r} after {timeout} s{detail}")
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)


async def publish_software(
    common: CommonSettings, tenant: str, sid: str, version: str, pairs: list[tuple[str, str]]
) -> None:
    """Announce software ``sid`` as artifacts would, fitting the (model, revision) ``pairs``."""
    payload = f"image {sid}".encode()
    broker = make_broker(common.nats_url, "test")
    await broker.connect()
    try:
        await publish_event(
            broker,
            SoftwareCreated(
                tenant=tenant,
                software_id=sid,
                name=f"img-{sid}",
                version=version,
                filename=f"img-{version}.swu",
                size=len(payload),
                md5=hashlib.md5(payload).hexdigest(),  # noqa: S324 - hawkBit's hash
                sha1=hashlib.sha1(payload).hexdigest(),  # noqa: S324 - hawkBit's hash
                sha256=hashlib.sha256(payload).hexdigest(),
                compatibility=[Compatibility(hw_model=m, hw_revision=r) for m, r in pairs],
                object_key=f"k/{sid}",
            ),
        )
    finally:
        await broker.stop()


def feedback(execution: str, finished: str = "none", **extra: Any) -> dict[str, Any]:
    """A DDI feedback body: ``execution``, ``finished`` and any other ``result`` fields."""
    return {
        "id": 1,
        "time": "20261123T182554",
        "status": {
            "execution": execution,
            "result": {"finished": finished, **extra},
            "details": [f"{execution} {finished}"],
        },
    }


async def kv_put(nats_url: str, bucket: str, key: str, value: bytes) -> None:
    """Write one KV entry directly, setting the stream and buckets up first."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await ensure_all(js, CommonSettings(nats_url=nats_url))
        await (await js.key_value(bucket)).put(key, value)
    finally:
        await nc.close()


def deployment(
    action_id: str,
    artifact: ArtifactDoc,
    *,
    state: Literal["deployment", "canceling", "wait_for_confirmation"] = "deployment",
    closed: list[str] | None = None,
) -> DeploymentEntry:
    """A device's ``deployments`` entry with one open action of one chunk holding ``artifact``."""
    chunk = ChunkDoc(module_id="7", name="img", version="2.0", artifacts=[artifact])
    return DeploymentEntry(
        open=OpenAction(
            action_id=action_id, state=state, c="1", deployment=DeploymentDoc(chunks=[chunk])
        ),
        closed=closed or [],
    )


ART = ArtifactDoc(
    filename="a.swu", size=3, md5="m" * 32, sha1="s" * 40, sha256="h" * 64, object_key="k"
)
