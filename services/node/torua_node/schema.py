"""The Kuzu schema of one shard replica, and the stored `applied_seq`.

A stub row (`stub = true`) stands for an entity or chunk that lives on another shard: it exists only
so that an edge has a local endpoint, carries no content and no vector, and is never shown to users.
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it

import kuzu

__all__ = ["init_schema", "read_applied_seq", "APPLIED_SEQ_KEY"]

APPLIED_SEQ_KEY = "applied_seq"


def _ddl(dim: int) -> list[str]:
    return [
        "CREATE NODE TABLE IF NOT EXISTS Entity(id STRING PRIMARY KEY, name STRING, type STRING,"
        f" description STRING, properties STRING, embedding FLOAT[{dim}], stub BOOLEAN)",
        "CREATE NODE TABLE IF NOT EXISTS Document(id STRING PRIMARY KEY, title STRING, metadata STRING)",
        "CREATE NODE TABLE IF NOT EXISTS Chunk(id STRING PRIMARY KEY, document_id STRING, text STRING,"
        f" position INT64, embedding FLOAT[{dim}], stub BOOLEAN)",
        "CREATE REL TABLE IF NOT EXISTS RELATES(FROM Entity TO Entity, type STRING, weight DOUBLE,"
        " properties STRING, chunks STRING[])",
        "CREATE REL TABLE IF NOT EXISTS MENTIONS(FROM Chunk TO Entity)",
        "CREATE NODE TABLE IF NOT EXISTS KV(key STRING PRIMARY KEY, value STRING)",
        "CREATE NODE TABLE IF NOT EXISTS Meta(key STRING PRIMARY KEY, value INT64)",
        "CREATE NODE TABLE IF NOT EXISTS Failure(seq INT64 PRIMARY KEY, error STRING)",
    ]


def init_schema(conn: kuzu.Connection, dim: int) -> None:
    """Create the tables if missing; refuse a database made for another embedding dimension."""
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    for stmt in _ddl(dim):
        conn.execute(stmt)
    for table in ("Entity", "Chunk"):
        stored = _column_type(conn, table, "embedding")
        if stored != f"FLOAT[{dim}]":
            raise ValueError(f"shard database has {table}.embedding {stored}, expected FLOAT[{dim}]")


def _column_type(conn: kuzu.Connection, table: str, column: str) -> str:
    for row in conn.execute(f"CALL table_info('{table}') RETURN *").get_all():
        if row[1] == column:
            return str(row[2])
    return "missing"


def read_applied_seq(conn: kuzu.Connection) -> int:
    """The last WAL sequence applied to this replica (0 for a new database)."""
    rows = conn.execute(
        "MATCH (m:Meta {key: $k}) RETURN m.value", {"k": APPLIED_SEQ_KEY}
    ).get_all()
    return int(rows[0][0]) if rows else 0
