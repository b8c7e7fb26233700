"""One Kuzu database per shard replica, used only from that replica's own thread.

Kuzu runs queries synchronously, so every call goes through `ShardStore.call`, which runs it on a
single dedicated thread: the event loop (heartbeats, NATS) never waits on Kuzu, and one shard's
queries never interleave. This class is the one place that knows Kuzu is the engine, so a
maintained fork with the same API could replace it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import kuzu

__all__ = [
    "ShardStore",
    "Conn",
    "OUT_OF_MEMORY",
    "TRANSIENT_ERRORS",
    "is_transient",
    "execute",
    "all_rows",
    "all_columns",
    "memory_database",
]

T = TypeVar("T")
Conn = kuzu.Connection
_MIB = 1024 * 1024
# How Kuzu's errors start when the buffer pool ran out.
OUT_OF_MEMORY = "Buffer manager exception"
# ... and when they say nothing about the statement (memory, disk, interruption): the replica is
# unwell, not the entry or the query.
TRANSIENT_ERRORS = (OUT_OF_MEMORY, "IO exception", "Interrupted", "Checkpoint exception",
                    "Transaction manager exception")


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and str(exc).startswith(TRANSIENT_ERRORS)


def execute(conn: kuzu.Connection, statement: str, params: dict[str, Any] | None = None) -> kuzu.QueryResult:
    """The result of one statement (Kuzu returns a list of results only for several statements)."""
    result = conn.execute(statement, params)
    if isinstance(result, list):
        raise TypeError(f"one statement expected, got {len(result)}")
    return result


def all_rows(conn: kuzu.Connection, statement: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
    """Every row of one statement's result, each a list (Kuzu's default: never rows as dicts)."""
    return cast("list[list[Any]]", execute(conn, statement, params).get_all())


def all_columns(conn: kuzu.Connection, statement: str) -> list[list[Any]]:
    """Every column of one statement's result, each a list: by way of Arrow, which a whole-table scan
    (the in-memory views' loads) takes several times faster than row by row."""
    table = execute(conn, statement).get_as_arrow(0)
    return [c.to_pylist() for c in table.columns]


@contextmanager
def memory_database(buffer_pool_bytes: int) -> Iterator[Conn]:
    """A temporary in-memory database on the calling thread, closed on exit (the router gathers a
    far-end query's sub-graph into one)."""
    db = kuzu.Database(":memory:", buffer_pool_size=buffer_pool_bytes, max_db_size=1 << 34, max_num_threads=1)
    conn = kuzu.Connection(db)
    try:
        yield conn
    finally:
        conn.close()
        db.close()


class ShardStore:
    def __init__(self, path: Path, *, buffer_pool_mb: int, max_db_size_gb: int, shard: int) -> None:
        self.path = path
        self.shard = shard
        self._buffer_pool = buffer_pool_mb * _MIB
        self._max_db_size = max_db_size_gb * 1024 * _MIB
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shard-{shard}")
        self._db: kuzu.Database | None = None
        self._conn: kuzu.Connection | None = None
        self._init: Callable[[Conn], Any] | None = None

    async def open(self, init: Callable[[Conn], Any] | None = None) -> None:
        self._init = init
        await self._run(self._open)

    async def reopen(self) -> None:
        """Close and open the database again: kuzu 0.11.3 holds on to buffer-pool memory it no
        longer needs until the database closes, and may crash if used again once the pool ran out."""

        def _reopen() -> None:
            self._close()
            self._open()

        await self._run(_reopen)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = kuzu.Database(
            str(self.path),
            buffer_pool_size=self._buffer_pool,
            max_db_size=self._max_db_size,
            max_num_threads=2,
        )
        self._conn = kuzu.Connection(self._db)
        if self._init is not None:
            self._init(self._conn)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._db is not None:
            self._db.close()
        self._conn = self._db = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on this shard's thread; if it runs out of buffer pool, the database
        is reopened before the error is raised."""

        def _call() -> T:
            if self._conn is None:
                raise RuntimeError(f"shard {self.shard} store is closed")
            try:
                return fn(self._conn, *args)
            except RuntimeError as exc:
                if str(exc).startswith(OUT_OF_MEMORY):
                    self._close()  # before anything else uses it (see reopen)
                    self._open()
                raise

        return await self._run(_call)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        try:
            await self._run(self._close)
        finally:
            self._executor.shutdown(wait=True)

    def remove_files(self) -> None:
        """Delete the database files (after close): the replica was moved away."""
        for p in (self.path, self.path.with_name(self.path.name + ".wal"), self.path.with_name(self.path.name + ".shadow")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
