"""ShardStore on real Kuzu: a call that runs out of buffer pool leaves a reopened database behind."""

from __future__ import annotations

from pathlib import Path

import kuzu
import pytest

from torua_node.storage.reads import kv_get
from torua_node.storage.schema import init_schema
from torua_node.storage.store import OUT_OF_MEMORY, ShardStore


async def test_a_call_that_runs_out_of_buffer_pool_reopens_the_database(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "graph.kuzu", buffer_pool_mb=16, max_db_size_gb=1, shard=0)
    await store.open(lambda conn: init_schema(conn, 4))
    seen: list[kuzu.Connection] = []

    def write(conn: kuzu.Connection) -> None:
        seen.append(conn)
        conn.execute("CREATE (:KV {key: 'k', value: 'v'})")

    def runs_out(conn: kuzu.Connection) -> None:
        # kuzu 0.11.3 may crash if a database is used again after this error: the store must not.
        raise RuntimeError(f"{OUT_OF_MEMORY}: Unable to allocate memory! The buffer pool is full")

    def other_error(conn: kuzu.Connection) -> None:
        seen.append(conn)
        raise RuntimeError("Binder exception: not about memory")

    try:
        await store.call(write)
        with pytest.raises(RuntimeError, match=OUT_OF_MEMORY):
            await store.call(runs_out)
        assert store.is_open
        with pytest.raises(RuntimeError, match="Binder"):
            await store.call(other_error)
        with pytest.raises(RuntimeError, match="Binder"):
            await store.call(other_error)
        assert seen[1] is not seen[0]  # a new connection to a reopened database
        assert seen[2] is seen[1]  # other errors do not reopen
        assert await store.call(kv_get, "k") == "v"  # committed data survives the reopen
    finally:
        await store.close()
