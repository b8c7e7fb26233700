"""Shard snapshots in JetStream's object store (bucket `torua-snapshots`), so the log can be purged
and a new or rebuilt replica restores its shard's size rather than replaying its whole history
(torua.retention holds what the coordinator shares: object metadata, the purge floor).

Format, chosen by measurement (kuzu 0.11.3, one shard of 20k entities + 20k relations with 64-d
vectors, 2-core machine; bench/snapshots.py measures it through a cluster):

| method | take | size | restore |
|---|---|---|---|
| CHECKPOINT, then copy the database file | 815 ms checkpoint (a WAL of 20 batches) + 19 ms copy | 49 MB | 94 ms open |
| EXPORT DATABASE (parquet) / IMPORT DATABASE | 180 ms | 5.8 MB | 1442 ms import |

The checkpointed file is byte for byte the replica's database at a known position: restoring is a
download and an open, nothing is rebuilt row by row, and the restored content (hence its digest)
is the source replica's by construction. It is larger (Kuzu's file keeps free pages); zlib at
level 1 shrank it to 16 MB but took 1.5 s, so it is stored raw. The copy is made on the replica's
own thread between two applies (as the query worker's copies are, shard/worker.py): no
transaction is writing, so the file, its WAL (empty after the checkpoint) and the stored position
agree. The checkpoint costs what Kuzu would spend at its next automatic checkpoint anyway.

A restore verifies the SHA-256 recorded in the object's headers (JetStream's object store checks
its own digest of the chunks too) and refuses a snapshot of another log, schema or format.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import os
from collections import deque
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ObjectMeta, ObjectMetaOptions
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from torua.retention import SnapshotMeta, list_snapshots, to_prune
from torua.subjects import SNAPSHOT_BUCKET
from torua_node.shard.worker import copy_database
from torua_node.storage.schema import SCHEMA_VERSION, LogPosition, read_log_position
from torua_node.storage.store import Conn

__all__ = [
    "FORMAT",
    "EntriesSince",
    "SnapshotCorrupt",
    "file_sha256",
    "verify",
    "restore_candidates",
    "checkpoint_and_copy",
    "Snapshots",
]

class EntriesSince:
    """How many entries a replica applied past the newest snapshot of its shard it knows of: when
    that reaches TORUA_SNAPSHOT_EVERY, it takes the next one.

    A snapshot is taken at the position of its checkpoint, while applying goes on; the entries
    applied meanwhile are past it and still count. (Counting from zero when the snapshot is stored
    lost them: under load the next snapshot came after about twice as many entries, and the last
    ones before the writes stopped were never covered.) Log sequences are shared by all shards, so
    the count keeps each applied batch's last sequence and size, not a difference of sequences."""

    __slots__ = ("_batches", "_postponed", "_total", "base")

    def __init__(self, base: int = 0) -> None:
        self.base = base  # position of the newest snapshot known
        self._batches: deque[tuple[int, int]] = deque()  # (last sequence, entries) of batches past base
        self._total = 0  # entries in _batches
        self._postponed = 0  # entries not counted after a failed snapshot

    @property
    def count(self) -> int:
        return self._total - self._postponed

    def applied(self, last_seq: int, entries: int) -> None:
        if last_seq > self.base:
            self._batches.append((last_seq, entries))
            self._total += entries

    def snapshot_at(self, seq: int) -> None:
        """A snapshot of the shard at `seq` exists (this replica's, or another's): count from it."""
        if seq <= self.base:
            return
        self.base, self._postponed = seq, 0
        while self._batches and self._batches[0][0] <= seq:
            self._total -= self._batches.popleft()[1]

    def postpone(self, to: int) -> None:
        """A snapshot failed: count as if only `to` entries were applied past the newest, so the next
        try comes after more entries, not at the very next batch."""
        self._postponed = max(0, self._total - to)


# The database file after CHECKPOINT (its WAL empty): Kuzu's own format, opened as it is.
FORMAT = "kuzu-0.11-file"
# Object store chunk size: fewer, larger messages than nats-py's 128 KiB default (each chunk is one
# acknowledged publish), well under the server's max payload.
CHUNK_SIZE = 1024 * 1024
_READ_BLOCK = 1024 * 1024
# Chunks asked for per fetch when downloading (so at most this many MiB in flight), and how long a
# fetch may wait before the download is given up (the snapshot may have been pruned meanwhile).
DOWNLOAD_BATCH = 8
DOWNLOAD_TIMEOUT_S = 10.0


class SnapshotCorrupt(Exception):
    """A downloaded snapshot does not match its recorded size or checksum."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, meta: SnapshotMeta) -> None:
    """Raise SnapshotCorrupt unless the file at `path` is the one `meta` describes."""
    size = path.stat().st_size
    if size != meta.size:
        raise SnapshotCorrupt(f"snapshot {meta.name}: {size} bytes, expected {meta.size}")
    digest = file_sha256(path)
    if digest != meta.sha256:
        raise SnapshotCorrupt(f"snapshot {meta.name}: SHA-256 {digest}, expected {meta.sha256}")


def restore_candidates(metas: list[SnapshotMeta], shard: int, log_id: int) -> list[SnapshotMeta]:
    """The snapshots a replica of `shard` following the log `log_id` may restore, newest first: of
    that log (a re-created stream's positions name other entries), this schema and this format."""
    usable = [m for m in metas if m.shard == shard and m.log_id == log_id and m.schema == SCHEMA_VERSION
              and m.format == FORMAT]
    return sorted(usable, key=lambda m: m.seq, reverse=True)


def checkpoint_and_copy(conn: Conn, src: Path, dest: Path) -> LogPosition:
    """On the replica's thread, between two applies: checkpoint (the WAL folded into the file), then
    copy the database into the directory `dest`; returns the copy's position."""
    conn.execute("CHECKPOINT")
    pos = read_log_position(conn)
    copy_database(src, dest)
    return pos


def meta_for(shard: int, pos: LogPosition, path: Path) -> SnapshotMeta:
    """The metadata of a copied database file (hashes the file: call off the event loop)."""
    if pos.log_id is None:
        raise ValueError(f"shard {shard}: no log identity recorded yet; nothing to snapshot")
    return SnapshotMeta(shard=shard, seq=pos.applied_seq, log_id=pos.log_id, sha256=file_sha256(path),
                        size=path.stat().st_size, schema=SCHEMA_VERSION, format=FORMAT)


class Snapshots:
    """The snapshot bucket, as one node uses it."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._store: ObjectStore | None = None

    async def bucket(self) -> ObjectStore:
        if self._store is None:
            self._store = await self.nc.jetstream().object_store(SNAPSHOT_BUCKET)
        return self._store

    async def list(self, shard: int | None = None) -> list[SnapshotMeta]:
        return await list_snapshots(self.nc, shard)

    async def upload(self, path: Path, meta: SnapshotMeta) -> None:
        store = await self.bucket()
        obj = ObjectMeta(name=meta.name, description=f"shard {meta.shard} at log position {meta.seq}",
                         headers=meta.headers(), options=ObjectMetaOptions(max_chunk_size=CHUNK_SIZE))
        with open(path, "rb") as f:
            await store.put(meta.name, f, meta=obj)

    async def download(self, meta: SnapshotMeta, dest: Path) -> None:
        """Write the snapshot to `dest`, checking its size and SHA-256 on the way: SnapshotCorrupt
        (and `dest` removed) if it does not match its metadata.

        Read with a pull consumer on the object's chunks, DOWNLOAD_BATCH chunks per fetch:
        nats-py's ObjectStore.get (an ordered push consumer) measured 19 MB/s here, this 160-240."""
        store = await self.bucket()
        info = await store.get_info(meta.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        js = self.nc.jetstream()
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                                inactive_threshold=DOWNLOAD_TIMEOUT_S, max_ack_pending=-1)
        sub = await js.pull_subscribe(f"$O.{SNAPSHOT_BUCKET}.C.{info.nuid}", stream=f"OBJ_{SNAPSHOT_BUCKET}",
                                      config=config)
        h = hashlib.sha256()
        size = 0
        try:
            with open(dest, "wb") as f:
                got, chunks = 0, info.chunks or 0
                while got < chunks:
                    msgs = await sub.fetch(min(DOWNLOAD_BATCH, chunks - got), timeout=DOWNLOAD_TIMEOUT_S)
                    for m in msgs:
                        h.update(m.data)
                        size += len(m.data)
                    await asyncio.to_thread(f.writelines, [m.data for m in msgs])
                    got += len(msgs)
                f.flush()
                os.fsync(f.fileno())
            if size != meta.size:
                raise SnapshotCorrupt(f"snapshot {meta.name}: {size} bytes, expected {meta.size}")
            if h.hexdigest() != meta.sha256:
                raise SnapshotCorrupt(f"snapshot {meta.name}: SHA-256 {h.hexdigest()}, expected {meta.sha256}")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection gone: the server drops the consumer when inactive
                pass

    async def prune(self, shard: int, keep: int) -> builtins.list[SnapshotMeta]:
        """Delete all but the newest `keep` snapshots of `shard`; returns those deleted."""
        old = to_prune(await self.list(shard), keep)
        store = await self.bucket()
        for meta in old:
            try:
                await store.delete(meta.name)
            except NotFoundError:
                pass  # another replica of the shard pruned it first
        return old
