"""A content hash of one shard replica, equal on every replica that applied the same entries.

Every table is dumped in a canonical order (sorted in Python, never relying on the engine's
collation), each row msgpack-encoded with floats as their exact IEEE bytes (embeddings are stored as
float32 bytes already), and fed to SHA-256.

v2 (schema 3): the Version and Tombstone tables are dumped too: they decide what later writes do, so
replicas that differ there differ in content.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

import kuzu
import msgspec

from torua_node.storage.schema import LOG_KEYS
from torua_node.storage.store import all_rows
from torua_node.storage.tables import META, STUB, TABLES, Column, NodeTable, RelTable, Table

__all__ = ["content_digest", "counts"]

_enc = msgspec.msgpack.Encoder()


def content_digest(conn: kuzu.Connection) -> str:
    h = hashlib.sha256(b"torua-shard-digest-v2")
    for name, rows in _dump(conn):
        h.update(_enc.encode(["table", name, len(rows)]))
        for row in rows:
            h.update(_enc.encode(row))
    return h.hexdigest()


def _dump(conn: kuzu.Connection) -> Iterable[tuple[str, list[list[Any]]]]:
    for name, (query, doubles) in _DUMPS.items():
        rows = all_rows(conn, query)
        for row in rows:
            for k in doubles:
                row[k] = _f64(row[k])
        yield name, sorted(rows, key=_key)


def _dump_query(table: Table) -> tuple[str, list[int]]:
    """The query returning every row of a table, and which of its columns are DOUBLEs (hashed as
    their exact IEEE bytes; embeddings are BLOBs holding the exact float32 bytes: hashed as stored).
    A node's columns come in stored order; an edge's key (source, *key properties, target) first,
    then its other properties."""
    if isinstance(table, NodeTable):
        columns: list[Column | None] = list(table.columns)
        # Which log, and the fingerprint of its last entry, are bookkeeping, not content.
        where = f" WHERE NOT n.key IN {list(LOG_KEYS)}" if table is META else ""
        query = f"MATCH (n:{table.name}){where} RETURN {', '.join(f'n.{c.name}' for c in table.columns)}"
    else:
        props = {c.name: c for c in table.columns}
        columns = [None, *(props[k] for k in table.key), None, *table.values]
        items = table.key_items() + [f"r.{c.name}" for c in table.values]
        query = f"MATCH {table.pattern()} RETURN {', '.join(items)}"
    return query, [k for k, c in enumerate(columns) if c is not None and c.type == "DOUBLE"]


# Every table, in declaration order.
_DUMPS = {t.name: _dump_query(t) for t in TABLES}


def _key(row: list[Any]) -> tuple[tuple[bool, Any], ...]:
    # Full rows as the key, with None ordered first, so even duplicate keys sort canonically.
    return tuple((v is not None, v) for v in row)


def _f64(x: float | None) -> bytes | None:
    return None if x is None else struct.pack("<d", x)


# The name each counted table is reported by (Meta, apply's own bookkeeping, is not counted).
_COUNTED = {"Entity": "entities", "Document": "documents", "Chunk": "chunks", "RELATES": "relations",
            "MENTIONS": "mentions", "KV": "kv", "Failure": "failures"}


def _count_queries() -> dict[str, str]:
    """Each count's name and query; a stubbed table's real and stub rows are counted apart."""
    out: dict[str, str] = {}
    for table in TABLES:
        name = _COUNTED.get(table.name)
        if name is None:
            continue
        if isinstance(table, RelTable):
            out[name] = f"MATCH ()-[r:{table.name}]->() RETURN count(*)"
        elif table.stubbed:
            out[name] = f"MATCH (n:{table.name}) WHERE NOT n.{STUB} RETURN count(*)"
            out[f"stub_{name}"] = f"MATCH (n:{table.name}) WHERE n.{STUB} RETURN count(*)"
        else:
            out[name] = f"MATCH (n:{table.name}) RETURN count(*)"
    return out


_COUNTS = _count_queries()


def counts(conn: kuzu.Connection) -> dict[str, int]:
    return {k: int(all_rows(conn, q)[0][0]) for k, q in _COUNTS.items()}
