"""A content hash of one shard replica, equal on every replica that applied the same entries.

Every table is dumped in a canonical order (sorted in Python by key, never relying on the engine's
collation), each row msgpack-encoded with floats as their exact IEEE bytes, and fed to SHA-256.
"""

from __future__ import annotations

import hashlib
import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
import struct
from collections.abc import Iterable
from typing import Any

import kuzu
import msgspec

from torua_node.vectors import matrix_from_arrow

__all__ = ["content_digest", "counts"]

_enc = msgspec.msgpack.Encoder()


def content_digest(conn: kuzu.Connection) -> str:
    h = hashlib.sha256(b"torua-shard-digest-v1")
    for name, rows in _dump(conn):
        h.update(_enc.encode(["table", name, len(rows)]))
        for row in rows:
            h.update(_enc.encode(row))
    return h.hexdigest()


def _dump(conn: kuzu.Connection) -> Iterable[tuple[str, list[list[Any]]]]:
    dim = _dim(conn)
    yield "Entity", _with_vectors(conn, "MATCH (n:Entity) RETURN n.id, n.name, n.type, n.description,"
                                        " n.properties, n.stub, n.embedding", dim)
    yield "Document", _sorted(conn, "MATCH (n:Document) RETURN n.id, n.title, n.metadata")
    yield "Chunk", _with_vectors(conn, "MATCH (n:Chunk) RETURN n.id, n.document_id, n.text, n.position,"
                                       " n.stub, n.embedding", dim)
    rels = conn.execute("MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, r.type, b.id, r.weight,"
                        " r.properties, r.chunks").get_all()
    yield "RELATES", sorted(([s, ty, t, _f64(w), p, ch] for s, ty, t, w, p, ch in rels), key=_key)
    yield "MENTIONS", _sorted(conn, "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) RETURN c.id, e.id")
    yield "KV", _sorted(conn, "MATCH (k:KV) RETURN k.key, k.value")
    yield "Meta", _sorted(conn, "MATCH (m:Meta) RETURN m.key, m.value")
    yield "Failure", _sorted(conn, "MATCH (f:Failure) RETURN f.seq, f.error")


def _sorted(conn: kuzu.Connection, query: str) -> list[list[Any]]:
    return sorted(conn.execute(query).get_all(), key=_key)


def _key(row: list[Any]) -> tuple:
    # Full rows as the key, with None ordered first, so even duplicate keys sort canonically.
    return tuple((v is not None, v) for v in row)


def _with_vectors(conn: kuzu.Connection, query: str, dim: int) -> list[list[Any]]:
    """Rows whose last column is FLOAT[dim], that column replaced by its float32 bytes (or None)."""
    t = conn.execute(query).get_as_arrow(chunk_size=0)
    m, nulls = matrix_from_arrow(t.column(t.num_columns - 1), dim)
    m = m.astype("<f4", copy=False)
    cols = [t.column(i).to_pylist() for i in range(t.num_columns - 1)]
    rows = [[*vals, None if nulls[i] else m[i].tobytes()] for i, vals in enumerate(zip(*cols))]
    rows.sort(key=lambda r: r[0])  # primary key: unique
    return rows


def _f64(x: float | None) -> bytes | None:
    return None if x is None else struct.pack("<d", x)


def _dim(conn: kuzu.Connection) -> int:
    for row in conn.execute("CALL table_info('Entity') RETURN *").get_all():
        if row[1] == "embedding":
            return int(str(row[2]).split("[")[1].rstrip("]"))
    raise ValueError("Entity table has no embedding column")


_COUNTS = {
    "entities": "MATCH (n:Entity) WHERE NOT n.stub RETURN count(*)",
    "stub_entities": "MATCH (n:Entity) WHERE n.stub RETURN count(*)",
    "documents": "MATCH (n:Document) RETURN count(*)",
    "chunks": "MATCH (n:Chunk) WHERE NOT n.stub RETURN count(*)",
    "stub_chunks": "MATCH (n:Chunk) WHERE n.stub RETURN count(*)",
    "relations": "MATCH ()-[r:RELATES]->() RETURN count(*)",
    "mentions": "MATCH ()-[r:MENTIONS]->() RETURN count(*)",
    "kv": "MATCH (n:KV) RETURN count(*)",
    "failures": "MATCH (n:Failure) RETURN count(*)",
}


def counts(conn: kuzu.Connection) -> dict[str, int]:
    return {k: int(conn.execute(q).get_all()[0][0]) for k, q in _COUNTS.items()}
