"""ShardStore on real Kuzu: a call that runs out of buffer pool leaves a reopened database behind.
The schema: the declared tables are the stored ones, created by the same statements as always."""

from __future__ import annotations

from pathlib import Path

import kuzu
import pytest

from torua_node.storage.reads import kv_get
from torua_node.storage.schema import SCHEMA_VERSION, init_schema
from torua_node.storage.store import OUT_OF_MEMORY, ShardStore, all_rows
from torua_node.storage.tables import TABLES, NodeTable, ddl

# The statements every database of schema version 2 was created by, before the tables were
# declared in storage/tables.py. A change here is a schema change: raise SCHEMA_VERSION.
_DDL_V2 = [
    "CREATE NODE TABLE IF NOT EXISTS Entity(id STRING PRIMARY KEY, name STRING, type STRING,"
    " description STRING, properties STRING, embedding BLOB, stub BOOLEAN)",
    "CREATE NODE TABLE IF NOT EXISTS Document(id STRING PRIMARY KEY, title STRING, metadata STRING)",
    "CREATE NODE TABLE IF NOT EXISTS Chunk(id STRING PRIMARY KEY, document_id STRING, text STRING,"
    " position INT64, embedding BLOB, stub BOOLEAN)",
    "CREATE REL TABLE IF NOT EXISTS RELATES(FROM Entity TO Entity, type STRING, weight DOUBLE,"
    " properties STRING, chunks STRING)",
    "CREATE REL TABLE IF NOT EXISTS MENTIONS(FROM Chunk TO Entity)",
    "CREATE NODE TABLE IF NOT EXISTS KV(key STRING PRIMARY KEY, value STRING)",
    "CREATE NODE TABLE IF NOT EXISTS Meta(key STRING PRIMARY KEY, value INT64)",
    "CREATE NODE TABLE IF NOT EXISTS Failure(seq INT64 PRIMARY KEY, error STRING)",
]


# Schema version 3 added the last-writer-wins tables (shard/apply.py).
_DDL_V3 = [
    *_DDL_V2,
    "CREATE NODE TABLE IF NOT EXISTS Version(key STRING PRIMARY KEY, version INT64)",
    "CREATE NODE TABLE IF NOT EXISTS Tombstone(key STRING PRIMARY KEY, version INT64)",
]


def test_the_declared_tables_are_created_by_the_same_statements_as_before() -> None:
    assert SCHEMA_VERSION == 3
    assert ddl() == _DDL_V3


def test_every_table_is_stored_as_declared() -> None:
    db = kuzu.Database(":memory:", buffer_pool_size=64 * 1024 * 1024, max_db_size=1 << 34)
    conn = kuzu.Connection(db)
    try:
        init_schema(conn, 4)
        stored = {r[1]: r[2] for r in all_rows(conn, "CALL show_tables() RETURN *")}
        assert stored == {t.name: "NODE" if isinstance(t, NodeTable) else "REL" for t in TABLES}
        for t in TABLES:
            info = all_rows(conn, f"CALL table_info('{t.name}') RETURN *")
            kuzu_type = {"BOOLEAN": "BOOL"}
            assert [(r[1], r[2]) for r in info] == [(c.name, kuzu_type.get(c.type, c.type)) for c in t.columns]
            if isinstance(t, NodeTable):
                assert [r[1] for r in info if r[4] is True] == [t.key]
            else:
                ends = all_rows(conn, f"CALL show_connection('{t.name}') RETURN *")
                assert ends == [[t.source.name, t.target.name, t.source.key, t.target.key]]
    finally:
        conn.close()
        db.close()


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
