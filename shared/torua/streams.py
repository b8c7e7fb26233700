"""The JetStream resources of a cluster: the write-ahead-log stream, the cluster KV bucket and the
snapshot object store.

The coordinator creates them at start (with `replicas` copies on a NATS cluster); everyone else
only binds to them.

Limits (`max_bytes`, -1 unlimited): JetStream reserves a stream's `max_bytes` in its store, and a
stream over it refuses publishes ("maximum bytes exceeded", 503) while the others go on. An
unlimited log instead fills the whole store, and then the KV writes the coordinators lead by
(lease, shard map) fail too (measured with a store of 8 MB: with the log unlimited a KV put failed
once the log was full; with the log limited it succeeded). So the log gets its own limit and the
KV bucket, small, its own; the coordinator applies changed limits to existing streams.
"""

from __future__ import annotations

import xxhash
from nats.aio.client import Client as NATS
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from torua import subjects
from torua.natsserver import MAX_PAYLOAD
from torua.subjects import WAL_STREAM, WAL_SUBJECTS

__all__ = [
    "DUPLICATE_WINDOW_S",
    "VERSIONS_MAX_BYTES",
    "ensure_bucket",
    "ensure_snapshot_bucket",
    "ensure_versions_bucket",
    "ensure_wal_stream",
    "versions_key",
]

# A retried write with the same request id within this window is stored once.
DUPLICATE_WINDOW_S = 600.0
# Memory for the write versions of the last DUPLICATE_WINDOW_S (~100 bytes each: ~1,100 writes a
# second sustained); beyond it a write's version comes from the router's clock alone.
VERSIONS_MAX_BYTES = 64 * 1024 * 1024


async def _apply_max_bytes(nc: NATS, stream: str, max_bytes: int | None) -> None:
    """Set an existing stream's byte limit to `max_bytes` (None: leave it as it is)."""
    if max_bytes is None:
        return
    js = nc.jetstream()
    config = (await js.stream_info(stream)).config
    if (config.max_bytes or -1) != max_bytes:
        config.max_bytes = max_bytes
        await js.update_stream(config)


async def ensure_bucket(nc: NATS, replicas: int = 1, max_bytes: int | None = None) -> KeyValue:
    js = nc.jetstream()
    try:
        kv = await js.key_value(subjects.KV_BUCKET)
        await _apply_max_bytes(nc, f"KV_{subjects.KV_BUCKET}", max_bytes)
        return kv
    except BucketNotFoundError:
        cfg = KeyValueConfig(bucket=subjects.KV_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas,
                             max_bytes=-1 if max_bytes is None else max_bytes)
        return await js.create_key_value(cfg)


async def ensure_wal_stream(nc: NATS, replicas: int = 1, max_bytes: int | None = None) -> None:
    js = nc.jetstream()
    try:
        await js.stream_info(WAL_STREAM)
        await _apply_max_bytes(nc, WAL_STREAM, max_bytes)
        return
    except NotFoundError:
        pass
    # The log is the source of truth replicas rebuild from: entries leave it only by the purge below
    # snapshots (torua.retention), never by age or count; a full log refuses new entries.
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
            max_bytes=-1 if max_bytes is None else max_bytes,
        )
    )


async def ensure_versions_bucket(nc: NATS, replicas: int = 1) -> KeyValue:
    """The bucket of write versions by request id (`VERSIONS_BUCKET`), created if missing. Kept in
    memory for the duplicate window: a retry later than that is stored as a new write anyway. If
    the NATS servers restart within the window, a retry of a write that was stored on some shards
    only gets a new version on the others (as before the bucket existed)."""
    js = nc.jetstream()
    try:
        return await js.key_value(subjects.VERSIONS_BUCKET)
    except BucketNotFoundError:
        cfg = KeyValueConfig(bucket=subjects.VERSIONS_BUCKET, history=1, ttl=DUPLICATE_WINDOW_S,
                             storage=StorageType.MEMORY, replicas=replicas, max_bytes=VERSIONS_MAX_BYTES)
        return await js.create_key_value(cfg)


def versions_key(request_id: str) -> str:
    """A request id's key in `VERSIONS_BUCKET` (ids may hold characters keys may not)."""
    return xxhash.xxh3_128_hexdigest(request_id.encode("utf-8"))


async def ensure_snapshot_bucket(nc: NATS, replicas: int = 1, max_bytes: int = -1) -> ObjectStore:
    """The object store of shard snapshots (torua.retention), created if missing. `max_bytes` -1:
    unlimited; each shard keeps TORUA_SNAPSHOT_KEEP snapshots, so it needs about that many times
    the shards' database sizes (docs/operations.md, "Log retention")."""
    js = nc.jetstream()
    try:
        return await js.object_store(subjects.SNAPSHOT_BUCKET)
    except BucketNotFoundError:
        cfg = ObjectStoreConfig(bucket=subjects.SNAPSHOT_BUCKET, storage=StorageType.FILE, replicas=replicas,
                                max_bytes=max_bytes, description="Torua shard snapshots")
        return await js.create_object_store(subjects.SNAPSHOT_BUCKET, cfg)
