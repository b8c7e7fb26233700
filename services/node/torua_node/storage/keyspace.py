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
from torua_node.storage.store import execute
from torua_node.storage.tables import TABLES, NodeTable, Table

__all__ = ["known_keys", "table_size", "key_query"]

_ARROW_CHUNK = 1 << 20


def key_query(table: Table) -> str:
    """The keys of every row: a node's primary key; an edge's (source, *key properties, target)."""
    if isinstance(table, NodeTable):
        return f"MATCH (n:{table.name}) RETURN n.{table.key}"
    return f"MATCH {table.pattern()} RETURN {', '.join(table.key_items())}"


# Every table apply writes from WAL content (not its own bookkeeping).
_KEYS = {t.name: key_query(t) for t in TABLES if not (isinstance(t, NodeTable) and t.replica_local)}
_KNOWN: weakref.WeakKeyDictionary[kuzu.Database, dict[str, Presence]] = weakref.WeakKeyDictionary()


def known_keys(conn: kuzu.Connection) -> dict[str, Presence]:
    """Per table, the keys that may exist (`key_query`): the primary key of node tables, (source,
    type, target) for RELATES, (chunk, entity) for MENTIONS."""
    known = _KNOWN.get(conn.database)
    if known is None:
        known = {table: Presence() for table in _KEYS}
        for table, query in _KEYS.items():
            # Batch by batch: a large shard's keys as Python strings all at once would be a spike.
            for batch in execute(conn, query).get_as_arrow(_ARROW_CHUNK).to_batches():
                cols = [c.to_pylist() for c in batch.columns]
                known[table].add(cols[0] if len(cols) == 1 else list(zip(*cols)))
        _KNOWN[conn.database] = known
    return known


def table_size(conn: kuzu.Connection, *tables: str) -> int:
    """About how many rows the largest of these tables has (deleted keys count until reopen)."""
    known = known_keys(conn)
    return max(len(known[t]) for t in tables)
