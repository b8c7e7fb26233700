"""The shard replicas this node hosts: started and stopped to follow the shard map."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nats.aio.client import Client as NATS

from torua.wire import ReplicaStatus
from torua_node.shard.replica import ShardReplica
from torua_node.storage.store import ShardStore

__all__ = ["ReplicaManager"]

log = logging.getLogger(__name__)


class ReplicaManager:
    def __init__(self, root: Path, *, node_id: str, buffer_pool_mb: int, max_db_size_gb: int) -> None:
        self.root = root
        self.node_id = node_id
        self._buffer_pool_mb = buffer_pool_mb
        self._max_db_size_gb = max_db_size_gb
        self.replicas: dict[int, ShardReplica] = {}
        self._lock = asyncio.Lock()

    def _store(self, shard: int) -> ShardStore:
        return ShardStore(
            self.root / f"shard-{shard:04d}" / "graph.kuzu",
            buffer_pool_mb=self._buffer_pool_mb,
            max_db_size_gb=self._max_db_size_gb,
            shard=shard,
        )

    async def reconcile(self, wanted: set[int], nc: NATS, dim: int) -> bool:
        """Start replicas newly assigned, stop (and delete) those no longer assigned."""
        async with self._lock:
            added = sorted(wanted - self.replicas.keys())
            removed = sorted(self.replicas.keys() - wanted)
            if not added and not removed:
                return False
            await asyncio.gather(*(self._open(s, nc, dim) for s in added), *(self._drop(s) for s in removed))
            return True

    async def _open(self, shard: int, nc: NATS, dim: int) -> None:
        replica = ShardReplica(shard, self._store(shard), nc, self.node_id, dim)
        self.replicas[shard] = replica
        try:
            await replica.start()
        except Exception:
            # Kuzu 0.11.3 can fail to recover its own WAL after a SIGKILL ("duplicated primary key").
            # Everything it held is in the write-ahead log, so start over and replay.
            log.exception("shard %d failed to open; rebuilding it from the write-ahead log", shard)
            await replica.store.close()
            replica.store.remove_files()
            replica = ShardReplica(shard, self._store(shard), nc, self.node_id, dim)
            self.replicas[shard] = replica
            try:
                await replica.start()
            except Exception as exc:
                log.exception("shard %d failed to open an empty database", shard)
                replica.state, replica.error = "failed", f"open failed: {type(exc).__name__}: {exc}"
                return
        log.info("shard %d replica open at applied_seq %d", shard, replica.applied_seq)

    async def _drop(self, shard: int) -> None:
        replica = self.replicas[shard]
        await replica.stop()
        replica.store.remove_files()
        del self.replicas[shard]
        log.info("shard %d replica closed and removed", shard)

    def statuses(self) -> list[ReplicaStatus]:
        return [r.status() for _, r in sorted(self.replicas.items())]

    async def close_all(self) -> None:
        """Stop every replica, keeping the files (a restart resumes from them)."""
        async with self._lock:
            await asyncio.gather(*(r.stop() for r in self.replicas.values()), return_exceptions=True)
            self.replicas.clear()
