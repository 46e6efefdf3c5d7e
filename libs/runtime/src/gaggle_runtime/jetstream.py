"""Idempotent set-up of the ``OTA`` stream and the KV buckets, with their limits.

Safe to call from every process at every start: an existing stream or bucket is updated to the
configuration, never deleted.

Replicas only grow here. A stream or bucket with fewer replicas than configured (a deployment
moved from one NATS server to a cluster) is raised to the setting; one with more is left with
them, so a process started with the default of 1 (or an older setting, during a rolling change)
never shrinks what a cluster keeps. Lowering them is an operator's decision, made with the
``nats`` tool (``nats stream edit OTA --replicas 1``, and ``KV_<bucket>`` alike).
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError

from gaggle_contracts import names
from gaggle_contracts.settings import CommonSettings
from gaggle_runtime.failures import describe, is_transient

log = logging.getLogger(__name__)

_DAY_S = 86_400.0
SETUP_PATIENCE_S = 60.0
"""How long a start waits for JetStream to answer the set-up (a cluster electing its leaders)."""
SETUP_RETRY_S = 1.0


class ReplicasRefused(RuntimeError):
    """JetStream cannot keep as many replicas as configured (too few servers, or not a cluster)."""


def stream_config(settings: CommonSettings) -> StreamConfig:
    """The ``OTA`` stream: limits retention, file storage, a duplicate window for msg ids."""
    return StreamConfig(
        name=names.STREAM,
        subjects=list(names.STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=settings.stream_max_age_days * _DAY_S,
        max_bytes=settings.stream_max_bytes,
        duplicate_window=settings.duplicate_window_s,
        num_replicas=settings.stream_replicas,
    )


def bucket_configs(settings: CommonSettings) -> list[KeyValueConfig]:
    """The KV buckets: one value per key (no history), file storage."""
    return [
        KeyValueConfig(
            bucket=bucket,
            history=1,
            storage=StorageType.FILE,
            replicas=settings.kv_replicas,
            max_value_size=1 << 20,
        )
        for bucket in names.BUCKETS
    ]


def bucket_stream(bucket: str) -> str:
    """The stream JetStream keeps a KV bucket in."""
    return f"KV_{bucket}"


def _replicas(stream: str, current: int | None, wanted: int) -> int:
    """The replicas ``stream`` gets: ``wanted``, unless it already has more."""
    have = current or 1
    if have > wanted:
        log.info(
            "stream keeps its replicas stream=%s replicas=%s configured=%s", stream, have, wanted
        )
        return have
    if have < wanted:
        log.info("stream replicas raised stream=%s replicas=%s from=%s", stream, wanted, have)
    return wanted


REPLICA_REFUSALS = frozenset({10074, 10005})
"""JetStream's error codes for replicas it cannot place: asked of a server that is not part of a
cluster, more than the cluster has servers ("no suitable peers for placement")."""


def _about_replicas(exc: APIError) -> bool:
    return exc.err_code in REPLICA_REFUSALS or "replica" in str(exc.description or "").lower()


def _refused(exc: APIError, stream: str, replicas: int) -> ReplicasRefused | None:
    """``exc`` as the clear refusal of too many replicas, when it is one."""
    if replicas > 1 and _about_replicas(exc):
        return ReplicasRefused(
            f"JetStream refused {replicas} replicas for the stream {stream} "
            f"({exc.description}): GAGGLE_NATS_REPLICAS (or GAGGLE_STREAM_REPLICAS, "
            "GAGGLE_KV_REPLICAS) may be at most the number of servers of the NATS cluster, "
            "and 1 on a single server"
        )
    return None


async def ensure_stream(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the ``OTA`` stream, or update it to the current configuration.

    Raises:
        ReplicasRefused: JetStream cannot keep that many replicas.
    """
    config = stream_config(settings)
    wanted = config.num_replicas or 1
    try:
        try:
            info = await js.stream_info(names.STREAM)
        except NotFoundError:
            try:
                await js.add_stream(config)
                return
            except BadRequestError as exc:
                if _about_replicas(exc):
                    raise
                # Another process created it between our look-up and our add.
                info = await js.stream_info(names.STREAM)
        config.num_replicas = _replicas(names.STREAM, info.config.num_replicas, wanted)
        await js.update_stream(config)
    except APIError as exc:
        if refused := _refused(exc, names.STREAM, wanted):
            raise refused from exc
        raise


async def ensure_buckets(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the KV buckets that do not exist yet; raise the replicas of existing ones.

    An existing bucket keeps the rest of its configuration as it is.

    Raises:
        ReplicasRefused: JetStream cannot keep that many replicas.
    """
    for config in bucket_configs(settings):
        stream = bucket_stream(config.bucket)
        wanted = config.replicas
        try:
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                try:
                    await js.create_key_value(config)
                    continue
                except BadRequestError as exc:
                    if _about_replicas(exc):
                        raise
                    info = await js.stream_info(stream)  # created meanwhile
            current = info.config.num_replicas or 1
            if current < wanted:
                info.config.num_replicas = _replicas(stream, current, wanted)
                await js.update_stream(info.config)
        except APIError as exc:
            if refused := _refused(exc, stream, wanted):
                raise refused from exc
            raise


async def ensure_all(
    js: JetStreamContext, settings: CommonSettings, *, patience_s: float = SETUP_PATIENCE_S
) -> None:
    """Stream and buckets, idempotently.

    While JetStream cannot answer yet (a cluster still electing its meta leader or a stream's
    leader, a server restarting), the set-up is tried again every second for ``patience_s``.

    Raises:
        ReplicasRefused: JetStream cannot keep that many replicas.
        Exception: JetStream still did not answer after ``patience_s``, or refused the set-up.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        try:
            await ensure_stream(js, settings)
            await ensure_buckets(js, settings)
            return
        except Exception as exc:
            if isinstance(exc, ReplicasRefused) or not is_transient(exc):
                raise
            if loop.time() >= deadline:
                raise
            log.warning(
                "JetStream not ready for the stream and buckets; retrying error=%s",
                describe(exc, 300),
            )
            await asyncio.sleep(SETUP_RETRY_S)
