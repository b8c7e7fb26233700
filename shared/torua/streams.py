"""The JetStream resources of a cluster: the write-ahead-log stream and the cluster KV bucket.

The coordinator creates them at start (with `replicas` copies on a NATS cluster); everyone else
only binds to them.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from torua import subjects
from torua.natsserver import MAX_PAYLOAD
from torua.subjects import WAL_STREAM, WAL_SUBJECTS

__all__ = ["DUPLICATE_WINDOW_S", "ensure_bucket", "ensure_wal_stream"]

# A retried write with the same request id within this window is stored once.
DUPLICATE_WINDOW_S = 600.0


async def ensure_bucket(nc: NATS, replicas: int = 1) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(subjects.KV_BUCKET)
    except BucketNotFoundError:
        cfg = KeyValueConfig(bucket=subjects.KV_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas)
        return await js.create_key_value(cfg)


async def ensure_wal_stream(nc: NATS, replicas: int = 1) -> None:
    js = nc.jetstream()
    try:
        await js.stream_info(WAL_STREAM)
        return
    except NotFoundError:
        pass
    # The log is the source of truth replicas rebuild from: keep every entry (no limits).
    await js.add_stream(
        StreamConfig(
            name=WAL_STREAM,
            subjects=[WAL_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            max_msg_size=MAX_PAYLOAD,
        )
    )
