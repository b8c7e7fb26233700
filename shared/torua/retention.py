"""Log retention, the parts the coordinator (who purges) and the nodes (who snapshot and restore)
share: what a snapshot object says it is, where a shard's log was purged, and where it may be.

- A snapshot is an object `shard-<shard>/<seq>` in the object store `torua-snapshots` whose headers
  say which shard, which log position (`applied_seq`) of which log (the WAL stream's creation time),
  its schema version, format, size and SHA-256 (torua_node.shard.snapshot takes and restores them).
- `purged.<shard>` in the cluster KV bucket says below which sequence that shard's log entries are
  purged. The purger writes it *before* it purges, so a replica that reads it after seeing a gap in
  the log always learns of the purge.
- `purge_point` decides how far: below the oldest snapshot still kept and below every replica's
  applied position, minus a margin; never while a replica's position is unknown.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, NotFoundError

from torua.subjects import KV_BUCKET, SNAPSHOT_BUCKET, purged_key

__all__ = [
    "SnapshotMeta",
    "PurgeFloor",
    "object_name",
    "to_prune",
    "purge_point",
    "list_snapshots",
    "read_floor",
    "floor_subject",
    "log_id_of",
]

H_SHARD = "Torua-Shard"
H_SEQ = "Torua-Seq"
H_LOG_ID = "Torua-Log-Id"
H_SHA256 = "Torua-Sha256"
H_SIZE = "Torua-Size"
H_SCHEMA = "Torua-Schema"
H_FORMAT = "Torua-Format"


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What one snapshot object stands for."""

    shard: int
    seq: int  # applied_seq of the copied database
    log_id: int  # the log it is a position of (torua_node.shard.logcheck.log_id_of)
    sha256: str  # hex, of the file
    size: int
    schema: int  # the shard database's schema version
    format: str

    @property
    def name(self) -> str:
        return object_name(self.shard, self.seq)

    def headers(self) -> dict[str, list[str]]:
        # Lists of strings: an object's headers are NATS headers (Go's map[string][]string).
        return {
            H_SHARD: [str(self.shard)], H_SEQ: [str(self.seq)], H_LOG_ID: [str(self.log_id)],
            H_SHA256: [self.sha256], H_SIZE: [str(self.size)], H_SCHEMA: [str(self.schema)],
            H_FORMAT: [self.format],
        }

    @classmethod
    def from_headers(cls, headers: dict[str, object] | None) -> SnapshotMeta | None:
        """The snapshot an object's headers describe, or None (not a Torua snapshot, or damaged)."""
        if not headers:
            return None

        def one(key: str) -> str:
            value = headers[key]
            if isinstance(value, list):
                value = value[0]
            if not isinstance(value, str):
                raise TypeError(key)
            return value

        try:
            return cls(shard=int(one(H_SHARD)), seq=int(one(H_SEQ)), log_id=int(one(H_LOG_ID)),
                       sha256=one(H_SHA256), size=int(one(H_SIZE)), schema=int(one(H_SCHEMA)),
                       format=one(H_FORMAT))
        except (KeyError, IndexError, TypeError, ValueError):
            return None


def object_name(shard: int, seq: int) -> str:
    """`shard-0003/00000000000000012345`: sorted by name is sorted by position."""
    return f"shard-{shard:04d}/{seq:020d}"


def to_prune(metas: list[SnapshotMeta], keep: int) -> list[SnapshotMeta]:
    """The snapshots to delete: all but the newest `keep` of each shard (and log)."""
    if keep < 1:
        raise ValueError("keep must be at least 1: a purged log depends on a snapshot")
    groups: dict[tuple[int, int], list[SnapshotMeta]] = {}
    for m in metas:
        groups.setdefault((m.shard, m.log_id), []).append(m)
    old: list[SnapshotMeta] = []
    for group in groups.values():
        old.extend(sorted(group, key=lambda m: m.seq, reverse=True)[keep:])
    return sorted(old, key=lambda m: (m.shard, m.seq))


def purge_point(snapshot_seqs: list[int], positions: list[int | None], *, margin: int, purged_below: int) -> int | None:
    """The sequence a shard's log may be purged below (entries at or above it are kept), or None
    for no purge now.

    - `snapshot_seqs`: positions of the shard's snapshots still kept, of the current log. Purged
      only below the *oldest* of them, so a damaged newest snapshot still has a fallback whose tail
      is in the log; and never without a snapshot.
    - `positions`: every replica's applied_seq (None: not known, e.g. a replica just assigned or on a
      node that stopped reporting): an unknown position purges nothing.
    - `margin`: sequences kept below that, so a replica that falls a little behind catches up
      from the log rather than restoring a snapshot.
    - `purged_below`: the current floor; the result is above it or None.

    The entry at the lowest needed position is itself kept (purge strictly below it): replicas then
    still find the entry at their `applied_seq` to check the log's identity against (logcheck.py).
    """
    if not snapshot_seqs or not positions or any(p is None for p in positions):
        return None
    needed = min(min(snapshot_seqs), *(p for p in positions if p is not None))
    below = needed - margin
    return below if below > max(purged_below, 1) else None


def log_id_of(created: dt.datetime) -> int:
    """A stream's identity from its creation time (JetStream gives nanoseconds; nats-py keeps
    microseconds, which is the precision stored)."""
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    delta = created - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class PurgeFloor(msgspec.Struct, kw_only=True):
    """KV `purged.<shard>`: the shard's log entries below `below` are purged (or about to be)."""

    below: int
    log_id: int  # of the log purged: a re-created stream starts with nothing purged
    snapshot_seq: int = 0  # the oldest kept snapshot's position when it was set


def floor_subject(shard: int) -> str:
    """The KV message subject holding `purged.<shard>`."""
    return f"$KV.{KV_BUCKET}.{purged_key(shard)}"


async def read_floor(nc: NATS, shard: int, log_id: int) -> int:
    """Below which sequence the shard's entries of the log `log_id` are purged (1: none). Read from
    the stream's leader, not a possibly lagging direct-get replica: a replica must see a floor set
    before the purge it precedes."""
    try:
        msg = await nc.jetstream().get_last_msg(f"KV_{KV_BUCKET}", floor_subject(shard))
    except NotFoundError:
        return 1
    if not msg.data:
        return 1
    floor = msgspec.json.decode(msg.data, type=PurgeFloor)
    return floor.below if floor.log_id == log_id else 1


async def list_snapshots(nc: NATS, shard: int | None = None) -> list[SnapshotMeta]:
    """Every snapshot in the bucket (of one shard if given); [] when none or no bucket yet."""
    try:
        store = await nc.jetstream().object_store(SNAPSHOT_BUCKET)
        infos = await store.list(ignore_deletes=True)
    except (NotFoundError, BucketNotFoundError):
        return []
    metas = (SnapshotMeta.from_headers(i.headers) for i in infos if not i.deleted)
    return [m for m in metas if m is not None and (shard is None or m.shard == shard)]
