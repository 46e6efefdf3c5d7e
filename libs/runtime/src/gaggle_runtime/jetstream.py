"""Idempotent set-up of the ``OTA`` stream and the KV buckets, with their limits.

Safe to call from every process at every start: an existing stream or bucket is updated to the
configuration, never deleted.
"""

from __future__ import annotations

from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

from gaggle_contracts import names
from gaggle_contracts.settings import CommonSettings

_DAY_S = 86_400.0


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


async def ensure_stream(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the ``OTA`` stream, or update it to the current configuration."""
    config = stream_config(settings)
    try:
        await js.stream_info(names.STREAM)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Another process created it between our look-up and our add.
            await js.update_stream(config)
        return
    await js.update_stream(config)


async def ensure_buckets(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the KV buckets that do not exist yet; existing ones are left as they are."""
    for config in bucket_configs(settings):
        try:
            await js.key_value(config.bucket)
        except BucketNotFoundError:
            try:
                await js.create_key_value(config)
            except BadRequestError:
                await js.key_value(config.bucket)


async def ensure_all(js: JetStreamContext, settings: CommonSettings) -> None:
    """Stream and buckets, idempotently."""
    await ensure_stream(js, settings)
    await ensure_buckets(js, settings)
