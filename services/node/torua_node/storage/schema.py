"""The Kuzu schema of one shard replica, and the stored `applied_seq`. The tables themselves are
declared once, in `tables.py`; this module creates them and tells why they are as they are.

A stub row (`stub = true`) stands for an entity or chunk that lives on another shard: it exists only
so that an edge has a local endpoint, carries no content and no vector (empty strings and an empty
embedding, never NULL: see apply.py), and is never shown to users.

Embeddings are stored as BLOB (dim little-endian float32, exactly the WAL bytes), not FLOAT[dim]:
in kuzu 0.11.3, updating a FLOAT[dim] value and inserting rows before the next checkpoint makes the
checkpoint write the updated row's old vector into the inserted rows (silent corruption, seen with
both COPY and CREATE). BLOB and STRING columns are not affected, and a BLOB is bit-exact (Kuzu's
float compression turns -0.0 and NaN into 0.0 at checkpoint). The dimension is kept in Meta.

Version and Tombstone hold, per entity and relation, the version of the stored write and of the
newest delete (last-writer-wins, apply.py). A database of schema version 2 has neither and cannot get
them right after the fact (which versions its rows were written by is gone): it is refused, and the
replica rebuilt from the log.

RELATES.chunks (the ids of the chunks stating a relation) is a JSON array in a STRING, not STRING[]:
every checkpoint rewrites a node group's whole adjacency data, and with a STRING[] column of
distinct values that costs ~35x more (100k edges in batches of 5k: 171 s against 5 s).
"""

from __future__ import annotations

from typing import NamedTuple

import kuzu

from torua_node.storage.store import all_rows
from torua_node.storage.tables import ddl

__all__ = [
    "init_schema",
    "read_applied_seq",
    "read_dim",
    "read_log_position",
    "write_log_id",
    "LogPosition",
    "APPLIED_SEQ_KEY",
    "APPLIED_FP_KEY",
    "LOG_ID_KEY",
    "LOG_KEYS",
    "DIM_KEY",
    "SCHEMA_VERSION",
    "TOMBSTONES_PURGED_KEY",
    "read_tombstones_purged",
]

APPLIED_SEQ_KEY = "applied_seq"
# The fingerprint (torua_node.shard.wal.fingerprint) of the entry at applied_seq, written with it.
APPLIED_FP_KEY = "applied_fp"
# The identity of the log this replica applied: the WAL stream's creation time, in microseconds
# since the epoch (JetStream's `created`). A stream deleted and created again has another.
LOG_ID_KEY = "log_id"
# Where the replica is in which log: bookkeeping, not content (the digest leaves them out).
LOG_KEYS = (APPLIED_FP_KEY, LOG_ID_KEY)
DIM_KEY = "dim"
# The last period (of apply.PURGE_EVERY_MS, counted by entry versions) whose old tombstones were purged.
TOMBSTONES_PURGED_KEY = "tombstones_purged"
SCHEMA_KEY = "schema_version"
# Raised whenever a table changes. A database of another version is refused at open, and the
# replica is then rebuilt by replaying the write-ahead log (which holds no storage layout).
# 2: RELATES.chunks became a JSON STRING (was STRING[]).
# 3: the Version and Tombstone tables (last-writer-wins by write version, apply.py).
SCHEMA_VERSION = 3


def init_schema(conn: kuzu.Connection, dim: int) -> None:
    """Create the tables if missing; refuse a database of another schema version or embedding dimension."""
    if dim < 1:
        raise ValueError(f"embedding dim must be >= 1, got {dim}")
    for stmt in ddl():
        conn.execute(stmt)
    fresh = read_dim(conn) is None
    for key, value in ((DIM_KEY, dim), (SCHEMA_KEY, SCHEMA_VERSION if fresh else 1)):
        conn.execute("MERGE (m:Meta {key: $k}) ON CREATE SET m.value = $v", {"k": key, "v": value})
    version = _meta(conn, SCHEMA_KEY)
    if version != SCHEMA_VERSION:
        raise ValueError(f"shard database has schema version {version}, this node uses {SCHEMA_VERSION}")
    stored = read_dim(conn)
    if stored != dim:
        raise ValueError(f"shard database was created with embedding dim {stored}, not {dim}")


def read_dim(conn: kuzu.Connection) -> int | None:
    return _meta(conn, DIM_KEY)


def read_tombstones_purged(conn: kuzu.Connection) -> int:
    return _meta(conn, TOMBSTONES_PURGED_KEY) or 0


def read_applied_seq(conn: kuzu.Connection) -> int:
    """The last WAL sequence applied to this replica (0 for a new database)."""
    return _meta(conn, APPLIED_SEQ_KEY) or 0


class LogPosition(NamedTuple):
    """Where a replica is, and in which log: what it checks the log against before applying more."""

    applied_seq: int
    log_id: int | None  # None: never recorded (a new database, or one written before it was kept)
    applied_fp: int | None  # the fingerprint of the entry at applied_seq, None if unknown


def read_log_position(conn: kuzu.Connection) -> LogPosition:
    return LogPosition(read_applied_seq(conn), _meta(conn, LOG_ID_KEY), _meta(conn, APPLIED_FP_KEY))


def write_log_id(conn: kuzu.Connection, log_id: int) -> None:
    """Record the log this replica follows (before it applies anything of it)."""
    conn.execute("MERGE (m:Meta {key: $k}) SET m.value = $v", {"k": LOG_ID_KEY, "v": log_id})


def _meta(conn: kuzu.Connection, key: str) -> int | None:
    found = all_rows(conn, "MATCH (m:Meta {key: $k}) RETURN m.value", {"k": key})
    return int(found[0][0]) if found else None
