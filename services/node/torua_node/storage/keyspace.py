"""Which keys each open shard database may hold, learnt once per process and kept up to date by apply.

Apply skips the lookup of a key that was never written (`presence.py`), and every statement that
matches rows by key uses the tables' sizes to choose between set-at-a-time and row by row
(`statements.py`). Learnt by one scan per table on first use; only apply adds keys, so the first
use must not be inside an apply transaction (rolled back, it would leave keys unlearnt).
"""

from __future__ import annotations

import weakref

import kuzu

from torua_node.storage.presence import Presence

__all__ = ["known_keys", "table_size"]

_ARROW_CHUNK = 1 << 20
_KEYS = {
    "Entity": "MATCH (n:Entity) RETURN n.id",
    "Chunk": "MATCH (n:Chunk) RETURN n.id",
    "Document": "MATCH (n:Document) RETURN n.id",
    "KV": "MATCH (n:KV) RETURN n.key",
    "RELATES": "MATCH (a:Entity)-[r:RELATES]->(b:Entity) RETURN a.id, r.type, b.id",
    "MENTIONS": "MATCH (a:Chunk)-[:MENTIONS]->(b:Entity) RETURN a.id, b.id",
}
_KNOWN: weakref.WeakKeyDictionary[kuzu.Database, dict[str, Presence]] = weakref.WeakKeyDictionary()


def known_keys(conn: kuzu.Connection) -> dict[str, Presence]:
    """Per table, the keys that may exist: the primary key of node tables, (source, type, target)
    for RELATES, (chunk, entity) for MENTIONS."""
    known = _KNOWN.get(conn.database)
    if known is None:
        known = {table: Presence() for table in _KEYS}
        for table, query in _KEYS.items():
            # Batch by batch: a large shard's keys as Python strings all at once would be a spike.
            for batch in conn.execute(query).get_as_arrow(_ARROW_CHUNK).to_batches():
                cols = [c.to_pylist() for c in batch.columns]
                known[table].add(cols[0] if len(cols) == 1 else list(zip(*cols)))
        _KNOWN[conn.database] = known
    return known


def table_size(conn: kuzu.Connection, *tables: str) -> int:
    """About how many rows the largest of these tables has (deleted keys count until reopen)."""
    known = known_keys(conn)
    return max(len(known[t]) for t in tables)
