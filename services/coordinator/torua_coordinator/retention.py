"""The leading coordinator purges the write-ahead log below what is still needed (torua.retention).

Why the leader: it alone sees every replica's applied position (from heartbeats) beside the shard
map that says which replicas exist, so it can tell a position it knows from one it does not. Per
shard, each pass:

1. learns the log's identity (the stream's creation time) and the shard's snapshots of that log;
2. takes every replica in the map: its reported `applied_seq` if it is recovering or active on a
   reachable node; unknown if it is opening, not reported, or its node is away (stopped, silent:
   until the map reassigns it); diverged and failed replicas are rebuilt from a snapshot anyway
   and do not count;
3. `purge_point`: below min(oldest kept snapshot, every position) minus TORUA_PURGE_MARGIN, and
   nothing at all while any position is unknown or there is no snapshot;
4. writes the floor to KV `purged.<shard>` *then* purges `{"filter": "torua.wal.<shard>", "seq": N}`
   (JetStream keeps N and above).

A replica the leader did not know of (a node back after its replicas' positions were dropped) reads
the floor before it applies anything that skips sequences and restores a snapshot if it is behind,
so a purge can cost a restore but never a silently skipped entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from torua.retention import PurgeFloor, list_snapshots, log_id_of, purge_point, read_floor
from torua.subjects import WAL_STREAM, purged_key, wal_subject
from torua.wire import ShardMap
from torua_coordinator.registry import Registry

__all__ = ["Retention", "replica_positions"]

log = logging.getLogger(__name__)

# Replica states whose applied_seq is a position the replica will continue from.
_FOLLOWING = ("recovering", "active")
# Replica states that will be rebuilt (from a snapshot) before they use the log again.
_REBUILT = ("diverged", "failed")


def replica_positions(hosts: list[str], shard: int, registry: Registry) -> list[int | None]:
    """Each hosting replica's applied_seq (None: unknown right now); rebuilt ones left out."""
    out: list[int | None] = []
    for node in hosts:
        rec = registry.nodes.get(node)
        status = rec.replicas.get(shard) if rec is not None and rec.status in ("healthy", "draining") else None
        if status is None:
            out.append(None)
        elif status.state in _FOLLOWING:
            out.append(status.applied_seq)
        elif status.state not in _REBUILT:
            out.append(None)
    return out


class Retention:
    def __init__(self, nc: NATS, kv: KeyValue, registry: Registry, shardmap: Callable[[], ShardMap], margin: int) -> None:
        self.nc = nc
        self.kv = kv
        self.registry = registry
        self.shardmap = shardmap
        self.margin = margin

    async def purge(self, shards: list[int] | None = None) -> dict[int, int]:
        """One pass over these shards (all if None); returns {shard: purged below} for those purged."""
        js = self.nc.jetstream()
        info = await js.stream_info(WAL_STREAM)
        if info.created is None:
            return {}
        log_id = log_id_of(info.created)
        snapshots: dict[int, list[int]] = {}
        for meta in await list_snapshots(self.nc):
            if meta.log_id == log_id:
                snapshots.setdefault(meta.shard, []).append(meta.seq)
        purged: dict[int, int] = {}
        for entry in self.shardmap().shards:
            if shards is not None and entry.id not in shards:
                continue
            floor = await read_floor(self.nc, entry.id, log_id)
            positions = replica_positions(entry.hosts(), entry.id, self.registry)
            below = purge_point(snapshots.get(entry.id, []), positions, margin=self.margin, purged_below=floor)
            if below is None:
                continue
            record = PurgeFloor(below=below, log_id=log_id, snapshot_seq=min(snapshots[entry.id]))
            await self.kv.put(purged_key(entry.id), msgspec.json.encode(record))  # before the purge: see module doc
            await js.purge_stream(WAL_STREAM, seq=below, subject=wal_subject(entry.id))
            purged[entry.id] = below
            log.info("shard %d: log purged below %d (snapshots at %s, replicas at %s)", entry.id, below,
                     sorted(snapshots[entry.id]), positions)
        return purged
