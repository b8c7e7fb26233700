"""Shards as real Kuzu databases, written through the real write path (split_upsert / split_delete ->
encode_entry -> apply_batch), answering `torua.graph.query` through `run_query` with shard calls that
are plain async functions around `execute_on_shard`: the real execution path minus NATS.

Shared by the Cypher tests (test_query.py, test_chain_query.py); the in-memory ShardClient of the
other read paths is `fake_shards.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kuzu

from torua.embedding import Embedder
from torua.errors import Unavailable
from torua.model import DeleteRequest, UpsertRequest
from torua_node.cypher.merge import ShardRows
from torua_node.router.query import QueryResult, run_query
from torua_node.router.split import split_delete, split_upsert
from torua_node.settings import QueryLimits
from torua_node.shard.apply import apply_batch
from torua_node.shard.query import execute_on_shard
from torua_node.shard.wal import encode_entry
from torua_node.storage.schema import init_schema

_MIB = 1024 * 1024


class KuzuShards:
    """`num_shards` shard databases (in memory, or files under `root`) holding `batches` as the
    cluster would store them: relations at both ends, stubs for far ends, chunks at their document.
    `down` shards answer Unavailable; every call is logged in `calls`."""

    def __init__(
        self,
        num_shards: int,
        batches: Sequence[UpsertRequest | DeleteRequest],
        dim: int,
        embedder: Embedder,
        root: Path | None = None,
    ) -> None:
        self.num_shards = num_shards
        self.dbs: list[tuple[kuzu.Database, kuzu.Connection]] = []
        for s in range(num_shards):
            if root is None:
                db = kuzu.Database(
                    ":memory:", buffer_pool_size=32 * _MIB, max_db_size=1 << 30, max_num_threads=1
                )
            else:
                db = kuzu.Database(
                    str(root / f"shard{s}.kz"), buffer_pool_size=64 * _MIB, max_db_size=1 << 34
                )
            conn = kuzu.Connection(db)
            init_schema(conn, dim)
            self.dbs.append((db, conn))
        self.calls: list[tuple[int, str]] = []
        self.down: set[int] = set()
        seq = [0] * num_shards
        for n, req in enumerate(batches):
            if isinstance(req, UpsertRequest):
                entries = split_upsert(req, num_shards, embedder, f"req-{n}", 1000.0 + n)
            else:
                entries = split_delete(req, num_shards, f"req-{n}", 1000.0 + n)
            for s, entry in sorted(entries.items()):
                seq[s] += 1
                result = apply_batch(self.conn(s), [(seq[s], encode_entry(entry))], dim)
                assert not result.failures and result.error is None

    def conn(self, shard: int) -> kuzu.Connection:
        return self.dbs[shard][1]

    async def run_on_shard(self, shard: int, query: str, params: dict[str, Any]) -> ShardRows:
        self.calls.append((shard, query))
        if shard in self.down:
            raise Unavailable(f"no replica of shard {shard} answered")
        return execute_on_shard(self.conn(shard), query, params)

    async def query(
        self, cypher: str, params: dict[str, Any] | None = None, limits: QueryLimits | None = None
    ) -> QueryResult:
        return await run_query(cypher, params or {}, self.num_shards, self.run_on_shard, limits=limits)

    def close(self) -> None:
        for db, conn in self.dbs:
            conn.close()
            db.close()
