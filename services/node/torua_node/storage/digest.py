"""A content hash of one shard replica, equal on every replica that applied the same entries.

Every table is dumped in a canonical order (sorted in Python, never relying on the engine's
collation), each row msgpack-encoded with floats as their exact IEEE bytes (embeddings are stored as
float32 bytes already), and fed to SHA-256.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

import kuzu
import msgspec

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
    # Embeddings are BLOBs holding the exact float32 bytes: hashed as stored.
    yield "Entity", _sorted(conn, "MATCH (n:Entity) RETURN n.id, n.name, n.type, n.description,"
                                  " n.properties, n.embedding, n.stub")
    yield "Document", _sorted(conn, "MATCH (n:Document) RETURN n.id, n.title, n.metadata")
    yield "Chunk", _sorted(conn, "MATCH (n:Chunk) RETURN n.id, n.document_id, n.text, n.position,"
                                 " n.embedding, n.stub")
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


def _f64(x: float | None) -> bytes | None:
    return None if x is None else struct.pack("<d", x)


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
