"""The shard replicas this node hosts: opened and closed to follow the shard map."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from torua.wire import ReplicaStatus

from torua_node.storage import ShardStore

__all__ = ["Replica", "ReplicaManager"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Replica:
    shard: int
    store: ShardStore
    state: str = "opening"  # opening | recovering | active | closing | failed
    applied_seq: int = 0
    error: str | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(shard=self.shard, state=self.state, applied_seq=self.applied_seq, error=self.error)  # type: ignore[arg-type]


class ReplicaManager:
    def __init__(self, root: Path, *, buffer_pool_mb: int, max_db_size_gb: int) -> None:
        self.root = root
        self._buffer_pool_mb = buffer_pool_mb
        self._max_db_size_gb = max_db_size_gb
        self.replicas: dict[int, Replica] = {}
        self._lock = asyncio.Lock()

    def _store(self, shard: int) -> ShardStore:
        return ShardStore(
            self.root / f"shard-{shard:04d}" / "graph.kuzu",
            buffer_pool_mb=self._buffer_pool_mb,
            max_db_size_gb=self._max_db_size_gb,
            shard=shard,
        )

    async def reconcile(self, wanted: set[int]) -> bool:
        """Open replicas newly assigned, close (and delete) those no longer assigned."""
        async with self._lock:
            added = sorted(wanted - self.replicas.keys())
            removed = sorted(self.replicas.keys() - wanted)
            if not added and not removed:
                return False
            await asyncio.gather(*(self._open(s) for s in added), *(self._drop(s) for s in removed))
            return True

    async def _open(self, shard: int) -> None:
        replica = Replica(shard=shard, store=self._store(shard))
        self.replicas[shard] = replica
        try:
            await replica.store.open()
        except Exception as exc:  # noqa: BLE001 - reported in heartbeats, the node keeps running
            log.exception("shard %d failed to open", shard)
            replica.state, replica.error = "failed", f"open failed: {type(exc).__name__}: {exc}"
            return
        replica.state = "active"
        log.info("shard %d replica open", shard)

    async def _drop(self, shard: int) -> None:
        replica = self.replicas[shard]
        replica.state = "closing"
        for task in replica.tasks:
            task.cancel()
        await asyncio.gather(*replica.tasks, return_exceptions=True)
        await replica.store.close()
        replica.store.remove_files()
        del self.replicas[shard]
        log.info("shard %d replica closed and removed", shard)

    def statuses(self) -> list[ReplicaStatus]:
        return [r.status() for _, r in sorted(self.replicas.items())]

    async def close_all(self) -> None:
        """Close every database, keeping the files (a restart resumes from them)."""
        async with self._lock:
            for replica in self.replicas.values():
                for task in replica.tasks:
                    task.cancel()
                await asyncio.gather(*replica.tasks, return_exceptions=True)
                await replica.store.close()
            self.replicas.clear()
