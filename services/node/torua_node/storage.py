"""One Kuzu database per shard replica, used only from that replica's own thread.

Kuzu runs queries synchronously, so every call goes through `ShardStore.call`, which runs it on a
single dedicated thread: the event loop (heartbeats, NATS) never waits on Kuzu, and one shard's
queries never interleave. This class is the one place that knows Kuzu is the engine, so a
maintained fork with the same API could replace it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import kuzu

__all__ = ["ShardStore", "Conn"]

T = TypeVar("T")
Conn = kuzu.Connection
_MIB = 1024 * 1024


class ShardStore:
    def __init__(self, path: Path, *, buffer_pool_mb: int, max_db_size_gb: int, shard: int) -> None:
        self.path = path
        self.shard = shard
        self._buffer_pool = buffer_pool_mb * _MIB
        self._max_db_size = max_db_size_gb * 1024 * _MIB
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard-{shard}")
        self._db: kuzu.Database | None = None
        self._conn: kuzu.Connection | None = None

    async def open(self, init: Callable[[Conn], Any] | None = None) -> None:
        def _open() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = kuzu.Database(
                str(self.path),
                buffer_pool_size=self._buffer_pool,
                max_db_size=self._max_db_size,
                max_num_threads=2,
            )
            self._conn = kuzu.Connection(self._db)
            if init is not None:
                init(self._conn)

        await self._run(_open)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on this shard's thread."""

        def _call() -> T:
            if self._conn is None:
                raise RuntimeError(f"shard {self.shard} store is closed")
            return fn(self._conn, *args)

        return await self._run(_call)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
            if self._db is not None:
                self._db.close()
            self._conn = self._db = None

        try:
            await self._run(_close)
        finally:
            self._executor.shutdown(wait=True)

    def remove_files(self) -> None:
        """Delete the database files (after close): the replica was moved away."""
        for p in (self.path, self.path.with_name(self.path.name + ".wal"), self.path.with_name(self.path.name + ".shadow")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
